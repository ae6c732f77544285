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

SCENARIO ``options`` (``sync_batchnorm`` and ``shard_parameters``) writes:

* ``bn``: ffkit's SyncBatchNorm on this rank's half of a batch: output, input gradient, weight and bias gradients,
  running statistics (the test compares them with one ``nn.BatchNorm2d`` on the whole batch).
* ``syncbn-<model>``: as ``equiv-<model>`` with ``sync_batchnorm=True`` (and with it off: ``plain``); weights and
  BatchNorm statistics. ``both-cwcomp_cnn``: ``sync_batchnorm`` and ``shard_parameters`` together.
* ``shard-<model>``: as ``equiv-<model>`` with ``shard_parameters=True`` (DTG's VGG8, whose head has a BatchNorm,
  with ``sync_batchnorm`` too): the gathered weights, each sharded
  parameter's whole and local sizes, the bytes held per rank with and without sharding.
* ``shard-resume``: one epoch of ``fit`` into a run directory, then a resume into a fresh sharded trainer for the
  second; the uninterrupted weights; the gathered weights after the first epoch (the checkpoint's).
* ``shard-eval``: the sharded evaluation (batches shared by the ranks) and one process's on the gathered weights.
* ``shard-undo``: a StepUndo over sharded optimizers taken before a step and restored after it.
"""

import sys
import time
from pathlib import Path

import torch
from replicas import global_batches, small_model  # this script's folder, tests/helpers, is on sys.path
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit.train import DataParallelTrainer, PipelineError, init_distributed, shard_loader

torch.set_num_threads(1)
out, scenario = Path(sys.argv[1]), sys.argv[2]
rank, world = init_distributed(timeout=30)


def model(name, **kw):
    return small_model(name, seed=rank, **kw)  # another start on each rank: the trainer must broadcast rank 0's


def data(c, n=80, seed=1):
    return global_batches(c, n, seed)


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


def full_weights(trainer):
    """The whole state_dict (a collective with sharded parameters)."""
    from ffkit.train.sharding import full_network_state

    return {k: v.detach().clone() for k, v in full_network_state(trainer.network).items()}


def option_model(name):
    return model(name)


def steps(name, **options):
    """Five Adam steps in float64 on this rank's half of each global batch of 16; the trainer."""
    net = option_model(name).double()
    x, y = data(net.in_channels)
    x = x.double()
    trainer = DataParallelTrainer(net, lr=0.01, schedule="constant", **options)
    half = 16 // world
    for b in range(5):
        lo = b * 16 + rank * half
        trainer.train_step(x[lo : lo + half], y[lo : lo + half], torch.arange(lo, lo + half))
    return trainer


def batchnorm_unit():
    from ffkit.train.sync_batchnorm import sync_batchnorm

    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64) * 3 + 1
    weights = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)  # the loss: sum(weights * out)
    bn = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    bn = sync_batchnorm(bn)
    mine = slice(rank * 3, rank * 3 + 3)
    xr = x[mine].clone().requires_grad_(True)
    out = bn(xr)
    (out * weights[mine]).sum().backward()
    save("bn", {"out": out.detach(), "x_grad": xr.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
                "running_mean": bn.running_mean, "running_var": bn.running_var, "type": type(bn).__name__})


def sync_bn(name):
    trainer = steps(name, sync_batchnorm=True)
    plain = steps(name)
    save(f"syncbn-{name}", {"weights": state(trainer.network), "plain": state(plain.network),
                            "types": sorted({type(m).__name__ for m in trainer.network.modules()})})


def shard(name):
    from ffkit.train.schedules import is_sharded
    from ffkit.train.sharding import local_bytes

    synced = name == "dtg_vgg8"  # its head's BatchNorm1d: the whole batch's statistics
    trainer = steps(name, shard_parameters=True, sync_batchnorm=synced)
    sizes = {k: (v.numel(), v.to_local().numel()) for k, v in trainer.network.named_parameters() if is_sharded(v)}
    unsharded = steps(name, sync_batchnorm=synced)
    save(f"shard-{name}", {"weights": full_weights(trainer), "sizes": sizes,
                           "bytes": local_bytes(trainer.network, trainer.optimizers),
                           "bytes_unsharded": local_bytes(unsharded.network, unsharded.optimizers),
                           "exchanged": trainer.gradients.launched_bytes})


