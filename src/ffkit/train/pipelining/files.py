"""Each pipeline stage's checkpoint file, kept with its predecessor so that stages one epoch apart can agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint, save_checkpoint

__all__ = ["stage_path", "save_stage", "stage_files"]


def stage_path(path: Path, k: int, n: int, previous: bool = False) -> Path:
    return path.with_name(f"{path.stem}.stage{k}-of-{n}{'.prev' if previous else ''}{path.suffix or '.pt'}")


def save_stage(state: dict[str, Any], path: Path, k: int, n: int) -> None:
    """Write stage ``k``'s file next to ``path`` atomically, keeping the one it replaces as its ``.prev`` file (see
    ``PipelineTrainer.resume``)."""
    current = stage_path(path, k, n)
    if current.exists():
        current.replace(stage_path(path, k, n, previous=True))
    save_checkpoint(state, current)


def stage_files(path: Path, k: int, n: int, how: str = "--stages {n}") -> dict[int, dict[str, Any]]:
    """Stage ``k``'s current and previous files next to ``path``, by the epoch each has finished. ``how``: what sets
    the number of stages ``n`` on the launcher's command line (``"torchrun --nproc-per-node {n}"`` for processes),
    for the error when the run was checkpointed with another count."""
    found: dict[int, dict[str, Any]] = {}
    for previous in (True, False):  # the current file wins if both say the same epoch
        file = stage_path(path, k, n, previous)
        if file.exists():
            payload = load_checkpoint(file, map_location="cpu")
            found[int(payload["epoch"])] = payload
    if not found:
        counts = sorted({int(m.group(1)) for f in path.parent.glob(f"{path.stem}.stage*-of-*")
                         if (m := re.search(r"-of-(\d+)", f.name))} - {n})
        if counts:
            raise FileNotFoundError(
                f"{path.parent} holds the stage checkpoints of a run with {counts[0]} stages "
                f"({path.stem}.stage<k>-of-{counts[0]}.pt), and this run has {n}: resume with "
                f"{how.format(n=counts[0])}, the count the run was checkpointed with"
            )
        raise FileNotFoundError(f"no checkpoint of pipeline stage {k} at {stage_path(path, k, n)}: a pipeline run "
                                f"writes one file per stage next to {path.name} (resume with the same number of "
                                f"stages: {how.format(n='N')} as before)")
    return found
