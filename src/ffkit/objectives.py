"""How a network's layers are trained and how they vote: the two families of FF objectives.

* :class:`ClassScoreObjective` -- channel-wise layers output per-class scores ``[B, K]``; each layer minimises a
  local cross-entropy on them (DeeperForward, CwComp). Prediction needs one pass.
* :class:`PosNegObjective` -- the label is part of the input (overlay or label channel); each layer separates
  positive (true label) from negative (wrong label) samples by goodness, with the threshold loss (Hinton) or SymBa
  (The Trifecta). Prediction needs one pass per label.

Both expose ``layer_scores(network, x) -> [L, B, K]``, so evaluation (per layer, last-k, SIP) is shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from . import losses
from .data.negatives import NegativeLabels
from .layers.base import LayerOutput

if TYPE_CHECKING:  # pragma: no cover
    from .network import FFNetwork

__all__ = ["Objective", "PreparedBatch", "ClassScoreObjective", "PosNegObjective"]


class PreparedBatch(NamedTuple):
    """What the first layer receives and what the layer losses need.

    Attributes:
        inputs: first-layer input, ``[B, ...]`` (or ``[2B, ...]``: positives then negatives).
        target: class labels ``[B]``.
        batch_size: ``B``.
        x: the raw input ``[B, ...]`` (label-input networks need it for a head's neutral-label pass).
    """

    inputs: torch.Tensor
    target: torch.Tensor
    batch_size: int
    x: torch.Tensor | None = None


class Objective(nn.Module):
    """Base class. Subclasses define ``prepare``, ``layer_loss`` and ``layer_scores``.

    ``head_uses_training_pass``: whether a classifier head can read the features of the training pass itself
    (channel-wise networks) or needs its own pass on :meth:`head_inputs` (label-input networks: neutral label).

    ``batch_separable``: whether :meth:`layer_loss` is a mean of per-sample terms, so that the loss of a batch is the
    share-weighted mean of its parts' losses (a pipeline may then split a layer's batch between two stages). Rows
    ``q * B + i`` of a layer's input ``[r * B, ...]`` must belong to sample ``i``.
    """

    head_uses_training_pass: bool = True
    batch_separable: bool = False

    def head_inputs(self, network: FFNetwork, x: torch.Tensor) -> torch.Tensor:
        """The first layer's input for a classifier head's pass over raw inputs ``x``."""
        return x

    def prepare(
        self, network: FFNetwork, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None
    ) -> PreparedBatch:  # pragma: no cover
        raise NotImplementedError

    def layer_loss(self, out: LayerOutput, batch: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, correct)``: the layer's scalar loss and how many samples it got right (a tensor)."""
        raise NotImplementedError  # pragma: no cover

    def layer_scores(
        self, network: FFNetwork, x: torch.Tensor, end: int | None = None, sink: dict | None = None
    ) -> torch.Tensor:
        """Per-layer class scores ``[L', B, K]`` for layers ``0..end`` (all when ``end`` is None).

        If ``sink`` is a dict and the scores come from a single pass, each layer's features are stored in it by index
        (so a classifier head can reuse the pass)."""
        raise NotImplementedError  # pragma: no cover


class ClassScoreObjective(Objective):
    """Local cross-entropy on each layer's per-class scores (DeeperForward).

    Args:
        label_smoothing: label smoothing of the cross-entropy.
    """

    batch_separable = True  # a mean cross-entropy over samples

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def prepare(self, network, x, y, index=None):
        return PreparedBatch(inputs=x, target=y, batch_size=x.shape[0], x=x)

    def layer_loss(self, out, batch):
        if out.scores is None:
            raise TypeError("ClassScoreObjective needs layers that return class scores (e.g. CWConv)")
        loss = losses.local_ce(out.scores, batch.target, label_smoothing=self.label_smoothing)
        correct = (out.scores.detach().argmax(dim=1) == batch.target).sum()
        return loss, correct

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
        return f"label_smoothing={self.label_smoothing}"


class PosNegObjective(Objective):
    """Positive/negative training with the label in the input (Hinton's FF; The Trifecta).

    Positives are ``encoder(x, y)``, negatives ``encoder(x, y_neg)`` with ``y_neg`` from ``negatives``; both go
    through the layers as one batch ``[2B, ...]`` and each layer's goodness is split into ``g_pos, g_neg``.

    Args:
        encoder: a label encoder module, ``encoder(x, y) -> input`` (:class:`~ffkit.data.LabelOverlay`,
            :class:`~ffkit.data.LabelChannel`).
        negatives: a :class:`~ffkit.data.NegativeLabels` sampler.
        loss: ``"symba"`` or ``"threshold"``.
        alpha: SymBa's scale.
        threshold: the threshold loss's ``theta``.
        threshold_reduction: how the threshold loss reduces its terms (:func:`ffkit.losses.ff_threshold`):
            ``"sum"`` of the positive and negative means (Hinton-style MLPs), or ``"mean"`` over the ``[pos; neg]``
            batch (The Trifecta's release).
    """

    batch_separable = True  # SymBa and the threshold loss are means over the samples' positive/negative pairs

    def __init__(
        self,
        encoder: nn.Module,
        negatives: NegativeLabels,
        *,
        loss: str = "symba",
        alpha: float = 4.0,
        threshold: float = 2.0,
        threshold_reduction: str = "sum",
    ) -> None:
        super().__init__()
        if loss not in ("symba", "threshold"):
            raise ValueError(f"loss must be 'symba' or 'threshold', got {loss!r}")
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
        if self.loss == "symba":
            loss = losses.symba(g_pos, g_neg, alpha=self.alpha)
        else:
            loss = losses.ff_threshold(g_pos, g_neg, threshold=self.threshold, reduction=self.threshold_reduction)
        return loss, (g_pos.detach() > g_neg.detach()).sum()

    def layer_scores(self, network, x, end=None, sink=None):
        per_label = []
        for k in range(network.num_classes):
            y = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            g = [out.goodness for _, out in network.iter_layers(self.encoder(x, y), end=end)]
            per_label.append(torch.stack(g))
        return torch.stack(per_label, dim=2)

    def extra_repr(self) -> str:
        return (
            f"loss={self.loss}, alpha={self.alpha}, threshold={self.threshold}, "
            f"threshold_reduction={self.threshold_reduction}"
        )