def both():
    trainer = steps("cwcomp_cnn", sync_batchnorm=True, shard_parameters=True)
    save("both-cwcomp_cnn", {"weights": full_weights(trainer)})


def shard_resume():
    name = "deeperforward_tinycnn"
    x, y = data(3, n=48)
    loader = shard_loader(TensorDataset(x, y), batch_size=8, seed=3)
    plan = {"lr": 0.01, "total_steps": 6, "shard_parameters": True}
    whole = DataParallelTrainer(option_model(name), **plan)
    whole.fit(loader, epochs=2, log=None)
    first = DataParallelTrainer(option_model(name), **plan)
    first.fit(loader, epochs=1, out_dir=out / "run-shard", log=None)
    after_first = full_weights(first)
    torch.manual_seed(99)
    again = DataParallelTrainer(option_model(name), **plan)
    again.resume(out / "run-shard" / "checkpoint.pt")
    again.fit(loader, epochs=2, log=None)
    save("shard-resume", {"whole": full_weights(whole), "resumed": full_weights(again), "first": after_first,
                          "checkpoint": str(out / "run-shard" / "checkpoint.pt")})


def shard_eval():
    net = option_model("deeperforward_tinycnn")
    x, y = data(3, n=56)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 7 batches: 4 on rank 0, 3 on rank 1
    trainer = DataParallelTrainer(net, lr=0.01, schedule="constant", shard_parameters=True)
    trainer.train_step(x[rank * 8 : rank * 8 + 8], y[rank * 8 : rank * 8 + 8])
    shared = trainer.evaluate(loader).to_dict()
    sip = trainer.select_layers(loader)
    again = trainer.evaluate(loader).to_dict()  # resharded after the first: a second evaluation works alike
    copy = option_model("deeperforward_tinycnn")
    copy.load_state_dict(full_weights(trainer))
    alone = ffkit.LocalTrainer(copy, schedule="constant").evaluate(loader).to_dict()
    resharded = all(p.to_local().numel() < p.numel() for layer in net.layers for p in layer.parameters())
    save("shard-eval", {"shared": shared, "alone": alone, "again": again, "sip": (sip.start, sip.end),
                        "resharded": resharded})


def shard_undo():
    from ffkit.train.undo import StepUndo

    trainer = steps("hinton_mlp", shard_parameters=True)
    before = full_weights(trainer)
    moments = [{k: v.full_tensor() for k, v in s.items() if k != "step"}
               for o in trainer.optimizers for s in o.state.values()]
    trainer.inner.step_undo = undo = StepUndo()
    x, y = data(1, n=16)
    mine = slice(rank * 8, rank * 8 + 8)
    trainer.train_step(x[mine].double(), y[mine], torch.arange(16)[mine])
    moved = not torch.equal(full_weights(trainer)["layers.0.linear.weight"], before["layers.0.linear.weight"])
    restored = undo.restore(trainer.optimizers)
    after = full_weights(trainer)
    moments_after = [{k: v.full_tensor() for k, v in s.items() if k != "step"}
                     for o in trainer.optimizers for s in o.state.values()]
    exact = all(torch.equal(after[k], v) for k, v in before.items()) and all(
        torch.equal(a[k], b[k]) for a, b in zip(moments_after, moments) for k in a)
    save("shard-undo", {"moved": moved, "restored": restored, "exact": exact})


if scenario == "options":
    batchnorm_unit()
    for name in ("cwcomp_cnn", "trifecta_shallow", "dtg_vgg8"):
        sync_bn(name)
    for name in ("deeperforward_tinycnn", "hinton_mlp", "dtg_vgg8"):
        shard(name)
    both()
    shard_resume()
    shard_eval()
    shard_undo()
elif scenario == "all":
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
