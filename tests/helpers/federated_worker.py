"""Run by tests under ``python -m torch.distributed.run``: FederatedTrainer scenarios on shards of a small data set.

    python -m torch.distributed.run --nproc-per-node 2 tests/helpers/federated_worker.py OUT_DIR SCENARIO

SCENARIO ``all`` runs, in one process group (one launch is most of a test's time), and every rank writes
``OUT_DIR/<name>.rank<r>.pt``:

* ``one_step``: one step with ``sync_every=1`` from different seeds (the initial broadcast makes them equal); saves the
  batch this rank used and the averaged parameters.
* ``fit``: two epochs of ``fit`` with plain SGD, ``sync_every=1``, checkpoint in ``OUT_DIR/fit``; then every rank
  resumes that checkpoint into a fresh network.
* ``sync2``: one epoch of three steps with ``sync_every=2``, with the parameters after every step.
* ``bn``: one step of a BatchNorm network (The Trifecta's), ``sync_every=1``: running statistics are averaged too.
* ``mismatch``: rank 1's loader has fewer batches; saves the error message each rank got.

SCENARIO ``stall`` / ``leave``: after its first local step rank 1 sleeps (``leave``: after closing its process group),
so rank 0's first average times out (2 s) or loses its peer.
"""

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

from ffkit.models import create_model
from ffkit.train.federated import FederatedTrainer, shard_loader
from ffkit.train.pipeline import init_distributed

torch.set_num_threads(1)
out, scenario = Path(sys.argv[1]), sys.argv[2]
rank, world = init_distributed(timeout=20)


def model(name="deeperforward_tinycnn", **kw):
    torch.manual_seed(rank)  # different on each rank: the trainer must broadcast rank 0's start
    extra = {"dropout": 0.0} if name.startswith("deeperforward") else {}
    return create_model(name, width_multiplier=0.1, in_channels=3, **extra, **kw)


def data(n=48):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))


def state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def save(name, payload):
    torch.save(payload, out / f"{name}.rank{rank}.pt")


def one_step():
    net = model()
    trainer = FederatedTrainer(net, sync_every=1, schedule="constant", timeout=20)
    x, y = next(iter(shard_loader(data(), 8, seed=0)))
    res = trainer.train_step(x, y)
    save("one_step", {"x": x, "y": y, "state": state(net), "losses": res.losses, "syncs": trainer.syncs})


def fit():
    net = model()
    trainer = FederatedTrainer(net, sync_every=1, optimizer="sgd", lr=0.01, weight_decay=0.0, schedule="constant",
                               timeout=20)
    history = trainer.fit(shard_loader(data(), 8, seed=0), epochs=2, out_dir=out / "fit", log=None)
    dist.barrier()  # rank 0 has written the checkpoint
    again = FederatedTrainer(model(), sync_every=1, optimizer="sgd", lr=0.01, weight_decay=0.0,
                             schedule="constant", timeout=20)
    again.resume(out / "fit" / "checkpoint.pt")
    save("fit", {"state": state(net), "history": history, "step_count": trainer.step_count,
                 "resumed": state(again.network), "resumed_epoch": again.epoch,
                 "resumed_step_count": again.step_count})


def sync2():
    net = model()
    trainer = FederatedTrainer(net, sync_every=2, schedule="constant", timeout=20)
    steps = []
    real_step = trainer.train_step

    def spy(x, y, index=None):  # Trainer.train_epoch calls self.train_step: snapshot after each step
        result = real_step(x, y, index)
        steps.append(state(net))
        return result

    trainer.train_step = spy
    record = trainer.train_epoch(shard_loader(data(), 8, seed=0))
    save("sync2", {"steps": steps, "final": state(net), "record": record, "step_count": trainer.step_count,
                   "syncs": trainer.syncs})


def bn():
    net = model("trifecta_shallow")
    trainer = FederatedTrainer(net, sync_every=1, schedule="constant", timeout=20)
    x, y = next(iter(shard_loader(data(16), 8, seed=0)))
    trainer.train_step(x, y)
    save("bn", {"state": state(net)})


def mismatch():
    trainer = FederatedTrainer(model(), sync_every=1, schedule="constant", timeout=20)
    loader = shard_loader(data(48 if rank == 0 else 32), 8, seed=0, num_replicas=2, rank=rank)
    try:
        trainer.train_epoch(loader)
        message = None
    except ValueError as e:  # every rank raises, so nobody is left waiting
        message = str(e)
    save("mismatch", {"message": message, "step_count": trainer.step_count})


def fault(kind):
    trainer = FederatedTrainer(model(), sync_every=1, schedule="constant", timeout=2)
    if rank == 1:
        real_step = trainer.inner.train_step

        def faulty(*a, **k):
            real_step(*a, **k)
            if kind == "leave":  # closes its connections: rank 0's average fails at once
                dist.destroy_process_group()
            time.sleep(60)  # torchrun ends this process when rank 0 fails

        trainer.inner.train_step = faulty
    trainer.train_epoch(shard_loader(data(), 8, seed=0))


if scenario == "all":
    for run in (one_step, fit, sync2, bn, mismatch):
        run()
elif scenario in ("stall", "leave"):
    fault(scenario)
else:
    raise SystemExit(f"unknown scenario {scenario!r}")
dist.destroy_process_group()
