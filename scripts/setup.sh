#!/usr/bin/env bash
# Installs what entrannas needs on a fresh machine: the CPU build of PyTorch (pinned first, so
# pip never pulls the multi-GB CUDA wheels), the package with its test and onnx extras (so the
# export tests run), and the real
# Fashion-MNIST data (Debian package dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! $PY -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    $PY -m pip install --quiet torch==2.13.0
fi
$PY -m pip install --quiet -e ".[test,onnx]"

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
    if command -v apt-get >/dev/null; then
        $SUDO apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: Fashion-MNIST is missing; install the Debian package dataset-fashion-mnist or pass --set data.data_dir=DIR" >&2
    fi
fi
echo "setup: entrannas $($PY -c 'import entrannas; print(entrannas.__version__)') with torch $($PY -c 'import torch; print(torch.__version__)')"
