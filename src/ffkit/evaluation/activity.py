"""Deactivated ("dead") neurons: units of a layer that are zero for every input seen (DeeperForward, Appendix I).

A layer's units are its ReLU units: channels x positions of its conv's output, or the units of a linear layer. A unit
is *deactivated* when its ReLU input is ``<= 0`` (so its activity is 0) for every input the layer saw. The
:class:`ActivityMonitor` records, with forward hooks, the running maximum of each unit's pre-activation during an
evaluation pass (one reduction over the batch per layer and batch, on the evaluation device), so the ratio comes from
the same pass as the scores.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn

__all__ = ["ActivityMonitor", "dead_unit_ratio"]


def dead_unit_ratio(activity: torch.Tensor) -> float:
    """Fraction of units that are zero for every sample of ``activity``.

    Args:
        activity: a layer's activity ``[N, ...]`` (e.g. ReLU outputs ``[N, C, H, W]`` or ``[N, D]``); each element of
            ``activity[0]`` is one unit.

    Returns:
        The fraction in ``[0, 1]`` of units ``u`` with ``activity[n, u] == 0`` for all ``n``.
    """
    if activity.dim() < 2 or activity.shape[0] == 0:
        raise ValueError(f"activity must be [N, ...] with N >= 1 and at least one unit, got {tuple(activity.shape)}")
    return (activity != 0).any(dim=0).logical_not().double().mean().item()


def _activity_source(layer: nn.Module) -> tuple[nn.Module, bool]:
    """The module whose output is the layer's ReLU input, and whether that output is the pre-activation.

    ffkit's layers compute ``ReLU(conv(...))`` (a CW-Conv joins any shortcut after its ReLU and normalisation) or
    ``ReLU(linear(...))``; for any other layer the features it passes on are used, a unit counting as deactivated
    where they are exactly 0.
    """
    for name in ("residual", "conv", "linear"):
        module = getattr(layer, name, None)
        if isinstance(module, nn.Module):
            return module, True
    return layer, False


def _compiled(module: nn.Module) -> bool:
    """Whether ``module.compile()`` was called (hooks inside a compiled module would force recompilations)."""
    return getattr(module, "_compiled_call_impl", None) is not None


class ActivityMonitor:
    """Context manager recording which units of each layer of a network are ever active.

    Example::

        with ActivityMonitor(network) as monitor:
            scores = network.layer_scores(x)
        ratios = monitor.dead_ratios()  # one float per layer

    Every forward pass of the network's layers inside the ``with`` block counts, so for label-input networks each
    image is seen once per overlaid label (and once more with the neutral label if a classifier head is evaluated).
    Layers compiled with ``torch.compile`` are not hooked (their ratio is ``None``), nor are networks without a
    ``layers`` list (e.g. the single-head backprop baselines: :meth:`dead_ratios` returns ``None``).

    Args:
        network: an :class:`~ffkit.FFNetwork` (anything with a ``layers`` sequence of modules).
    """

    def __init__(self, network: Any) -> None:
        layers = getattr(network, "layers", None)
        self.layers: list[nn.Module] | None = list(layers) if isinstance(layers, (nn.ModuleList, list, tuple)) else None
        self._peak: list[torch.Tensor | None] = [None] * len(self.layers or [])
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, index: int, pre_activation: bool):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            out = output if pre_activation else getattr(output, "features", output)
            if not isinstance(out, torch.Tensor) or out.dim() < 2:
                return
            # the running max of the pre-activation (a unit is active where it is > 0), or of |features| (!= 0)
            peak = (out.detach() if pre_activation else out.detach().abs()).amax(dim=0)
            prev = self._peak[index]
            self._peak[index] = peak if prev is None or prev.shape != peak.shape else torch.maximum(prev, peak)

        return record

    def __enter__(self) -> ActivityMonitor:
        for i, layer in enumerate(self.layers or []):
            if _compiled(layer):
                continue
            module, pre_activation = _activity_source(layer)
            self._handles.append(module.register_forward_hook(self._hook(i, pre_activation)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def dead_ratios(self) -> list[float | None] | None:
        """Each layer's fraction of units that were never active (``None`` for a layer that was not observed).

        Returns:
            One ratio in ``[0, 1]`` per layer, or ``None`` when the network has no ``layers`` list.
        """
        if self.layers is None:
            return None
        return self.ratios_of(self._peak)

    @property
    def peaks(self) -> list[torch.Tensor | None] | None:
        """Each layer's running maximum per unit (``None`` for a layer not observed), or ``None`` without a
        ``layers`` list."""
        return None if self.layers is None else list(self._peak)

    @staticmethod
    def ratios_of(peaks: list[torch.Tensor | None]) -> list[float | None]:
        """The dead ratio of each layer's per-unit peaks (:attr:`peaks`, possibly combined over several passes)."""
        # NaN counts as "not active": a unit whose pre-activation is NaN for every input is not doing anything useful
        return [None if p is None else (p > 0).logical_not().double().mean().item() for p in peaks]
