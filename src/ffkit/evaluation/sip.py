"""SIP: select the layers that vote (DeeperForward, Sun et al. 2025, Eq. 12 and Sec. 3.4).

Shallow layers are weak classifiers and very deep ones may overfit; SIP picks the contiguous range ``[i..j]`` whose
summed scores classify a held-out split best, then prunes the layers after ``j`` so inference stops early.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .metrics import correct

__all__ = ["SIPResult", "select_layers"]


@dataclass(frozen=True)
class SIPResult:
    """The chosen range and the held-out accuracy of every range.

    Attributes:
        start, end: the chosen layers (inclusive, 0-based).
        accuracy: held-out accuracy of ``start..end``.
        grid: ``[L, L]`` accuracies, ``grid[i, j]`` for ``i <= j`` (NaN below the diagonal).
    """

    start: int
    end: int
    accuracy: float
    grid: torch.Tensor


def select_layers(scores: torch.Tensor, labels: torch.Tensor) -> SIPResult:
    """Choose ``start..end`` maximising held-out accuracy of ``sum_{l=start}^{end} scores[l]`` (Eq. 12).

    Ties go to the range that ends earliest (cheapest inference), then to the one that starts earliest, as in the
    authors' released code (ranges are visited by end, then start, and only a strictly better one replaces the best).

    Args:
        scores: held-out per-layer scores ``[L, N, K]``.
        labels: held-out labels ``[N]``.
    """
    if scores.dim() != 3 or labels.shape != (scores.shape[1],):
        raise ValueError(f"expected scores [L, N, K] and labels [N], got {tuple(scores.shape)}, {tuple(labels.shape)}")
    n_layers = scores.shape[0]
    # Prefix sums make every range sum one subtraction: O(L^2 N K) instead of O(L^3 N K).
    prefix = torch.cat([torch.zeros_like(scores[:1]), scores.double().cumsum(dim=0)])
    grid = torch.full((n_layers, n_layers), float("nan"))
    best = (-1.0, 0, 0)
    for end in range(n_layers):
        for start in range(end + 1):
            acc = correct(prefix[end + 1] - prefix[start], labels).double().mean().item()
            grid[start, end] = acc
            if acc > best[0]:
                best = (acc, start, end)
    return SIPResult(start=best[1], end=best[2], accuracy=best[0], grid=grid)
