"""Dropout with a cheaper mask: two elements per 32-bit random draw instead of one ``bernoulli_`` draw each."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_real

__all__ = ["Dropout", "dropout_mask", "drop_mask", "dropout"]


def dropout_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor | None, float]:
    """Keep-mask of dropout with drop probability ``p``, and the probability it was actually drawn with.

    Each element is dropped when a uniform 16-bit integer falls below ``round(p * 2**16)``, so the drop probability
    is ``p`` rounded to a multiple of ``2**-16`` (returned; callers scale by ``1 / (1 - p_drawn)`` so the activity
    stays unbiased). Two elements share one 32-bit draw: on CPU, where PyTorch's generator is serial, this costs a
    quarter of ``bernoulli_``, which was the largest avoidable cost of a CW-Conv training step.

    Args:
        x: the tensor to be masked ``[*]`` (any memory format; the mask follows a channels-last layout).
        p: drop probability in ``[0, 1)``.

    Returns:
        ``(keep, p_drawn)``: a bool mask shaped like ``x`` (``None`` when nothing is dropped) and the probability.
    """
    return _mask(x, p, keep=True)


def drop_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor | None, float]:
    """The complement of :func:`dropout_mask` from the same draws: ``True`` where an element is dropped."""
    return _mask(x, p, keep=False)


def _mask(x: torch.Tensor, p: float, keep: bool) -> tuple[torch.Tensor | None, float]:
    drop = min(round(p * 65536), 65535)
    if drop == 0:
        return None, 0.0
    n = x.numel()
    bits = torch.randint(-(2**31), 2**31, ((n + 1) // 2,), dtype=torch.int32, device=x.device)
    halves = bits.view(torch.int16)[:n].reshape(x.shape)
    mask = halves >= drop - 32768 if keep else halves < drop - 32768
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        mask = mask.contiguous(memory_format=torch.channels_last)
    return mask, drop / 65536


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout ``x * keep / (1 - p)`` with the mask of :func:`dropout_mask`; identity when not training.

    Shape: ``[*] -> [*]``.
    """
    if not training:
        return x
    keep, p = dropout_mask(x, p)
    if keep is None:
        return x
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


class Dropout(nn.Module):
    """Module form of :func:`dropout` (a drop-in for ``nn.Dropout`` with the cheaper mask).

    Args:
        p: drop probability in ``[0, 1)``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = check_real(p, "p", low=0.0, high=1.0, high_open=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
