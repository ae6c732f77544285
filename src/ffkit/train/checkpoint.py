"""Checkpoints written atomically: a crash while saving leaves the previous checkpoint intact."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__

__all__ = ["CHECKPOINT_FORMAT", "CheckpointVersionWarning", "save_checkpoint", "load_checkpoint", "nonfinite_entries",
           "check_finite_state"]

#: Bumped when the layout of the checkpoint dictionary changes incompatibly.
CHECKPOINT_FORMAT = 1


class CheckpointVersionWarning(UserWarning):
    """A checkpoint written by another ffkit version (with a checkpoint format this version reads) was loaded."""


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` with ``torch.save`` to a temporary file in the same directory, fsync it, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so a reader sees either the old or the new file, never half.
    Temporary files that a process killed while saving to the same ``path`` left behind are removed.
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
    # A process killed while writing leaves its temporary file behind (never the checkpoint): clear such leftovers.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


# What checkpoints written before the random state was stored as tensors hold besides tensors and builtins: NumPy's
# generator key (a uint32 array). Rebuilding an array runs no code of the file's choosing.
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
_LEGACY_SAFE_GLOBALS: list[Any] = [np.ndarray, np.dtype, _reconstruct]
if hasattr(np, "dtypes"):  # NumPy >= 1.25 pickles a dtype through its class
    _LEGACY_SAFE_GLOBALS.append(np.dtypes.UInt32DType)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an ffkit checkpoint, with clear errors for a missing, truncated, foreign or unsafe file.

    Loading never runs code from the file: it unpickles with ``torch.load(weights_only=True)``, which admits only
    tensors, builtin containers and numbers (and the NumPy arrays of earlier checkpoints), and refuses any other
    object with a ``ValueError`` that names it.

    Compatibility follows ``ffkit_checkpoint_format``, not the ffkit version: a checkpoint of this format loads
    whichever ffkit version wrote it (a :class:`CheckpointVersionWarning` names both versions when they differ);
    one of a newer format is refused with a ``ValueError`` that says to upgrade ffkit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        with torch.serialization.safe_globals(_LEGACY_SAFE_GLOBALS):
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as e:
        raise ValueError(f"cannot read checkpoint {path}: {e.strerror}") from None
    # A truncated zip makes torch's reader fail with OSError (EINVAL) as well as with the errors below.
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        refused = _refused_global(str(e))
        if refused is not None:
            raise ValueError(
                f"{path} holds a Python object ffkit does not load ({refused}); loading a checkpoint never runs code "
                f"from the file, so only tensors, numbers, strings and containers are read. Files written by "
                f"'ffkit train' or Trainer.save hold nothing else: this one was written by other code, or tampered with"
            ) from None
        detail = _load_error_detail(str(e))  # torch appends paragraphs of advice
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): {detail}") from None
    if not isinstance(payload, dict) or "ffkit_checkpoint_format" not in payload:
        hint = " (a bare state_dict? load it with network.load_state_dict(torch.load(path)))" if isinstance(
            payload, dict) else ""
        raise ValueError(f"{path} is not an ffkit checkpoint (no 'ffkit_checkpoint_format' key){hint}")
    fmt = payload["ffkit_checkpoint_format"]
    written_by = payload.get("ffkit_version")
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise ValueError(
            f"{path} has an invalid checkpoint format {fmt!r}; expected a positive int (this ffkit reads format "
            f"{CHECKPOINT_FORMAT})"
        )
    if fmt > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {fmt} (written by ffkit {written_by or '?'}), newer than this ffkit "
            f"{__version__} understands (format {CHECKPOINT_FORMAT}); upgrade ffkit"
        )
    if written_by is not None and written_by != __version__:
        warnings.warn(
            f"{path} was written by ffkit {written_by}, this is ffkit {__version__}; its checkpoint format "
            f"({fmt}) is one this version reads, so it is loaded",
            CheckpointVersionWarning,
            stacklevel=2,
        )
    return payload


def _refused_global(message: str) -> str | None:
    """The global (``module.name``) that ``torch.load(weights_only=True)`` refused to unpickle, from its message."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _load_error_detail(message: str) -> str:
    """The first sentence of a load error, without torch's paragraphs of advice; a byte that is no pickle opcode
    reads as ``pickle`` says it."""
    match = re.search(r"Unsupported operand (\d+)", message)
    if match:
        return f"invalid load key, {chr(int(match.group(1)))!r}."
    match = re.search(r"WeightsUnpickler error: \s*([^\n]+)", message)
    if match:
        return match.group(1).strip()
    return message.split(". ")[0]


def nonfinite_entries(state: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of a ``state_dict`` that hold a NaN or an infinity."""
    return [name for name, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite_state(state: dict[str, Any], source: str | os.PathLike) -> None:
    """Refuse a network state (``state_dict``) with non-finite values: training or evaluating it only spreads them.

    Raises:
        ValueError: naming ``source`` and the first tensors that hold a NaN or an infinity.
    """
    bad = nonfinite_entries(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"{source} holds non-finite weights (NaN or infinity) in {', '.join(bad[:3])}{more}: it was saved from a "
            f"diverged run; use an earlier checkpoint"
        )
