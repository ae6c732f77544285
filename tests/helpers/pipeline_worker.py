"""Run by tests under ``python -m torch.distributed.run``: a small distributed pipeline, with optional faults.

    python -m torch.distributed.run --nproc-per-node 2 tests/helpers/pipeline_worker.py OUT.pt MODEL EPOCHS [FAULT]

FAULT (on rank 1, after its first batch): ``kill`` (SIGKILL itself), ``stall`` (sleep forever), ``raise``; or
``fit:DIR``: train with ``fit(out_dir=DIR)`` until EPOCHS epochs, resuming from DIR's checkpoints if they exist.
``FFKIT_TEST_FAULT=KIND:RANK:N`` injects a fault into a ``fit`` run: KIND ``kill``, ``stall`` or ``raise`` after
rank RANK's N-th step of this job, or ``kill-at-save`` when rank RANK is about to write its checkpoint of epoch N.
``FFKIT_TEST_STAGES`` (e.g. ``0,1.5``) gives the split; otherwise equal layer counts. ``FFKIT_TEST_DTYPE=float64``
builds the network and the data in float64.
Rank 0 writes the trained network's state_dict to OUT.pt.
"""

import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from ffkit.models import create_model
from ffkit.train.pipeline import PipelineTrainer, init_distributed

torch.set_num_threads(1)
if os.environ.get("FFKIT_TEST_DTYPE") == "float64":
    torch.set_default_dtype(torch.float64)
out, name, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
fault = sys.argv[4] if len(sys.argv) > 4 else None
timeout = float(os.environ.get("FFKIT_TEST_TIMEOUT", "20"))
rank, world = init_distributed(timeout=timeout)
torch.manual_seed(0)
net = create_model(name, width_multiplier=0.1, **({"in_channels": 3, "dropout": 0.0} if "mlp" not in name else {}))
g = torch.Generator().manual_seed(1)
x = torch.randn(48, net.in_channels, 32, 32, generator=g)
y = torch.randint(0, 10, (48,), generator=g)
loader = DataLoader(TensorDataset(x, y), batch_size=8, drop_last=True)
split = os.environ.get("FFKIT_TEST_STAGES")
stages = tuple(float(c) for c in split.split(",")) if split else 2
trainer = PipelineTrainer(net, backend="distributed", stages=stages, balance="layers", schedule="constant",
                          timeout=timeout)


def fail(kind):
    if kind.startswith("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "stall":
        time.sleep(3600)
    raise RuntimeError(f"injected failure in stage {rank}")


kind, fault_rank, after = "", -1, 1
if fault in ("kill", "stall", "raise"):
    kind, fault_rank = fault, 1
elif os.environ.get("FFKIT_TEST_FAULT"):
    kind, r, n = os.environ["FFKIT_TEST_FAULT"].split(":")
    fault_rank, after = int(r), int(n)
if rank == fault_rank and kind in ("kill", "stall", "raise"):
    from ffkit.train import pipeline

    real_step = pipeline.Stage.step
    steps = 0

    def faulty(self, *a, **k):
        global steps
        result = real_step(self, *a, **k)
        steps += 1
        if steps >= after:
            fail(kind)
        return result

    pipeline.Stage.step = faulty
elif rank == fault_rank and kind == "kill-at-save":
    from ffkit.train import pipeline

    real_save = pipeline.save_stage

    def dying_save(state, *args):
        if state["epoch"] >= after:
            fail(kind)
        real_save(state, *args)

    pipeline.save_stage = dying_save

if fault is not None and fault.startswith("fit:"):
    run_dir = fault[4:]
    if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
        trainer.resume(os.path.join(run_dir, "checkpoint.pt"))
    record = trainer.fit(loader, epochs=epochs, out_dir=run_dir, log=None)[-1]
else:
    for _ in range(epochs):
        record = trainer.train_epoch(loader)
    trainer.close()
if rank == 0:
    torch.save({"state": net.state_dict(), "record": record}, out)
dist.destroy_process_group()
