#!/usr/bin/env bash
# Installs everything ffkit needs into ./.venv: PyTorch, ffkit itself (editable, with the given extras) and the
# Debian package with Fashion-MNIST. Safe to run again: finished steps are skipped.
# Usage: bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh test
# PyTorch's default Linux wheel (PyPI) brings NVIDIA's CUDA libraries: about 2.9 GB to download and a 5.6 GB .venv
# (torch 2.14.1; 6.0 GB with the test extras). FFKIT_TORCH=cpu installs PyTorch's CPU-only build from its own package
# index instead (FFKIT_TORCH_INDEX, default https://download.pytorch.org/whl/cpu): about 0.2 GB to download and
# 0.8 GB installed (measured with the 2.13.0+cpu wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
variant="${FFKIT_TORCH:-default}"
cpu_index="${FFKIT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
case "$variant" in
  default|cpu) ;;
  *) echo "[ffkit setup] error: FFKIT_TORCH must be 'default' or 'cpu', got '$variant'" >&2; exit 2 ;;
esac

if [ ! -x .venv/bin/python ]; then
  echo "[ffkit setup] creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  # Pinned first, so that installing ffkit does not pull a different (multi-GB) torch build. Not quiet: a download
  # of gigabytes shows its progress.
  if [ "$variant" = cpu ]; then
    echo "[ffkit setup] installing $TORCH_PIN, CPU-only build, from $cpu_index (about 0.2 GB to download)"
    if ! .venv/bin/pip install --progress-bar on --index-url "$cpu_index" $TORCH_PIN; then
      echo "[ffkit setup] $cpu_index did not provide $TORCH_PIN for this Python and platform (pip's message is" \
           "above); installing PyPI's default build instead" >&2
      variant=default
    fi
  fi
  if [ "$variant" = default ]; then
    echo "[ffkit setup] installing $TORCH_PIN: about 2.9 GB to download and 5.6 GB installed, most of it NVIDIA's" \
         "CUDA libraries, which only a GPU uses (a CPU-only machine can take 0.2 GB instead: FFKIT_TORCH=cpu)"
    .venv/bin/pip install --progress-bar on $TORCH_PIN
  fi
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
echo "[ffkit setup] installing ffkit ($spec)"
.venv/bin/pip install --quiet -e "$spec"

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  echo "[ffkit setup] installing the Debian package dataset-fashion-mnist"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
  fi
fi
echo "[ffkit setup] done"
