"""Run ``ffkit train`` in this process and signal it at a chosen point (tests/test_kill_resume.py).

``KILL_AT=POINT:N`` picks the N-th time this process reaches POINT:

- ``step``: a training step has updated the weights, before the checkpoint that may follow it;
- ``save-partial``: a checkpoint is being written: half its bytes are on disk (in the temporary file);
- ``save-before-rename``: a checkpoint's temporary file is complete and synced, not yet renamed over the old one;
- ``eval``: the epoch's training pass is done and its evaluation has started;
- ``metrics``: the epoch-end checkpoint is written, the metrics files are not;
- ``load``: a dataset split is about to be read (before training).

``KILL_SIGNAL=TERM`` or ``INT`` sends SIGTERM or SIGINT (Ctrl-C) there instead of SIGKILL. Without ``KILL_AT`` the run
is not interrupted. ``REPORT_STEPS=1`` prints ``step N`` (this process's N-th training step) on stdout after each
step, so a test can kill the run from outside at a point of its progress rather than of the clock. The remaining
arguments are ``ffkit train``'s.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import ffkit.data as data
import ffkit.train.base as base
import ffkit.train.checkpoint as ckpt
from ffkit.cli import main
from ffkit.train.local import LocalTrainer

point, _, count = os.environ.get("KILL_AT", "").partition(":")
reached: dict[str, int] = {}


def reach(name: str) -> None:
    reached[name] = reached.get(name, 0) + 1
    if name == point and reached[name] == int(count):
        sys.stdout.flush()
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("KILL_SIGNAL", "KILL")))


local_step = LocalTrainer.train_step


report = os.environ.get("REPORT_STEPS") == "1"


def step(self, *args, **kwargs):
    out = local_step(self, *args, **kwargs)
    reach("step")
    if report:
        print(f"step {reached['step']}", flush=True)
    return out


LocalTrainer.train_step = step

real_save = ckpt.torch.save


def save(obj, f, *args, **kwargs):
    if point == "save-partial" and reached.get("save-partial", 0) + 1 == int(count):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    reach("save-partial")
    real_save(obj, f, *args, **kwargs)


ckpt.torch.save = save

real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("checkpoint.pt"):
        reach("save-before-rename")
    return real_replace(src, dst, *args, **kwargs)


ckpt.os.replace = replace

real_evaluate = base.Trainer.evaluate


def evaluate(self, *args, **kwargs):
    reach("eval")
    return real_evaluate(self, *args, **kwargs)


base.Trainer.evaluate = evaluate

real_metrics = base.write_metrics


def write_metrics(*args, **kwargs):
    reach("metrics")
    return real_metrics(*args, **kwargs)


base.write_metrics = write_metrics

real_load = data.load_dataset


def load_dataset(*args, **kwargs):
    reach("load")
    return real_load(*args, **kwargs)


data.load_dataset = load_dataset

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
