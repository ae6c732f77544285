"""CwComp's convolutional layer (Papachristodoulou et al., "Convolutional Channel-wise Competitive Learning for the
Forward-Forward Algorithm", AAAI 2024): conv, ReLU, optional max-pool, BatchNorm; each class owns a block of
channels and its goodness is the mean of squares of that block (the channel-wise competitive, CwC, goodness)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import goodness as _goodness
from .._validation import check_bool, check_int, check_real
from .base import FFLayer, LayerOutput
from .pooling import max_pool2x2

__all__ = ["CwCompConv"]


class CwCompConv(FFLayer):
    """``x -> conv (with bias) -> ReLU -> [2x2 max-pool] -> BatchNorm = h``; class scores ``s[b, k]`` = mean of
    ``h[b]**2`` over class ``k``'s channel block and all positions.

    Class ``k`` owns the ``out_channels / num_classes`` consecutive channels ``k * n .. (k + 1) * n - 1``. The scores
    ``[B, K]`` are the logits of the layer's cross-entropy (the CwC loss) and the BatchNorm output ``h`` is what the
    next layer receives, so the goodness is measured after the normalisation, as in the authors' code. A grouped
    convolution (``groups=num_classes``) makes the layer a CFSE "separator": each class block of the output sees only
    the matching block of the input.

    Args:
        in_channels: input channels.
        out_channels: output channels; a multiple of ``num_classes`` (and of ``groups``).
        num_classes: ``K``, the number of channel blocks.
        kernel_size: conv kernel (square; padding ``kernel_size // 2``, stride 1).
        groups: conv groups (1: a standard conv; ``num_classes``: CwComp's grouped conv).
        maxpool: 2x2 max-pooling (stride 2) after the ReLU, before the BatchNorm.
        bn_eps: the BatchNorm's epsilon (1e-4 in the authors' code).
        input_mean: per-channel mean subtracted from the input before the conv (``None``: no normalisation). The
            first layer of a CwComp network normalises the images here, since ffkit's datasets yield ``[0, 1]``
            pixels and the authors normalise per channel in their data pipeline.
        input_std: per-channel divisor of the input, given with ``input_mean``.
        goodness: the class scores' goodness, a name or a callable ``goodness(h, groups=K) -> [B, K]``
            (:func:`ffkit.goodness.get_goodness`); default CwC's mean of squares.

    Shape:
        ``x [B, C_in, H, W] -> LayerOutput(features [B, C_out, H', W'], scores [B, K], goodness [B])`` with
        ``H' = H // 2`` when ``maxpool`` else ``H``; ``goodness`` is the mean of the scores (the mean of squares of
        the whole output, the blocks being equal in size).
    """

    in_channels: int
    out_channels: int
    num_classes: int

    input_mean: torch.Tensor | None
    input_std: torch.Tensor | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int,
        kernel_size: int = 3,
        *,
        groups: int = 1,
        maxpool: bool = False,
        bn_eps: float = 1e-4,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        goodness: str | Callable[..., torch.Tensor] = "mean_squared",
    ) -> None:
        super().__init__()
        self.goodness = _goodness.get_goodness(goodness)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("num_classes", num_classes),
                        ("kernel_size", kernel_size), ("groups", groups)):
            check_int(v, name, minimum=1)
        if out_channels % num_classes:
            raise ValueError(
                f"out_channels ({out_channels}) must be a multiple of num_classes ({num_classes}): each class owns "
                f"out_channels / num_classes channels"
            )
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels ({out_channels})"
            )
        check_bool(maxpool, "maxpool")
        check_real(bn_eps, "bn_eps", low=0, low_open=True)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.maxpool = maxpool
        # PyTorch's default conv initialisation and a bias, as the authors' layer (an nn.Conv2d subclass) has.
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)
        self.norm = nn.BatchNorm2d(out_channels, eps=bn_eps)
        mean, std = _input_stats(input_mean, input_std, in_channels)
        # Fixed by the constructor's arguments (a builder records them), so not saved in the state dict.
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"CwCompConv expects input [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if self.input_mean is not None and self.input_std is not None:
            x = (x - self.input_mean) / self.input_std
        h = F.relu(self.conv(x))
        if self.maxpool:
            h = max_pool2x2(h)
        if self.training and h.shape[0] * h.shape[2] * h.shape[3] < 2:
            # else torch's "Expected more than 1 value per channel when training", which names no layer
            raise ValueError(
                f"CwCompConv's BatchNorm needs more than one value per channel in a training batch, got "
                f"{h.shape[0]} sample(s) of {h.shape[2]}x{h.shape[3]}: use a larger batch or larger images"
            )
        h = self.norm(h)
        scores = self.goodness(h, groups=self.num_classes)
        return LayerOutput(features=h, scores=scores, goodness=scores.mean(dim=1))

    def extra_repr(self) -> str:
        text = f"maxpool={self.maxpool}, num_classes={self.num_classes}"
        if self.goodness is not _goodness.mean_squared:
            text += f", goodness={_goodness.goodness_name(self.goodness)}"
        return text


def _input_stats(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate ``input_mean`` / ``input_std`` and shape them ``[1, C, 1, 1]`` (or both ``None``)."""
    if (mean is None) != (std is None):
        raise ValueError("input_mean and input_std must be given together (or both left None)")
    if mean is None or std is None:
        return None, None
    out = []
    for name, values in (("input_mean", mean), ("input_std", std)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"{name} must be a sequence of {channels} number(s), got {type(values).__name__}")
        if len(values) != channels:
            raise ValueError(f"{name} must have one value per input channel ({channels}), got {len(values)}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must hold numbers, got {type(v).__name__}")
        out.append(torch.tensor([float(v) for v in values]).reshape(1, channels, 1, 1))
    if not bool((out[1] > 0).all()):
        raise ValueError(f"input_std must be positive, got {list(std)}")
    return out[0], out[1]
