"""Launching two-process test jobs with PyTorch's own launcher (torch.distributed.run), gloo on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the rendezvous port of one job)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: float = 120, env_extra: dict[str, str] | None = None, procs: int = 2):
    """Run ``python -m torch.distributed.run --nproc-per-node PROCS ARGS...`` (``ARGS``: a script and its arguments,
    or ``-m module ...``) with one thread per process; a hung job is killed after ``timeout`` seconds.

    Returns ``(CompletedProcess, seconds)``.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - start
