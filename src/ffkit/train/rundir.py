"""One training process per run directory: an advisory lock taken before the first step, which also proves the
directory can be written."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO

__all__ = ["RunDirLock", "claim_run_dir"]

LOCK_NAME = ".ffkit-train.lock"


class RunDirLock:
    """An exclusive ``flock`` on ``<run dir>/.ffkit-train.lock``, held until :meth:`release` or the process ends (the
    kernel drops it then, even after a crash or SIGKILL, so a stale lock never blocks a later run)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path, self._handle = path, handle

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing the file drops the flock


def claim_run_dir(directory: str | os.PathLike) -> RunDirLock:
    """Create ``directory`` if needed and lock it for this process.

    Raises:
        ValueError: ``directory`` is a file, cannot be created or written, or another process holds its lock (the
            message names that process's pid, which it wrote into the lock file).
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a directory: give a directory for the run's checkpoint and "
                         f"metrics")
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = open(path / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the run's lifetime
    except OSError as e:
        raise ValueError(f"cannot write to --out {path}: {e.strerror or e}") from None
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): the directory is checked, not locked
        return RunDirLock(path, handle)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            handle.close()
            raise ValueError(f"cannot lock --out {path}: {e.strerror or e}") from None
        handle.seek(0)
        other = handle.read().strip() or "?"
        handle.close()
        raise ValueError(
            f"another ffkit train (pid {other}) is writing to --out {path}; two runs in one directory would overwrite "
            f"each other's checkpoints: wait for it to finish, or give this run another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return RunDirLock(path, handle)
