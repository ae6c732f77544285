"""What the multi-process engines (pipeline, federated, chapters) share: their device and timeout conventions."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """This process's device under torchrun: CUDA ``LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def check_timeout(timeout: object) -> float:
    """Seconds a rank waits for a peer: a positive number (not a bool)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def check_divergence_stop(trainer_options: dict, engine: str) -> None:
    """The multi-process engines stop on divergence; skipping a batch would need every stage or rank to agree."""
    action = trainer_options.get("on_divergence", "stop")
    if action != "stop":
        raise ValueError(f"{engine} supports on_divergence='stop' only (skipping a batch would need every stage or "
                         f"rank to drop it together), got on_divergence={action!r}")
