"""``PipelineTrainer``: an FF network's layers split into stages that train concurrently on different batches.

No gradient crosses a layer boundary, so stage ``k`` can update its layers on batch ``i`` while stage ``k + 1`` updates
its layers on batch ``i - 1`` (DeeperForward Sec. 3.3 and App. G; Pipeline-FF). Every layer still sees exactly the
batches, in the same order and with the same weights, that :class:`~ffkit.LocalTrainer` would give it: a stage's input
for batch ``i`` is computed by the previous stage's layers after their ``i - 1`` updates, as in the sequential loop.
So the pipeline reproduces ``LocalTrainer``'s weights for any number of batches in flight (up to dropout masks,
which come from each stage's own random stream).

Two transports carry a stage's detached features, the labels and any residual-shortcut tensors to the next stage:

* ``backend="threads"``: one process, one thread per stage (one CUDA stream per stage on GPU), bounded queues.
* ``backend="distributed"``: one process per stage on ``torch.distributed`` point-to-point (gloo on CPU, NCCL on
  GPU), launched by ``torchrun``. A stage receives into a ring of ``queue_size`` buffers posted ahead with
  ``dist.batch_isend_irecv``, so it overlaps communication with its local step and the pipeline never drains.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .._version import __version__
from ..layers.base import LayerOutput
from ..network import FFNetwork
from ..objectives import PosNegObjective, PreparedBatch
from ._distributed import check_divergence_stop, check_timeout, default_device
from .base import EpochProgress, StepResult, Trainer, reject_mid_epoch
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .local import LocalTrainer
from .rng import capture_rng, restore_rng

__all__ = ["PipelineTrainer", "PipelineError"]

_BATCH, _EPOCH_END, _STOP = 0, 1, 2


class PipelineError(RuntimeError):
    """A pipeline stage failed, or lost contact with a peer stage; the message names the stage and the peer."""


class _Share:
    """This stage's part of a layer shared with a neighbouring stage: samples ``lo..hi-1`` of every batch
    (``mode="samples"``), or the layer's units ``lo..hi-1`` for the whole batch (``mode="units"``, a layer with
    ``split_units``: ``module`` is this stage's shard of the layer)."""

    def __init__(self, layer: int, lo: int, hi: int, batch_size: int, group: Any, mode: str = "samples") -> None:
        self.layer, self.lo, self.hi, self.batch_size, self.group = layer, lo, hi, batch_size, group
        self.mode = mode
        self.module: Any = None
        # the layer's loss is a mean over samples: weigh a part of the batch by its share
        self.scale = (hi - lo) / batch_size if mode == "samples" else 1.0


def _sample_rows(n_rows: int, batch_size: int, lo: int, hi: int, device: torch.device) -> torch.Tensor:
    """Rows of a ``[n_rows, ...]`` tensor that hold samples ``lo..hi-1`` of a batch of ``batch_size``: positive and
    negative copies (``[2B, ...]``) keep their pairs."""
    reps = n_rows // batch_size
    return torch.cat([torch.arange(q * batch_size + lo, q * batch_size + hi, device=device) for q in range(reps)])


