"""How a network is cut into pipeline stages: how many, and which layers two stages may share (by samples or by
units). Where to cut is :mod:`ffkit.train.balance`'s."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...network import FFNetwork
from ...objectives import PosNegObjective

__all__ = ["parse_stages", "count_stages", "resolve_stages", "shareable_layers", "share_mode"]


def parse_stages(text: str) -> int | str | tuple[float, ...]:
    """The command line's ``--stages``: ``"N"`` (an int), ``"per-layer"``, or the stages' first layers (``"0,3"``;
    ``"0,1.6"`` shares layer 1, the first stage taking 60 % of each batch's samples through it)."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    if value == "per-layer":
        return value
    try:
        return tuple(int(v) if v.strip().isdigit() else float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--stages must be N, 'per-layer' or first layers like 0,3; got {text!r}") from None


def count_stages(stages: int | str | Sequence[float], n_layers: int) -> int:
    """The number of stages ``stages`` asks for: an int, ``"per-layer"`` (one per layer), or first layers."""
    if isinstance(stages, str):
        if stages != "per-layer":
            raise ValueError(f"stages must be an int, 'per-layer' or a sequence of first layers, got {stages!r}")
        return n_layers
    if isinstance(stages, bool):
        raise TypeError("stages must be an int or a sequence of stage start indices, got a bool")
    if isinstance(stages, int):
        if not 1 <= stages <= n_layers:
            raise ValueError(f"stages must be between 1 and the number of layers ({n_layers}), got {stages}")
        return stages
    return len(tuple(stages))


def resolve_stages(
    stages: int | str | Sequence[float], network: FFNetwork, *, backend: str, world: int = 1
) -> tuple[int, tuple[float, ...] | None]:
    """Check ``stages`` against the network and the backend, once: ``(number of stages, first layers or None)``.

    An int or ``"per-layer"`` leaves the cuts to the balancer (a distributed pipeline has ``world`` stages, one per
    process); first layers are checked as a split (:func:`~ffkit.train.balance.check_split`), must give one stage per
    process, and may share a layer (a non-integer start) only where the layer can be split by samples or units and
    only between processes (``backend="distributed"``)."""
    from ..balance import check_split, shared_layers

    n_stages = world if backend == "distributed" else count_stages(stages, len(network))
    if isinstance(stages, (int, str)):
        return n_stages, None
    starts = check_split(tuple(stages), len(network), shared=True)
    if len(starts) != n_stages:
        raise ValueError(f"stages gives {len(starts)} stages, but there are {n_stages} processes/devices")
    bad = [j for j in shared_layers(starts) if not shareable_layers(network)[j]]
    if bad:
        raise ValueError(f"stages {starts} shares layers {bad}, which cannot be split by samples (they hold BatchNorm, "
                         "or the objective's layer loss is not a mean over samples)")
    if backend != "distributed" and shared_layers(starts):
        raise ValueError(f"stages {starts} shares a layer between stages, which needs backend='distributed'; give "
                         "whole layers (integer starts) with threads")
    return n_stages, starts


def shareable_layers(network: FFNetwork) -> list[bool]:
    """Which layers two stages may share: split by units (:func:`share_mode`), or by samples when the layer has no
    batch statistics and the layer loss is a mean over samples (the built-in objectives; a custom one says so with
    ``batch_separable = True``)."""
    separable = network.objective.batch_separable
    return [not layer.batch_coupled and (share_mode(network, j) == "units" or (
        separable and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in layer.modules())))
        for j, layer in enumerate(network.layers)]


def share_mode(network: FFNetwork, j: int) -> str:
    """``"units"`` for a layer that can be cut into unit shards whose goodness values sum to the layer's
    (``split_units``, e.g. :class:`~ffkit.layers.FFLinear`) under a goodness objective, with no shortcut in;
    otherwise ``"samples"``. Units cost one exchange of ``[r * B]`` goodness values per batch instead of the
    layer's gradient."""
    layer = network.layers[j]
    if layer.unit_shardable and isinstance(network.objective, PosNegObjective) and j not in network.shortcuts:
        return "units"
    return "samples"
