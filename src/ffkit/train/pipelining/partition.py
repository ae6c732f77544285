"""How a network is cut into pipeline stages: how many, and which layers two stages may share (by samples or by
units). Where to cut is :mod:`ffkit.train.balance`'s."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...network import FFNetwork
from ...objectives import PosNegObjective

__all__ = ["count_stages", "shareable_layers", "share_mode"]


def count_stages(stages: int | str | Sequence[int], n_layers: int) -> int:
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
