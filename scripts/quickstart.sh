#!/usr/bin/env bash
# One command from a fresh clone: install everything (with the plot extra), then train DeeperForward TinyCNN on
# Fashion-MNIST for one epoch with LocalTrainer and print per-layer and overall test accuracy and the commands worth
# running next (about 8.5 minutes on a 2-core CPU, installation included).
# Extra arguments go to `ffkit train`, e.g. bash scripts/quickstart.sh --epochs 3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh plot
.venv/bin/ffkit train --model deeperforward_tinycnn --dataset fashion-mnist --epochs 1 "$@"
echo "(ffkit is installed in .venv: run 'source .venv/bin/activate' first to type the commands above as shown)"
