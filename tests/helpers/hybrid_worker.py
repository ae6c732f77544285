"""Run by tests under ``python -m torch.distributed.run --nproc-per-node 4``: hybrid data x pipeline scenarios, two
replicas of a two-stage pipeline (``PipelineTrainer(data_parallel=2)``) on a 2-D device mesh.

    python -m torch.distributed.run --nproc-per-node 4 tests/helpers/hybrid_worker.py OUT_DIR SCENARIO

SCENARIO ``all`` runs, in one process group (a launch is most of a test's time), and writes
``OUT_DIR/<name>.rank<r>.pt`` from the first stage of each replica (ranks 0 and 2):

* ``equiv-<model>``: five Adam steps in float64 through the pipelines, replica ``d`` on samples ``8 d .. 8 d + 7``
  of every global batch of 16; the weights after them (the test compares them with LocalTrainer on the whole
  batches). TinyCNN's split is chosen by automatic balancing (on rank 0, for both replicas).
* ``syncbn``: the same for CwComp's CNN (a BatchNorm in every layer) with ``sync_batchnorm=True``, automatic
  balancing (profiled by both replicas' first stages in step, since their BatchNorms synchronise), and without
  the option.
* ``resume``: two epochs of ``fit`` uninterrupted, and one epoch then a resume into a fresh trainer for the second
  (random negative labels: each process's random stream must be drawn again alike); both final weights.

SCENARIO ``leave``: rank 3 (the second stage of replica 1) leaves after its first step; each remaining rank writes
the error it got and how long it took.
"""

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from replicas import global_batches, small_model  # this script's folder, tests/helpers, is on sys.path
from torch.utils.data import DataLoader, TensorDataset

from ffkit.train import PipelineError, PipelineTrainer, init_distributed, shard_loader

torch.set_num_threads(1)
out, scenario = Path(sys.argv[1]), sys.argv[2]
rank, world = init_distributed(timeout=30)


def model(name, **kw):
    return small_model(name, seed=rank, **kw)  # another start on each rank: the trainer gives every one rank 0's


def data(c, n=80, seed=1):
    return global_batches(c, n, seed)


def state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def save(name, obj):
    if rank % 2 == 0:  # the first stage of each replica holds its whole network after an epoch
        torch.save(obj, out / f"{name}.rank{rank}.pt")


def equivalence(name, balance, tag=None, **options):
    net = model(name).double()  # float64: a comparison of the exchange, not of the rounding of two conv orders
    x, y = data(net.in_channels)
    x = x.double()
    trainer = PipelineTrainer(net, backend="distributed", data_parallel=2, balance=balance, lr=0.01,
                              schedule="constant", timeout=30, **options)
    half = 8
    rows = torch.cat([torch.arange(b * 16 + trainer.replica * half, b * 16 + (trainer.replica + 1) * half)
                      for b in range(5)])
    loader = DataLoader(TensorDataset(x[rows], y[rows], rows), batch_size=half)
    record = trainer.train_epoch(loader)
    trainer.close()
    save(tag or f"equiv-{name}", {"weights": state(net), "stages": trainer.stage_ranges, "record": record,
                           "replica": trainer.replica, "stage": trainer.rank,
                           "exchanged": trainer._replica_sync.launched_bytes})


def resume():
    x, y = data(1, n=64)
    loader = None
    plan = {"backend": "distributed", "data_parallel": 2, "balance": "layers", "lr": 0.01, "total_steps": 8,
            "timeout": 30}

    def trainer_for(net):
        nonlocal loader
        t = PipelineTrainer(net, **plan)
        loader = shard_loader(TensorDataset(x, y), batch_size=4, seed=3, num_replicas=2, rank=t.replica,
                              drop_last=True)
        return t

    whole = model("hinton_mlp", negatives="random")
    trainer_for(whole).fit(loader, epochs=2, log=None)
    first = trainer_for(model("hinton_mlp", negatives="random"))
    first.fit(loader, epochs=1, out_dir=out / "run", log=None)
    dist.barrier()  # replica 0's files are written before anyone reads them
    torch.manual_seed(99)  # whatever the process did since: the checkpoint's state is what counts
    again_net = model("hinton_mlp", negatives="random")
    again = trainer_for(again_net)
    again.resume(out / "run" / "checkpoint.pt")
    again.fit(loader, epochs=2, log=None)
    save("resume", {"whole": state(whole), "resumed": state(again_net)})


if scenario == "all":
    equivalence("deeperforward_tinycnn", "auto") if "FFKIT_SKIP1" not in __import__("os").environ else None
    equivalence("deeperforward_resnet17", "layers")
    equivalence("hinton_mlp", "layers")
    equivalence("cwcomp_cnn", "auto", "syncbn", sync_batchnorm=True)
    equivalence("cwcomp_cnn", "layers", "plainbn")
    resume()
elif scenario == "leave":
    net = model("deeperforward_tinycnn")
    x, y = data(3, n=64)
    trainer = PipelineTrainer(net, backend="distributed", data_parallel=2, balance="layers", lr=0.01,
                              schedule="constant", timeout=5)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    if rank == 3:
        from ffkit.train.pipelining import stage

        real_step = stage.Stage.step

        def leave(self, *a, **k):
            result = real_step(self, *a, **k)
            dist.destroy_process_group()
            sys.exit(0)
            return result

        stage.Stage.step = leave
    start = time.perf_counter()
    try:
        trainer.train_epoch(loader)
        error = None
    except PipelineError as e:
        error = str(e)
    torch.save({"error": error, "seconds": time.perf_counter() - start}, out / f"leave.rank{rank}.pt")
