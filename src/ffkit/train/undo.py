"""``StepUndo``: the state before each optimizer's latest step, so a divergence can go back one step.

A divergence is found at the step *after* the one that caused it: a step with finite losses and gradients can still
move the weights somewhere (1e30, or an infinity) whose next forward is not finite. The state just before the
failing step is then no use to resume from; the one before the previous step is. Keeping it costs one copy of the
parameters and optimizer state per step (``docs/long-runs.md`` measures it), so :meth:`Trainer.fit` keeps it only
when it will save it: with a run directory and ``on_divergence="stop"``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .schedules import local_shards, optimizer_params

__all__ = ["StepUndo"]


class _Saved:
    """One optimizer's parameters and per-parameter state before a step, and the buffers that step's forward
    changed; its tensors are reused from step to step."""

    def __init__(self) -> None:
        self.tag = -1
        self.params: list[torch.Tensor] = []
        self.state: dict[torch.Tensor, dict[str, Any]] = {}


class StepUndo:
    """Copies of each optimizer's parameters and state (Adam's moments, SGD's momentum) taken just before its
    :meth:`torch.optim.Optimizer.step`, and of the normalisation statistics that step's forward changed.

    :meth:`restore` puts back the ones taken at the latest step, i.e. the state before the last step that was
    applied.
    """

    def __init__(self) -> None:
        self._saved: dict[int, _Saved] = {}
        self._buffers: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] = (-1, [])

    def before_step(
        self, optimizers: list[torch.optim.Optimizer], tag: int, buffers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Remember ``optimizers``' parameters and state, about to step at step ``tag``, and ``buffers``
        ``(buffer, its value before the step's forward)``."""
        with torch.no_grad():
            for opt in optimizers:
                saved = self._saved.setdefault(id(opt), _Saved())
                saved.tag = tag
                params = optimizer_params(opt)
                local = local_shards(params)  # DTensor has no rule for _foreach_copy_; each rank saves its shard
                if len(saved.params) != len(params):
                    saved.params = [torch.empty_like(p) for p in local]
                torch._foreach_copy_(saved.params, local)
                saved.state = {p: _copy_state(opt.state[p], saved.state.get(p)) for p in params if opt.state.get(p)}
        # already copies (PendingUpdate's, which a dropped step restores); a step may commit in parts
        held_tag, held = self._buffers
        self._buffers = (tag, held + buffers if held_tag == tag else list(buffers))

    def restore(self, optimizers: list[torch.optim.Optimizer | None]) -> bool:
        """Put ``optimizers`` back to their state before the latest step recorded (only those that took it; a
        layer whose training ended earlier keeps its last state). Returns ``False`` if nothing was recorded."""
        live = [o for o in optimizers if o is not None and id(o) in self._saved]
        if not live:
            return False
        latest = max(self._saved[id(o)].tag for o in live)
        with torch.no_grad():
            for opt in live:
                saved = self._saved[id(opt)]
                if saved.tag != latest:
                    continue
                params = optimizer_params(opt)
                torch._foreach_copy_(local_shards(params), saved.params)
                for p in params:
                    if p not in saved.state:
                        opt.state.pop(p, None)  # created by the step being undone (Adam's first)
                    else:
                        opt.state[p] = _copy_state(saved.state[p], None)
            buffers_tag, buffers = self._buffers
            if buffers_tag == latest:
                for buf, before in buffers:
                    buf.copy_(before)
        self._saved.clear()  # one step back only: the state before that is not known
        self._buffers = (-1, [])
        return True


def _copy_state(state: dict[str, Any], into: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of one parameter's optimizer state, writing tensors into ``into``'s when their shapes match."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            old = into.get(key) if into is not None else None
            if isinstance(old, torch.Tensor) and old.shape == value.shape and old.dtype == value.dtype:
                out[key] = old.copy_(value)
            else:
                out[key] = value.clone()
        else:
            out[key] = copy.copy(value)
    return out
