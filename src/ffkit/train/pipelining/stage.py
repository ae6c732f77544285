"""A pipeline stage: layers ``start..end`` of the network updated by the shared :class:`~ffkit.LocalTrainer`'s
per-layer optimizers, and its part of a layer shared with a neighbouring stage (by samples or by units)."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from ...layers.base import LayerOutput
from ...objectives import PreparedBatch
from .._distributed import lost_peer, run_collective, wait_work
from ..local import LocalTrainer

__all__ = ["Share", "Stage", "sample_rows", "take_samples", "merge_samples"]


class Share:
    """This stage's part of a layer shared with a neighbouring stage: samples ``lo..hi-1`` of every batch
    (``mode="samples"``), or the layer's units ``lo..hi-1`` for the whole batch (``mode="units"``, a layer with
    ``split_units``: ``module`` is this stage's shard of the layer)."""

    def __init__(self, layer: int, lo: int, hi: int, batch_size: int, group: Any, mode: str = "samples") -> None:
        self.layer, self.lo, self.hi, self.batch_size, self.group = layer, lo, hi, batch_size, group
        self.mode = mode
        self.module: Any = None
        # the layer's loss is a mean over samples: weigh a part of the batch by its share
        self.scale = (hi - lo) / batch_size if mode == "samples" else 1.0


def sample_rows(n_rows: int, batch_size: int, lo: int, hi: int, device: torch.device) -> torch.Tensor:
    """Rows of a ``[n_rows, ...]`` tensor that hold samples ``lo..hi-1`` of a batch of ``batch_size``: positive and
    negative copies (``[2B, ...]``) keep their pairs."""
    reps = n_rows // batch_size
    return torch.cat([torch.arange(q * batch_size + lo, q * batch_size + hi, device=device) for q in range(reps)])


