#!/usr/bin/env bash
# The main job: the groundloop ML backend (gunicorn) and its training worker.
# Flags and env vars: see README "Configuration" or `groundloop serve --help`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
exec "${GROUNDLOOP_VENV:-$ROOT/.venv}/bin/groundloop" serve "$@"
