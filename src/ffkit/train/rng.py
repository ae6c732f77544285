"""Every random stream a training run draws from, captured and restored together (checkpoints, resume, profiling)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "held_generators"]


def held_generators(network: torch.nn.Module) -> list[torch.Generator]:
    """The ``torch.Generator`` objects held by the network's modules, or by plain objects they hold up to two levels
    down (an objective's negative-label sampler), which a training step may advance."""
    found: dict[int, torch.Generator] = {}

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, torch.Generator):
            found[id(value)] = value
        elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, (torch.nn.Module, torch.Tensor, type)):
            for v in vars(value).values():
                visit(v, depth - 1)

    for module in network.modules():
        for value in vars(module).values():
            visit(value, 2)
    return list(found.values())


def capture_rng(network: torch.nn.Module | None = None) -> dict[str, Any]:
    """The state of torch's CPU and CUDA generators, numpy's and Python's, and of every generator ``network`` holds
    (in :func:`held_generators` order)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": _numpy_state(),
        "python": random.getstate(),
        "held": [g.get_state() for g in held_generators(network)] if network is not None else [],
    }


def _numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    """NumPy's global generator state with its key as a tensor: a checkpoint then holds no NumPy object, so it loads
    with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from(state: Any) -> tuple[str, np.ndarray, int, int, float]:
    """What :func:`_numpy_state` returned (or NumPy's own tuple, which earlier checkpoints hold), for
    ``np.random.set_state``."""
    kind, keys, pos, has_gauss, cached = state
    if isinstance(keys, torch.Tensor):
        keys = keys.cpu().numpy()
    return kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)


def restore_rng(state: dict[str, Any], network: torch.nn.Module | None = None) -> None:
    """Restore what :func:`capture_rng` returned (missing entries, as in older checkpoints, are left alone).

    Raises:
        ValueError: the state holds a different number of network generators than ``network`` has.
    """
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if state.get("numpy") is not None:
        np.random.set_state(_numpy_state_from(state["numpy"]))
    if state.get("python") is not None:
        random.setstate(state["python"])
    held = state.get("held")
    if held and network is not None:
        gens = held_generators(network)
        if len(gens) != len(held):
            raise ValueError(
                f"the saved random state has {len(held)} network generator(s), this network holds {len(gens)}"
            )
        for g, s in zip(gens, held):
            g.set_state(s.cpu())
