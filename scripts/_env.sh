# Sourced by scripts/*: make .venv with skald installed (editable) and activate it.
# Re-installs only when pyproject.toml changed since the last install.
# Usage: source scripts/_env.sh [EXTRAS]   e.g. source scripts/_env.sh dev
set -euo pipefail
SKALD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$SKALD_ROOT"
_extras="${1:-}"
_python="${PYTHON:-python3}"
if ! "$_python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "skald needs Python >= 3.11 (found: $("$_python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv" >&2
    "$_python" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
_stamp=".venv/.skald-installed-${_extras:-base}"
_hash="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$_stamp" 2>/dev/null || true)" != "$_hash" ]; then
    echo "==> installing skald${_extras:+[$_extras]} into .venv" >&2
    python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v -i warning >&2 || true
    python -m pip install -q --disable-pip-version-check -e ".${_extras:+[$_extras]}" 2>&1 | grep -v -i '^warning' >&2 || true
    python -c 'import actors, shm, config, supervisor, piper, zmq, msgspec, atomics' \
        || { echo "skald: dependency install failed (see pip output above)" >&2; exit 1; }
    echo "$_hash" > "$_stamp"
fi
