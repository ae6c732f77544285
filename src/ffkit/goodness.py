"""Goodness functions: how much a layer's activity says "this is positive data" (or "this is class k").

* :func:`mean` -- DeeperForward's mean goodness (Sun et al., ICLR 2025, Eq. 5 and Eq. 8 for the channel-wise form).
* :func:`squared` -- Hinton's goodness, the sum of squared activities (The Forward-Forward Algorithm, 2022, Sec. 2);
  ``reduction="mean"`` gives the mean of squares.
* :func:`mean_squared` -- the mean of squares, as The Trifecta (Dooms et al.) and CwComp (Papachristodoulou et al.)
  use it.
* :class:`DTGTemperature` -- DTG-FF's learnable temperature ``tau = tau_min + (tau_max - tau_min) * sigmoid(s)``.

With ``groups=G`` the channel dimension (dim 1) is cut into ``G`` equal consecutive blocks and one goodness is
returned per block: block ``k`` belongs to class ``k``, which is how a channel-wise (CW) layer produces class scores.

Layers take their goodness as an argument (``CWConv(..., goodness=...)``): a name from :func:`get_goodness` or any
callable ``goodness(h, groups=None)`` with the contract of :func:`mean` (``[B, ...] -> [B]``, or ``[B, G]`` with
``groups=G``), differentiable in ``h``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._validation import callable_name, check_groups, check_real, check_tensor

__all__ = ["mean", "squared", "mean_squared", "class_goodness", "DTGTemperature", "get_goodness", "goodness_name"]


def _grouped(h: torch.Tensor, groups: int | None) -> torch.Tensor:
    """View ``h`` as ``[B, G, rest]`` (``G = 1`` when ungrouped) without copying when possible."""
    if groups is None:
        return h.reshape(h.shape[0], 1, -1)
    check_groups(h, groups)
    return h.reshape(h.shape[0], groups, -1)


def mean(h: torch.Tensor, groups: int | None = None) -> torch.Tensor:
    """Mean goodness (DeeperForward Eq. 5; channel-wise form Eq. 8).

    Args:
        h: activities ``[B, ...]`` (usually non-negative, after ReLU).
        groups: if given, split dim 1 into this many equal consecutive channel groups.

    Returns:
        ``[B]`` -- the mean of every non-batch element; or ``[B, G]`` with ``groups=G`` -- each group's mean.

    Example:
        >>> mean(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), groups=2)
        tensor([[1.5000, 4.5000]])
    """
    check_tensor(h, "h", min_dim=2 if groups is not None else 1)
    g = _grouped(h, groups).mean(dim=2)
    return g if groups is not None else g.squeeze(1)


def squared(h: torch.Tensor, groups: int | None = None, reduction: str = "sum") -> torch.Tensor:
    """Squared goodness (Hinton 2022, Sec. 2: ``G = sum_j y_j^2``).

    Args:
        h: activities ``[B, ...]``.
        groups: if given, split dim 1 into this many equal consecutive channel groups.
        reduction: ``"sum"`` (Hinton) or ``"mean"`` (mean of squares, as The Trifecta uses).

    Returns:
        ``[B]``, or ``[B, G]`` with ``groups=G``.
    """
    check_tensor(h, "h", min_dim=2 if groups is not None else 1)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    sq = _grouped(h, groups).square()
    g = sq.sum(dim=2) if reduction == "sum" else sq.mean(dim=2)
    return g if groups is not None else g.squeeze(1)


def mean_squared(h: torch.Tensor, groups: int | None = None) -> torch.Tensor:
    """Mean of squares, ``G = mean_j y_j^2`` (The Trifecta; CwComp's CwC goodness with ``groups=K``, per class block).

    Args:
        h: activities ``[B, ...]``.
        groups: if given, split dim 1 into this many equal consecutive channel groups.

    Returns:
        ``[B]``, or ``[B, G]`` with ``groups=G``.

    Example:
        >>> mean_squared(torch.tensor([[1.0, 3.0, 2.0, 4.0]]), groups=2)
        tensor([[ 5., 10.]])
    """
    return squared(h, groups=groups, reduction="mean")


def class_goodness(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean goodness of positive and of negative data, from class scores (goodness per class).

    Positive: the true class's score, ``mean_n scores[..., n, y_n]``. Negative: the mean score of the ``K - 1``
    other classes, ``mean_n mean_{k != y_n} scores[..., n, k]``. One formula for the evaluation's read-out
    (:func:`ffkit.evaluation.mean_goodness`) and the training curves (``ClassScoreObjective.batch_goodness``); it
    stays on the scores' device, in their dtype, with no host synchronisation.

    Args:
        scores: class scores ``[..., N, K]`` (e.g. ``[L, N, K]`` per layer, or one layer's ``[N, K]``).
        labels: the true labels ``[N]``.

    Returns:
        ``[2, ...]``: row 0 the positive, row 1 the negative means (NaN when ``K == 1``).

    Example:
        >>> class_goodness(torch.tensor([[1.0, 2.0, 3.0], [0.0, 4.0, 2.0]]), torch.tensor([0, 1]))
        tensor([2.5000, 1.7500])
    """
    k = scores.shape[-1]
    pos = scores.gather(-1, labels.view(-1, 1).expand(*scores.shape[:-1], 1)).squeeze(-1)  # [..., N]
    neg = (scores.sum(dim=-1) - pos) / (k - 1) if k > 1 else torch.full_like(pos, float("nan"))
    return torch.stack([pos.mean(dim=-1), neg.mean(dim=-1)])


class DTGTemperature(nn.Module):
    """Learnable goodness temperature of DTG-FF.

    ``tau = tau_min + (tau_max - tau_min) * sigmoid(s)`` with one learnable scalar ``s`` initialised to 0,
    so ``tau`` starts half-way between the bounds and can never leave ``(tau_min, tau_max)``.
    Calling the module divides goodness or logits (any shape) by ``tau``.

    Args:
        tau_min: lower bound, ``> 0``.
        tau_max: upper bound, ``> tau_min``.

    Shape:
        input ``[*]`` -> output ``[*]``.
    """

    def __init__(self, tau_min: float = 0.1, tau_max: float = 10.0) -> None:
        super().__init__()
        check_real(tau_min, "tau_min", low=0, low_open=True)
        check_real(tau_max, "tau_max", low=0, low_open=True)
        if tau_max <= tau_min:
            raise ValueError(f"tau_max must be greater than tau_min, got tau_min={tau_min}, tau_max={tau_max}")
        self.tau_min = float(tau_min)
        self.tau_max = float(tau_max)
        self.s = nn.Parameter(torch.zeros(()))

    @property
    def tau(self) -> torch.Tensor:
        """The current temperature (a 0-dim tensor)."""
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(self.s)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return g / self.tau

    def extra_repr(self) -> str:
        return f"tau_min={self.tau_min}, tau_max={self.tau_max}"


_GOODNESS = {"mean": mean, "squared": squared, "mean_squared": mean_squared}


def get_goodness(name: str | Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Resolve a goodness function: a name (``"mean"``, ``"squared"`` for the sum of squares, ``"mean_squared"``)
    or a callable ``goodness(h, groups=None)``, returned as it is.

    Raises:
        ValueError: an unknown name. TypeError: neither a name nor a callable.
    """
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"goodness must be a name ({', '.join(sorted(_GOODNESS))}) or a callable goodness(h, "
                        f"groups=None), got {type(name).__name__}")
    try:
        return _GOODNESS[name]
    except KeyError:
        raise ValueError(f"unknown goodness {name!r}; expected one of {sorted(_GOODNESS)} or a callable") from None


def goodness_name(fn: Callable[..., torch.Tensor]) -> str:
    """How a layer shows its goodness in its ``repr``: the registered name, else the callable's qualified name."""
    for name, known in _GOODNESS.items():
        if fn is known:
            return name
    return callable_name(fn)
