"""DeeperForward's channel-wise convolution with mean goodness (Sun et al., ICLR 2025, Sec. 3.1-3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import goodness as _goodness
from .._validation import check_positive_int
from .base import FFLayer, LayerOutput
from .residual import ParamFreeResidual

__all__ = ["CWConv"]


class CWConv(FFLayer):
    """Channel-wise conv layer: each class owns ``out_channels / num_classes`` consecutive channels.

    ``x -> [avg-pool by pool] -> conv -> [+ shortcut] -> ReLU -> dropout = h``;
    class scores ``s = goodness.mean(h, groups=num_classes)`` (Eq. 8, ``[B, K]``);
    features passed on ``GroupNorm(h, num_classes groups, no affine)`` (Eq. 9).

    Args:
        in_channels: input channels.
        out_channels: output channels; must be a multiple of ``num_classes``.
        num_classes: ``K``.
        kernel_size: conv kernel size (square). Padding defaults to ``kernel_size // 2`` (size-preserving for odd
            kernels).
        stride: conv stride (DeeperForward's ResNet opens stages with stride 2).
        padding: conv padding; ``None`` for ``kernel_size // 2``.
        pool: average-pool the input by this factor before the conv (1: none). DeeperForward downsamples this way.
        dropout: dropout probability after the ReLU.
        shortcut_channels: channels of a residual shortcut from an earlier layer (``None``: no shortcut). With
            shortcut channels equal to ``out_channels`` it is added, otherwise concatenated
            (:class:`ParamFreeResidual`).

    Shape:
        ``x [B, C_in, H, W] -> LayerOutput(features [B, C_out, H', W'], scores [B, K], goodness [B])``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        pool: int = 1,
        dropout: float = 0.0,
        shortcut_channels: int | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("num_classes", num_classes),
                        ("kernel_size", kernel_size), ("stride", stride), ("pool", pool)):
            check_positive_int(v, name)
        if out_channels % num_classes:
            raise ValueError(
                f"out_channels ({out_channels}) must be a multiple of num_classes ({num_classes}): "
                f"each class owns out_channels / num_classes channels (e.g. use "
                f"{(out_channels // num_classes + 1) * num_classes})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.pool = pool
        self.residual = (
            ParamFreeResidual(shortcut_channels, out_channels, groups=num_classes)
            if shortcut_channels is not None
            else None
        )
        self.accepts_shortcut = self.residual is not None
        conv_out = self.residual.conv_channels if self.residual is not None else out_channels
        self.conv = nn.Conv2d(
            in_channels,
            conv_out,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if padding is None else padding,
            bias=False,
        )
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        z = self.conv(x)
        if self.residual is not None:
            if shortcut is None:
                raise ValueError("this CWConv was built with shortcut_channels but received no shortcut")
            z = self.residual(z, shortcut)
        h = self.dropout(F.relu(z))
        scores = _goodness.mean(h, groups=self.num_classes)
        features = F.group_norm(h, self.num_classes)
        # The groups are equal in size, so the mean of the class scores is the layer's overall mean goodness
        # (Eq. 5): it lets a CW-Conv backbone train with a positive/negative loss such as SymBa too.
        return LayerOutput(features=features, scores=scores, goodness=scores.mean(dim=1))
