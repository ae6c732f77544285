"""What every ffkit layer returns, and the base class the engines rely on."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from ..objectives import PreparedBatch

__all__ = ["LayerOutput", "FFLayer"]


class LayerOutput(NamedTuple):
    """One layer's result for one batch.

    Attributes:
        features: what the next layer receives, ``[B, C, H, W]`` or ``[B, D]``. Engines detach it, so no gradient
            ever flows back into this layer from a later one.
        scores: per-class goodness ``[B, K]`` for channel-wise layers (one-pass classification), else ``None``.
        goodness: one goodness per sample ``[B]`` for layers trained on positive/negative data, else ``None``.
    """

    features: torch.Tensor
    scores: torch.Tensor | None = None
    goodness: torch.Tensor | None = None


class FFLayer(nn.Module):
    """Base class of ffkit's locally trained layers.

    A subclass implements ``forward(x, shortcut=None) -> LayerOutput``. Everything else an engine may ask of a layer
    is declared here with a default, so a new layer overrides only what it has:

    * ``accepts_shortcut``: the layer combines a tensor from an earlier layer (a residual shortcut); the network
      wires it in.
    * ``in_channels``, ``out_channels``, ``num_classes``: sizes checked when the network is assembled.
    * :meth:`regularizer`: a loss of the layer's own; :attr:`batch_coupled`: whether it couples a batch's samples.
    * :attr:`unit_shardable`: whether a pipeline may cut the layer into unit shards.
    * :meth:`propagation`: the context for work that only produces the features passed on.
    """

    accepts_shortcut: bool = False
    #: Sizes a layer may record; :class:`~ffkit.FFNetwork` checks the recorded ones against each other and against
    #: the network when it is assembled (``None``: not recorded, not checked).
    in_channels: int | None = None
    out_channels: int | None = None
    num_classes: int | None = None
    #: Set by :meth:`ffkit.FFNetwork.iter_layers` for the duration of one call when the engine will detach this
    #: layer's features: work done only to produce them (normalisation, dropout, pooling) then needs no autograd.
    features_detached: bool = False

    def propagation(self) -> contextlib.AbstractContextManager:
        """Context for computing the features passed on: ``torch.no_grad()`` when the engine detaches them (nothing
        of that work is kept for a backward pass that cannot reach it), else a no-op."""
        return torch.no_grad() if self.features_detached else contextlib.nullcontext()

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:  # pragma: no cover
        raise NotImplementedError

    def regularizer(self, out: LayerOutput, batch: PreparedBatch) -> torch.Tensor | None:
        """A loss of the layer's own added to its objective's layer loss (e.g. :class:`~ffkit.layers.FFLinear`'s
        peer normalisation), or ``None`` (default). ``out`` is this layer's output on ``batch``."""
        return None

    @property
    def unit_shardable(self) -> bool:
        """Whether the layer can be cut into unit shards whose goodness values add up to the layer's
        (``split_units(lo, hi)``, ``pull_units``, ``push_units`` and ``num_units``, as :class:`~ffkit.layers.FFLinear`
        has), so two pipeline stages may share it by units."""
        return False

    @property
    def batch_coupled(self) -> bool:
        """Whether :meth:`regularizer` couples the samples of a batch (so a pipeline may not split the layer's batch
        or units between two stages)."""
        return False
