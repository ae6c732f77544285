"""Read-outs of per-layer scores ``[L, N, K]``: per layer, a layer range, the last k layers."""

from __future__ import annotations

import torch

from ..goodness import class_goodness

__all__ = ["correct", "layer_accuracies", "range_accuracy", "range_accuracy_grid", "last_k_accuracy", "mean_goodness"]


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.dim() != 3:
        raise ValueError(f"scores must be [L, N, K], got shape {tuple(scores.shape)}")
    if labels.shape != (scores.shape[1],):
        raise ValueError(f"labels must be [N] with N={scores.shape[1]}, got shape {tuple(labels.shape)}")


def correct(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Which samples the scores ``[..., N, K]`` classify right: ``argmax_k == label`` with every score finite, so a
    sample whose scores hold a NaN or an infinity counts as wrong (``argmax`` would pick the NaN's class).
    Returns ``[..., N]`` bool."""
    return (scores.argmax(dim=-1) == labels) & torch.isfinite(scores).all(dim=-1)


def layer_accuracies(scores: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Accuracy of each layer on its own: ``argmax_k scores[l, n, k] == labels[n]``, one float per layer."""
    _check(scores, labels)
    return correct(scores, labels).float().mean(dim=1).tolist()


def range_accuracy(scores: torch.Tensor, labels: torch.Tensor, start: int, end: int) -> float:
    """Accuracy of the scores summed over layers ``start..end`` (inclusive; DeeperForward Eq. 12)."""
    _check(scores, labels)
    if not 0 <= start <= end < scores.shape[0]:
        raise ValueError(f"layer range must satisfy 0 <= start <= end < {scores.shape[0]}, got {start}..{end}")
    # float64 running sums (one cumulative sum), as in :func:`range_accuracy_grid`, so a range scores exactly the
    # same whichever function computes it
    return _summed_accuracy(scores[start : end + 1].double().cumsum(dim=0)[-1], labels).item()


def _summed_accuracy(sums: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of summed scores ``[..., N, K]``: ``[...]`` (float64)."""
    return correct(sums, labels).double().mean(dim=-1)


def range_accuracy_grid(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SIP's accuracy grid: :func:`range_accuracy` of every layer range at once.

    ``grid[start, end]`` is the accuracy of the scores summed over layers ``start..end`` (inclusive), for
    ``start <= end``; entries below the diagonal are NaN. Each row is one cumulative sum over the layers from
    ``start`` on, so the grid costs ``O(L^2 N K)`` and each entry equals ``range_accuracy(scores, labels, start, end)``
    exactly.

    Args:
        scores: per-layer class scores ``[L, N, K]``.
        labels: the true labels ``[N]``.

    Returns:
        ``[L, L]`` float64 accuracies in ``[0, 1]`` (NaN below the diagonal).
    """
    _check(scores, labels)
    n_layers = scores.shape[0]
    grid = torch.full((n_layers, n_layers), float("nan"), dtype=torch.float64)
    s64 = scores.double()
    for start in range(n_layers):
        grid[start, start:] = _summed_accuracy(s64[start:].cumsum(dim=0), labels)
    return grid


def mean_goodness(scores: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Each layer's mean goodness of positive and of negative data, from its class scores.

    Positive: the score of the true label, ``mean_n scores[l, n, y_n]``. Negative: the mean score of the ``K - 1``
    wrong labels, ``mean_n mean_{k != y_n} scores[l, n, k]``. For label-input networks (Hinton's overlay, The
    Trifecta) ``scores[l, n, k]`` is layer ``l``'s goodness of image ``n`` with label ``k`` overlaid, so these are
    exactly the goodness of positive and negative (label-overlaid) data; for channel-wise networks (DeeperForward) they
    are the goodness of the true class's channel group against the other classes' groups.

    Args:
        scores: per-layer class scores ``[L, N, K]``.
        labels: the true labels ``[N]``.

    Returns:
        ``(positive, negative)``: two lists of ``L`` floats (negative is NaN when ``K == 1``).
    """
    _check(scores, labels)
    pos, neg = class_goodness(scores.double(), labels).tolist()
    return pos, neg


def last_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Accuracy of the scores summed over the last ``k`` layers (The Trifecta's mean of the last three)."""
    _check(scores, labels)
    if not 1 <= k <= scores.shape[0]:
        raise ValueError(f"k must be in [1, {scores.shape[0]}], got {k}")
    return range_accuracy(scores, labels, scores.shape[0] - k, scores.shape[0] - 1)
