"""Checkpoints written atomically: a crash while saving leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint"]

#: Bumped when the layout of the checkpoint dictionary changes incompatibly.
CHECKPOINT_FORMAT = 1


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` with ``torch.save`` to a temporary file in the same directory, fsync it, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so a reader sees either the old or the new file, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an ffkit checkpoint, with clear errors for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(payload, dict) or "ffkit_checkpoint_format" not in payload:
        raise ValueError(f"{path} is not an ffkit checkpoint (no 'ffkit_checkpoint_format' key)")
    if payload["ffkit_checkpoint_format"] > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {payload['ffkit_checkpoint_format']}, newer than this ffkit "
            f"understands ({CHECKPOINT_FORMAT}); upgrade ffkit"
        )
    return payload
