"""DeeperForward's channel-wise convolution with mean goodness (Sun et al., ICLR 2025, Sec. 3.1-3.2)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import goodness as _goodness
from .._validation import check_int
from .base import FFLayer, LayerOutput
from .dropout import drop_mask
from .residual import ParamFreeResidual

__all__ = ["CWConv"]


class CWConv(FFLayer):
    """Channel-wise conv layer: each class owns ``C_conv / num_classes`` consecutive channels of the conv's output.

    ``x -> [avg-pool by pool] -> conv -> ReLU -> dropout = h``;
    class scores ``s = goodness(h, groups=num_classes)`` (``goodness.mean``: Eq. 8, ``[B, K]``);
    features ``GroupNorm(h, num_classes groups, no affine)`` (Eq. 9), and only then, for a layer built with
    ``shortcut_channels``, joined with an earlier layer's features (Eq. 11, :class:`ParamFreeResidual`): added when
    the widths are equal, else ``cat([features, shortcut])``. The shortcut never reaches this layer's scores.

    Args:
        in_channels: input channels.
        out_channels: channels passed on (after any concatenation); must be a multiple of ``num_classes``.
        num_classes: ``K``.
        kernel_size: conv kernel size (square). Padding defaults to ``kernel_size // 2`` (size-preserving for odd
            kernels).
        stride: conv stride (DeeperForward's ResNets open stages with stride 2).
        padding: conv padding; ``None`` for ``kernel_size // 2``.
        pool: average-pool the input by this factor before the conv (1: none). DeeperForward downsamples this way.
        dropout: dropout probability after the ReLU.
        shortcut_channels: channels of a residual shortcut from an earlier layer (``None``: no shortcut). With
            shortcut channels equal to ``out_channels`` it is added to the features; with fewer, the conv makes
            ``out_channels - shortcut_channels`` channels (the ones the scores come from) and the shortcut is
            concatenated after them.
        goodness: the class scores' goodness, a name or a callable ``goodness(h, groups=K) -> [B, K]``
            (:func:`ffkit.goodness.get_goodness`). The default, DeeperForward's mean, runs fused with the ReLU and
            the dropout (:func:`relu_dropout_scores`); any other runs as plain autograd ops.

    Shape:
        ``x [B, C_in, H, W]`` (and ``shortcut [B, C_r, s H', s W']``) ``-> LayerOutput(features [B, C_out, H', W'],
        scores [B, K], goodness [B])``.
    """

    in_channels: int
    out_channels: int
    num_classes: int

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
        goodness: str | Callable[..., torch.Tensor] = "mean",
    ) -> None:
        super().__init__()
        self.goodness = _goodness.get_goodness(goodness)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("num_classes", num_classes),
                        ("kernel_size", kernel_size), ("stride", stride), ("pool", pool)):
            check_int(v, name, minimum=1)
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
        # Not named ``residual``: the activity monitor hooks a layer's ``conv`` as its ReLU input, which it still is.
        self.combine = (
            ParamFreeResidual(shortcut_channels, out_channels, groups=num_classes)
            if shortcut_channels is not None
            else None
        )
        self.accepts_shortcut = self.combine is not None
        conv_out = self.combine.conv_channels if self.combine is not None else out_channels
        self.conv = nn.Conv2d(
            in_channels,
            conv_out,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if padding is None else padding,
            bias=False,
        )
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        if (shortcut is None) != (self.combine is None):
            raise ValueError(
                "this CWConv was built with shortcut_channels but received no shortcut"
                if shortcut is None
                else "this CWConv received a shortcut but was built without shortcut_channels"
            )
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        z = self.conv(x)
        drop, p = drop_mask(z, self.dropout if self.training else 0.0)
        if self.goodness is _goodness.mean:
            scores, h = relu_dropout_scores(z, drop, self.num_classes, p)
        else:
            h = F.relu(z) if drop is None else F.relu(z).masked_fill(drop, 0.0)
            scores = self.goodness(h if p == 0.0 else h / (1.0 - p), groups=self.num_classes)
        # h is the unscaled masked activity; GroupNorm without affine is invariant to the dropout scale s except
        # through eps, and GN(s * h, eps) == GN(h, eps / s**2) exactly, so no pass is spent on scaling.
        with self.propagation():
            features = F.group_norm(h, self.num_classes, eps=_GN_EPS * (1.0 - p) ** 2)
            if self.combine is not None:
                features = self.combine(features, shortcut)
        # The groups are equal in size, so the mean of the class scores is the layer's overall mean goodness
        # (Eq. 5): it lets a CW-Conv backbone train with a positive/negative loss such as SymBa too.
        return LayerOutput(features=features, scores=scores, goodness=scores.mean(dim=1))

    def extra_repr(self) -> str:
        text = f"pool={self.pool}, dropout={self.dropout}" if self.dropout else f"pool={self.pool}"
        if self.goodness is not _goodness.mean:
            text += f", goodness={_goodness.goodness_name(self.goodness)}"
        return text


_GN_EPS = 1e-5  # F.group_norm's default


def relu_dropout_scores(
    z: torch.Tensor, drop: torch.Tensor | None, groups: int, p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ReLU, dropout and channel-wise mean goodness (DeeperForward Eq. 8) with a one-pass backward.

    With ``s = 1 / (1 - p)`` the activity is ``s * h`` where ``h = relu(z)`` with the dropped elements zeroed; the
    class scores are ``scores[b, k] = s * mean(h[b, group k])``. Because ``d(s h)/dz = s * (h > 0)``, the backward
    needs only ``h`` (saved anyway as the next op's input): no dropout mask and no ReLU input are kept, and when
    the features are detached (local training) the gradient is one broadcast ``grad_z = (h > 0) * s * grad_scores / n``.
    ``h`` is written into ``z``'s memory unless ``z`` is a view or a leaf that requires grad (then it is new).

    Args:
        z: pre-activation ``[B, C, H, W]`` (any memory format).
        drop: dropout mask like ``z``, ``True`` where an element is dropped (:func:`ffkit.layers.drop_mask`), or
            ``None`` for no dropout.
        groups: ``K``, number of equal consecutive channel groups (``C % K == 0``).
        p: the drop probability the mask was drawn with (sets ``s``).

    Returns:
        ``scores [B, K]`` and the unscaled activity ``h [B, C, H, W]``.
    """
    return _ReLUDropoutScores.apply(z, drop, groups, 1.0 / (1.0 - p))


class _ReLUDropoutScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, drop, groups, scale):
        # In place where allowed: on CPU, relu_ and masked_fill_ on float memory cost a fraction of where(mask, ...).
        if (z.is_leaf and z.requires_grad) or z._base is not None:  # autograd forbids in-place on these here
            h = torch.relu(z)
        else:
            h = z.relu_()
            ctx.mark_dirty(z)
        if drop is not None:
            h.masked_fill_(drop, 0.0)
        hg = h.unflatten(1, (groups, -1))
        scores = hg.mean(dim=(2, 3, 4))
        if scale != 1.0:
            scores = scores.mul_(scale)
        ctx.save_for_backward(h)
        ctx.groups, ctx.scale = groups, scale
        ctx.set_materialize_grads(False)
        return scores, h

    @staticmethod
    def backward(ctx, grad_scores, grad_h):
        (h,) = ctx.saved_tensors
        g = ctx.groups
        hg = h.unflatten(1, (g, -1))
        n = hg[0, 0].numel()
        # h >= 0, so sign(h) is the 0/1 mask of where d(s h)/dz is non-zero; it is one float pass, while
        # multiplying by a bool mask costs a conversion copy on CPU.
        active = torch.sign(hg)
        grad = None
        if grad_scores is not None:  # d scores[b, k] / d h = s / n inside group k
            grad = active.mul_((grad_scores * (ctx.scale / n)).reshape(*grad_scores.shape, 1, 1, 1))
        if grad_h is not None:  # the features' gradient (end-to-end baselines); h's own scale is 1
            gh = grad_h.unflatten(1, (g, -1)) * (torch.sign(hg) if grad is not None else active)
            grad = gh if grad is None else grad.add_(gh)
        return (grad.flatten(1, 2) if grad is not None else None), None, None, None
