#!/usr/bin/env bash
# Install what lohp needs on a fresh Debian machine (idempotent): the Fashion-MNIST data set from
# Debian's packages and the Python package with its dev extras. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
python3 -c "import lohp_cli, torch, zarr; print('lohp', lohp_cli.__version__, '| torch', torch.__version__, '| zarr', zarr.__version__)"
