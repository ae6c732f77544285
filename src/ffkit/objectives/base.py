"""What every objective provides: the batch it prepares for the first layer, and the :class:`Objective` interface."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from ..layers.base import LayerOutput

if TYPE_CHECKING:  # pragma: no cover
    from ..network import FFNetwork

__all__ = ["Objective", "PreparedBatch"]


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

    def batch_goodness(self, out: LayerOutput, batch: PreparedBatch) -> torch.Tensor | None:
        """The layer's mean goodness of the batch's positive and negative data, ``[2]`` (float32, detached), for the
        training curves (``Trainer.fit(log_every=N)``); ``None`` (this default) for an objective without them."""
        return None

    def layer_scores(
        self, network: FFNetwork, x: torch.Tensor, end: int | None = None, sink: dict | None = None
    ) -> torch.Tensor:
        """Per-layer class scores ``[L', B, K]`` for layers ``0..end`` (all when ``end`` is None).

        If ``sink`` is a dict and the scores come from a single pass, each layer's features are stored in it by index
        (so a classifier head can reuse the pass)."""
        raise NotImplementedError  # pragma: no cover
