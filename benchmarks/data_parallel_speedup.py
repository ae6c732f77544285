"""Speed-up of data-parallel FF training (``DataParallelTrainer``, torch.distributed, gloo) over one process on the
same global batch, and how much of the gradient exchange hides behind compute; the same for backprop under DDP.

    python benchmarks/data_parallel_speedup.py --model deeperforward_tinycnn --procs 2 --json

1. One process, ``--threads`` threads (default 1), steps ``--steps`` global batches ``[B, C, 32, 32]`` of random
   images (after ``--warmup`` steps): ``LocalTrainer`` (FF) and, unless ``--no-bp``, ``BackpropTrainer`` (backprop
   with every layer's loss, DeeperForward's BP-DeepSup) on the same network.
2. ``python -m torch.distributed.run --nproc-per-node PROCS`` runs this script in worker mode: every process, with
   ``--threads`` threads, steps its ``B / PROCS`` share of the same global batches:

   * FF: :class:`ffkit.train.DataParallelTrainer` (each layer's gradients all-reduced as soon as its backward ends,
     waited for before the step's optimizers step);
   * backprop: the same loss through ``torch.nn.parallel.DistributedDataParallel`` (gradient buckets all-reduced
     during the backward pass).

   Each is timed three ways, in the same process group: ``step`` (as trained), ``no_comm`` (the same step without
   any exchange: FF without its gradient average, DDP under ``no_sync()``), and ``comm`` (the step's all-reduces
   alone: flat buffers of the same sizes, one after another, nothing else running).

``--shard-parameters`` also times ``DataParallelTrainer(shard_parameters=True)`` (each layer an FSDP2 unit: its
forward and backward all-gather its parameters, its gradients are reduce-scattered) as ``ff_sharded``: its step
time, speed-up and efficiency against the same one-process FF step.

Keys (``ff`` and ``bp``): ``speedup`` = one-process step time / data-parallel step time, ``efficiency`` = speedup /
PROCS, ``comm_hidden_fraction`` = 1 - (step - no_comm) / comm, the share of the exchange that costs no time
(clamped to [0, 1]); for FF also ``exposed_wait_seconds``, the time spent waiting for averages, measured inside the
trainer. Step times are medians over ``--steps``; the slowest rank's time counts. Writes ``--out`` only when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine_info, run_workers  # noqa: E402

import ffkit  # noqa: E402
from ffkit.train import BackpropTrainer, LocalTrainer  # noqa: E402


def _model(args: argparse.Namespace) -> ffkit.FFNetwork:
    torch.manual_seed(args.seed)
    return ffkit.models.create_model(args.model, **({"dropout": 0.0} if "deeperforward" in args.model else {}))


def _batches(net, args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(args.seed)
    n = args.warmup + args.steps
    x = torch.randn(n, args.batch_size, net.in_channels, 32, 32, generator=g)
    y = torch.randint(0, net.num_classes, (n, args.batch_size), generator=g)
    return [(x[i], y[i], torch.arange(i * args.batch_size, (i + 1) * args.batch_size)) for i in range(n)]


def _timed(step, batches, warmup: int, barrier=None) -> list[float]:
    times = []
    for i, (x, y, index) in enumerate(batches):
        if barrier is not None:
            barrier()
        start = time.perf_counter()
        step(x, y, index)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


class _EndToEnd(torch.nn.Module):
    """The backprop trainer's loss as a module, so DistributedDataParallel can wrap it (DDP needs a forward)."""

    def __init__(self, trainer: BackpropTrainer) -> None:
        super().__init__()
        self.net = trainer.network
        self.trainer = trainer

    def forward(self, x, y, index):
        return self.trainer._losses(x, y, index)[0]  # the loss BackpropTrainer.train_step back-propagates


