#!/usr/bin/env bash
# The test suite, with everything it needs: the project's venv, a real Label Studio 1.23.2 in its own venv
# (.ls-venv), a PostgreSQL server and Chromium from Debian's packages. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh test

LS_VENV="${GROUNDLOOP_LS_VENV:-$ROOT/.ls-venv}"
if [ ! -x "$LS_VENV/bin/label-studio" ]; then
    echo "[setup] installing label-studio==1.23.2 into $LS_VENV (about a minute)" >&2
    python3 -m venv "$LS_VENV"
    "$LS_VENV/bin/python" -m pip install --quiet "label-studio==1.23.2"
fi
export GROUNDLOOP_LS_VENV="$LS_VENV"

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing PostgreSQL from Debian's packages" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
            || echo "[setup] PostgreSQL could not be installed; its tests will be skipped" >&2
    fi
fi

if ! command -v chromium >/dev/null; then  # a real browser for the status page test
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Chromium from Debian's packages" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "[setup] Chromium could not be installed; the status page browser test will be skipped" >&2
    fi
fi

exec "${GROUNDLOOP_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
