"""Local losses: each layer minimises one of these on its own goodness, with no gradient from any other layer.

* :func:`ff_threshold` -- Hinton's FF loss (2022, Sec. 2): push positive goodness above a threshold and negative
  goodness below it, ``mean softplus(theta - g_pos) + mean softplus(g_neg - theta)`` (or, with
  ``reduction="mean"``, the mean over all ``2B`` terms, as The Trifecta's release).
* :func:`symba` -- SymBa (Lee & Song 2023; The Trifecta, Dooms et al.): ``mean softplus(alpha * (g_neg - g_pos))``.
* :func:`local_ce` -- cross-entropy over per-class goodness scores (DeeperForward, Sun et al. 2025; CwComp).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._validation import check_labels, check_real, check_tensor

__all__ = ["ff_threshold", "symba", "local_ce", "get_loss"]

_THRESHOLD_REDUCTIONS = ("sum", "mean")  # how ff_threshold reduces its positive and negative terms


def _check_pair(g_pos: torch.Tensor, g_neg: torch.Tensor) -> None:
    check_tensor(g_pos, "g_pos")
    check_tensor(g_neg, "g_neg")
    if g_pos.shape != g_neg.shape:
        raise ValueError(f"g_pos and g_neg must have the same shape, got {tuple(g_pos.shape)} and {tuple(g_neg.shape)}")


def ff_threshold(
    g_pos: torch.Tensor, g_neg: torch.Tensor, threshold: float, *, reduction: str = "sum"
) -> torch.Tensor:
    """Forward-Forward threshold loss (Hinton 2022, Eq. 1 written as a softplus).

    ``reduction="sum"`` (default): ``L = mean(softplus(threshold - g_pos)) + mean(softplus(g_neg - threshold))``,
    the sum of the positive and the negative term's means.

    ``reduction="mean"``: the mean over the ``2B`` terms of the ``[positives; negatives]`` batch,
    ``L = mean(cat[softplus(threshold - g_pos), softplus(g_neg - threshold)])``, which is half the ``"sum"`` form
    when ``g_pos`` and ``g_neg`` have the same size. The Trifecta's release (Dooms et al.) trains its threshold-loss
    ablation with this form; its gradients are half as large, which matters under SGD (not under Adam, which is
    invariant to the loss's scale up to its ``eps``).

    Args:
        g_pos: goodness of positive samples ``[B]``.
        g_neg: goodness of negative samples ``[B]``.
        threshold: the goodness threshold ``theta``.
        reduction: ``"sum"`` or ``"mean"``, as above.

    Returns:
        A 0-dim tensor.
    """
    _check_pair(g_pos, g_neg)
    check_real(threshold, "threshold")
    if reduction not in _THRESHOLD_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_THRESHOLD_REDUCTIONS}, got {reduction!r}")
    pos, neg = F.softplus(threshold - g_pos), F.softplus(g_neg - threshold)
    if reduction == "mean":
        return torch.cat([pos.reshape(-1), neg.reshape(-1)]).mean()
    return pos.mean() + neg.mean()


def symba(g_pos: torch.Tensor, g_neg: torch.Tensor, alpha: float = 4.0) -> torch.Tensor:
    """SymBa loss (used by The Trifecta): ``L = mean(softplus(alpha * (g_neg - g_pos)))``.

    Positive and negative samples are paired element-wise, so the loss depends only on ``g_neg - g_pos``.

    Args:
        g_pos: goodness of positive samples ``[B]``.
        g_neg: goodness of the paired negative samples ``[B]``.
        alpha: scale of the margin (the paper uses 4).

    Returns:
        A 0-dim tensor.
    """
    _check_pair(g_pos, g_neg)
    check_real(alpha, "alpha", low=0, low_open=True)
    return F.softplus(alpha * (g_neg - g_pos)).mean()


def local_ce(scores: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over per-class goodness scores (DeeperForward's channel-wise loss).

    ``L = -mean_i log softmax(scores_i)[target_i]`` (with optional label smoothing).

    Args:
        scores: per-class goodness ``[B, K]``.
        target: class indices ``[B]`` in ``[0, K)``.
        label_smoothing: in ``[0, 1)``.

    Returns:
        A 0-dim tensor.
    """
    check_tensor(scores, "scores", min_dim=2)
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, K], got shape {tuple(scores.shape)}")
    check_labels(target, scores.shape[1], "target", batch_size=scores.shape[0])
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return F.cross_entropy(scores, target, label_smoothing=label_smoothing)


_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"ff_threshold": ff_threshold, "threshold": ff_threshold,
                                                   "symba": symba}


def get_loss(name: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Resolve a contrastive (positive/negative) loss by name: ``"symba"`` or ``"threshold"``."""
    if callable(name):
        return name
    try:
        return _LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(_LOSSES)}") from None
