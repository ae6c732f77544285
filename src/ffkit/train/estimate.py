"""How long a run will take, said early: an estimate from the first batches' speed and one after each epoch.

A CPU epoch of a paper's network takes minutes and a paper's recipe hours; a user should learn that from the first
seconds of a run, not from the last line of output.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RunEstimate", "format_duration"]


def format_duration(seconds: float) -> str:
    """``seconds`` as a person reads a wait: ``"40 s"``, ``"6.2 min"``, ``"14.5 h"``, ``"3.1 days"``."""
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"seconds must be a non-negative number, got {seconds!r}")
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class RunEstimate:
    """Logs, once, how long the training of a run will take, timed over its first batches.

    The first batch is not timed (it pays for the loader's start and the first allocations); the estimate is made
    once ``max(10, 5%)`` of an epoch's batches have been timed after it, and only if the epoch has at least one
    batch left then (a shorter epoch has nothing to wait for).

    Args:
        log: where the line goes (``Trainer.fit``'s ``log``).
        epochs: the epochs still to train, counting the one in progress.
    """

    def __init__(self, log: Callable[[str], None], epochs: int) -> None:
        self.log = log
        self.epochs = epochs
        self.done = False
        self._start: float | None = None
        self._timed = 0
        self._images = 0

    def batch_done(self, batches: int, total: int | None, batch_size: int) -> None:
        """Called after each batch: ``batches`` of the epoch's ``total`` are done (``None``: unknown length)."""
        if self.done:
            return
        now = time.perf_counter()
        if self._start is None:
            self._start = now
            return
        self._timed += 1
        self._images += batch_size
        wanted = max(10, (total or 0) // 20)
        if self._timed < wanted:
            return
        self.done = True
        if total is None or batches >= total:
            return
        per_batch = (now - self._start) / self._timed
        left = (total - batches + (self.epochs - 1) * total) * per_batch
        whole = f"the {self.epochs} epochs need" if self.epochs > 1 else "this epoch needs"
        self.log(
            f"speed over the first {batches} batches: {self._images / (now - self._start):.0f} img/s, so about "
            f"{format_duration(total * per_batch)} per epoch of training; {whole} about "
            f"{format_duration(left)} more, plus each epoch's evaluation"
        )

    def epoch_done(self, train_seconds: float, eval_seconds: float, epochs_left: int) -> None:
        """After an epoch: log what the remaining ``epochs_left`` epochs will take at this epoch's pace."""
        if epochs_left < 1:
            return
        per_epoch = train_seconds + eval_seconds
        self.log(
            f"  this epoch: {format_duration(train_seconds)} of training, {format_duration(eval_seconds)} of "
            f"evaluation; the remaining {epochs_left} epoch{'s need' if epochs_left > 1 else ' needs'} about "
            f"{format_duration(epochs_left * per_epoch)}"
        )
