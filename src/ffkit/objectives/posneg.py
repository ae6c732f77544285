"""Positive/negative objective: the label in the input, each layer's goodness separates true from wrong labels
(Hinton's FF, The Trifecta, DTG-FF)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .. import losses
from .._validation import callable_name
from .base import Objective, PreparedBatch
from .negatives import NegativeLabels

__all__ = ["PosNegObjective"]


class PosNegObjective(Objective):
    """Positive/negative training with the label in the input (Hinton's FF; The Trifecta).

    Positives are ``encoder(x, y)``, negatives ``encoder(x, y_neg)`` with ``y_neg`` from ``negatives``; both go
    through the layers as one batch ``[2B, ...]`` and each layer's goodness is split into ``g_pos, g_neg``.

    Args:
        encoder: a label encoder module, ``encoder(x, y) -> input`` (:class:`~ffkit.objectives.LabelOverlay`,
            :class:`~ffkit.objectives.LabelChannel`).
        negatives: a :class:`~ffkit.objectives.NegativeLabels` sampler.
        loss: ``"symba"``, ``"threshold"`` (:func:`ffkit.losses.get_loss`), or a callable ``loss(g_pos [B], g_neg
            [B]) -> scalar``; the options below belong to the named losses. A callable's batch may be split between
            two pipeline stages only with ``batch_separable=True`` (it is a mean over the samples' pairs).
        alpha: SymBa's scale.
        threshold: the threshold loss's ``theta``.
        threshold_reduction: how the threshold loss reduces its terms (:func:`ffkit.losses.ff_threshold`):
            ``"sum"`` of the positive and negative means (Hinton-style MLPs), or ``"mean"`` over the ``[pos; neg]``
            batch (The Trifecta's release).
        batch_separable: whether the loss is a mean over the samples' positive/negative pairs (default: ``True`` for
            SymBa and the threshold loss, ``False`` for a callable unless given).
    """

    def __init__(
        self,
        encoder: nn.Module,
        negatives: NegativeLabels,
        *,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "symba",
        alpha: float = 4.0,
        threshold: float = 2.0,
        threshold_reduction: str = "sum",
        batch_separable: bool | None = None,
    ) -> None:
        super().__init__()
        if not callable(loss) and loss not in ("symba", "threshold"):
            raise ValueError(f"loss must be 'symba', 'threshold' or a callable loss(g_pos, g_neg), got {loss!r}")
        self.batch_separable = not callable(loss) if batch_separable is None else bool(batch_separable)
        if threshold_reduction not in ("sum", "mean"):
            raise ValueError(f"threshold_reduction must be 'sum' or 'mean', got {threshold_reduction!r}")
        self.encoder = encoder
        self.negatives = negatives
        self.loss = loss
        self.alpha = alpha
        self.threshold = threshold
        self.threshold_reduction = threshold_reduction

    def prepare(self, network, x, y, index=None):
        y_neg = self.negatives(y, x=x, network=network, index=index)
        inputs = torch.cat([self.encoder(x, y), self.encoder(x, y_neg)], dim=0)
        return PreparedBatch(inputs=inputs, target=y, batch_size=x.shape[0], x=x)

    head_uses_training_pass = False

    def head_inputs(self, network, x):
        return self.encoder(x, None)

    def layer_loss(self, out, batch):
        if out.goodness is None:
            raise TypeError("PosNegObjective needs layers that return a goodness per sample")
        g_pos, g_neg = out.goodness[: batch.batch_size], out.goodness[batch.batch_size :]
        if callable(self.loss):
            loss = self.loss(g_pos, g_neg)
        elif self.loss == "symba":
            loss = losses.symba(g_pos, g_neg, alpha=self.alpha)
        else:
            loss = losses.ff_threshold(g_pos, g_neg, threshold=self.threshold, reduction=self.threshold_reduction)
        return loss, (g_pos.detach() > g_neg.detach()).sum()

    def batch_goodness(self, out, batch):
        """``[g_pos, g_neg]``: the layer's mean goodness of the positive samples (true label in the input) and of the
        negative samples (the wrong label the negative sampler drew for each image, a hard one with adaptive
        negatives), as trained on; evaluation's ``goodness_neg`` averages over every wrong label instead."""
        if out.goodness is None:
            return None
        return out.goodness.detach().float().reshape(2, -1).mean(dim=1)  # rows: the [B] positives, the [B] negatives

    def layer_scores(self, network, x, end=None, sink=None):
        per_label = []
        for k in range(network.num_classes):
            y = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            g = [out.goodness for _, out in network.iter_layers(self.encoder(x, y), end=end)]
            per_label.append(torch.stack(g))
        return torch.stack(per_label, dim=2)

    def extra_repr(self) -> str:
        if callable(self.loss):
            return f"loss={callable_name(self.loss)}"
        return (
            f"loss={self.loss}, alpha={self.alpha}, threshold={self.threshold}, "
            f"threshold_reduction={self.threshold_reduction}"
        )
