"""Memory per rank of data-parallel FF training with and without ``shard_parameters`` (FSDP2 per layer).

    python benchmarks/sharded_memory.py --procs 2 --json [--out results/sharded_memory.json]

For each model (default: DeeperForward's ResNet17 and Hinton's MLP at full width) and each setting (``replicated``:
every rank holds the whole network; ``sharded``: ``DataParallelTrainer(shard_parameters=True)``), one
``torch.distributed.run`` job of ``--procs`` processes (gloo, CPU) takes ``--steps`` Adam steps on random
``[B / procs, C, 32, 32]`` batches and reports, per rank:

* ``parameters_bytes``, ``gradients_bytes``, ``optimizer_state_bytes``, ``total_bytes``: what the rank holds after
  the steps (of a sharded tensor, its local shard: ``DTensor.to_local()``);
* ``peak_rss_bytes``: the process's peak resident set (``getrusage``), which also counts PyTorch itself, the whole
  network each rank builds before sharding it, the activations and FSDP's gathered copy of the layer running;
* ``setup_rss_bytes``: the resident set once the trainer is built (before any step).

The largest rank's figure is kept for each key. Writes ``--out`` only when given.

The peak resident set depends on the C allocator as much as on the tensors: glibc raises its mmap threshold after
large blocks are freed, and later blocks of that size then come from a heap whose freed pages stay resident. Run with
``MALLOC_MMAP_THRESHOLD_=131072`` (a fixed threshold: every block above 128 KiB is unmapped when freed) to see what
the tensors alive at once take; the JSON records the setting (``malloc_mmap_threshold``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine_info, run_workers  # noqa: E402

import ffkit  # noqa: E402

MODELS = ("deeperforward_resnet17", "hinton_mlp")


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from ffkit.train import DataParallelTrainer, init_distributed
    from ffkit.train.sharding import local_bytes

    torch.set_num_threads(1)
    rank, world = init_distributed(timeout=600)
    torch.manual_seed(args.seed)
    options = {"negatives": "fixed"} if args.model == "hinton_mlp" else {"dropout": 0.0}
    net = ffkit.models.create_model(args.model, **options)
    trainer = DataParallelTrainer(net, schedule="constant", timeout=600, shard_parameters=args.sharded)
    setup_rss = _rss_now()
    share = args.batch_size // world
    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        x = torch.randn(args.batch_size, net.in_channels, 32, 32, generator=g)
        y = torch.randint(0, net.num_classes, (args.batch_size,), generator=g)
        mine = slice(rank * share, (rank + 1) * share)
        index = torch.arange(step * args.batch_size, (step + 1) * args.batch_size)
        trainer.train_step(x[mine], y[mine], index[mine])
    held = local_bytes(trainer.network, trainer.optimizers)
    row = {f"{k}_bytes": v for k, v in held.items()}
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    row["setup_rss_bytes"] = setup_rss
    keys = sorted(row)
    mine_t = torch.tensor([row[k] for k in keys], dtype=torch.float64)
    every = [torch.zeros_like(mine_t) for _ in range(world)]
    dist.all_gather(every, mine_t)
    if rank == 0:
        table = torch.stack(every)
        result = {"per_rank": [dict(zip(keys, (int(v) for v in r.tolist()))) for r in table],
                  "largest": dict(zip(keys, (int(v) for v in table.max(dim=0).values.tolist())))}
        Path(args.worker_out).write_text(json.dumps(result))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=ffkit.models.list_models("ff"),
                   metavar="NAME")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16, help="the global batch (each process takes 1/PROCS)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--sharded", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch_size % args.procs:
        p.error(f"--batch-size {args.batch_size} must be a multiple of --procs {args.procs}")
    if args.worker_out is not None:
        worker(args)
        return None

    result: dict = {"benchmark": "sharded_memory", "procs": args.procs, "global_batch": args.batch_size,
                    "steps": args.steps, "optimizer": "adam", "dtype": "float32", "models": {}}
    for model in args.models:
        runs = {}
        for setting in ("replicated", "sharded"):
            runs[setting] = run_workers(__file__, args.procs, [
                "--model", model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                "--seed", str(args.seed), *(["--sharded"] if setting == "sharded" else [])])
        rep, sh = runs["replicated"]["largest"], runs["sharded"]["largest"]
        runs["sharded_over_replicated"] = {k: sh[k] / rep[k] for k in ("total_bytes", "peak_rss_bytes")
                                           if rep[k] > 0}
        result["models"][model] = runs
        print(f"{model}: per rank, parameters + gradients + Adam state {rep['total_bytes'] / 2**20:.1f} MiB "
              f"replicated, {sh['total_bytes'] / 2**20:.1f} MiB sharded over {args.procs}; peak RSS "
              f"{rep['peak_rss_bytes'] / 2**20:.0f} -> {sh['peak_rss_bytes'] / 2**20:.0f} MiB")
    result["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    result["machine"] = machine_info()
    return emit(result, args.out, args.json)


if __name__ == "__main__":
    main()
