"""Speed-up of a multi-process FF pipeline (torch.distributed, gloo) over one process, on the same work.

    python benchmarks/pipeline_speedup.py --model deeperforward_tinycnn --procs 2 --json

1. Baseline: this process, ``--threads`` threads (default 1), trains ``--batches`` batches of ``[B, C, 32, 32]``
   random images with ``LocalTrainer`` (after one warm-up batch).
2. Pipeline: ``python -m torch.distributed.run --nproc-per-node PROCS`` runs this script in worker mode; every process
   uses ``--threads`` threads and trains one stage of ``PipelineTrainer(backend="distributed")`` with automatic
   balancing (profiled on the first batch of a short warm-up epoch; ``--no-share`` keeps whole layers per stage,
   otherwise a layer may be shared by two stages). Then the same ``--batches`` batches are timed, from
   the first batch sent to the last stage done (a barrier), so filling and draining the pipeline are counted.
   ``--data-parallel D``: hybrid data x pipeline, ``D`` replicas of a pipeline of ``PROCS / D`` stages
   (``PipelineTrainer(data_parallel=D)``), replica ``d`` on its ``B / D`` share of every batch, so the work is the
   same ``--batches`` global batches of ``B``.

Prints and writes (``benchmarks/results/pipeline-MODEL-pPROCS-cpu.json``) ``speedup`` = baseline time / pipeline time,
``efficiency`` = speedup / PROCS, and ``stage_balance`` = the slowest stage's busy time over the mean stage busy time
during the timed epoch (busy = time in local steps, excluding waiting for peers). The last line is the JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine_info, run_workers  # noqa: E402

import ffkit  # noqa: E402
from ffkit.train import LocalTrainer  # noqa: E402


def _loader(net, batches: int, batch_size: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, net.in_channels, 32, 32, generator=g)
    y = torch.randint(0, net.num_classes, (batches * batch_size,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, drop_last=True)


def _model(args):
    torch.manual_seed(args.seed)
    return ffkit.models.create_model(args.model)


def baseline(args) -> float:
    torch.set_num_threads(args.threads)
    net = _model(args)
    trainer = LocalTrainer(net, schedule="constant")
    warm = _loader(net, 1, args.batch_size, args.seed + 1)
    for xb, yb in warm:
        trainer.train_step(xb, yb)
    loader = _loader(net, args.batches, args.batch_size, args.seed)
    start = time.perf_counter()
    for xb, yb in loader:
        trainer.train_step(xb, yb)
    return time.perf_counter() - start


def worker(args) -> None:
    import torch.distributed as dist

    from ffkit.train.pipeline import PipelineTrainer, init_distributed

    torch.set_num_threads(args.threads)
    rank, world = init_distributed(timeout=300)
    net = _model(args)
    if args.variant == "federated":  # each rank trains its shard: the same images in total
        from ffkit.train import FederatedTrainer, shard_loader

        trainer = FederatedTrainer(net, sync_every=args.sync_every, schedule="constant", timeout=300)

        def make(batches: int, seed: int):
            full = _loader(net, batches, args.batch_size, seed).dataset
            return shard_loader(full, args.batch_size, seed=seed, shuffle=False)
    elif args.variant == "all-layers":
        from ffkit.train import ChapterTrainer

        trainer = ChapterTrainer(net, chapter_batches=args.chapter_batches, schedule="constant", timeout=300)

        def make(batches: int, seed: int):
            return _loader(net, batches, args.batch_size, seed)
    elif args.data_parallel > 1:
        trainer = PipelineTrainer(net, backend="distributed", balance=args.balance, data_parallel=args.data_parallel,
                                  schedule="constant", timeout=300)

        def make(batches: int, seed: int):  # this replica's share of every global batch
            full = _loader(net, batches, args.batch_size, seed).dataset
            d, b = trainer.replica, args.batch_size // args.data_parallel
            rows = torch.cat([torch.arange(i * args.batch_size + d * b, i * args.batch_size + (d + 1) * b)
                              for i in range(batches)])
            return DataLoader(torch.utils.data.Subset(full, rows.tolist()), batch_size=b, drop_last=True)
    else:
        trainer = PipelineTrainer(net, backend="distributed", balance=args.balance, share_layers=not args.no_share,
                                  schedule="constant", timeout=300)

        def make(batches: int, seed: int):
            return _loader(net, batches, args.batch_size, seed)
    trainer.train_epoch(make(2 * world, args.seed + 1))  # profiling, split, buffers, warm-up
    loader = make(args.batches, args.seed)
    dist.barrier()
    start = time.perf_counter()
    record = trainer.train_epoch(loader)
    dist.barrier()
    seconds = time.perf_counter() - start
    if hasattr(trainer, "close"):
        trainer.close()
    if rank == 0:
        busy = record.get("stage_busy_seconds") or record.get("rank_busy_seconds") or [seconds] * world
        out = {"seconds": seconds, "stage_busy_seconds": busy, "stages": record.get("stages"),
               "stage_starts": record.get("stage_starts"), "shared_layers": record.get("shared_layers"),
               "balance_report": getattr(trainer, "balance_report", None), "images": record["train_images"]}
        Path(args.worker_out).write_text(json.dumps(out))
    dist.destroy_process_group()



def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeperforward_tinycnn", choices=ffkit.models.list_models("ff"), metavar="NAME")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=None, help="timed batches (default: about 40 s of baseline work)")
    p.add_argument("--threads", type=int, default=1, help="threads per process, baseline and pipeline alike")
    p.add_argument("--balance", choices=["auto", "layers"], default="auto")
    p.add_argument("--no-share", action="store_true", help="whole layers per stage (no layer shared by two stages)")
    p.add_argument("--variant", choices=["stages", "federated", "all-layers"], default="stages",
                   help="Pipeline-FF variant: stages of layers (default), federated, all-layers (chapters)")
    p.add_argument("--data-parallel", type=int, default=1, metavar="D",
                   help="stages: D replicas of a pipeline of PROCS / D stages (hybrid data x pipeline)")
    p.add_argument("--sync-every", type=int, default=1, help="federated: steps between parameter averages")
    p.add_argument("--chapter-batches", type=int, default=5, help="all-layers: batches per chapter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.data_parallel < 1 or args.procs % args.data_parallel or args.batch_size % args.data_parallel:
        p.error(f"--data-parallel {args.data_parallel} must divide --procs {args.procs} and --batch-size "
                f"{args.batch_size}")
    if args.data_parallel > 1 and args.variant != "stages":
        p.error("--data-parallel replicates a pipeline of stages (--variant stages)")
    if args.batches is None:
        args.batches = 300 if "mlp" in args.model else 40
    if args.worker_out is not None:
        worker(args)
        return None

    base = baseline(args)
    pipe = run_workers(__file__, args.procs, [
        "--model", args.model, "--batch-size", str(args.batch_size), "--batches", str(args.batches),
        "--threads", str(args.threads), "--balance", args.balance, "--seed", str(args.seed),
        *(["--no-share"] if args.no_share else []),
        "--variant", args.variant, "--sync-every", str(args.sync_every),
        "--data-parallel", str(args.data_parallel),
        "--chapter-batches", str(args.chapter_batches)], threads=args.threads)
    busy = pipe["stage_busy_seconds"]
    speedup = base / pipe["seconds"]
    result = {
        "benchmark": "pipeline_speedup",
        "model": args.model,
        "procs": args.procs,
        "threads_per_process": args.threads,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "balance": args.balance,
        "share_layers": not args.no_share and args.data_parallel == 1,
        "variant": args.variant,
        "data_parallel": args.data_parallel,
        "baseline_seconds": base,
        "pipeline_seconds": pipe["seconds"],
        "speedup": speedup,
        "efficiency": speedup / args.procs,
        "stage_balance": max(busy) / (sum(busy) / len(busy)),
        "stage_busy_seconds": busy,
        "stages": pipe["stages"],
        "stage_starts": pipe.get("stage_starts"),
        "shared_layers": pipe.get("shared_layers"),
        "balance_report": pipe["balance_report"],
        "baseline_images_per_s": args.batches * args.batch_size / base,
        "pipeline_images_per_s": pipe["images"] / pipe["seconds"],
        "machine": machine_info(),
    }
    print(f"{args.model}: {args.batches} batches of {args.batch_size}; one process: {base:.1f} s, "
          f"{args.procs}-process {args.variant} {pipe.get('stage_starts') or ''}"
          + (f" x {args.data_parallel} replicas" if args.data_parallel > 1 else "") + f": {pipe['seconds']:.1f} s")
    print(f"  speed-up {speedup:.2f}, efficiency {result['efficiency']:.2f}, "
          f"stage balance {result['stage_balance']:.3f} (busy seconds per stage {[round(b, 1) for b in busy]})")
    return emit(result, args.out, args.json)


if __name__ == "__main__":
    main()
