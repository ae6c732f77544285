"""Channel-wise objective: each layer's per-class scores trained by a local cross-entropy (DeeperForward, CwComp)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import losses
from .._validation import callable_name
from ..goodness import class_goodness
from .base import Objective, PreparedBatch

__all__ = ["ClassScoreObjective"]


class ClassScoreObjective(Objective):
    """Local cross-entropy on each layer's per-class scores (DeeperForward).

    Args:
        label_smoothing: label smoothing of the cross-entropy.
        loss: ``None`` (the cross-entropy, :func:`ffkit.losses.local_ce`) or a callable ``loss(scores [B, K],
            target [B]) -> scalar`` to train each layer with instead (``label_smoothing`` is then unused). A pipeline
            may split a layer's batch between two stages only if the loss is a mean over samples; say so with
            ``batch_separable=True``.
        batch_separable: whether ``loss`` is a mean of per-sample terms (default ``True`` for the cross-entropy,
            ``False`` for a callable unless given).
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        *,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        batch_separable: bool | None = None,
    ) -> None:
        super().__init__()
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be None or a callable loss(scores, target), got {type(loss).__name__}")
        self.label_smoothing = label_smoothing
        self.loss = loss
        self.batch_separable = (loss is None) if batch_separable is None else bool(batch_separable)

    def prepare(self, network, x, y, index=None):
        return PreparedBatch(inputs=x, target=y, batch_size=x.shape[0], x=x)

    def layer_loss(self, out, batch):
        if out.scores is None:
            raise TypeError("ClassScoreObjective needs layers that return class scores (e.g. CWConv)")
        if self.loss is None:
            loss = losses.local_ce(out.scores, batch.target, label_smoothing=self.label_smoothing)
        else:
            loss = self.loss(out.scores, batch.target)
        correct = (out.scores.detach().argmax(dim=1) == batch.target).sum()
        return loss, correct

    def batch_goodness(self, out, batch):
        """``[g_pos, g_neg]`` from the layer's class scores ``[B, K]``: the mean score of the true class (the goodness
        of its channel group) and the mean over samples of the mean score of the ``K - 1`` other classes, as
        :func:`~ffkit.evaluation.mean_goodness` defines them for evaluation (:func:`ffkit.goodness.class_goodness`)."""
        if out.scores is None:
            return None
        return class_goodness(out.scores.detach().float(), batch.target)

    def layer_scores(self, network, x, end=None, sink=None):
        scores = []
        for i, out in network.iter_layers(x, end=end):
            if out.scores is None:
                raise TypeError("ClassScoreObjective needs layers that return class scores (e.g. CWConv)")
            scores.append(out.scores)
            if sink is not None:
                sink[i] = out.features
        return torch.stack(scores)

    def extra_repr(self) -> str:
        if self.loss is not None:
            return f"loss={callable_name(self.loss)}"
        return f"label_smoothing={self.label_smoothing}"
