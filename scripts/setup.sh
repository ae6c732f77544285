#!/usr/bin/env bash
# Installs everything ffkit needs into ./.venv: PyTorch (CPU/CUDA wheel from pip), ffkit itself (editable, with the
# given extras) and the Debian package with Fashion-MNIST. Safe to run again: finished steps are skipped.
# Usage: bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"

if [ ! -x .venv/bin/python ]; then
  echo "[ffkit setup] creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[ffkit setup] installing $TORCH_PIN"
  # Pinned first, so that installing ffkit does not pull a different (multi-GB) torch build.
  .venv/bin/pip install --quiet $TORCH_PIN
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
