#!/usr/bin/env bash
# Set up lohp on a fresh Debian machine (idempotent; run again at any time):
#   1. the Fashion-MNIST data set from Debian's packages (as root, or with sudo), when missing;
#   2. a virtual environment at .venv (no system site packages) holding lohp with its dev and glyphs
#      extras (the glyph tasks' KanjiVG characters),
#      exactly as pyproject.toml declares them.
# Nothing needs activating afterwards: the README's commands, the Makefiles and the cron example use
# .venv/bin/ directly. LOHP_VENV=DIR puts the environment elsewhere; LOHP_PYTHON picks the
# interpreter that creates it (default python3); LOHP_FRESH_VENV=1 deletes and rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOHP_VENV:-.venv}"
PY="${LOHP_PYTHON:-python3}"

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if [ "${LOHP_FRESH_VENV:-0}" = 1 ]; then rm -rf "$VENV"; fi
# A half-made environment (a crash during an earlier run) has no working interpreter: rebuild it.
if [ -d "$VENV" ] && ! "$VENV/bin/python" -c "import sys" >/dev/null 2>&1; then rm -rf "$VENV"; fi
if [ ! -d "$VENV" ]; then "$PY" -m venv "$VENV"; fi
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev,glyphs]' >"$LOG" 2>&1; then
  cat "$LOG" >&2
  echo "install failed: pip could not install lohp into $VENV (its output is above)" >&2
  exit 1
fi
"$VENV/bin/python" - <<'PY'
import sys
try:
    import lohp_cli, torch, zarr
except ImportError as exc:  # the pip step above failed: say so instead of a traceback
    sys.exit(f"install failed: {exc}")
print("lohp", lohp_cli.__version__, "| torch", torch.__version__, "| zarr", zarr.__version__,
      "|", sys.prefix)
PY
