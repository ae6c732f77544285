"""DeeperForward's parameter-free residual shortcut (Sun et al., ICLR 2025, Eq. 10-11)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_positive_int

__all__ = ["ParamFreeResidual"]


class ParamFreeResidual(nn.Module):
    """Combine a block's pre-activation with a shortcut from an earlier layer, with no learnable parameters.

    The shortcut is average-pooled to the block's spatial size (Eq. 10). If it has as many channels as the block's
    output, it is added (Eq. 11, identity form); if it has fewer (``C_r < C``), the block's conv produces only
    ``C - C_r`` channels and the shortcut is concatenated to reach ``C``. With ``groups=K`` the concatenation is done
    per channel group, so class ``k`` keeps owning the ``k``-th block of ``C / K`` channels on both sides.

    Args:
        shortcut_channels: ``C_r``, channels of the incoming shortcut.
        out_channels: ``C``, channels of the block's output after combining.
        groups: channel groups to keep aligned when concatenating (the class count for CW-Conv layers).

    Shape:
        ``forward(z [B, C_conv, H, W], shortcut [B, C_r, H', W']) -> [B, C, H, W]`` with ``H' = s * H``
        for an integer ``s >= 1`` and ``C_conv = conv_channels``.
    """

    def __init__(self, shortcut_channels: int, out_channels: int, groups: int = 1) -> None:
        super().__init__()
        for name, v in (("shortcut_channels", shortcut_channels), ("out_channels", out_channels), ("groups", groups)):
            check_positive_int(v, name)
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
        """Channels the block's own conv must produce: ``C`` when adding, ``C - C_r`` when concatenating."""
        return self.out_channels if self.mode == "add" else self.out_channels - self.shortcut_channels

    def forward(self, z: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if shortcut.shape[1] != self.shortcut_channels:
            raise ValueError(f"shortcut has {shortcut.shape[1]} channels, expected {self.shortcut_channels}")
        if shortcut.shape[-2:] != z.shape[-2:]:
            sh, sw = shortcut.shape[-2:]
            h, w = z.shape[-2:]
            if sh % h or sw % w or sh // h != sw // w:
                raise ValueError(
                    f"shortcut spatial size {(sh, sw)} is not an integer multiple of the block's size {(h, w)}: "
                    f"the input's height and width must halve evenly at every downsampling step of the network "
                    f"(ffkit's datasets give 32x32 images)"
                )
            shortcut = F.avg_pool2d(shortcut, kernel_size=sh // h)
        if self.mode == "add":
            return z + shortcut
        b, _, h, w = z.shape
        g = self.groups
        # Interleave per group so that channel block k of the output is still class k's block.
        return torch.cat([z.reshape(b, g, -1, h, w), shortcut.reshape(b, g, -1, h, w)], dim=2).reshape(b, -1, h, w)

    def extra_repr(self) -> str:
        return f"{self.shortcut_channels} -> {self.out_channels}, mode={self.mode}, groups={self.groups}"
