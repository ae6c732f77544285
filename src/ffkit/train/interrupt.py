"""Stopping a run on request: Ctrl-C (SIGINT) and SIGTERM (what batch schedulers and ``kill`` send) end training at
the next step boundary with a resumable checkpoint, instead of losing the work since the last one."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["TrainingInterrupted", "StopRequest", "signal_name", "ignore_stop_signals"]


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal. ``checkpoint`` is the resumable checkpoint written before stopping (``None``
    if there is none); ``signum`` the signal."""

    def __init__(self, message: str, *, signum: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.signum, self.checkpoint = signum, checkpoint


class StopRequest:
    """While entered (in the main thread), SIGINT and SIGTERM are recorded in :attr:`signum` instead of stopping the
    process, so the training loop can finish its step, save and stop. A second Ctrl-C stops at once (the usual
    ``KeyboardInterrupt``). Outside the main thread, where Python cannot install handlers, it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the step
        self.signum = signum


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGINT and SIGTERM, which its trainer handles (PyTorch's
    workers watch their parent and exit with it)."""
    for s in StopRequest.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
