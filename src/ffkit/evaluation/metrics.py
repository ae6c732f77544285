"""Read-outs of per-layer scores ``[L, N, K]``: per layer, a layer range, the last k layers."""

from __future__ import annotations

import torch

__all__ = ["layer_accuracies", "range_accuracy", "last_k_accuracy"]


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.dim() != 3:
        raise ValueError(f"scores must be [L, N, K], got shape {tuple(scores.shape)}")
    if labels.shape != (scores.shape[1],):
        raise ValueError(f"labels must be [N] with N={scores.shape[1]}, got shape {tuple(labels.shape)}")


def layer_accuracies(scores: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Accuracy of each layer on its own: ``argmax_k scores[l, n, k] == labels[n]``, one float per layer."""
    _check(scores, labels)
    return (scores.argmax(dim=2) == labels).float().mean(dim=1).tolist()


def range_accuracy(scores: torch.Tensor, labels: torch.Tensor, start: int, end: int) -> float:
    """Accuracy of the scores summed over layers ``start..end`` (inclusive; DeeperForward Eq. 12)."""
    _check(scores, labels)
    if not 0 <= start <= end < scores.shape[0]:
        raise ValueError(f"layer range must satisfy 0 <= start <= end < {scores.shape[0]}, got {start}..{end}")
    # float64 sums, as in SIP's selection, so a range scores the same whichever function computes it
    return (scores[start : end + 1].double().sum(dim=0).argmax(dim=1) == labels).double().mean().item()


def last_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Accuracy of the scores summed over the last ``k`` layers (The Trifecta's mean of the last three)."""
    _check(scores, labels)
    if not 1 <= k <= scores.shape[0]:
        raise ValueError(f"k must be in [1, {scores.shape[0]}], got {k}")
    return range_accuracy(scores, labels, scores.shape[0] - k, scores.shape[0] - 1)
