"""The Trifecta's layers (Dooms et al., "The Trifecta: Three simple techniques for training deeper Forward-Forward
networks"): BatchNorm of the layer's input, a bias-free conv or linear map, ReLU (and, for convs, an optional
max-pool); goodness = mean of squares of the output.

``norm="layer"`` replaces the BatchNorm by a LayerNorm (with affine parameters) over the whole input of a sample, as
the authors' released code does for its runs without BatchNorm (the paper's ablation rows without BN)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import goodness as _goodness
from .._validation import check_int
from .base import FFLayer, LayerOutput
from .pooling import max_pool2x2

__all__ = ["TrifectaConv", "TrifectaLinear"]

NORMS = ("batch", "layer")


def _check_norm(norm: object) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class TrifectaConv(FFLayer):
    """``x -> BatchNorm -> conv (bias-free) -> ReLU -> [max-pool 2]``; goodness = mean of squares of the output.

    Normalising the *input* (rather than the output) removes the previous layer's goodness from what this layer
    sees, which is The Trifecta's replacement for Hinton's length normalisation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: conv kernel (padding ``kernel_size // 2``).
        maxpool: apply 2x2 max-pooling after the ReLU.
        norm: ``"batch"`` (``BatchNorm2d(C_in)``, the paper) or ``"layer"`` (``LayerNorm([C_in, H, W])`` with an
            affine weight and bias per element, as the release's runs without BatchNorm); ``"layer"`` needs
            ``input_size``.
        input_size: ``(H, W)`` of the input, for ``norm="layer"``.
        goodness: a name or a callable ``goodness(h) -> [B]`` (:func:`ffkit.goodness.get_goodness`); default the
            mean of squares.

    Shape:
        ``x [B, C_in, H, W] -> LayerOutput(features [B, C_out, H', W'], goodness [B])``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        maxpool: bool = False,
        norm: str = "batch",
        input_size: tuple[int, int] | None = None,
        goodness: str | Callable[..., torch.Tensor] = "mean_squared",
    ) -> None:
        super().__init__()
        self.goodness = _goodness.get_goodness(goodness)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)):
            check_int(v, name, minimum=1)
        _check_norm(norm)
        self.norm: nn.Module
        if norm == "batch":
            self.norm = nn.BatchNorm2d(in_channels)
        else:
            if input_size is None or len(tuple(input_size)) != 2:
                raise ValueError(f"norm='layer' needs input_size=(H, W), got {input_size!r}")
            h, w = (check_int(v, "input_size", minimum=1) for v in input_size)
            self.norm = nn.LayerNorm([in_channels, h, w])
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.maxpool = maxpool

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        h = F.relu(self.conv(self.norm(x)))
        if self.maxpool:
            h = max_pool2x2(h)
        return LayerOutput(features=h, goodness=self.goodness(h))

    def extra_repr(self) -> str:
        return _goodness_repr(self.goodness)


class TrifectaLinear(FFLayer):
    """The Trifecta's fully-connected block: ``x -> flatten -> BatchNorm1d -> linear (bias-free) -> ReLU``;
    goodness = mean of squares of the output.

    The FCN of the paper ("6 x 2048") stacks six of these. As in :class:`TrifectaConv`, the BatchNorm acts on the
    *input*, so the previous layer's goodness (the scale of its activity) is normalised away; the linear map has
    no bias, like the conv blocks, since the BatchNorm's shift already provides one per input feature.

    Args:
        in_features: input size ``D_in`` (images ``[B, C, H, W]`` are flattened to ``C * H * W``).
        out_features: number of units ``D``.
        norm: ``"batch"`` (``BatchNorm1d(D_in)``) or ``"layer"`` (``LayerNorm(D_in)`` with affine parameters).
        goodness: a name or a callable ``goodness(h) -> [B]``; default the mean of squares.

    Shape:
        ``x [B, D_in] or [B, C, H, W] -> LayerOutput(features [B, D], goodness [B])``.
    """

    def __init__(
        self, in_features: int, out_features: int, *, norm: str = "batch",
        goodness: str | Callable[..., torch.Tensor] = "mean_squared",
    ) -> None:
        super().__init__()
        self.goodness = _goodness.get_goodness(goodness)
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            check_int(v, name, minimum=1)
        _check_norm(norm)
        self.norm: nn.Module = nn.BatchNorm1d(in_features) if norm == "batch" else nn.LayerNorm(in_features)
        self.linear = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        x = x.flatten(1)
        if x.shape[1] != self.linear.in_features:
            raise ValueError(f"TrifectaLinear expects {self.linear.in_features} input features, got {x.shape[1]}")
        if self.training and x.shape[0] < 2 and isinstance(self.norm, nn.modules.batchnorm._BatchNorm):
            # else torch's "Expected more than 1 value per channel when training"
            raise ValueError(
                f"TrifectaLinear's BatchNorm1d needs at least 2 samples per training batch, got {x.shape[0]}: use a "
                f"larger batch and DataLoader(drop_last=True)"
            )
        h = F.relu(self.linear(self.norm(x)))
        return LayerOutput(features=h, goodness=self.goodness(h))

    def extra_repr(self) -> str:
        return _goodness_repr(self.goodness)


def _goodness_repr(fn: Callable[..., torch.Tensor]) -> str:
    return "" if fn is _goodness.mean_squared else f"goodness={_goodness.goodness_name(fn)}"
