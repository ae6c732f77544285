"""DeeperForward's parameter-free residual shortcut (Sun et al., ICLR 2025, Eq. 10-11, Algorithm 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_int

__all__ = ["ParamFreeResidual"]


class ParamFreeResidual(nn.Module):
    """Combine a layer's normalised features with a shortcut from an earlier layer, with no learnable parameters.

    In DeeperForward a layer first computes its class scores and its group-normalised features from its own conv
    alone; only then is the shortcut joined to the features (Eq. 11; Algorithm 1), so no earlier layer's signal
    reaches this layer's scores. The shortcut is average-pooled to the layer's spatial size (Eq. 10). If it has as many
    channels as the layer's output, it is added; if it has fewer (``C_r < C``), the layer's conv makes only ``C - C_r``
    channels and the shortcut is appended after them: ``cat([features, shortcut], dim=1)``.

    Args:
        shortcut_channels: ``C_r``, channels of the incoming shortcut.
        out_channels: ``C``, channels after combining (what the next layer receives).
        groups: the class count of the layer whose features are combined; ``C`` and ``C_r`` must be multiples of it,
            so that the conv part, ``C`` or ``C - C_r`` channels, splits into equal class blocks.

    Shape:
        ``forward(features [B, C_conv, H, W], shortcut [B, C_r, s H, s W]) -> [B, C, H, W]`` for an integer
        ``s >= 1`` and ``C_conv = conv_channels``.
    """

    def __init__(self, shortcut_channels: int, out_channels: int, groups: int = 1) -> None:
        super().__init__()
        for name, v in (("shortcut_channels", shortcut_channels), ("out_channels", out_channels), ("groups", groups)):
            check_int(v, name, minimum=1)
        if shortcut_channels > out_channels:
            raise ValueError(
                f"shortcut_channels ({shortcut_channels}) must not exceed out_channels ({out_channels}): "
                "a parameter-free shortcut can only be added (equal channels) or concatenated (fewer channels)"
            )
        for name, v in (("shortcut_channels", shortcut_channels), ("out_channels", out_channels)):
            if v % groups:
                raise ValueError(f"{name} ({v}) must be a multiple of groups ({groups})")
        self.shortcut_channels = shortcut_channels
        self.out_channels = out_channels
        self.groups = groups
        self.mode = "add" if shortcut_channels == out_channels else "concat"

    @property
    def conv_channels(self) -> int:
        """Channels the layer's own conv must produce: ``C`` when adding, ``C - C_r`` when concatenating."""
        return self.out_channels if self.mode == "add" else self.out_channels - self.shortcut_channels

    def forward(self, features: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.conv_channels:
            raise ValueError(f"features have {features.shape[1]} channels, expected {self.conv_channels}")
        if shortcut.shape[1] != self.shortcut_channels:
            raise ValueError(f"shortcut has {shortcut.shape[1]} channels, expected {self.shortcut_channels}")
        if shortcut.shape[-2:] != features.shape[-2:]:
            sh, sw = shortcut.shape[-2:]
            h, w = features.shape[-2:]
            if sh % h or sw % w or sh // h != sw // w:
                raise ValueError(
                    f"shortcut spatial size {(sh, sw)} is not an integer multiple of the block's size {(h, w)}: "
                    f"the input's height and width must halve evenly at every downsampling step of the network "
                    f"(ffkit's datasets give 32x32 images)"
                )
            shortcut = F.avg_pool2d(shortcut, kernel_size=sh // h)
        if self.mode == "add":
            return features + shortcut
        return torch.cat([features, shortcut], dim=1)

    def extra_repr(self) -> str:
        return f"{self.shortcut_channels} -> {self.out_channels}, mode={self.mode}, groups={self.groups}"
