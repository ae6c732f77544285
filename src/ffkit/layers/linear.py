"""Hinton's Forward-Forward fully-connected layer (The Forward-Forward Algorithm, 2022, Sec. 2-3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import goodness as _goodness
from .._validation import check_positive_int
from .base import FFLayer, LayerOutput

__all__ = ["FFLinear"]


class FFLinear(FFLayer):
    """FF fully-connected layer: length-normalised input, linear, ReLU, squared goodness.

    The input is divided by its L2 length so that the previous layer's goodness (its length) cannot leak into this
    layer's decision; only the direction of the activity vector is passed on (Hinton 2022, Sec. 2).

    Args:
        in_features: input size ``D_in`` (images are flattened).
        out_features: number of units ``D``.
        goodness: ``"sum"`` (sum of squares, Hinton) or ``"mean"`` (mean of squares).
        eps: added to the length to avoid dividing by zero.

    Shape:
        ``x [B, D_in] or [B, C, H, W] -> LayerOutput(features [B, D], goodness [B])``.
    """

    _units_of_whole: int = 0  # set on a unit shard (split_units): the whole layer's unit count

    def __init__(self, in_features: int, out_features: int, *, goodness: str = "sum", eps: float = 1e-8) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            check_positive_int(v, name)
        if goodness not in ("sum", "mean"):
            raise ValueError(f"goodness must be 'sum' or 'mean', got {goodness!r}")
        self.linear = nn.Linear(in_features, out_features)
        self.reduction = goodness
        self.eps = eps

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        x = x.flatten(1)
        if x.shape[1] != self.linear.in_features:
            raise ValueError(f"FFLinear expects {self.linear.in_features} input features, got {x.shape[1]}")
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        h = F.relu(self.linear(x))
        g = _goodness.squared(h, reduction="sum")
        if self.reduction == "mean":
            g = g / self._goodness_units
        return LayerOutput(features=h, goodness=g)

    @property
    def num_units(self) -> int:
        """The layer's output units ``D`` (what :meth:`split_units` cuts)."""
        return self.linear.out_features

    @property
    def _goodness_units(self) -> int:
        # A unit shard divides by the whole layer's unit count, so the shards' goodness values sum to the layer's.
        return self._units_of_whole or self.linear.out_features

    def split_units(self, lo: int, hi: int) -> FFLinear:
        """A copy of units ``lo..hi-1`` (rows of the weight and bias): its features are those units' activities
        ``[B, hi - lo]`` and its goodness is their part of this layer's goodness, so the goodness values of shards
        that cover the layer sum to the layer's (a layer split between two pipeline stages by units)."""
        n = self.linear.out_features
        if not 0 <= lo < hi <= n:
            raise ValueError(f"units must satisfy 0 <= lo < hi <= {n}, got {lo}..{hi}")
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: leave the RNG untouched
            shard = FFLinear(self.linear.in_features, hi - lo, goodness=self.reduction, eps=self.eps)
        shard._units_of_whole = n
        shard.to(device=self.linear.weight.device, dtype=self.linear.weight.dtype)
        shard.pull_units(self, lo)
        return shard

    @torch.no_grad()
    def pull_units(self, whole: FFLinear, lo: int) -> None:
        """Copy ``whole``'s units ``lo..lo + n - 1`` into this shard's parameters (in place)."""
        n = self.linear.out_features
        self.linear.weight.copy_(whole.linear.weight[lo : lo + n])
        self.linear.bias.copy_(whole.linear.bias[lo : lo + n])

    @torch.no_grad()
    def push_units(self, whole: FFLinear, lo: int) -> None:
        """Copy this shard's parameters into ``whole``'s units ``lo..lo + n - 1``."""
        n = self.linear.out_features
        whole.linear.weight[lo : lo + n].copy_(self.linear.weight)
        whole.linear.bias[lo : lo + n].copy_(self.linear.bias)