def single(args: argparse.Namespace) -> dict[str, float]:
    """Median step seconds of one process on the whole global batch."""
    torch.set_num_threads(args.threads)
    out = {}
    engines = {"ff": lambda net: LocalTrainer(net, schedule="constant")}
    if not args.no_bp:
        engines["bp"] = lambda net: BackpropTrainer(net, schedule="constant")
    for name, make in engines.items():
        net = _model(args)
        trainer = make(net)
        out[name] = statistics.median(_timed(trainer.train_step, _batches(net, args), args.warmup))
    return out


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ffkit.train import DataParallelTrainer, init_distributed

    torch.set_num_threads(args.threads)
    rank, world = init_distributed(timeout=300)
    share = args.batch_size // world

    def mine(batches):
        return [(x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share],
                 i[rank * share : (rank + 1) * share]) for x, y, i in batches]

    def slowest(times: list[float]) -> float:
        t = torch.tensor([statistics.median(times)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def comm_alone(sizes: list[int]) -> float:
        buffers = [torch.zeros(n) for n in sizes]
        times = []
        for i in range(args.warmup + args.steps):
            dist.barrier()
            start = time.perf_counter()
            for b in buffers:
                dist.all_reduce(b)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        return slowest(times)

    result: dict[str, dict] = {}
    net = _model(args)
    trainer = DataParallelTrainer(net, schedule="constant", timeout=300)
    batches = mine(_batches(net, args))
    sizes = []
    launch = trainer.gradients.launch

    def record(opt):  # the buffer sizes of one step's exchange, for comm_alone
        before = trainer.gradients.launched_bytes
        launch(opt)
        sizes.append((trainer.gradients.launched_bytes - before) // 4)

    trainer.gradients.launch = record
    trainer.train_step(*batches[0])
    step_sizes = list(sizes)
    trainer.gradients.launch = launch
    trainer.gradients.exposed_seconds = 0.0
    step = slowest(_timed(trainer.train_step, batches, args.warmup, dist.barrier))
    exposed = trainer.gradients.exposed_seconds / len(batches)
    trainer.inner.gradient_sync = None  # the same step, without the exchange
    no_comm = slowest(_timed(trainer.inner.train_step, batches, args.warmup, dist.barrier))
    result["ff"] = {"step": step, "no_comm": no_comm, "comm": comm_alone(step_sizes), "exposed_wait": exposed,
                    "bytes": sum(step_sizes) * 4}

    if args.shard_parameters:
        net = _model(args)
        sharded = DataParallelTrainer(net, schedule="constant", timeout=300, shard_parameters=True)
        result["ff_sharded"] = {"step": slowest(_timed(sharded.train_step, batches, args.warmup, dist.barrier))}

    if not args.no_bp:
        net = _model(args)
        bp = BackpropTrainer(net, schedule="constant")
        ddp = DistributedDataParallel(_EndToEnd(bp))
        opt = bp.optimizers[0]

        def bp_step(x, y, index, sync=True):
            opt.zero_grad(set_to_none=True)
            if sync:
                ddp(x, y, index).backward()
            else:
                with ddp.no_sync():
                    ddp(x, y, index).backward()
            opt.step()

        step = slowest(_timed(bp_step, batches, args.warmup, dist.barrier))
        no_comm = slowest(_timed(lambda x, y, i: bp_step(x, y, i, sync=False), batches, args.warmup, dist.barrier))
        numel = sum(p.numel() for p in net.parameters() if p.requires_grad)
        result["bp"] = {"step": step, "no_comm": no_comm, "comm": comm_alone([numel]), "bytes": numel * 4}
    if rank == 0:
        Path(args.worker_out).write_text(json.dumps(result))
    dist.destroy_process_group()



def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeperforward_tinycnn", choices=ffkit.models.list_models("ff"), metavar="NAME")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch (each process takes 1/PROCS)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per process, one process and data-parallel alike")
    p.add_argument("--no-bp", action="store_true", help="skip backprop (one process and DDP)")
    p.add_argument("--shard-parameters", action="store_true",
                   help="also time FF with each layer sharded over the processes (FSDP2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch_size % args.procs:
        p.error(f"--batch-size {args.batch_size} must be a multiple of --procs {args.procs}")
    if args.worker_out is not None:
        worker(args)
        return None

    one = single(args)
    par = run_workers(__file__, args.procs, [
        "--model", args.model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed),
        *(["--no-bp"] if args.no_bp else []), *(["--shard-parameters"] if args.shard_parameters else [])],
        threads=args.threads)
    result: dict = {"benchmark": "data_parallel_speedup", "model": args.model, "procs": args.procs,
                    "threads_per_process": args.threads, "global_batch": args.batch_size, "steps": args.steps}
    for name, run in par.items():
        if name == "ff_sharded":
            speedup = one["ff"] / run["step"]
            result[name] = {"step_seconds": run["step"], "speedup": speedup, "efficiency": speedup / args.procs,
                            "over_unsharded_step": run["step"] / par["ff"]["step"]}
            print(f"{args.model} ff, sharded parameters: {args.procs} processes {run['step']:.3f} s/step: speed-up "
                  f"{speedup:.2f}, efficiency {speedup / args.procs:.2f}, "
                  f"{result[name]['over_unsharded_step']:.2f} x the unsharded step")
            continue
        speedup = one[name] / run["step"]
        hidden = 1.0 - (run["step"] - run["no_comm"]) / run["comm"] if run["comm"] > 0 else 1.0
        result[name] = {
            "one_process_step_seconds": one[name], "step_seconds": run["step"],
            "no_comm_step_seconds": run["no_comm"], "comm_seconds": run["comm"], "bytes_per_step": run["bytes"],
            "speedup": speedup, "efficiency": speedup / args.procs,
            "comm_hidden_fraction": min(1.0, max(0.0, hidden)),
        }
        if "exposed_wait" in run:
            result[name]["exposed_wait_seconds"] = run["exposed_wait"]
        r = result[name]
        print(f"{args.model} {name}: one process {one[name]:.3f} s/step, {args.procs} processes {run['step']:.3f} "
              f"(without the exchange {run['no_comm']:.3f}; the exchange alone {run['comm']:.3f}, "
              f"{run['bytes'] / 1e6:.1f} MB): speed-up {speedup:.2f}, efficiency {r['efficiency']:.2f}, "
              f"hidden {r['comm_hidden_fraction']:.2f}")
    # the issue's keys, for FF, at the top level
    result.update({k: result["ff"][k] for k in ("speedup", "efficiency", "comm_hidden_fraction")})
    result["machine"] = machine_info()
    return emit(result, args.out, args.json)


if __name__ == "__main__":
    main()