class Stage:
    """Layers ``start..end`` of the network, trained with the shared :class:`LocalTrainer`'s per-layer optimizers;
    optionally part of the batch of a layer shared with the previous stage (``head``) or the next (``tail``)."""

    def __init__(self, index: int, start: int, end: int, trainer: LocalTrainer, device: torch.device) -> None:
        net = trainer.network
        self.index, self.start, self.end = index, start, end
        self.trainer, self.device = trainer, device
        self.head: Share | None = None
        self.tail: Share | None = None
        self.sources_in = sorted(net.crossing_shortcuts(start - 1)) if start > 0 else []
        self.sources_out = sorted(net.crossing_shortcuts(end)) if end < len(net) - 1 else []
        self.keep = {end} | {s for s in self.sources_out if s >= start}
        self.steps = 0
        self.loss_sum: torch.Tensor | None = None
        self.correct_sum: torch.Tensor | None = None
        self.seen = 0
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.reduce_seconds = 0.0

    @property
    def layer_ids(self) -> list[int]:
        """Every layer this stage updates: its own and the ones it shares."""
        ids = list(range(self.start, self.end + 1))
        return ([self.head.layer] if self.head else []) + ids + ([self.tail.layer] if self.tail else [])

    @property
    def first_reported(self) -> int:
        """The first layer of this stage's training metrics: a shared layer is reported by the stage after the cut."""
        return self.head.layer if self.head else self.start

    def step(self, h: torch.Tensor, y: torch.Tensor, batch_size: int, shortcuts: dict[int, torch.Tensor],
             lead: tuple[torch.Tensor, torch.Tensor] | None = None):
        """One local update of this stage's layers; returns what the next stage needs. ``lead`` is the
        ``(loss [1], correct [1])`` of the shared layer before them, recorded first."""
        t = self.trainer
        began = time.perf_counter()
        batch = PreparedBatch(inputs=h, target=y, batch_size=batch_size, x=None)
        losses, correct, _, kept = t.train_layers(
            batch, h, start=self.start, end=self.end, shortcuts=shortcuts, keep=self.keep
        )
        if lead is not None:
            losses, correct = torch.cat([lead[0], losses]), torch.cat([lead[1], correct])
        t.step_schedules_of(range(self.start, self.end + 1))
        self.steps += 1
        self.last = (losses, correct)
        w = losses * batch_size
        self.loss_sum = w if self.loss_sum is None else self.loss_sum + w
        self.correct_sum = correct if self.correct_sum is None else self.correct_sum + correct
        self.seen += batch_size
        out = {s: (kept[s] if s in kept else shortcuts[s]) for s in self.sources_out}
        self.busy += time.perf_counter() - began
        return kept[self.end], out

    def share_step(self, share: Share, h: torch.Tensor, y: torch.Tensor, shortcuts: dict[int, torch.Tensor],
                   timeout: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update the shared layer on this stage's part of the batch (``h``: the part's rows of the layer's input,
        ``y``: the part's labels): its gradient, scaled by the part's share, is summed with the other stage's by one
        ``all_reduce`` before both take the same optimizer step. Returns the part's features and the whole batch's
        loss ``[1]`` and correct count ``[1]``."""
        t, j = self.trainer, share.layer
        began = time.perf_counter()
        params = [p for p in t.network.layers[j].parameters() if p.requires_grad]

        def reduce(i: int, loss: torch.Tensor, n_right: torch.Tensor):
            nonlocal began
            self.busy += time.perf_counter() - began
            grads = [p.grad for p in params if p.grad is not None]
            dtype = grads[0].dtype if grads else torch.float32
            flat = torch.cat([*(g.reshape(-1) for g in grads), loss.view(1).to(dtype), n_right.view(1).to(dtype)])
            waited = time.perf_counter()
            run_collective(f"pipeline stage {self.index} lost the stage it shares layer {j} with", timeout,
                           dist.all_reduce, flat, group=share.group)
            self.reduce_seconds += time.perf_counter() - waited
            began = time.perf_counter()
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            return flat[offset].float(), flat[offset + 1].round().long()

        batch = PreparedBatch(inputs=h, target=y, batch_size=share.hi - share.lo, x=None)
        losses, correct, _, kept = t.train_layers(batch, h, start=j, end=j, shortcuts=shortcuts, keep={j},
                                                  loss_scale=share.scale, before_step=reduce)
        t.step_schedules_of([j])  # both stages hold the layer's optimizer and schedule, and keep them equal
        self.busy += time.perf_counter() - began
        return kept[j], losses, correct

    def unit_forward(self, share: Share, h: torch.Tensor, y: torch.Tensor, batch_size: int,
                     timeout: float) -> dict[str, Any]:
        """First half of a unit-shard update: the forward of this stage's units on the whole batch, and the start
        of one asynchronous ``all_reduce`` that sums the two shards' goodness values (``[r * B]`` numbers).
        The features (``["features"]``) are final at once; :meth:`unit_finish` completes the update."""
        t = self.trainer
        began = time.perf_counter()
        with t.autocast():
            out = share.module(h, None)
        total = out.goodness.detach().float().clone()
        with lost_peer(f"pipeline stage {self.index} lost the stage it shares layer {share.layer} with",
                        timeout):
            work = dist.all_reduce(total, group=share.group, async_op=True)
        self.busy += time.perf_counter() - began
        return {"share": share, "out": out, "total": total, "work": work, "y": y, "h": h, "batch_size": batch_size,
                "features": out.features.detach()}

    def unit_finish(self, pending: dict[str, Any], timeout: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Second half: wait for the summed goodness, compute the whole layer's loss on it, and backpropagate into
        this stage's units only (the other shard's goodness is a constant), whose gradient is exactly the whole
        layer's gradient for them; then the optimizer and schedule step. Returns the loss ``[1]`` and correct
        count ``[1]`` of the whole layer."""
        t, share, out = self.trainer, pending["share"], pending["out"]
        waited = time.perf_counter()
        wait_work(pending["work"], timeout, f"pipeline stage {self.index} lost the stage it shares layer {share.layer} "
              "with")
        self.reduce_seconds += time.perf_counter() - waited
        began = time.perf_counter()
        part = out.goodness
        with t.autocast():
            goodness = part + (pending["total"].to(part.dtype) - part.detach())
            batch = PreparedBatch(inputs=pending["h"], target=pending["y"], batch_size=pending["batch_size"], x=None)
            loss, n_right = t.network.layer_loss(share.layer, LayerOutput(out.features, None, goodness), batch)
        opt = t.optimizers[share.layer]
        assert opt is not None, "a shared layer has parameters"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t.step_schedules_of([share.layer])
        self.busy += time.perf_counter() - began
        return loss.detach().float().view(1), n_right.view(1)

    def reset_metrics(self) -> None:
        self.loss_sum = self.correct_sum = None
        self.seen = 0
        self.busy = 0.0  # seconds spent in local steps this epoch (the stage-balance figure)
        self.reduce_seconds = 0.0


def take_samples(shortcuts: dict[int, torch.Tensor], batch_size: int, lo: int, hi: int) -> dict[int, torch.Tensor]:
    """Samples ``lo..hi-1`` of every shortcut tensor ``[r * B, ...]``."""
    return {s: v.index_select(0, sample_rows(v.shape[0], batch_size, lo, hi, v.device)) for s, v in shortcuts.items()}


def merge_samples(first: torch.Tensor, second: torch.Tensor, batch_size: int, m: int) -> torch.Tensor:
    """Reassemble a layer's features ``[r * B, ...]`` from the parts of samples ``0..m-1`` and ``m..B-1``."""
    reps = first.shape[0] // m
    n = batch_size - m
    pieces = []
    for q in range(reps):
        pieces += [first[q * m : (q + 1) * m], second[q * n : (q + 1) * n]]
    return torch.cat(pieces)
