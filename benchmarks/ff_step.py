"""Time ``LocalTrainer``'s step alone: the before/after figure of an optimisation.

    python benchmarks/ff_step.py --model deeperforward_resnet17 --json

To compare with an older ffkit, run the same script against that version's sources, one after the other on a quiet
machine::

    git worktree add /tmp/ffkit-old 2699eee
    PYTHONPATH=/tmp/ffkit-old/src python benchmarks/ff_step.py --model deeperforward_resnet17 --label before --json

Uses only the ``LocalTrainer`` arguments every ffkit version has, so both runs do the same work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, emit, machine_info, make_batch, sync  # noqa: E402

import ffkit  # noqa: E402
from ffkit.train import LocalTrainer  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--label", default="current", help="name of this code version in the result (e.g. before)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    trainer = LocalTrainer(ffkit.models.create_model(args.model), schedule="constant", device=device)
    x, y = make_batch(trainer.network, args.batch_size, args.seed)
    trainer.train_step(x, y)
    times = []
    for _ in range(args.rounds):
        sync(device)
        start = time.perf_counter()
        trainer.train_step(x, y)
        sync(device)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    result = {
        "benchmark": "ff_step",
        "label": args.label,
        "model": args.model,
        "batch_size": args.batch_size,
        "device": str(device),
        "step_seconds": step,
        "step_seconds_all": times,
        "images_per_s": args.batch_size / step,
        "machine": machine_info(),
    }
    print(f"{args.label}: {args.model}, batch {args.batch_size}, {device}: {step:.3f} s/step, "
          f"{args.batch_size / step:.1f} img/s")
    return emit(result, args.out, args.json)


if __name__ == "__main__":
    main()
