"""``FFNetwork``: a stack of locally trained layers, the wiring between them, and how they are trained and vote."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ._validation import check_bool, check_image_input
from .layers.base import FFLayer, LayerOutput
from .layers.heads import ClassifierHead
from .objectives import ClassScoreObjective, Objective, PreparedBatch

__all__ = ["FFNetwork"]


class _RestoreNormStats:
    """Restores the running statistics of a module's batch norms on exit (they are small: one copy per norm)."""

    def __init__(self, module: nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        self.saved: list[list[torch.Tensor]] = []

    def __enter__(self) -> None:
        self.saved = [[b.clone() for b in m.buffers(recurse=False)] for m in self.norms]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for m, saved in zip(self.norms, self.saved):
                for b, v in zip(m.buffers(recurse=False), saved):
                    b.copy_(v)
        self.saved = []


def _recompute_keeps_stats(module: nn.Module) -> tuple[contextlib.AbstractContextManager, _RestoreNormStats]:
    """Checkpoint contexts: nothing around the forward; around the recomputation, undo the second update of
    BatchNorm running statistics (the forward already made it once)."""
    return contextlib.nullcontext(), _RestoreNormStats(module)


def _check_layer_sizes(layers: Sequence[FFLayer], objective: Objective, num_classes: int, in_channels: int) -> None:
    """Catch a mis-assembled stack when it is built, not as a shape error deep inside torch's first forward.

    Only the sizes a layer records (:class:`~ffkit.layers.FFLayer`'s ``num_classes``, ``in_channels``,
    ``out_channels``) are checked.
    """
    for i, layer in enumerate(layers):
        k = layer.num_classes
        if isinstance(k, int) and k != num_classes:
            raise ValueError(
                f"layers[{i}] ({type(layer).__name__}) was built with num_classes={k}, but the network has "
                f"num_classes={num_classes}; build every layer with the network's class count"
            )
    first = layers[0].in_channels
    # Only the class-score objective feeds the input to the first layer unchanged (label-input objectives add
    # channels or overwrite pixels).
    if isinstance(objective, ClassScoreObjective) and isinstance(first, int) and first != in_channels:
        raise ValueError(
            f"layers[0] ({type(layers[0]).__name__}) expects {first} input channels, but the network has "
            f"in_channels={in_channels}"
        )
    for i in range(1, len(layers)):
        prev, cur = layers[i - 1].out_channels, layers[i].in_channels
        if isinstance(prev, int) and isinstance(cur, int) and prev != cur:
            raise ValueError(
                f"layers[{i}] ({type(layers[i]).__name__}) expects {cur} input channels, but layers[{i - 1}] "
                f"({type(layers[i - 1]).__name__}) outputs {prev} channels"
            )


class FFNetwork(nn.Module):
    """A Forward-Forward-family network.

    Every layer's input is detached, so a layer's loss can only reach its own parameters (and, for the first
    layer, a learned label encoder). Layers may take a residual shortcut from any earlier layer's features.

    Args:
        layers: the layers, in order (each an :class:`~ffkit.layers.FFLayer`).
        objective: how layers are trained and how they vote (:mod:`ffkit.objectives`).
        num_classes: ``K``.
        in_channels: channels the network expects (dim 1 of the input).
        input_norm: layer-normalise each input over ``(C, H, W)`` with no affine parameters (DeeperForward).
        shortcuts: ``{target_layer: source_layer}``: ``target`` also receives ``source``'s (detached) features.
        input_size: optional ``(H, W)`` the network expects; checked when given.
        head: an optional :class:`~ffkit.layers.ClassifierHead` trained on layer features (DTG-FF's classifier path,
            Pipeline-FF's softmax layer): detached, or, for a ``hybrid`` head (the released DTG MLP's), with its loss
            reaching the layers it reads; its accuracy is reported beside the layers' vote.
        inference_start: first layer of the default inference range (Hinton's FF predicts with all layers but the
            first: ``inference_start=1``; The Trifecta with the last layer alone). SIP (when a run holds out a
            split for it) replaces the range after each epoch.
        head_predicts: the network predicts with its classifier head's logits instead of the layers' summed scores
            (DTG-FF's classifier path); needs ``head``.

    Shape:
        ``forward(x [B, C, H, W]) -> [B, K]``: class scores summed over the inference range (see
        :meth:`set_inference_range`), or the head's logits with ``head_predicts``; :meth:`layer_scores` gives every
        layer's ``[L, B, K]``.
    """

    inference_range: torch.Tensor  # a buffer: ``[start, end]`` of the layers that vote

    def __init__(
        self,
        layers: Sequence[FFLayer],
        objective: Objective,
        *,
        num_classes: int,
        in_channels: int,
        input_norm: bool = False,
        shortcuts: Mapping[int, int] | None = None,
        input_size: tuple[int, int] | None = None,
        head: ClassifierHead | None = None,
        inference_start: int = 0,
        head_predicts: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(layers, (list, tuple, nn.ModuleList, nn.Sequential)):
            raise TypeError(f"layers must be a list of ffkit FFLayers, got {type(layers).__name__} (wrap a single "
                            f"layer in a list; materialise a generator with list(...))")
        layers = list(layers)
        if len(layers) == 0:
            raise ValueError("layers must not be empty")
        first_at: dict[int, int] = {}
        for i, layer in enumerate(layers):
            if not isinstance(layer, FFLayer):
                raise TypeError(f"layers[{i}] must be an ffkit FFLayer, got {type(layer).__name__}")
            if id(layer) in first_at:  # one module in two places would train twice per step, with two optimizers
                raise ValueError(f"layers[{i}] is the same module as layers[{first_at[id(layer)]}]; every layer must "
                                 f"be its own module (build another, or copy.deepcopy it)")
            first_at[id(layer)] = i
        _check_layer_sizes(layers, objective, num_classes, in_channels)
        self.layers = nn.ModuleList(layers)
        self.objective = objective
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_norm = input_norm
        self.input_size = tuple(input_size) if input_size is not None else None
        self.shortcuts: dict[int, int] = dict(shortcuts or {})
        for target, source in self.shortcuts.items():
            if not 0 <= source < target < len(layers):
                raise ValueError(f"shortcut {source} -> {target} must go forward between existing layers")
            if not layers[target].accepts_shortcut:
                raise ValueError(f"layer {target} receives a shortcut but was built without shortcut_channels")
        for i, layer in enumerate(layers):
            if layer.accepts_shortcut and i not in self.shortcuts:
                raise ValueError(f"layer {i} expects a shortcut but none is wired to it")
        # The last use of each shortcut source, so its features can be freed as soon as possible.
        self._last_use: dict[int, int] = {}
        for target, source in sorted(self.shortcuts.items()):
            self._last_use[source] = max(self._last_use.get(source, -1), target)
        if head is not None:
            if not isinstance(head, ClassifierHead):
                raise TypeError(f"head must be a ClassifierHead, got {type(head).__name__}")
            if not all(0 <= i < len(layers) for i in head.layers):
                raise ValueError(f"head reads layers {list(head.layers)}, but the network has {len(layers)} layers")
        self.head = head
        check_bool(head_predicts, "head_predicts")
        if head_predicts and head is None:
            raise ValueError("head_predicts=True needs a classifier head (head=ClassifierHead(...))")
        self.head_predicts = head_predicts
        if not 0 <= inference_start < len(layers):
            raise ValueError(f"inference_start must be in [0, {len(layers) - 1}], got {inference_start}")
        self.register_buffer("inference_range", torch.tensor([inference_start, len(layers) - 1]))
        self.model_name: str | None = None
        self.model_kwargs: dict = {}

    def __len__(self) -> int:
        return len(self.layers)

    # -- input checks -------------------------------------------------------------------------------------------
    def check_input(self, x: object, y: object | None = None) -> None:
        """Raise a clear error if ``x`` (and labels ``y``) do not fit this network."""
        param = next(self.parameters(), None)
        dtype = param.dtype if param is not None else None
        check_image_input(x, self.in_channels, self.input_size, self.num_classes, y, dtype=dtype)

    # -- running the layers -------------------------------------------------------------------------------------
    def iter_layers(
        self,
        inputs: torch.Tensor,
        *,
        end: int | None = None,
        detach: bool | Callable[[int], bool] = True,
        checkpoint: bool = False,
        start: int = 0,
        shortcuts: Mapping[int, torch.Tensor] | None = None,
    ) -> Iterator[tuple[int, LayerOutput]]:
        """Run layers ``start..end`` one at a time, yielding ``(index, LayerOutput)``.

        The consumer may update layer ``l`` before asking for layer ``l + 1``: each layer runs exactly once, on the
        detached features the previous layer produced, which is DeeperForward's memory-saving order (Alg. 2).

        Args:
            inputs: the first layer's input ``[B, ...]``.
            end: the last layer to run (``None``: all).
            detach: whether layer ``l``'s features are detached before layer ``l + 1`` sees them: ``True`` (local
                learning), ``False`` (end-to-end backprop baselines) or a function of ``l`` (The Trifecta's
                overlapping updates let a gradient cross chosen boundaries).
            checkpoint: run each layer through ``torch.utils.checkpoint`` (non-reentrant) while gradients are enabled:
                only a layer's inputs are kept for backward, and its forward is recomputed when the backward pass
                reaches it (end-to-end backprop with activation checkpointing). The RNG state is replayed, so dropout
                masks are the same, and BatchNorm running statistics are restored after the recomputation, so the
                gradients and buffers equal those of an unchecked pass.
            start: the first layer to run (a pipeline stage's first layer). When ``start > 0``, ``inputs`` is layer
                ``start - 1``'s features and the network's input normalisation is not applied again.
            shortcuts: ``{source: features}`` of layers before ``start`` that shortcuts into this range read
                (:meth:`crossing_shortcuts` says which).
        """
        check_bool(checkpoint, "checkpoint")
        last = len(self.layers) - 1 if end is None else end
        if not 0 <= start <= last < len(self.layers):
            raise ValueError(f"start and end must satisfy 0 <= start <= end < {len(self.layers)}, got {start}..{end}")
        h = F.layer_norm(inputs, inputs.shape[1:]) if self.input_norm and start == 0 else inputs
        kept: dict[int, torch.Tensor] = dict(shortcuts or {})
        missing = sorted(self.crossing_shortcuts(start - 1)) if start > 0 else []
        missing = [src for src in missing if src not in kept]
        if missing:
            raise ValueError(f"layers {start}..{last} read shortcuts from layers {missing}; pass their features")
        for i in range(start, last + 1):
            shortcut = kept[self.shortcuts[i]] if i in self.shortcuts else None
            cut = detach(i) if callable(detach) else detach
            layer = cast(FFLayer, self.layers[i])  # the constructor checked every layer is an FFLayer
            if checkpoint and torch.is_grad_enabled():
                out = torch.utils.checkpoint.checkpoint(
                    layer, h, shortcut, use_reentrant=False, context_fn=lambda m=layer: _recompute_keeps_stats(m)
                )
            else:
                layer.features_detached = cut  # lets the layer skip autograd for work only its features need
                try:
                    out = layer(h, shortcut)
                finally:
                    layer.features_detached = False
            yield i, out
            h = out.features.detach() if cut else out.features
            # Drop this layer's output before the next layer runs: under local training its graph (e.g. a norm's
            # saved input) would otherwise stay alive through the next layer's forward, doubling the peak.
            del out
            if i in self._last_use:
                # A shortcut crosses more than one layer boundary: under overlapping updates (a gradient crosses
                # exactly one), it carries no gradient; end to end (detach=False) it does.
                kept[i] = h.detach() if callable(detach) else h
            for src in [s for s, t in self._last_use.items() if t == i]:
                kept.pop(src, None)

    def crossing_shortcuts(self, boundary: int) -> set[int]:
        """Sources of the shortcuts that cross a cut right after layer ``boundary``: ``{s : s <= boundary < t}``.
        A pipeline stage ending at ``boundary`` must send these layers' features on with its own."""
        return {s for t, s in self.shortcuts.items() if s <= boundary < t}

    def layer_loss(self, index: int, out: LayerOutput, batch: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s local loss on ``batch`` and how many samples it got right: the objective's layer loss
        plus the layer's own :meth:`~ffkit.layers.FFLayer.regularizer`, if it has one (e.g. peer normalisation)."""
        loss, correct = self.objective.layer_loss(out, batch)
        extra = cast(FFLayer, self.layers[index]).regularizer(out, batch)
        return (loss if extra is None else loss + extra), correct

    def layer_scores(self, x: torch.Tensor, end: int | None = None) -> torch.Tensor:
        """Class scores of every layer up to ``end``: ``[L', B, K]``."""
        self.check_input(x)
        return self.objective.layer_scores(self, x, end=end)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every layer's class scores ``[L, B, K]`` and the head's logits ``[B, K]`` (``None`` without a head).

        Channel-wise networks compute both in one pass; label-input networks give the head its own
        neutral-label pass.
        """
        self.check_input(x)
        sink: dict[int, torch.Tensor] | None = {} if self.head is not None else None
        layer_scores = self.objective.layer_scores(self, x, sink=sink)
        if self.head is None:
            return layer_scores, None
        return layer_scores, self.head_logits(x, sink if sink else None)

    def head_logits(self, x: torch.Tensor, features: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The head's logits ``[B, K]``, from given per-layer ``features`` or from a pass over ``x``."""
        if self.head is None:
            raise ValueError("this network has no classifier head")
        if features is None:
            inputs = self.objective.head_inputs(self, x)
            last = max(self.head.layers)
            features = {i: out.features for i, out in self.iter_layers(inputs, end=last) if i in self.head.layers}
        return self.head([features[i].detach() for i in self.head.layers])

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``[B, K]`` summed over the inference range (all layers unless SIP pruned some)."""
        start, end = (int(v) for v in self.inference_range)
        return self.layer_scores(x, end=end)[start:].sum(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's prediction ``[B, K]``: the head's logits with ``head_predicts``, else the class scores summed
        over the inference range."""
        if self.head_predicts:
            self.check_input(x)
            return self.head_logits(x)
        return self.class_scores(x)

    def set_inference_range(self, start: int, end: int) -> None:
        """Predict with layers ``start..end`` (inclusive) only; later layers are never run (SIP's pruning)."""
        if not 0 <= start <= end < len(self.layers):
            raise ValueError(f"inference range must satisfy 0 <= start <= end < {len(self.layers)}, got {start}..{end}")
        self.inference_range.copy_(torch.tensor([start, end]))

    def local_parameters(self, index: int) -> list[nn.Parameter]:
        """Parameters updated by layer ``index``'s loss: its own, plus a learned input encoder's for layer 0."""
        params = list(self.layers[index].parameters())
        if index == 0:
            params += list(self.objective.parameters())
        return params
