"""The Trifecta's conv layer (Dooms et al., "The Trifecta: Three simple techniques for training deeper
Forward-Forward networks"): BatchNorm before the layer, conv, ReLU, optional max-pool; goodness = mean of squares."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import goodness as _goodness
from .._validation import check_positive_int
from .base import FFLayer, LayerOutput

__all__ = ["TrifectaConv"]


class TrifectaConv(FFLayer):
    """``x -> BatchNorm -> conv (bias-free) -> ReLU -> [max-pool 2]``; goodness = mean of squares of the output.

    Normalising the *input* (rather than the output) removes the previous layer's goodness from what this layer
    sees, which is The Trifecta's replacement for Hinton's length normalisation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: conv kernel (padding ``kernel_size // 2``).
        maxpool: apply 2x2 max-pooling after the ReLU.

    Shape:
        ``x [B, C_in, H, W] -> LayerOutput(features [B, C_out, H', W'], goodness [B])``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, maxpool: bool = False) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)):
            check_positive_int(v, name)
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.maxpool = maxpool

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        h = F.relu(self.conv(self.norm(x)))
        if self.maxpool:
            h = F.max_pool2d(h, 2)
        return LayerOutput(features=h, goodness=_goodness.squared(h, reduction="mean"))
