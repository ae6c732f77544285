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
        return LayerOutput(features=h, goodness=_goodness.squared(h, reduction=self.reduction))
