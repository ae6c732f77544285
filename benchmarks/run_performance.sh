#!/usr/bin/env bash
# Every figure of docs/performance.md, in order, on a quiet machine. Results go to benchmarks/results/.
# Usage: bash benchmarks/run_performance.sh [DEVICE]   (default cpu). Takes about 20 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-cpu}"
models=(deeperforward_resnet17 deeperforward_tinycnn dtg_vgg8 hinton_mlp)
for m in "${models[@]}"; do
  python benchmarks/step_throughput.py --model "$m" --batch-size 128 --device "$device"
done
python benchmarks/step_throughput.py --model deeperforward_resnet17 --batch-size 128 --device "$device" \
  --channels-last --out "benchmarks/results/step-deeperforward_resnet17-b128-$device-channels-last.json"
for m in "${models[@]}"; do
  python benchmarks/memory.py --model "$m" --batch-size 128 --device "$device"
done
python benchmarks/eval_passes.py --model deeperforward_tinycnn --batch-size 128 --device "$device"
python benchmarks/eval_passes.py --model hinton_mlp --batch-size 128 --device "$device"
# Before/after: the FF step of the commit before issue 4's optimisations against this checkout.
old="${FFKIT_OLD_TREE:-/tmp/ffkit-before-issue4}"
[ -d "$old" ] || git worktree add -f "$old" 2699eee
for m in "${models[@]}"; do
  PYTHONPATH="$old/src" python benchmarks/ff_step.py --model "$m" --device "$device" --label before \
    --out "benchmarks/results/ff-step-before-$m-$device.json"
  python benchmarks/ff_step.py --model "$m" --device "$device" --label after \
    --out "benchmarks/results/ff-step-after-$m-$device.json"
done
python benchmarks/plot_performance.py --device "$device"
