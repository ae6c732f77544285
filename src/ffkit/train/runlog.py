"""The run directory's record of training as it goes: ``metrics.jsonl`` and, optionally, TensorBoard event files.

``metrics.jsonl`` holds one JSON object per line, in the order they were made: a *step record* every ``log_every``
batches (``"kind": "step"``, see :meth:`~ffkit.train.Trainer.step_record`) and an *epoch record* at each epoch's end
(``"kind": "epoch"``: the ``metrics.json`` record of that epoch, :func:`~ffkit.train.base.metrics_record`, with the
training ``step`` it ended at). Numbers are rounded to 7 significant digits and layers are 1-based where a record
names them, as in ``metrics.json``. Each line is flushed when written, so ``tail -f RUN_DIR/metrics.jsonl`` follows a
run. A resumed run first drops the lines written after its checkpoint (:func:`truncate_records`), so its file ends
up as an uninterrupted run's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from .._files import write_text_atomic
from .._records import METRICS_JSONL, read_records
from .base import metrics_record, round_metric

__all__ = ["METRICS_JSONL", "TENSORBOARD_DIR", "RunLog", "check_tensorboard", "read_records", "truncate_records"]

#: The folder of the TensorBoard event files in a run directory (``fit(tensorboard=True)``, ``--tensorboard``).
TENSORBOARD_DIR = "tensorboard"

_TENSORBOARD_INSTALL = ('TensorBoard logging needs the tensorboard package, which is not installed: pip install '
                        'tensorboard (from an ffkit checkout: pip install -e ".[tensorboard]")')


def check_tensorboard() -> None:
    """Raise an ``ImportError`` that says how to install TensorBoard if ``torch.utils.tensorboard`` cannot load."""
    try:
        import torch.utils.tensorboard  # noqa: F401 - imports the tensorboard package
    except ImportError as err:  # torch raises one that does not name ffkit's extra
        raise ImportError(_TENSORBOARD_INSTALL) from err


def truncate_records(path: str | Path, step: int, epoch: int) -> None:
    """Keep the records of ``path`` made up to a checkpoint taken after training step ``step``, with ``epoch``
    epochs completed: step records with ``step <= step`` and epoch records with ``epoch <= epoch`` (atomically; a
    missing file stays missing)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_records(path)
            if (r.get("kind") == "epoch" and r.get("epoch", 0) <= epoch)
            or (r.get("kind") == "step" and r.get("step", 0) <= step)]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


class RunLog:
    """Writes a run's step and epoch records to ``out/metrics.jsonl`` and, with ``tensorboard``, as scalars to
    ``out/tensorboard/`` (:class:`torch.utils.tensorboard.SummaryWriter`).

    Opening it drops the records made after the trainer's position (``step`` steps and ``epoch`` epochs done), and
    TensorBoard's too (``purge_step``), so that a resumed run continues its curves where its checkpoint left them.

    TensorBoard's scalars, by tag (``N`` the 1-based layer; the x axis is the training step):

    * step records: ``train/loss/layer_N``, ``train/acc/layer_N``, ``train/goodness_pos/layer_N``,
      ``train/goodness_neg/layer_N``, ``train/lr``, ``train/images_per_s``, ``train/epoch`` (fractional);
    * epoch records: ``epoch/train_loss/layer_N``, ``epoch/train_acc/layer_N``, ``epoch/test_acc/layer_N``,
      ``epoch/test_accuracy`` (the network's prediction), ``epoch/lr``, ``epoch/images_per_s``.
    """

    def __init__(self, out: Path, *, step: int, epoch: int, tensorboard: bool = False) -> None:
        self.path = out / METRICS_JSONL
        truncate_records(self.path, step, epoch)
        # opened at the first record: a run stopped before it leaves no file (nor a run directory) behind
        self._file: IO[str] | None = None
        self._closed = False
        self._tb: Any = None
        if tensorboard:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides what an earlier process logged from this step on (a killed run's steps
            # after its checkpoint)
            self._tb = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=step + 1 if step > 0 else None)

    def _write(self, record: dict[str, Any]) -> None:
        if self._closed:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")  # noqa: SIM115 - held open while the run goes on
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def step(self, record: dict[str, Any]) -> None:
        """Write one step record (:meth:`~ffkit.train.Trainer.step_record`)."""
        self._write({"kind": "step", **round_metric(record)})
        if self._tb is None:
            return
        s = int(record["step"])
        for key, tag in (("train_loss", "loss"), ("train_acc", "acc"), ("train_goodness_pos", "goodness_pos"),
                         ("train_goodness_neg", "goodness_neg")):
            for i, v in enumerate(record.get(key) or ()):
                self._tb.add_scalar(f"train/{tag}/layer_{i + 1}", v, s)
        for key, tag in (("lr", "lr"), ("train_images_per_s", "images_per_s"), ("epoch", "epoch")):
            if record.get(key) is not None:
                self._tb.add_scalar(f"train/{tag}", record[key], s)
        self._tb.flush()

    def epoch(self, record: dict[str, Any], step: int) -> None:
        """Write one epoch record (as ``fit`` returns it), which ended at training step ``step``."""
        self._write({"kind": "epoch", "step": step, **metrics_record(record)})
        if self._tb is None:
            return
        test = record.get("test") or {}
        for key, values in (("train_loss", record.get("train_loss")), ("train_acc", record.get("train_acc")),
                            ("test_acc", test.get("per_layer"))):
            for i, v in enumerate(values or ()):
                self._tb.add_scalar(f"epoch/{key}/layer_{i + 1}", v, step)
        for tag, value in (("test_accuracy", test.get("prediction")), ("lr", record.get("lr")),
                           ("images_per_s", record.get("train_images_per_s"))):
            if value is not None:
                self._tb.add_scalar(f"epoch/{tag}", value, step)
        self._tb.flush()

    def close(self) -> None:
        """Close the file and the TensorBoard writer (idempotent)."""
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
