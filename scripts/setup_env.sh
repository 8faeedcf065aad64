#!/usr/bin/env bash
# Creates or refreshes the project's virtual env (.venv) when pyproject.toml changed since the last install.
# Sourced by serve.sh and test.sh; safe to run again (it does nothing when everything is in place).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GROUNDLOOP_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
STAMP="$VENV/.groundloop-installed${EXTRAS:+-$EXTRAS}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual env in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "[setup] installing groundloop${EXTRAS:+[$EXTRAS]} into $VENV (first run takes a few minutes)" >&2
    pip_install() {  # pip, without the noise of index locations that do not exist on this machine
        "$VENV/bin/python" -m pip install --quiet "$@" 2>&1 | { grep -v "^WARNING: Location '" || true; }
    }
    pip_install --upgrade pip
    # torch first and pinned to 2.13.0; a torch 2.13.0 already in the venv is kept (README: the CPU wheel from the
    # PyTorch CPU index on a CPU-only machine; PyPI's Linux wheel is the CUDA build). Our CI machines hold the CPU
    # build on disk, so CI never downloads a CUDA torch.
    pip_install "torch==2.13.0"
    pip_install -e "$ROOT${EXTRAS:+[$EXTRAS]}"
    touch "$STAMP"
fi
