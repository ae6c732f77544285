"""Training-step throughput of FF (``LocalTrainer``) against backprop on the same network, timed alternately.

    python benchmarks/step_throughput.py --model deeperforward_resnet17 --batch-size 128 --json

Three trainers get fresh copies of the same model (same seed) and the same random batch ``[B, C, 32, 32]``:

* ``ff``: :class:`ffkit.LocalTrainer` (every layer's local loss, detached inputs);
* ``bp_deepsup``: :class:`ffkit.train.BackpropTrainer`, the sum of every layer's loss back-propagated end to end;
* ``bp``: :class:`ffkit.train.BackpropTrainer` with ``deep_supervision=False``, single-head backprop: only the last
  layer's loss, through the whole backbone (same widths);
* ``ff_undo`` (with ``--with-undo``): ``ff`` keeping, as ``fit`` does with a run directory, a copy of the parameters
  and optimizer state before each step (:class:`ffkit.train.undo.StepUndo`).

After a warm-up step each, the script times ``--rounds`` rounds; each round runs one step of every trainer in turn, so
slow drifts of the machine hit all three alike. Step times are medians over rounds. FLOPs of one step of each trainer
are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, forward and
backward), and a float32 matrix-product peak is measured in the same run, so ``ff_achieved_flops /
matmul_peak_flops`` says how close the FF step gets to the machine's limit.

The last line printed is one JSON object (with ``--json``); ``--out FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, emit, machine_info, make_batch, sync  # noqa: E402

import ffkit  # noqa: E402
from ffkit.train import BackpropTrainer, LocalTrainer  # noqa: E402
from ffkit.train.undo import StepUndo  # noqa: E402


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` square matrix products (n = 2048 on CPU, 8192 on GPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: library initialisation and, on CUDA, kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_flops(trainer, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step (convolutions and matrix products, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(x, y)
    return int(counter.get_total_flops())


def build_trainers(args: argparse.Namespace) -> dict[str, object]:
    """Fresh copies of the same model (same seed) for FF, BP-DeepSup and single-head BP."""
    options = {"device": args.device, "schedule": "constant"}
    perf = {"channels_last": args.channels_last, "amp": args.amp, "compile": args.compile or False}

    def model():
        torch.manual_seed(args.seed)
        return ffkit.models.create_model(args.model)

    trainers = {
        "ff": LocalTrainer(model(), **options, **perf),
        "bp_deepsup": BackpropTrainer(model(), **options, **perf),
        "bp": BackpropTrainer(model(), deep_supervision=False, **options, **perf),
    }
    if args.with_undo:  # as fit() steps with a run directory: a copy of the state before each step
        trainers["ff_undo"] = LocalTrainer(model(), **options, **perf)
        trainers["ff_undo"].step_undo = StepUndo()
    return trainers


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of every trainer per round)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for every trainer")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for every trainer")
    p.add_argument("--compile", nargs="?", const=True, default=None, help="torch.compile every trainer's model "
                   "(optionally with a backend name)")
    p.add_argument("--with-undo", action="store_true", help="also time FF with the copy of the state before each "
                   "step that fit keeps to save the last good state on divergence (key ff_undo_over_ff_time)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    trainers = build_trainers(args)
    x, y = make_batch(trainers["ff"].network, args.batch_size, args.seed)

    for t in trainers.values():  # warm-up: allocator, library kernels, compilation
        t.train_step(x, y)
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(args.rounds):
        for name, t in trainers.items():
            sync(device)
            start = time.perf_counter()
            t.train_step(x, y)
            sync(device)
            times[name].append(time.perf_counter() - start)
    step = {k: statistics.median(v) for k, v in times.items()}
    flops = {k: step_flops(t, x, y) for k, t in trainers.items()}
    peak = matmul_peak(device)

    result = {
        "benchmark": "step_throughput",
        "model": args.model,
        "batch_size": args.batch_size,
        "device": str(device),
        "rounds": args.rounds,
        "options": {"channels_last": args.channels_last, "amp": args.amp, "compile": args.compile},
        "ff_images_per_s": args.batch_size / step["ff"],
        "bp_deepsup_images_per_s": args.batch_size / step["bp_deepsup"],
        "bp_images_per_s": args.batch_size / step["bp"],
        "ff_over_bp_deepsup_time": step["ff"] / step["bp_deepsup"],
        "ff_over_bp_time": step["ff"] / step["bp"],
        "step_seconds": step,
        "step_seconds_all": times,
        "step_flops": flops,
        "ff_over_bp_deepsup_flops": flops["ff"] / flops["bp_deepsup"],
        "matmul_peak_flops": peak,
        "ff_achieved_flops": flops["ff"] / step["ff"],
        "bp_deepsup_achieved_flops": flops["bp_deepsup"] / step["bp_deepsup"],
        "bp_achieved_flops": flops["bp"] / step["bp"],
        "machine": machine_info(),
    }
    result["ff_fraction_of_peak"] = result["ff_achieved_flops"] / peak
    if args.with_undo:
        result["ff_undo_over_ff_time"] = step["ff_undo"] / step["ff"]
    print(f"{args.model}, batch {args.batch_size}, {device}, median of {args.rounds} rounds")
    for k in trainers:
        print(f"  {k:<11s} {step[k]:8.3f} s/step  {args.batch_size / step[k]:8.1f} img/s  "
              f"{flops[k] / 1e9:9.1f} GFLOP/step  {flops[k] / step[k] / 1e9:7.1f} GFLOP/s")
    print(f"  FF / BP-DeepSup time {result['ff_over_bp_deepsup_time']:.3f}, "
          f"FF / BP time {result['ff_over_bp_time']:.3f}")
    print(f"  matmul peak {peak / 1e9:.1f} GFLOP/s; FF reaches {100 * result['ff_fraction_of_peak']:.1f}% of it")
    return emit(result, args.out, args.json)


if __name__ == "__main__":
    main()
