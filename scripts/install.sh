#!/usr/bin/env bash
# Set up lohp on a fresh Debian machine (idempotent; run again at any time):
#   1. the Fashion-MNIST data set from Debian's packages (as root, or with sudo), when missing;
#   2. a virtual environment at .venv (no system site packages) holding lohp with its dev and glyphs
#      extras (the glyph tasks' KanjiVG characters),
#      exactly as pyproject.toml declares them.
# Nothing needs activating afterwards: the Makefiles and the cron example use .venv/bin/ directly;
# `source .venv/bin/activate` puts `lohp` on PATH for the README's commands. Each step is named on
# stderr, and pip shows its own progress when stderr is a terminal. LOHP_VENV=DIR puts the environment elsewhere; LOHP_PYTHON picks the
# interpreter that creates it (default python3); LOHP_FRESH_VENV=1 deletes and rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOHP_VENV:-.venv}"
PY="${LOHP_PYTHON:-python3}"

say() { echo "[install] $*" >&2; }

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  say "1/3 the Fashion-MNIST data set (Debian package dataset-fashion-mnist)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  say "1/3 the Fashion-MNIST data set: installed"
fi

if [ "${LOHP_FRESH_VENV:-0}" = 1 ]; then rm -rf "$VENV"; fi
# A half-made environment (a crash during an earlier run) has no working interpreter: rebuild it.
if [ -d "$VENV" ] && ! "$VENV/bin/python" -c "import sys" >/dev/null 2>&1; then rm -rf "$VENV"; fi
if [ ! -d "$VENV" ]; then
  say "2/3 a virtual environment at $VENV"
  "$PY" -m venv "$VENV"
else
  say "2/3 the virtual environment at $VENV: there"
fi
# pip's own progress on a terminal (a fresh environment took about 5 minutes and 6.2 GB on the
# 2-core VM: pip's torch is a CUDA build); a log file gets pip's lines without progress bars.
# LOHP_PIP_ARGS adds pip arguments, e.g. PyTorch's CPU-only wheels:
#   LOHP_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" bash scripts/install.sh
say "3/3 lohp and its dependencies into $VENV (pip; a fresh environment takes minutes)"
if [ -t 2 ]; then
  PIP_FLAGS=(--progress-bar on)
else
  PIP_FLAGS=(--progress-bar off)
fi
# shellcheck disable=SC2086  # LOHP_PIP_ARGS is a list of arguments
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "${PIP_FLAGS[@]}" \
    ${LOHP_PIP_ARGS:-} -e '.[dev,glyphs]' 1>&2; then
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
