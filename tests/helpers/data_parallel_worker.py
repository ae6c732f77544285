"""Run by tests under ``python -m torch.distributed.run``: DataParallelTrainer scenarios.

    python -m torch.distributed.run --nproc-per-node 2 tests/helpers/data_parallel_worker.py OUT_DIR SCENARIO

SCENARIO ``all`` runs, in one process group (a launch is most of a test's time), and writes
``OUT_DIR/<name>.rank<r>.pt``:

* ``equiv-<model>``: five Adam steps in float64, each rank on its half of every global batch of 16 (rank 0 the first
  8 samples); the weights after them (the test compares them with LocalTrainer on the whole batches).
* ``resume-<model>``: two epochs of ``fit`` uninterrupted, and one epoch, then a resume into a fresh trainer for the
  second; both final weights (random negatives and dropout: the ranks' random streams must be drawn again alike).
* ``nan``: rank 1's second batch holds a NaN; the error each rank got.
* ``eval``: evaluation and SIP with the batches shared by the ranks, and the same in one process on every batch.

SCENARIO ``leave``: rank 1 leaves after the first step; rank 0's error and how long it took to come.
"""

import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit.models import create_model
from ffkit.train import DataParallelTrainer, PipelineError, init_distributed, shard_loader

torch.set_num_threads(1)
out, scenario = Path(sys.argv[1]), sys.argv[2]
rank, world = init_distributed(timeout=30)


def model(name, **kw):
    torch.manual_seed(rank)  # different on each rank: the trainer must broadcast rank 0's start
    if name == "hinton_mlp":
        return create_model(name, width_multiplier=0.1, **{"negatives": "fixed", **kw})
    return create_model(name, width_multiplier=0.1, in_channels=3, **{"dropout": 0.0, **kw})


def data(c, n=80, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def save(name, obj):
    torch.save(obj, out / f"{name}.rank{rank}.pt")


def equivalence(name):
    net = model(name).double()  # float64: a comparison of the exchange, not of the rounding of two conv orders
    x, y = data(net.in_channels)
    x = x.double()
    trainer = DataParallelTrainer(net, lr=0.01, schedule="constant")
    half = 16 // world
    for b in range(5):
        lo = b * 16 + rank * half
        trainer.train_step(x[lo : lo + half], y[lo : lo + half], torch.arange(lo, lo + half))
    save(f"equiv-{name}", {"weights": state(net), "exposed": trainer.gradients.exposed_seconds,
                           "bytes": trainer.gradients.launched_bytes})


def resume(name, **kw):
    x, y = data(model(name).in_channels, n=48)
    loader = shard_loader(TensorDataset(x, y), batch_size=8, seed=3)
    plan = {"lr": 0.01, "total_steps": 6}
    whole = model(name, **kw)
    DataParallelTrainer(whole, **plan).fit(loader, epochs=2, log=None)
    first = DataParallelTrainer(model(name, **kw), **plan)
    first.fit(loader, epochs=1, out_dir=out / f"run-{name}", log=None)
    torch.manual_seed(99)  # whatever the process did since: the checkpoint's state is what counts
    again_net = model(name, **kw)
    again = DataParallelTrainer(again_net, **plan)
    again.resume(out / f"run-{name}" / "checkpoint.pt")
    again.fit(loader, epochs=2, log=None)
    save(f"resume-{name}", {"whole": state(whole), "resumed": state(again_net)})


def nan():
    net = model("deeperforward_tinycnn")
    x, y = data(3, n=32)
    if rank == 1:
        x[12] = float("nan")
    trainer = DataParallelTrainer(net, lr=0.01, schedule="constant")
    before = None
    try:
        for b in range(2):
            before = state(net)
            lo = b * 16 + rank * 8
            trainer.train_step(x[lo : lo + 8], y[lo : lo + 8])
        error = None
    except ffkit.DivergenceError as e:
        error = str(e)
    save("nan", {"error": error, "unchanged": all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())})


def evaluation():
    net = model("deeperforward_tinycnn")
    x, y = data(3, n=56)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 7 batches: 4 on rank 0, 3 on rank 1
    trainer = DataParallelTrainer(net, lr=0.01, schedule="constant")
    trainer.train_step(x[rank * 8 : rank * 8 + 8], y[rank * 8 : rank * 8 + 8])
    shared = trainer.evaluate(loader).to_dict()
    sip = trainer.select_layers(loader)
    alone = ffkit.LocalTrainer(net, schedule="constant").evaluate(loader).to_dict()
    save("eval", {"shared": shared, "alone": alone, "sip": (sip.start, sip.end, sip.accuracy)})


if scenario == "all":
    for name in ("deeperforward_tinycnn", "deeperforward_resnet17", "hinton_mlp"):
        equivalence(name)
    resume("hinton_mlp", negatives="random")
    resume("deeperforward_tinycnn", dropout=0.3)
    nan()
    evaluation()
elif scenario == "leave":
    net = model("deeperforward_tinycnn")
    x, y = data(3, n=32)
    trainer = DataParallelTrainer(net, lr=0.01, schedule="constant", timeout=5)
    trainer.train_step(x[rank * 8 : rank * 8 + 8], y[rank * 8 : rank * 8 + 8])
    if rank == 1:
        torch.distributed.destroy_process_group()
        sys.exit(0)
    start = time.perf_counter()
    try:
        trainer.train_step(x[16:24], y[16:24])
        error = None
    except PipelineError as e:
        error = str(e)
    save("leave", {"error": error, "seconds": time.perf_counter() - start})