class _Stage:
    """Layers ``start..end`` of the network, trained with the shared :class:`LocalTrainer`'s per-layer optimizers;
    optionally part of the batch of a layer shared with the previous stage (``head``) or the next (``tail``)."""

    def __init__(self, index: int, start: int, end: int, trainer: LocalTrainer, device: torch.device) -> None:
        net = trainer.network
        self.index, self.start, self.end = index, start, end
        self.trainer, self.device = trainer, device
        self.head: _Share | None = None
        self.tail: _Share | None = None
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

    def share_step(self, share: _Share, h: torch.Tensor, y: torch.Tensor, shortcuts: dict[int, torch.Tensor],
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
            what = f"pipeline stage {self.index} lost the stage it shares layer {j} with"
            with _lost_peer(what, timeout):
                work = dist.all_reduce(flat, group=share.group, async_op=True)
            _wait(work, timeout, what)
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

    def unit_forward(self, share: _Share, h: torch.Tensor, y: torch.Tensor, batch_size: int,
                     timeout: float) -> dict[str, Any]:
        """First half of a unit-shard update: the forward of this stage's units on the whole batch, and the start
        of one asynchronous ``all_reduce`` that sums the two shards' goodness values (``[r * B]`` numbers).
        The features (``["features"]``) are final at once; :meth:`unit_finish` completes the update."""
        t = self.trainer
        began = time.perf_counter()
        with t._autocast():
            out = share.module(h, None)
        total = out.goodness.detach().float().clone()
        with _lost_peer(f"pipeline stage {self.index} lost the stage it shares layer {share.layer} with",
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
        _wait(pending["work"], timeout, f"pipeline stage {self.index} lost the stage it shares layer {share.layer} "
              "with")
        self.reduce_seconds += time.perf_counter() - waited
        began = time.perf_counter()
        part = out.goodness
        with t._autocast():
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


class PipelineTrainer(Trainer):
    """Train an :class:`~ffkit.FFNetwork` as a pipeline of stages of consecutive layers.

    Args:
        network: the network (no classifier head, no Overlapping Local Updates: both need gradients or features
            across stages; adaptive negatives need the whole network on the first stage).
        stages: the split. An int ``S`` (``"auto"`` balancing chooses where to cut; otherwise equal layer counts), or
            the stages' first layers, e.g. ``(0, 2)`` for layers ``0..1`` and ``2..L-1``. With
            ``backend="distributed"`` the number of stages is the world size, and a start may be a non-integer
            ``j + f``: layer ``j`` is then shared, the stage before the cut runs the first fraction ``f`` of each
            batch's samples through it and the stage after it the rest (:mod:`ffkit.train.balance`).
        backend: ``"threads"`` (one process) or ``"distributed"`` (one process per stage, ``torch.distributed``).
        devices: one device per stage for ``"threads"`` (default: ``device`` for every stage); for
            ``"distributed"``, ``device`` is this rank's device (default CUDA ``LOCAL_RANK`` if available, else CPU).
        balance: ``"auto"``: profile each layer's local step on the first batch and cut where the slowest stage is
            fastest (:mod:`ffkit.train.balance`); ``"layers"``: equal layer counts. Ignored when ``stages`` gives the
            split.
        share_layers: let ``"auto"`` balancing share a layer between two neighbouring stages when whole layers
            cannot balance them (``backend="distributed"``; layers without BatchNorm, objectives whose layer loss is
            a mean over samples). The two stages sum the shared layer's gradients with one ``all_reduce`` per batch,
            so the weights stay those of :class:`~ffkit.LocalTrainer` up to rounding.
        queue_size: batches that may wait between two stages (threads), or receive buffers in a stage's ring
            (distributed; at least 2 so that communication overlaps computation).
        timeout: seconds a stage waits for its peer before it stops with :class:`PipelineError`.
        **trainer_options: the per-layer optimisation of :class:`~ffkit.LocalTrainer` (``lr``, ``schedule``,
            ``total_steps``, ...), which every stage uses for its layers.

    Batches must all have the same size (use ``DataLoader(drop_last=True)``): a stage posts its receives ahead.
    """

    mid_epoch_checkpoints = False  # its ranks checkpoint at epoch ends

    def __init__(
        self,
        network: FFNetwork,
        *,
        stages: int | str | Sequence[int] = 2,
        backend: str = "threads",
        devices: Sequence[str | torch.device] | None = None,
        device: str | torch.device | None = None,
        balance: str = "auto",
        share_layers: bool = True,
        queue_size: int = 2,
        timeout: float = 60.0,
        **trainer_options: Any,
    ) -> None:
        if not isinstance(network, FFNetwork):
            raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
        if backend not in ("threads", "distributed"):
            raise ValueError(f"backend must be 'threads' or 'distributed', got {backend!r}")
        if balance not in ("auto", "layers"):
            raise ValueError(f"balance must be 'auto' or 'layers', got {balance!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, got {queue_size!r}")
        check_timeout(timeout)
        check_divergence_stop(trainer_options, "PipelineTrainer")
        if trainer_options.get("overlap"):
            raise ValueError("overlap (OLU) sends gradients across layer boundaries; it cannot be pipelined")
        if network.head is not None:
            raise ValueError("PipelineTrainer does not train classifier heads yet (a head reads several stages' "
                             "features); train the head afterwards or use LocalTrainer")
        from ..data.negatives import AdaptiveNegative

        if isinstance(getattr(network.objective, "negatives", None), AdaptiveNegative):
            raise ValueError("adaptive negatives need the whole network on the first stage; use RandomNegative or "
                             "FixedNegative with PipelineTrainer")
        self.backend = backend
        self.queue_size = queue_size
        self.timeout = float(timeout)
        self.balance = balance
        if not isinstance(share_layers, bool):
            raise TypeError(f"share_layers must be a bool, got {type(share_layers).__name__}")
        self.share_layers = share_layers and backend == "distributed"
        self.rank, self.world = 0, 1
        if backend == "distributed":
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("backend='distributed' needs torch.distributed initialised: launch with torchrun "
                                   "and call ffkit.train.pipeline.init_distributed() (the CLI does)")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if device is None:
                device = default_device()
            devices = [device] * self.world
        n_stages = self.world if backend == "distributed" else _count_stages(stages, len(network))
        if devices is None:
            devices = [device or "cpu"] * n_stages
        if len(devices) != n_stages:
            raise ValueError(f"devices must name one device per stage ({n_stages}), got {len(devices)}")
        self.devices = [torch.device(d) for d in devices]
        here = self.devices[self.rank]
        self.inner = LocalTrainer(network, device=here, **trainer_options)
        self.network = self.inner.network
        self.device = here
        self.optimizers = self.inner.optimizers
        self.schedulers = self.inner.schedulers
        self.lr, self.final_lr = self.inner.lr, self.inner.final_lr
        self.starts: tuple[float, ...] | None = None
        if not isinstance(stages, (int, str)):
            from .balance import check_split, shared_layers

            self.starts = check_split(tuple(stages), len(network), shared=True)
            if len(self.starts) != n_stages:
                raise ValueError(f"stages gives {len(self.starts)} stages, but there are {n_stages} processes/devices")
            bad = [j for j in shared_layers(self.starts) if not _shareable(network)[j]]
            if bad:
                raise ValueError(f"stages {self.starts} shares layers {bad}, which cannot be split by samples (they "
                                 "hold BatchNorm, or the objective's layer loss is not a mean over samples)")
            if backend != "distributed" and shared_layers(self.starts):
                raise ValueError(f"stages {self.starts} shares a layer between stages, which needs "
                                 "backend='distributed'; give whole layers (integer starts) with threads")
        self.n_stages = n_stages
        self.balance_report: dict[str, Any] | None = None
        self._stages: list[_Stage] = []
        self._share_batch: int | None = None  # the batch size the shared layers' parts were cut for
        self._bytes_per_second = math.inf
        self._pending_units: dict[str, Any] | None = None  # the first stage's unit-shard update, finished later
        self._shape_spec: list[dict[str, Any]] | None = None
        self._link: _Link | None = None
        self._out_dir: Path | None = None
        self._init_progress()

    # -- setup ------------------------------------------------------------------------------------------------------
    def _plan(self, x: torch.Tensor | None, y: torch.Tensor | None, index: torch.Tensor | None = None) -> None:
        """Choose the split (profiling on the first batch if balancing is automatic) and place the stages."""
        from .balance import shared_layers

        if self.starts is None and self.balance == "auto" and self.n_stages > 1:
            self._bytes_per_second = self._probe_bandwidth() if self.share_layers else math.inf
            report = None
            if self.rank == 0:
                assert x is not None and y is not None, "rank 0 plans on the first batch"
                report = self._profile(x, y, index)
            report = self._broadcast(report)
            self.balance_report = report
            self.starts = tuple(report["starts"])
        elif self.starts is None:
            n, s = len(self.network), self.n_stages
            self.starts = tuple(round(k * n / s) for k in range(s))
        starts = self.starts
        shares = shared_layers(starts)
        if shares and self._share_batch is None:
            self._share_batch = self._broadcast(int(x.shape[0]) if x is not None and self.rank == 0 else None)
        batch = self._share_batch
        bounds = [*starts, len(self.network)]
        self._stages = []
        for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
            first, last = math.ceil(a), math.floor(b) - 1
            if self.backend == "threads" and self.devices[k] != self.device:
                self.network.layers[first : last + 1].to(self.devices[k])
            self._stages.append(_Stage(k, first, last, self.inner, self.devices[k]))
        for k in range(1, self.n_stages):  # every rank creates every group, in the same order (new_group's rule)
            j = math.floor(starts[k])
            if j not in shares:
                continue
            if batch is None:
                raise RuntimeError("the batch size of a shared layer's parts is unknown (a stage file without it?)")
            group = dist.new_group([k - 1, k], timeout=timedelta(seconds=self.timeout))
            mode = _share_mode(self.network, j)
            n = batch if mode == "samples" else self.network.layers[j].num_units
            m = round(shares[j] * n)
            if not 0 < m < n:
                raise ValueError(f"layer {j} has too few {mode} ({n}) to share as the split {starts} asks "
                                 f"({shares[j]:.3f} on stage {k - 1}); give whole layers")
            self._stages[k - 1].tail = _Share(j, 0, m, batch, group, mode)
            self._stages[k].head = _Share(j, m, n, batch, group, mode)
        self._attach_shards()

    def _attach_shards(self) -> None:
        """Each stage that shares a layer by units trains its own shard of it: the layer's optimizer (and so its
        schedule) is pointed at the shard's parameters; Adam and SGD act element by element, so the shards' steps
        are the whole layer's."""
        for st in self._stages:
            for share in (st.head, st.tail):
                if share is None or share.mode != "units" or share.module is not None:
                    continue
                if self.backend == "distributed" and st.index != self.rank:
                    continue
                share.module = self.network.layers[share.layer].split_units(share.lo, share.hi)
                opt = self.optimizers[share.layer]
                assert opt is not None and not opt.state, "shards are cut before the first step"
                opt.param_groups[0]["params"] = list(share.module.parameters())

    def _broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank of a distributed pipeline."""
        if self.backend != "distributed":
            return value
        box = [value]
        with _lost_peer(f"pipeline rank {self.rank} of {self.world} lost rank 0 while receiving its plan",
                        self.timeout):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def _probe_bandwidth(self, nbytes: int = 1 << 22) -> float:
        """Bytes per second of an ``all_reduce`` between this pipeline's ranks (every rank takes part): what
        sharing a layer by samples pays per batch for its gradient."""
        buf = torch.zeros(nbytes // 4, device=self.device)
        seconds = []
        for _ in range(4):
            began = time.perf_counter()
            dist.all_reduce(buf)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds.append(time.perf_counter() - began)
        return nbytes / max(sorted(seconds[1:])[1], 1e-9)

    def _profile(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> dict[str, Any]:
        """Rank 0: time each layer's local step on the first batch and choose the split (:mod:`.balance`)."""
        from .balance import balance_stages, profile_layers, stage_balance, stage_times

        costs = profile_layers(self.inner, x, y, index=index, warmup=2, steps=5)
        # The first stage also prepares every batch (label encoding, negatives): charge it to layer 0.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            began = time.perf_counter()
            for _ in range(3):
                self._prepare(x, y, index)
            prep = (time.perf_counter() - began) / 3
        seconds = [costs.seconds[0] + prep, *costs.seconds[1:]]
        shareable = _shareable(self.network) if self.share_layers else None
        # A share must hold at least one sample on each side.
        min_share = min(0.49, max(0.05, 1.0 / x.shape[0]))
        extra = [0.0 if _share_mode(self.network, j) == "units" else  # a [r * B] goodness exchange
                 2 * sum(p.numel() * p.element_size() for p in layer.parameters()) / self._bytes_per_second
                 for j, layer in enumerate(self.network.layers)]
        starts = balance_stages(seconds, self.n_stages, shareable=shareable, min_share=min_share, share_seconds=extra)
        times = stage_times(seconds, starts)
        return {"layer_seconds": list(costs.seconds), "layer_peak_bytes": list(costs.peak_bytes),
                "prepare_seconds": prep, "starts": list(starts), "stage_seconds": times,
                "predicted_balance": stage_balance(times)}

    @property
    def stage_ranges(self) -> list[tuple[int, int]]:
        """``[(first_layer, last_layer)]`` of every stage (after the first batch has fixed the split)."""
        return [(s.start, s.end) for s in self._stages]

    # -- training -----------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One batch through every stage, in order (no concurrency): the pipeline with one batch in flight."""
        record = self._run([(x, y, index)], concurrent=False)
        return record["last_step"]

    def train_epoch(self, loader: Iterable, *, progress: bool = False, desc: str = "train",
                    position: EpochProgress | None = None,
                    on_batch: Callable[[EpochProgress], None] | None = None) -> dict[str, Any]:
        """One pass over ``loader`` with every stage working concurrently; per-layer means as ``LocalTrainer``."""
        reject_mid_epoch(self, position, on_batch)
        batches = ((b[0], b[1], b[2] if len(b) > 2 else None) for b in loader)
        record = self._run(batches, concurrent=True)["record"]
        self.gather_network()  # every rank takes part; rank 0 then holds the whole trained network
        if self.rank > 0 and self._out_dir is not None:
            self.epoch += 1  # Trainer.fit counts the epoch after this returns; the stage file must say it is done
            _save_stage(self.stage_state(self.rank), self._out_dir / "checkpoint.pt", self.rank, self.n_stages)
            self.epoch -= 1
        return record

    def _run(self, batches: Iterable, concurrent: bool) -> dict[str, Any]:
        it = iter(batches) if self.rank == 0 else iter(())
        first = next(it, None) if self.rank == 0 else None
        if self.rank == 0 and first is None:
            raise ValueError("the training data is empty: no batch was produced")
        if not self._stages:
            x0 = y0 = i0 = None
            if first is not None:  # rank 0
                x0, y0 = self.inner._batch_to_device(first[0], first[1])
                i0 = first[2].to(self.device) if first[2] is not None else None
            self._plan(x0, y0, i0)
        if self.backend == "distributed" and self.rank == 0 and self._shape_spec is None:
            self._shape_spec = self._shapes(first)
        for st in self._stages:
            st.reset_metrics()
        start = time.perf_counter()

        def feed():
            if first is not None:
                yield first
            yield from it

        if self.backend == "threads":
            self._run_threads(feed(), concurrent)
        else:
            self._run_distributed(feed())
        seconds = time.perf_counter() - start
        done = [st.last for st in self._stages if st.last is not None]
        last = StepResult(torch.cat([d[0] for d in done]), torch.cat([d[1] for d in done]), self._batch_size, None)
        return {"record": self._epoch_record(seconds), "last_step": last}

    def _shapes(self, first) -> list[dict[str, Any]]:
        """What each stage sends for one batch: feature, label and shortcut shapes (one no-grad pass, RNG kept)."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            h0, y0, b = self._prepare(*first)
            feats = {i: out.features for i, out in self.network.iter_layers(h0)}
        spec = []
        for st in self._stages:
            h, share = tuple(feats[st.end].shape), None
            if st.tail is not None and st.tail.mode == "units":  # the whole input, then this stage's units
                shared = feats[st.tail.layer].shape
                share = (shared[0], st.tail.hi, *shared[2:])
            elif st.tail is not None:  # the next stage gets the input rows of its part of the shared layer first ...
                rows = feats[st.end].shape[0] // b
                h = (rows * (b - st.tail.hi), *h[1:])
                # ... and the shared layer's features of this stage's part after the gradient exchange
                share = (rows * st.tail.hi, *feats[st.tail.layer].shape[1:])
            spec.append({"h": h, "y": tuple(y0.shape), "dtype": feats[st.end].dtype, "share": share,
                         "sc": {s: tuple(feats[s].shape) for s in st.sources_out},
                         "batch_size": b, "h_in": tuple(h0.shape)})
        return spec

    def _prepare(self, x, y, index) -> tuple[torch.Tensor, torch.Tensor, int]:
        t = self.inner
        x, y = t._batch_to_device(x, y)
        if index is not None:
            index = index.to(t.device)
        batch = self.network.objective.prepare(self.network, x, y, index)
        self._batch_size = batch.batch_size
        return batch.inputs, y, batch.batch_size

    def _epoch_record(self, seconds: float) -> dict[str, Any]:
        """Per-layer means over the epoch (on distributed runs, gathered to every rank)."""
        parts = [(s.first_reported, s.loss_sum, s.correct_sum, s.seen, s.busy) for s in self._stages
                 if s.seen and s.loss_sum is not None and s.correct_sum is not None]
        if self.backend == "distributed":
            gathered: list[Any] = [None] * self.world
            mine = [(a, ls.cpu(), cs.cpu(), n, busy) for a, ls, cs, n, busy in parts]
            with _lost_peer(f"pipeline rank {self.rank} of {self.world} lost a peer while gathering the epoch's "
                            f"losses", self.timeout):
                dist.all_gather_object(gathered, mine)
            parts = [p for g in gathered for p in g]
        if not parts:
            raise ValueError("the training data is empty: no batch was produced")
        parts.sort(key=lambda p: p[0])
        seen = parts[0][3]
        losses = torch.cat([p[1].cpu() for p in parts]) / seen
        correct = torch.cat([p[2].cpu() for p in parts]).double() / seen
        self.step_count = max(s.steps for s in self._stages) if self._stages else self.step_count
        return {
            "train_loss": losses.tolist(),
            "train_acc": correct.tolist(),
            "train_images": seen,
            "train_seconds": seconds,
            "train_images_per_s": seen / seconds,
            "stages": [[st.start, st.end] for st in self._stages],
            "stage_starts": list(self.starts or ()),
            "shared_layers": self.shared_layers,
            "stage_busy_seconds": [p[4] for p in parts],
        }

    @property
    def shared_layers(self) -> list[dict[str, Any]]:
        """The layers two stages share: ``{"layer", "stages", "by", "split"}``: split by ``"samples"`` (samples per
        batch on each stage) or by ``"units"`` (the layer's units on each stage)."""
        out = []
        for st in self._stages:
            if st.tail is not None:
                nxt = self._stages[st.index + 1].head
                assert nxt is not None, "a shared layer has a part on both stages"
                out.append({"layer": st.tail.layer, "stages": [st.index, st.index + 1], "by": st.tail.mode,
                            "split": [st.tail.hi - st.tail.lo, nxt.hi - nxt.lo]})
        return out

    # -- threads ------------------------------------------------------------------------------------------------
    def _run_threads(self, batches: Iterable, concurrent: bool) -> None:
        stages = self._stages
        if not concurrent:
            for x, y, index in batches:
                h, y, b = self._prepare(x, y, index)
                sc: dict[int, torch.Tensor] = {}
                for st in stages:
                    h, sc = st.step(h.to(st.device), y.to(st.device), b, {k: v.to(st.device) for k, v in sc.items()})
            return None
        queues: list[queue.Queue] = [queue.Queue(maxsize=self.queue_size) for _ in range(len(stages) - 1)]
        errors: list[BaseException] = []
        stop = threading.Event()

        def put(q: queue.Queue, item) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def get(q: queue.Queue, k: int):
            waited = 0.0
            while not stop.is_set():
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    waited += 0.1
                    if waited > self.timeout:
                        raise PipelineError(f"stage {k} waited {self.timeout:.0f} s for stage {k - 1}") from None
            return None

        def worker(k: int) -> None:
            st = stages[k]
            stream = torch.cuda.Stream(st.device) if st.device.type == "cuda" else None
            try:
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    while True:
                        if k == 0:
                            item = next(source, None)
                            if item is None:
                                break
                            began = time.perf_counter()
                            h, y, b = self._prepare(*item)
                            st.busy += time.perf_counter() - began
                            sc: dict[int, torch.Tensor] = {}
                        else:
                            item = get(queues[k - 1], k)
                            if item is None:
                                break
                            h, y, b, sc = item
                            h, y = h.to(st.device, non_blocking=True), y.to(st.device, non_blocking=True)
                            sc = {s: v.to(st.device, non_blocking=True) for s, v in sc.items()}
                            if stream is not None:  # the tensors were produced on the previous stage's stream
                                stream.wait_stream(torch.cuda.default_stream(st.device))
                        h, sc = st.step(h, y, b, sc)
                        if k < len(stages) - 1:
                            if stream is not None:
                                stream.synchronize()
                            put(queues[k], (h, y, b, sc))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller with the stage named
                errors.append(e if isinstance(e, PipelineError) else _stage_error(k, e))
                stop.set()
            finally:
                if k < len(stages) - 1 and not stop.is_set():
                    put(queues[k], None)

        source = iter(batches)
        threads = [threading.Thread(target=worker, args=(k,), name=f"ffkit-stage-{k}", daemon=True)
                   for k in range(len(stages))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return None

    # -- distributed ----------------------------------------------------------------------------------------------
    def _run_distributed(self, batches: Iterable) -> None:
        st = self._stages[self.rank]
        try:
            if self._link is None:
                prev = self.rank - 1 if self.rank > 0 else None
                nxt = self.rank + 1 if self.rank < self.world - 1 else None
                self._link = _Link(self, st, prev, nxt)
            link = self._link
            if self.rank == 0:
                for x, y, index in batches:
                    began = time.perf_counter()
                    h, y, b = self._prepare(x, y, index)
                    st.busy += time.perf_counter() - began  # preparing batches is the first stage's work too
                    link.check_batch(h, y, b)
                    self._stage_step(st, link, h, y, b, {})
                self._finish_units(st)
                link.send(_EPOCH_END)
            else:
                while True:
                    kind, h, y, sc = link.recv()
                    if kind != _BATCH:
                        self._finish_units(st)
                        link.send(kind)
                        if kind == _STOP:
                            self._link = None
                        break
                    b = self._batch_size = link.batch_size
                    lead = None
                    if st.head is not None and st.head.mode == "units":  # h is the shared layer's whole input
                        pending = st.unit_forward(st.head, h, y, b, self.timeout)
                        loss, right = st.unit_finish(pending, self.timeout)
                        h = torch.cat([link.recv_share(), pending["features"]], dim=1)
                        sc = {**sc, st.head.layer: h}
                        lead = (loss, right)
                    elif st.head is not None:  # h holds this stage's rows of the shared layer's input
                        j = st.head.layer
                        mine, loss, right = st.share_step(st.head, h, y[st.head.lo :], _take(sc, b, st.head.lo, b),
                                                          self.timeout)
                        theirs = link.recv_share()
                        h = _merge(theirs, mine, b, st.head.lo)
                        sc = {**sc, j: h}
                        lead = (loss, right)
                    self._stage_step(st, link, h, y, b, sc, lead)
            link.flush()
        except PipelineError:
            raise
        except RuntimeError as e:  # the step itself failed (a lost peer is a PipelineError already)
            raise PipelineError(
                f"pipeline stage {self.rank} (rank {self.rank} of {self.world}) failed: {type(e).__name__}: {e}"
            ) from e

    def _finish_units(self, st: _Stage) -> None:
        if self._pending_units is not None:
            pending, self._pending_units = self._pending_units, None
            st.unit_finish(pending, self.timeout)

    def _stage_step(self, st: _Stage, link: _Link, h, y, b: int, sc: dict, lead=None) -> None:
        """This stage's whole layers on the batch, then (if it shares the next layer) its part of that layer."""
        h, sc = st.step(h, y, b, sc, lead)
        if st.tail is None:
            link.send(_BATCH, h, y, sc)
            return
        if st.tail.mode == "units":
            link.send(_BATCH, h, y, sc)  # the next stage runs its units on the same input at the same time
            self._finish_units(st)  # the previous batch's update: this shard's weights must be current
            self._pending_units = st.unit_forward(st.tail, h, y, b, self.timeout)
            link.send_share(self._pending_units["features"])
            # The update itself waits for the next batch (or the epoch's end): the goodness exchange then costs
            # this stage no waiting, while the next stage runs its units.
            return
        m = st.tail.hi
        rows_next = _sample_rows(h.shape[0], b, m, b, h.device)
        rows_mine = _sample_rows(h.shape[0], b, 0, m, h.device)
        link.send(_BATCH, h.index_select(0, rows_next), y, sc)  # the next stage starts its part at once
        feats, _, _ = st.share_step(st.tail, h.index_select(0, rows_mine), y[:m], _take(sc, b, 0, m), self.timeout)
        link.send_share(feats)

    def close(self) -> None:
        """Distributed: tell every stage that training is over (rank 0 starts it), so no receive stays posted."""
        if self.backend != "distributed" or self._link is None:
            return
        try:
            if self.rank == 0:
                self._link.send(_STOP)
                self._link.flush()
            else:
                while self._link is not None:
                    kind, *_ = self._link.recv()
                    if kind == _STOP:
                        self._link.send(_STOP)
                        self._link.flush()
                        break
        finally:
            self._link = None

    def fit(self, train, *, epochs: int, holdout=None, test=None, out_dir=None, **kwargs):
        """As :meth:`Trainer.fit`. On a distributed run every rank trains its stage and writes its stage checkpoint;
        rank 0 also evaluates (after gathering the layers), logs and writes the metrics and the whole checkpoint."""
        self._out_dir = Path(out_dir) if out_dir is not None else None
        try:
            if self.rank == 0:
                history = super().fit(train, epochs=epochs, holdout=holdout, test=test, out_dir=out_dir, **kwargs)
            else:
                kwargs["log"] = None
                history = super().fit(train, epochs=epochs, **kwargs)
        except BaseException:
            # No goodbye after a failure: the peers may be gone, and waiting for their STOP would hold this
            # rank's error back for the whole timeout.
            self._link = None
            raise
        self.close()
        return history

    # -- state ----------------------------------------------------------------------------------------------------
    def gather_network(self) -> None:
        """Distributed: bring every stage's layer weights to rank 0's copy of the network (for evaluation)."""
        if self.backend != "distributed" or self.world == 1:
            return
        st = self._stages[self.rank]
        gathered: list[Any] = [None] * self.world
        with _lost_peer(f"pipeline rank {self.rank} of {self.world} lost a peer while gathering the layers",
                        self.timeout):
            dist.all_gather_object(gathered, (self._layer_states(st), self._unit_shards(st)))
        for rank, (states, shards) in enumerate(gathered):
            if rank != self.rank:
                for i, state in states.items():
                    self.network.layers[i].load_state_dict(state)
                for i, (lo, hi, state) in shards.items():
                    shard = self.network.layers[i].split_units(lo, hi)
                    shard.load_state_dict(state)
                    shard.push_units(self.network.layers[i], lo)

    def _layer_states(self, st: _Stage) -> dict[int, dict[str, torch.Tensor]]:
        """The states of the layers this stage updates whole or by samples (its copy of a shared one is current)."""
        units = {s.layer for s in (st.head, st.tail) if s is not None and s.mode == "units"}
        return {i: {k: v.cpu() for k, v in self.network.layers[i].state_dict().items()}
                for i in st.layer_ids if i not in units}

    def _unit_shards(self, st: _Stage) -> dict[int, tuple[int, int, dict[str, torch.Tensor]]]:
        """``{layer: (lo, hi, state)}`` of this stage's unit shards; also written into its copy of the layer."""
        out = {}
        for s in (st.head, st.tail):
            if s is not None and s.mode == "units" and s.module is not None:
                s.module.push_units(self.network.layers[s.layer], s.lo)
                out[s.layer] = (s.lo, s.hi, {k: v.cpu() for k, v in s.module.state_dict().items()})
        return out

    def stage_state(self, k: int) -> dict[str, Any]:
        st = self._stages[k]
        idx = st.layer_ids
        return {
            "ffkit_checkpoint_format": CHECKPOINT_FORMAT,
            "ffkit_version": __version__,
            "model_name": self.network.model_name,
            "model_kwargs": self.network.model_kwargs,
            "stage": k,
            "starts": list(self.starts or ()),
            "share_batch_size": self._share_batch,
            "layers": self._layer_states(st),
            "unit_shards": self._unit_shards(st),
            "optimizers": {i: opt.state_dict() for i in idx if (opt := self.optimizers[i]) is not None},
            "schedulers": {i: sch.state_dict() for i in idx if (sch := self.schedulers[i]) is not None},
            "steps": st.steps,
            "epoch": self.epoch,
            "history": self.history,
            "rng": capture_rng(self.network),
        }

    def save(self, path: str | Path, *, position: EpochProgress | None = None) -> Path:
        """Each stage writes ``<path stem>.stage<k>-of-<S>.pt`` (its layers, optimizers, schedules, progress), and
        rank 0 also writes the whole network's checkpoint at ``path`` (loadable by ``ffkit test``).

        A stage's previous file is kept as ``<path stem>.stage<k>-of-<S>.prev.pt``: the ranks of a distributed run
        write their files at different moments, so a job that dies between two of them leaves stages one epoch
        apart, and :meth:`resume` then takes the latest epoch that every stage has."""
        reject_mid_epoch(self, position, None)
        path = Path(path)
        ks = [self.rank] if self.backend == "distributed" else range(len(self._stages))
        for k in ks:
            _save_stage(self.stage_state(k), path, k, self.n_stages)
        if self.rank == 0:
            super().save(path)
        return path

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Every stage reloads its own stage file; the split is the saved one. When the stages' latest files are of
        different epochs (a job that died between two ranks' writes), every stage takes its file of the latest epoch
        that all of them have (its current or its previous file)."""
        path = Path(path)
        mine = [self.rank] if self.backend == "distributed" else list(range(self.n_stages))
        found = {k: _stage_files(path, k, self.n_stages) for k in mine}
        if self.backend == "distributed" and self.world > 1:
            gathered: list[Any] = [None] * self.world
            with _lost_peer(f"pipeline rank {self.rank} of {self.world} lost a peer while resuming", self.timeout):
                dist.all_gather_object(gathered, {k: sorted(f) for k, f in found.items()})
            epochs = {k: set(e) for g in gathered for k, e in g.items()}
        else:
            epochs = {k: set(f) for k, f in found.items()}
        common = set.intersection(*epochs.values())
        if not common:
            have = ", ".join(f"stage {k}: {sorted(e) or 'none'}" for k, e in sorted(epochs.items()))
            raise ValueError(f"the stage checkpoints next to {path} have no epoch in common ({have}); every stage "
                             f"needs a file <stem>.stage<k>-of-{self.n_stages}.pt or .prev.pt of the same epoch")
        epoch = max(common)
        payloads = {k: found[k][epoch] for k in mine}
        first = payloads[mine[0]]
        self.starts = tuple(first["starts"])
        self._share_batch = first.get("share_batch_size")
        self._plan(None, None)
        for k in mine:
            payload = payloads[k]
            st = self._stages[k]
            for i, state in payload["layers"].items():
                self.network.layers[i].load_state_dict(state)
            for share in (st.head, st.tail):
                if share is not None and share.mode == "units" and share.module is not None:
                    share.module.load_state_dict(payload["unit_shards"][share.layer][2])
                    share.module.push_units(self.network.layers[share.layer], share.lo)
            self._load_optimizer_states(payload["optimizers"].items(), payload["schedulers"].items())
            st.steps = payload["steps"]
            self.epoch = payload["epoch"]
            self.history = list(payload["history"])
        self.step_count = max(s.steps for s in self._stages)
        # Each process continues its random stream (negative labels on the first stage, dropout masks) where it was
        # saved; with threads, every stage file holds the one process's state.
        rng = first["rng"]
        restore_rng({"torch": rng} if isinstance(rng, torch.Tensor) else rng, self.network)  # older files: a tensor
        if self.backend == "distributed":
            self.gather_network()
        return first


class _Link:
    """This rank's point-to-point channels: a ring of receive buffers posted ahead, and sends kept until done.

    When this stage shares a layer with the previous one, each slot of the ring has a second part, posted after the
    first: the previous stage's features of its part of the shared layer, which it sends after the gradient exchange.
    Messages between two ranks are matched in the order they were posted, so the two parts never cross."""

    def __init__(self, trainer: PipelineTrainer, stage: _Stage, prev: int | None, nxt: int | None) -> None:
        self.t, self.stage, self.prev, self.nxt = trainer, stage, prev, nxt
        self.ring = max(2, trainer.queue_size)
        self.pending: list[tuple[list, list]] = []
        self.slots: list[dict[str, Any]] = []
        self.received = 0
        self.batch_size = 0
        self.shapes = _exchange_shapes(trainer)
        self.parts = 2 if nxt is not None and self.shapes[trainer.rank]["share"] is not None else 1
        if prev is not None:
            spec = self.shapes[prev]
            self.batch_size = spec["batch_size"]
            for _ in range(self.ring):
                self.slots.append(self._alloc(spec))
            for slot in self.slots:
                self._post(slot)

    def _alloc(self, spec: dict[str, Any]) -> dict[str, Any]:
        dev = self.t.device
        return {
            "header": torch.zeros(3, dtype=torch.int64, device=dev),
            "h": torch.empty(spec["h"], dtype=spec["dtype"], device=dev),
            "y": torch.empty(spec["y"], dtype=torch.int64, device=dev),
            "sc": {s: torch.empty(shape, dtype=spec["dtype"], device=dev) for s, shape in spec["sc"].items()},
            "share": None if spec["share"] is None else torch.empty(spec["share"], dtype=spec["dtype"], device=dev),
        }

    def _tensors(self, slot) -> list[torch.Tensor]:
        return [slot["header"], slot["h"], slot["y"], *(slot["sc"][s] for s in sorted(slot["sc"]))]

    def _post(self, slot) -> None:
        with _lost_peer(f"pipeline stage {self.t.rank} (rank {self.t.rank} of {self.t.world}) lost the previous "
                        f"stage (rank {self.prev}) while posting a receive", self.t.timeout):
            slot["works"] = dist.batch_isend_irecv([dist.P2POp(dist.irecv, t, self.prev)
                                                    for t in self._tensors(slot)])
            if slot["share"] is not None:
                slot["share_works"] = dist.batch_isend_irecv([dist.P2POp(dist.irecv, slot["share"], self.prev)])

    def _wait_recv(self, works) -> None:
        for w in works:
            _wait(w, self.t.timeout, f"pipeline stage {self.t.rank} (rank {self.t.rank} of {self.t.world}) lost the "
                  f"previous stage (rank {self.prev}) while waiting for its next batch")

    def recv(self):
        slot = self.slots[self.received % self.ring]
        self._wait_recv(slot["works"])
        kind = int(slot["header"][0])
        # The layers read h and y during the step; clone so the slot can be posted again at once.
        h, y = slot["h"].clone(), slot["y"].clone()
        sc = {s: v.clone() for s, v in slot["sc"].items()}
        if slot["share"] is None or kind != _BATCH:
            self._release(slot, kind)
        return kind, h, y, sc

    def recv_share(self) -> torch.Tensor:
        """The previous stage's features of its part of the shared layer, for the batch :meth:`recv` returned."""
        slot = self.slots[self.received % self.ring]
        self._wait_recv(slot["share_works"])
        feats = slot["share"].clone()
        self._release(slot, _BATCH)
        return feats

    def _release(self, slot, kind: int) -> None:
        if slot["share"] is not None and kind != _BATCH:  # a control message's placeholder: nothing to read
            self._wait_recv(slot["share_works"])
        self.received += 1
        if kind != _STOP:  # after STOP nothing more comes: leave no receive posted
            self._post(slot)

    def check_batch(self, h: torch.Tensor, y: torch.Tensor, b: int) -> None:
        spec = self.shapes[0]
        if tuple(h.shape) != tuple(spec["h_in"]) or b != spec["batch_size"]:
            raise ValueError(f"PipelineTrainer needs batches of one size ({spec['batch_size']}): use "
                             f"DataLoader(drop_last=True); got a batch of {b}")

    def send(self, kind: int, h=None, y=None, sc=None) -> None:
        if self.nxt is None:
            return
        spec = self.shapes[self.t.rank]
        dev = self.t.device
        control = h is None
        if control:  # the payload keeps its shapes so the receiver's posted buffers match
            h = torch.zeros(spec["h"], dtype=spec["dtype"], device=dev)
            y = torch.zeros(spec["y"], dtype=torch.int64, device=dev)
            sc = {s: torch.zeros(shape, dtype=spec["dtype"], device=dev) for s, shape in spec["sc"].items()}
        header = torch.tensor([kind, 0, 0], dtype=torch.int64, device=dev)
        self._isend([header, h.contiguous(), y.to(torch.int64), *(sc[s].contiguous() for s in sorted(sc))])
        if control and spec["share"] is not None:
            self.send_share(torch.zeros(spec["share"], dtype=spec["dtype"], device=dev))

    def send_share(self, feats: torch.Tensor) -> None:
        """This stage's features of its part of the layer it shares with the next stage."""
        self._isend([feats.contiguous()])

    def _isend(self, tensors: list[torch.Tensor]) -> None:
        # gloo may report a peer that stopped reading at the send itself, not only at the wait
        with _lost_peer(f"pipeline stage {self.t.rank} (rank {self.t.rank} of {self.t.world}) lost the next stage "
                        f"(rank {self.nxt}) while sending it a batch", self.t.timeout):
            works = dist.batch_isend_irecv([dist.P2POp(dist.isend, t, self.nxt) for t in tensors])
        self.pending.append((works, tensors))
        while len(self.pending) > self.ring * self.parts:  # wait on a send only when its buffers would be reused
            self._wait_send(self.pending.pop(0))

    def _wait_send(self, item) -> None:
        for w in item[0]:
            _wait(w, self.t.timeout, f"pipeline stage {self.t.rank} (rank {self.t.rank} of {self.t.world}) lost the "
                  f"next stage (rank {self.nxt}) while sending it a batch")

    def flush(self) -> None:
        while self.pending:
            self._wait_send(self.pending.pop(0))


def _take(shortcuts: dict[int, torch.Tensor], batch_size: int, lo: int, hi: int) -> dict[int, torch.Tensor]:
    """Samples ``lo..hi-1`` of every shortcut tensor ``[r * B, ...]``."""
    return {s: v.index_select(0, _sample_rows(v.shape[0], batch_size, lo, hi, v.device)) for s, v in shortcuts.items()}


def _merge(first: torch.Tensor, second: torch.Tensor, batch_size: int, m: int) -> torch.Tensor:
    """Reassemble a layer's features ``[r * B, ...]`` from the parts of samples ``0..m-1`` and ``m..B-1``."""
    reps = first.shape[0] // m
    n = batch_size - m
    pieces = []
    for q in range(reps):
        pieces += [first[q * m : (q + 1) * m], second[q * n : (q + 1) * n]]
    return torch.cat(pieces)


def _exchange_shapes(t: PipelineTrainer) -> list[dict[str, Any]]:
    """Every rank learns the shapes each stage sends: rank 0 runs one no-grad pass on a batch of the right size."""
    spec: list[Any] = [None]
    if t.rank == 0:
        assert t._shape_spec is not None, "rank 0 measures the shapes before the link is built"
        spec[0] = [{**d, "dtype": str(d["dtype"]).replace("torch.", "")} for d in t._shape_spec]
    with _lost_peer(f"pipeline rank {t.rank} of {t.world} lost rank 0 while receiving the stage shapes", t.timeout):
        dist.broadcast_object_list(spec, src=0)
    return [{**d, "dtype": getattr(torch, d["dtype"])} for d in spec[0]]


@contextlib.contextmanager
def _lost_peer(what: str, timeout: float):
    """Turn the backend's error of a call to a peer that died or stopped answering into a :class:`PipelineError`
    that says which stage lost which peer (gloo raises some of them at the call, not at the wait)."""
    try:
        yield
    except PipelineError:
        raise
    except RuntimeError as e:
        raise PipelineError(f"{what} (timeout {timeout:.0f} s): {e}") from e


def _wait(work, timeout: float, what: str) -> None:
    with _lost_peer(what, timeout):
        ok = work.wait(timedelta(seconds=timeout))
    if ok is False:
        raise PipelineError(f"{what}: no answer within {timeout:.0f} s")


def _stage_path(path: Path, k: int, n: int, previous: bool = False) -> Path:
    return path.with_name(f"{path.stem}.stage{k}-of-{n}{'.prev' if previous else ''}{path.suffix or '.pt'}")


def _save_stage(state: dict[str, Any], path: Path, k: int, n: int) -> None:
    """Write stage ``k``'s file next to ``path`` atomically, keeping the one it replaces as its ``.prev`` file (see
    ``PipelineTrainer.resume``)."""
    current = _stage_path(path, k, n)
    if current.exists():
        current.replace(_stage_path(path, k, n, previous=True))
    save_checkpoint(state, current)


def _stage_files(path: Path, k: int, n: int) -> dict[int, dict[str, Any]]:
    """Stage ``k``'s current and previous files next to ``path``, by the epoch each has finished."""
    found: dict[int, dict[str, Any]] = {}
    for previous in (True, False):  # the current file wins if both say the same epoch
        file = _stage_path(path, k, n, previous)
        if file.exists():
            payload = load_checkpoint(file, map_location="cpu")
            found[int(payload["epoch"])] = payload
    if not found:
        raise FileNotFoundError(f"no checkpoint of pipeline stage {k} at {_stage_path(path, k, n)}: a pipeline run "
                                f"writes one file per stage next to {path.name} (resume with the same --stages)")
    return found


def _stage_error(k: int, e: BaseException) -> BaseException:
    if isinstance(e, (ValueError, TypeError, FloatingPointError)):
        return e
    return PipelineError(f"pipeline stage {k} failed: {type(e).__name__}: {e}")


def _count_stages(stages: int | str | Sequence[int], n_layers: int) -> int:
    if isinstance(stages, str):
        if stages != "per-layer":
            raise ValueError(f"stages must be an int, 'per-layer' or a sequence of first layers, got {stages!r}")
        return n_layers
    if isinstance(stages, bool):
        raise TypeError("stages must be an int or a sequence of stage start indices, got a bool")
    if isinstance(stages, int):
        if not 1 <= stages <= n_layers:
            raise ValueError(f"stages must be between 1 and the number of layers ({n_layers}), got {stages}")
        return stages
    return len(tuple(stages))


def init_distributed(timeout: float = 60.0, backend: str | None = None) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...):
    gloo on CPU, NCCL on CUDA. Returns ``(rank, world_size)``."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()



def _shareable(network: FFNetwork) -> list[bool]:
    """Which layers two stages may share: split by units (:func:`_share_mode`), or by samples when the layer has no
    batch statistics and the layer loss is a mean over samples (the built-in objectives; a custom one says so with
    ``batch_separable = True``)."""
    separable = getattr(network.objective, "batch_separable", False)
    return [getattr(layer, "batch_coupled", False) is False and (_share_mode(network, j) == "units" or (
        separable and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in layer.modules())))
        for j, layer in enumerate(network.layers)]


def _share_mode(network: FFNetwork, j: int) -> str:
    """``"units"`` for a layer that can be cut into unit shards whose goodness values sum to the layer's
    (``split_units``, e.g. :class:`~ffkit.layers.FFLinear`) under a goodness objective, with no shortcut in;
    otherwise ``"samples"``. Units cost one exchange of ``[r * B]`` goodness values per batch instead of the
    layer's gradient."""
    layer = network.layers[j]
    if hasattr(layer, "split_units") and isinstance(network.objective, PosNegObjective) and j not in network.shortcuts:
        return "units"
    return "samples"
