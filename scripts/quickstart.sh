#!/usr/bin/env bash
# One command from a fresh clone: install everything, then train DeeperForward TinyCNN on Fashion-MNIST for one
# epoch with LocalTrainer and print per-layer and overall test accuracy (about 10 minutes on a 2-core CPU).
# Extra arguments go to `ffkit train`, e.g. bash scripts/quickstart.sh --epochs 3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ffkit train --model deeperforward_tinycnn --dataset fashion-mnist --epochs 1 "$@"
