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

This module holds the trainer: the split, the stages' placement, the epoch records and the checkpoints. The parts it
runs (a stage, the schedules that move batches through the stages, the transport between ranks, the partition, the
stage files) are in :mod:`ffkit.train.pipelining`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .._validation import check_bool, check_int
from .._version import __version__
from ..device import resolve_device
from ..network import FFNetwork
from ._distributed import (
    PipelineError,
    check_divergence_stop,
    check_equal_lengths,
    check_timeout,
    comm_device,
    default_device,
    hybrid_mesh,
    lost_peer,
    release_at_exit,
    run_collective,
    seed_from_rank0,
)
from .base import EpochProgress, StepResult, reject_mid_epoch
from .checkpoint import CHECKPOINT_FORMAT
from .local import LocalTrainer, WrapsLocalTrainer
from .pipelining.files import save_stage, stage_files
from .pipelining.partition import resolve_stages, share_mode, shareable_layers
from .pipelining.schedule import DistributedSchedule, run_threads
from .pipelining.stage import Share, Stage
from .rng import capture_rng, restore_rng
from .schedules import check_plan

__all__ = ["PipelineTrainer", "PipelineError", "init_distributed"]


class PipelineTrainer(WrapsLocalTrainer):
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
        devices: one device per stage for ``"threads"`` (default: ``device`` for every stage, itself by default
            CUDA when available, else the CPU); for ``"distributed"``, ``device`` is this rank's device (default CUDA
            ``LOCAL_RANK`` if available, else CPU).
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
        data_parallel: ``D`` replicas of the whole pipeline (``backend="distributed"``; hybrid data x pipeline
            parallelism): the ``N`` processes form a 2-D ``DeviceMesh`` ``[D, N / D]`` (:func:`hybrid_mesh`); ranks
            ``d * S .. d * S + S - 1`` are replica ``d``'s ``S = N / D`` stages, its first stage reads that replica's
            loader (its shard of the data: :func:`~ffkit.train.shard_loader` with ``num_replicas=D``,
            ``rank=trainer.replica``), and each stage's gradients are averaged over the replicas of that stage as
            each layer's backward ends (:class:`~ffkit.train.data_parallel.GradientAverage`), so every replica takes
            the step of one pipeline on the whole global batch. The split is chosen once (by rank 0) for every
            replica; layers are not shared between stages. Replica 0 writes the checkpoints; only its first stage
            evaluates.
        sync_batchnorm: with ``data_parallel > 1``, every BatchNorm normalises with the statistics of the whole global
            batch, its replicas' samples included (:func:`~ffkit.train.sync_batchnorm` over each stage's replicas).
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
        data_parallel: int = 1,
        sync_batchnorm: bool = False,
        **trainer_options: Any,
    ) -> None:
        if not isinstance(network, FFNetwork):
            raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
        if backend not in ("threads", "distributed"):
            raise ValueError(f"backend must be 'threads' or 'distributed', got {backend!r}")
        if balance not in ("auto", "layers"):
            raise ValueError(f"balance must be 'auto' or 'layers', got {balance!r}")
        check_int(queue_size, "queue_size", minimum=1)
        check_timeout(timeout)
        check_divergence_stop(trainer_options, "PipelineTrainer")
        if trainer_options.get("overlap"):
            raise ValueError("overlap (OLU) sends gradients across layer boundaries; it cannot be pipelined")
        if network.head is not None:
            raise ValueError("PipelineTrainer does not train classifier heads yet (a head reads several stages' "
                             "features); train the head afterwards or use LocalTrainer")
        from ..objectives.negatives import AdaptiveNegative

        if isinstance(getattr(network.objective, "negatives", None), AdaptiveNegative):
            raise ValueError("adaptive negatives need the whole network on the first stage; use RandomNegative or "
                             "FixedNegative with PipelineTrainer")
        self.backend = backend
        self.queue_size = queue_size
        self.timeout = float(timeout)
        self.balance = balance
        check_bool(share_layers, "share_layers")
        check_int(data_parallel, "data_parallel", minimum=1)
        check_bool(sync_batchnorm, "sync_batchnorm")
        if sync_batchnorm and data_parallel == 1:
            raise ValueError("sync_batchnorm shares BatchNorm statistics between the replicas of a stage: it needs "
                             "data_parallel > 1 (a pipeline's stage already sees the whole batch)")
        self.sync_batchnorm = sync_batchnorm
        if data_parallel > 1 and backend != "distributed":
            raise ValueError(f"data_parallel={data_parallel} replicates the pipeline over processes: it needs "
                             f"backend='distributed' (one process per stage and replica, under torchrun)")
        # Sharing a layer would need a pair group per replica and its exchange inside the replicas' average.
        self.share_layers = share_layers and backend == "distributed" and data_parallel == 1
        self.rank, self.world = 0, 1
        #: The replicas of the pipeline (hybrid data x pipeline), this process's replica, its pipeline's process group
        #: (``None``: the whole world) and the group of this stage's replicas.
        self.replicas, self.replica = data_parallel, 0
        self.group: dist.ProcessGroup | None = None
        self.mesh: Any = None
        self._replica_sync: Any = None  # the replicas' GradientAverage
        if backend == "distributed":
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("backend='distributed' needs torch.distributed initialised: launch with torchrun "
                                   "and call ffkit.train.pipeline.init_distributed() (the CLI does)")
            release_at_exit()
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if device is None:
                device = default_device()
            if data_parallel > 1:
                self.mesh = hybrid_mesh(data_parallel, torch.device(device).type, self.timeout)
                self.group = self.mesh.get_group("pipeline")
                self.replica = self.mesh.get_local_rank("data")
                self.rank, self.world = self.mesh.get_local_rank("pipeline"), self.world // data_parallel
            devices = [device] * self.world
        n_stages, self.starts = resolve_stages(stages, network, backend=backend, world=self.world)
        if data_parallel > 1 and self.starts is not None and any(a != int(a) for a in self.starts):
            raise ValueError(f"stages={stages!r} shares a layer between two stages; with data_parallel > 1 give "
                             f"whole layers (integer first layers)")
        if devices is None:
            devices = [resolve_device(device)] * n_stages  # one policy: ffkit.device (CUDA if available, else CPU)
        if len(devices) != n_stages:
            raise ValueError(f"devices must name one device per stage ({n_stages}), got {len(devices)}")
        self.devices = [torch.device(d) for d in devices]
        self.inner = LocalTrainer(network, device=self.devices[self.rank], **trainer_options)
        if data_parallel > 1:
            self._start_replicas()
        self.n_stages = n_stages
        self.balance_report: dict[str, Any] | None = None
        self._stages: list[Stage] = []
        self._share_batch: int | None = None  # the batch size the shared layers' parts were cut for
        self._bytes_per_second = math.inf
        self._shape_spec: list[dict[str, Any]] | None = None
        self._schedule: DistributedSchedule | None = None
        self._out_dir: Path | None = None
        self._init_progress()

    # -- setup ------------------------------------------------------------------------------------------------------
    def _start_replicas(self) -> None:
        """Hybrid: give every process rank 0's parameters and buffers (the replicas must start identical), and average
        each stage's gradients over its replicas before its optimizers step."""
        from .data_parallel import GradientAverage
        from .replicated import broadcast_state

        data = self.mesh.get_group("data")
        comm = comm_device(self.device, data)
        who = (f"pipeline stage {self.rank} of replica {self.replica} (rank {dist.get_rank()} of "
               f"{dist.get_world_size()})")
        self._replica_sync = GradientAverage(self.replicas, comm, self.timeout, who, group=data)
        self.inner.gradient_sync = self._replica_sync
        if self.sync_batchnorm:
            from .sync_batchnorm import sync_batchnorm

            sync_batchnorm(self.network, group=data)  # in place, on the same tensors: the optimizers keep them
        broadcast_state(self.network, comm, self.timeout, who)

    def _plan(self, x: torch.Tensor | None, y: torch.Tensor | None, index: torch.Tensor | None = None) -> None:
        """Choose the split (profiling on the first batch if balancing is automatic) and place the stages."""
        from .balance import shared_layers

        if self.starts is None and self.balance == "auto" and self.n_stages > 1:
            self._bytes_per_second = self._probe_bandwidth() if self.share_layers else math.inf
            report = None
            if self.rank == 0:  # every replica's first stage, in step (their BatchNorms may synchronise); rank 0's
                # split is every replica's
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
            self._stages.append(Stage(k, first, last, self.inner, self.devices[k]))
        for k in range(1, self.n_stages):  # every rank creates every group, in the same order (new_group's rule)
            j = math.floor(starts[k])
            if j not in shares:
                continue
            if batch is None:
                raise RuntimeError("the batch size of a shared layer's parts is unknown (a stage file without it?)")
            group = dist.new_group([k - 1, k], timeout=timedelta(seconds=self.timeout))
            mode = share_mode(self.network, j)
            n = batch if mode == "samples" else self.network.layers[j].num_units
            m = round(shares[j] * n)
            if not 0 < m < n:
                raise ValueError(f"layer {j} has too few {mode} ({n}) to share as the split {starts} asks "
                                 f"({shares[j]:.3f} on stage {k - 1}); give whole layers")
            self._stages[k - 1].tail = Share(j, 0, m, batch, group, mode)
            self._stages[k].head = Share(j, m, n, batch, group, mode)
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
        """Rank 0's ``value`` on every rank of a distributed pipeline (of every replica, in a hybrid job)."""
        if self.backend != "distributed":
            return value
        box = [value]
        with lost_peer(f"pipeline rank {self.rank} of {self.world} lost rank 0 while receiving its plan",
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

        sync, self.inner.gradient_sync = self.inner.gradient_sync, None  # the first stages alone: the others wait
        try:
            costs = profile_layers(self.inner, x, y, index=index, warmup=2, steps=5)
        finally:
            self.inner.gradient_sync = sync
        # The first stage also prepares every batch (label encoding, negatives): charge it to layer 0.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            began = time.perf_counter()
            for _ in range(3):
                self._prepare(x, y, index)
            prep = (time.perf_counter() - began) / 3
        seconds = [costs.seconds[0] + prep, *costs.seconds[1:]]
        shareable = shareable_layers(self.network) if self.share_layers else None
        # A share must hold at least one sample on each side.
        min_share = min(0.49, max(0.05, 1.0 / x.shape[0]))
        extra = [0.0 if share_mode(self.network, j) == "units" else  # a [r * B] goodness exchange
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
                    on_batch: Callable[[EpochProgress], None] | None = None, log_every: int | None = None,
                    on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """One pass over ``loader`` with every stage working concurrently; per-layer means as ``LocalTrainer``."""
        reject_mid_epoch(self, position, on_batch)
        # No step records (epoch records only): the stages' steps run concurrently, each on its own layers, so no
        # process holds an interval's per-layer means without gathering them.
        del log_every, on_record
        if self.replicas > 1:
            self._begin_replica_epoch(loader)
        batches = ((b[0], b[1], b[2] if len(b) > 2 else None) for b in loader)
        record = self._run(batches, concurrent=True)["record"]
        self.gather_network()  # every rank takes part; rank 0 then holds the whole trained network
        if self.rank > 0 and self._out_dir is not None and self.replica == 0:
            self.epoch += 1  # Trainer.fit counts the epoch after this returns; the stage file must say it is done
            save_stage(self.stage_state(self.rank), self._out_dir / "checkpoint.pt", self.rank, self.n_stages)
            self.epoch -= 1
        return record

    def _begin_replica_epoch(self, loader: Iterable) -> None:
        """Hybrid: seed the replicas' shards for this epoch, check that every replica takes the same number of steps
        (their stages average gradients at every step) and give each process its own random stream for the epoch
        (negative labels, dropout), seeded from one number that rank 0 draws, so a resume draws them again."""
        data = self.mesh.get_group("data")
        if self.rank == 0:  # the first stages read the data
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(self.epoch)
            check_equal_lengths(
                loader, self.replica, self.replicas, self._replica_sync.comm_device,
                lambda every, mine: run_collective(f"{self._replica_sync.who} failed comparing the replicas' "
                                                   f"batches per epoch", self.timeout, dist.all_gather, every, mine,
                                                   group=data),
                needs_len="loader must have a len() (batches per epoch) so the replicas can check they take the same "
                          "number of steps",
                mismatch="every replica must take the same number of steps per epoch, but the replicas' loaders "
                         "have {lengths} batches (replica {rank}: {n}); shard the data with "
                         "ffkit.train.shard_loader(..., num_replicas=data_parallel, rank=trainer.replica)",
            )
        seed_from_rank0(self._replica_sync.comm_device, self.timeout,
                        f"{self._replica_sync.who} failed sharing the epoch's random seed")

    def _run(self, batches: Iterable, concurrent: bool) -> dict[str, Any]:
        it = iter(batches) if self.rank == 0 else iter(())
        first = next(it, None) if self.rank == 0 else None
        if self.rank == 0 and first is None:
            raise ValueError("the training data is empty: no batch was produced")
        if not self._stages:
            x0 = y0 = i0 = None
            if first is not None:  # rank 0
                x0, y0 = self.inner.batch_to_device(first[0], first[1])
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
            run_threads(self._stages, feed(), self._prepare, concurrent=concurrent, queue_size=self.queue_size,
                        timeout=self.timeout)
        else:
            if self._schedule is None:
                self._schedule = DistributedSchedule(rank=self.rank, world=self.world, device=self.device,
                                                     timeout=self.timeout, ring=self.queue_size, group=self.group)
            self._schedule.run(self._stages[self.rank], feed(), self._prepare, self._shape_spec)
            if self._schedule.batch_size is not None:
                self._batch_size = self._schedule.batch_size
        seconds = time.perf_counter() - start
        done = [st.last for st in self._stages if st.last is not None]
        last = StepResult(torch.cat([d[0] for d in done]), torch.cat([d[1] for d in done]), self._batch_size, None)
        return {"record": self._epoch_record(seconds), "last_step": last}

    def _shapes(self, first) -> list[dict[str, Any]]:
        """What each stage sends for one batch: feature, label and shortcut shapes (one no-grad pass, RNG kept)."""
        # The pass runs in training mode (the shapes of training), so it would move BatchNorm running statistics:
        # they are put back, as the random state is.
        saved = [(buf, buf.clone()) for buf in self.network.buffers()]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            h0, y0, b = self._prepare(*first)
            feats = {i: out.features for i, out in self.network.iter_layers(h0)}
            for buf, before in saved:
                buf.copy_(before)
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
        x, y = t.batch_to_device(x, y)
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
            with lost_peer(f"pipeline rank {self.rank} of {self.world} lost a peer while gathering the epoch's "
                            f"losses", self.timeout):
                dist.all_gather_object(gathered, mine, group=self.group)
            parts = [p for g in gathered for p in g]
            if self.replicas > 1:
                parts = self._sum_replicas(parts)
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

    def _sum_replicas(self, parts: list[tuple]) -> list[tuple]:
        """Hybrid: every replica's epoch parts ``(first layer, loss sums, correct sums, images, busy seconds)`` added
        up, stage by stage (the busy seconds: the slowest replica's)."""
        every: list[Any] = [None] * self.replicas
        with lost_peer(f"{self._replica_sync.who} lost a peer while gathering the replicas' losses", self.timeout):
            dist.all_gather_object(every, parts, group=self.mesh.get_group("data"))
        return [(p[0], sum(r[k][1] for r in every), sum(r[k][2] for r in every), sum(r[k][3] for r in every),
                 max(r[k][4] for r in every)) for k, p in enumerate(parts)]

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

    def close(self) -> None:
        """Distributed: tell every stage that training is over (rank 0 starts it), so no receive stays posted."""
        if self._schedule is not None:
            self._schedule.close()

    def fit(self, train, *, epochs: int, holdout=None, test=None, out_dir=None, **kwargs):
        """As :meth:`Trainer.fit`. On a distributed run every rank trains its stage and writes its stage checkpoint;
        rank 0 also evaluates (after gathering the layers), logs and writes the metrics and the whole checkpoint."""
        if self.replica > 0:  # replica 0 writes and evaluates for every replica
            out_dir = holdout = test = None
            kwargs["log"], kwargs["tensorboard"] = None, False
        self._out_dir = Path(out_dir) if out_dir is not None else None
        try:
            if self.rank == 0:
                history = super().fit(train, epochs=epochs, holdout=holdout, test=test, out_dir=out_dir, **kwargs)
            else:
                kwargs["log"], kwargs["tensorboard"] = None, False
                history = super().fit(train, epochs=epochs, **kwargs)
        except BaseException:
            if self._schedule is not None:
                self._schedule.abandon()
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
        with lost_peer(f"pipeline rank {self.rank} of {self.world} lost a peer while gathering the layers",
                        self.timeout):
            dist.all_gather_object(gathered, (self._layer_states(st), self._unit_shards(st)), group=self.group)
        for rank, (states, shards) in enumerate(gathered):
            if rank != self.rank:
                for i, state in states.items():
                    self.network.layers[i].load_state_dict(state)
                for i, (lo, hi, state) in shards.items():
                    shard = self.network.layers[i].split_units(lo, hi)
                    shard.load_state_dict(state)
                    shard.push_units(self.network.layers[i], lo)

    def _layer_states(self, st: Stage) -> dict[int, dict[str, torch.Tensor]]:
        """The states of the layers this stage updates whole or by samples (its copy of a shared one is current)."""
        units = {s.layer for s in (st.head, st.tail) if s is not None and s.mode == "units"}
        return {i: {k: v.cpu() for k, v in self.network.layers[i].state_dict().items()}
                for i in st.layer_ids if i not in units}

    def _unit_shards(self, st: Stage) -> dict[int, tuple[int, int, dict[str, torch.Tensor]]]:
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
            "plan": dict(self.plan) if self.plan is not None else None,
        }

    def save(self, path: str | Path, *, position: EpochProgress | None = None) -> Path:
        """Each stage writes ``<path stem>.stage<k>-of-<S>.pt`` (its layers, optimizers, schedules, progress), and
        rank 0 also writes the whole network's checkpoint at ``path`` (loadable by ``ffkit test``).

        A stage's previous file is kept as ``<path stem>.stage<k>-of-<S>.prev.pt``: the ranks of a distributed run
        write their files at different moments, so a job that dies between two of them leaves stages one epoch
        apart, and :meth:`resume` then takes the latest epoch that every stage has."""
        reject_mid_epoch(self, position, None)
        path = Path(path)
        if self.replica > 0:  # its replicas hold the same state: replica 0 writes it
            return path
        ks = [self.rank] if self.backend == "distributed" else range(len(self._stages))
        for k in ks:
            save_stage(self.stage_state(k), path, k, self.n_stages)
        if self.rank == 0:
            super().save(path)
        return path

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Every stage reloads its own stage file; the split is the saved one. When the stages' latest files are of
        different epochs (a job that died between two ranks' writes), every stage takes its file of the latest epoch
        that all of them have (its current or its previous file)."""
        path = Path(path)
        mine = [self.rank] if self.backend == "distributed" else list(range(self.n_stages))
        how = "torchrun --nproc-per-node {n}" if self.backend == "distributed" else "--stages {n}"
        found = {k: stage_files(path, k, self.n_stages, how) for k in mine}
        if self.backend == "distributed" and self.world > 1:
            gathered: list[Any] = [None] * self.world
            with lost_peer(f"pipeline rank {self.rank} of {self.world} lost a peer while resuming", self.timeout):
                dist.all_gather_object(gathered, {k: sorted(f) for k, f in found.items()}, group=self.group)
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
        if self.plan is not None:  # as Trainer.load_state_dict: refused before anything is loaded
            for k in mine:
                check_plan(payloads[k].get("plan"), self.plan, int(payloads[k]["steps"]))
        first = payloads[mine[0]]
        self.starts = tuple(first["starts"])
        self._share_batch = first.get("share_batch_size")
        self._plan(None, None)
        self.resume_notes = []
        for k in mine:
            payload = payloads[k]
            st = self._stages[k]
            for i, state in payload["layers"].items():
                self.network.layers[i].load_state_dict(state)
            for share in (st.head, st.tail):
                if share is not None and share.mode == "units" and share.module is not None:
                    share.module.load_state_dict(payload["unit_shards"][share.layer][2])
                    share.module.push_units(self.network.layers[share.layer], share.lo)
            self.resume_notes += self._load_optimization(payload.get("plan"), payload["optimizers"].items(),
                                                         payload["schedulers"].items())
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


def init_distributed(timeout: float = 60.0, backend: str | None = None) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...):
    gloo on CPU, NCCL on CUDA. Returns ``(rank, world_size)``."""
    check_timeout(timeout)
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    release_at_exit()
    return dist.get_rank(), dist.get_world_size()



