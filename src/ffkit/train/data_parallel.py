"""``DataParallelTrainer``: every rank holds the whole network and takes its shard of each global batch; each layer's
gradients are averaged across the ranks before that layer's optimizer step, the exchange hidden behind the next
layer's work.

FF makes this cheaper than data-parallel backprop. Layer ``l``'s gradients are final as soon as its own local backward
ends, before layer ``l + 1`` even runs its forward, so :class:`GradientAverage` starts their all-reduce right then
(``torch.distributed.all_reduce(async_op=True)``, one flat buffer per layer and dtype) and waits for it only when the
step's optimizers are about to step. Backprop's DDP can overlap a bucket's all-reduce only with the rest of the same
backward pass, and must wait for the last bucket before any optimizer steps.

Why not one ``DistributedDataParallel`` per layer: DDP's reducer waits for every bucket of a module at the end of
that module's backward (its final autograd callback), so layer ``l``'s exchange would block before layer ``l + 1``
starts: nothing would overlap with the next layer's compute. The collective itself is PyTorch's (gloo on CPU, NCCL
on CUDA); only its timing is ffkit's.

Two options change what each rank holds:

* ``sync_batchnorm=True``: every BatchNorm normalises with the statistics of the whole global batch
  (:func:`~ffkit.train.sync_batchnorm.sync_batchnorm`), so the ranks' averaged update is the one of a single process
  on the whole batch even for networks with BatchNorm.
* ``shard_parameters=True``: each layer (and the classifier head) is its own FSDP2 unit
  (:mod:`ffkit.train.sharding`): a rank holds ``1 / world`` of every layer's parameters, gradients and optimizer state;
  a layer's forward all-gathers its parameters and its backward reduce-scatters (averages) the gradients, in place of
  this module's all-reduce.

Launch one process per rank with ``torchrun``::

    rank, world = init_distributed()
    trainer = DataParallelTrainer(network, lr=0.005, total_steps=epochs * len(loader))
    trainer.fit(shard_loader(train_set, batch_size=global_batch // world), epochs=epochs, out_dir="runs/dp")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..network import FFNetwork
from ._distributed import lost_peer, run_collective, seed_from_rank0, wait_work
from .base import EpochProgress, StepResult, log_info, reject_mid_epoch
from .replicated import ReplicatedTrainer, flat_buffers, unflatten_into
from .schedules import is_sharded, optimizer_params
from .sync_batchnorm import sync_batchnorm as convert_batchnorms

__all__ = ["DataParallelTrainer", "GradientAverage"]


class GradientAverage:
    """Average each optimizer's gradients over the ranks of a process group.

    :meth:`launch` starts the all-reduce of one optimizer's gradients as soon as its backward is done (asynchronous:
    training goes on); :meth:`finish` waits for every launched exchange, divides by the world size and writes the
    averages back into ``.grad``, just before the optimizers step. :meth:`agree` makes the ranks agree whether a step
    is finite, so they all take it or all stop.

    Attributes:
        exposed_seconds: time spent waiting in :meth:`finish` (the exchange not hidden behind compute), summed.
        launched_bytes: bytes all-reduced, summed.
    """

    def __init__(self, world: int, comm_device: torch.device, timeout: float, who: str,
                 group: dist.ProcessGroup | None = None) -> None:
        self.world = world
        self.comm_device = comm_device
        self.timeout = timeout
        self.who = who
        self.group = group
        self._pending: list[tuple[list[torch.Tensor], torch.Tensor, Any]] = []
        self.exposed_seconds = 0.0
        self.launched_bytes = 0

    def launch(self, optimizer: torch.optim.Optimizer) -> None:
        """Start averaging ``optimizer``'s gradients (those not ``None``), one flat buffer per dtype and device.
        Sharded gradients (DTensors) are skipped: FSDP has already averaged them in its reduce-scatter."""
        grads = [p.grad for p in optimizer_params(optimizer) if p.grad is not None and not is_sharded(p.grad)]
        for group, flat in flat_buffers(grads, self.comm_device):
            with lost_peer(f"{self.who} failed in a gradient all-reduce", self.timeout):
                work = dist.all_reduce(flat, group=self.group, async_op=True)
            self._pending.append((group, flat, work))
            self.launched_bytes += flat.numel() * flat.element_size()

    def finish(self) -> None:
        """Wait for every launched average and write it into the gradients."""
        if not self._pending:
            return
        start = time.perf_counter()
        pending, self._pending = self._pending, []
        for _, _, work in pending:
            wait_work(work, self.timeout, f"{self.who} failed waiting for a gradient all-reduce")
        self.exposed_seconds += time.perf_counter() - start
        with torch.no_grad():
            for grads, flat, _ in pending:
                unflatten_into(grads, flat.div_(self.world))

    def agree(self, ok: torch.Tensor) -> torch.Tensor:
        """``ok`` on every rank (a bool tensor): whether it is true on all of them."""
        flag = ok.to(self.comm_device, torch.int32).reshape(1)
        run_collective(f"{self.who} failed agreeing whether a step is finite", self.timeout, dist.all_reduce, flag,
                       op=dist.ReduceOp.MIN, group=self.group)
        return flag[0].bool()


class DataParallelTrainer(ReplicatedTrainer):
    """Train an :class:`~ffkit.FFNetwork` data-parallel: every rank holds the whole network and steps it on its
    shard of each global batch with the gradients averaged across the ranks, so every rank takes the same update as
    one process would on the whole batch (for losses that are means over the batch, and BatchNorm statistics aside).

    Args:
        network: the network (each rank holds a full copy; rank 0's initial parameters are broadcast).
        timeout: seconds a rank waits in a collective before it stops with :class:`~ffkit.train.PipelineError`.
        device: this rank's device (default: CUDA ``LOCAL_RANK`` if available, else CPU).
        sync_batchnorm: normalise every BatchNorm of the layers and of the classifier head with the statistics of
            the whole global batch (all ranks' samples) in training, and update the running statistics with them;
            converts the network's BatchNorms in place (:func:`~ffkit.train.sync_batchnorm.sync_batchnorm`; its
            state_dict keys do not change). One small all-reduce per BatchNorm forward and backward.
        shard_parameters: shard each layer's (and the head's) parameters, gradients and optimizer state over the
            ranks with FSDP2 (``fully_shard`` per layer on a 1-D device mesh): a rank holds about ``1 / world`` of
            them, each layer's forward and backward all-gather its parameters, and the gradients are averaged by
            reduce-scatter. Checkpoints stay whole-network (gathered; see below). Not with ``overlap`` (OLU's
            optimizers span two layers), ``channels_last`` or ``compile``; a network whose first optimizer also
            steps a learned label encoder, or with scalar parameters, steps with the per-tensor optimizer
            (``fused_optimizer=True`` is refused).
        **trainer_options: the optimisation of :class:`~ffkit.LocalTrainer` (``lr``, ``optimizer``, ``schedule``,
            ``total_steps`` (this rank's steps = global steps), ``overlap`` for OLU, ...).

    Data: each rank iterates its own loader over a disjoint shard with the same number of batches on every rank
    (checked each epoch); :func:`~ffkit.train.shard_loader` with ``batch_size = global batch // world`` builds one.

    Random draws (negative labels, dropout) differ between ranks, as their samples do: at the start of every epoch
    each rank seeds its generator from one number drawn by rank 0 and its rank, so a resumed run draws what an
    uninterrupted one would.

    Checkpoints: the ranks hold the same parameters and optimizer states; rank 0 writes the whole-network checkpoint
    (loadable by a single-process trainer) and every rank resumes from it. With ``shard_parameters`` the ranks
    all-gather the parameters and optimizer states for it (in :meth:`fit`, at the end of each epoch; a direct
    :meth:`save` is then a collective: call it on every rank, rank 0 writes), and a resume gives each rank its shards
    of the whole checkpoint. Evaluation with sharded parameters gathers every layer's whole parameters for its
    duration, so the ranks can still share the batches.
    """

    role = "data-parallel rank"

    def __init__(
        self,
        network: FFNetwork,
        *,
        timeout: float = 60.0,
        device: str | torch.device | None = None,
        sync_batchnorm: bool = False,
        shard_parameters: bool = False,
        **trainer_options: Any,
    ) -> None:
        for name, value in (("sync_batchnorm", sync_batchnorm), ("shard_parameters", shard_parameters)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        self.sync_batchnorm = sync_batchnorm
        self.shard_parameters = shard_parameters
        self._sharded: list[torch.nn.Module] = []
        self._gathered: tuple[dict[str, Any], list[dict[str, Any] | None]] | None = None
        self._gather_each_epoch = False
        if shard_parameters:
            _check_shardable(network, trainer_options)
        if sync_batchnorm and isinstance(network, FFNetwork):  # (another type is refused by _setup_replicas)
            convert_batchnorms(network)
        self._setup_replicas(network, device, timeout, trainer_options, "DataParallelTrainer",
                             shard=self._shard if shard_parameters else None)
        self.gradients = GradientAverage(self.world, self._comm_device, self.timeout, self.who)
        self.inner.gradient_sync = self.gradients
        if shard_parameters:
            from .sharding import accept_full_states

            accept_full_states(self.network, self.optimizers)

    # -- sharded parameters ---------------------------------------------------------------------------------------
    def _shard(self) -> None:
        """Cut each layer and the head into this rank's shards (after rank 0's state was broadcast)."""
        from .sharding import shard_modules

        if self.device.type != self._comm_device.type:
            raise ValueError(f"shard_parameters on a {self.device.type} device needs a backend that reduces "
                             f"{self.device.type} tensors (NCCL for CUDA), got {dist.get_backend()}")
        net = self.network
        modules = [*net.layers, *([net.head] if net.head is not None else [])]
        self._sharded = shard_modules(modules, self.device.type, self.world)

    def _collect(self, loader: Iterable, **options: Any):
        """As :meth:`ReplicatedTrainer._collect`; with sharded parameters, every layer's whole parameters are
        gathered first and kept for the evaluation, because a sharded forward is a collective and the ranks score
        different numbers of batches."""
        if not self._sharded:
            return super()._collect(loader, **options)
        from .sharding import unsharded

        with unsharded(self._sharded):
            return super()._collect(loader, **options)

    def _full_state(self) -> tuple[dict[str, Any], list[dict[str, Any] | None]]:
        """The whole network's state_dict and optimizer states, gathered from the shards (a collective)."""
        from .sharding import full_network_state, full_optimizer_state

        network = full_network_state(self.network)
        optimizers = [full_optimizer_state(o) if o is not None else None for o in self.optimizers]
        return network, optimizers

    def _network_state(self) -> dict[str, Any]:
        if not self._sharded:
            return super()._network_state()
        assert self._gathered is not None  # save() gathers it first
        own = self.network.state_dict()  # buffers (BatchNorm statistics, SIP's range) as they are now
        return {k: self._gathered[0][k] if is_sharded(v) else v for k, v in own.items()}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._sharded and self._gathered is not None:
            state["optimizers"] = self._gathered[1]
        return state

    def save(self, path: str | Path, *, position: EpochProgress | None = None) -> Path:
        """As :meth:`Trainer.save`. With ``shard_parameters`` a collective: every rank calls it, the ranks gather
        the whole parameters and optimizer states, and rank 0 alone writes them (inside :meth:`fit`, the gathering
        happened at the end of the epoch and rank 0 saves alone)."""
        if not self._sharded:
            return super().save(path, position=position)
        if self._gathered is None:
            self._gathered = self._full_state()
        try:
            return super().save(path, position=position) if self.rank == 0 else Path(path)
        finally:
            self._gathered = None

    def fit(self, train: Iterable, *, epochs: int, holdout: Iterable | None = None, test: Iterable | None = None,
            out_dir: str | Path | None = None, log: Callable[[str], None] | None = log_info,
            **kwargs: Any) -> list[dict[str, Any]]:
        """As :meth:`ReplicatedTrainer.fit`. With sharded parameters and a run directory on rank 0, every rank gathers
        the whole state at the end of each epoch for rank 0's checkpoint."""
        if not self._sharded:
            return super().fit(train, epochs=epochs, holdout=holdout, test=test, out_dir=out_dir, log=log, **kwargs)
        flag = torch.tensor([out_dir is not None], dtype=torch.int32, device=self._comm_device)
        self._collective("sharing whether rank 0 writes checkpoints", dist.broadcast, flag, src=0)
        with self._gathering(bool(flag.item())):
            return super().fit(train, epochs=epochs, holdout=holdout, test=test, out_dir=out_dir, log=log, **kwargs)

    @contextlib.contextmanager
    def _gathering(self, on: bool) -> Iterator[None]:
        self._gather_each_epoch = on
        try:
            yield
        finally:
            self._gather_each_epoch, self._gathered = False, None

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One FF step of every layer on this rank's part ``x [b, C, H, W]``, ``y [b]`` of the global batch, with
        each layer's gradients averaged across the ranks (a collective: every rank steps together)."""
        result = self.inner.train_step(x, y, index)
        self.step_count = self.inner.step_count
        return result

    def train_epoch(self, loader: Iterable, *, progress: bool = False, desc: str = "train",
                    position: EpochProgress | None = None,
                    on_batch: Callable[[EpochProgress], None] | None = None, log_every: int | None = None,
                    on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """One pass over this rank's ``loader``; the record covers every rank's images (``train_loss`` and
        ``train_acc`` over all of them, ``train_seconds`` the slowest rank's)."""
        reject_mid_epoch(self, position, on_batch)
        self._begin_epoch(loader)
        self._seed_ranks()
        # step records (log_every) cover this rank's batches only: gathering them would add a collective
        record = super().train_epoch(loader, progress=progress and self.rank == 0, desc=desc, log_every=log_every,
                                     on_record=on_record)
        record = self._gather_record(record)
        if self._gather_each_epoch:
            # Rank 0's checkpoint at the end of fit's epoch needs the whole state; the other ranks never call save
            # there, so they take part now (evaluation, between here and the save, changes no parameter).
            state = self._full_state()
            self._gathered = state if self.rank == 0 else None
        return record

    def _seed_ranks(self) -> None:
        """Give rank ``r`` the generator seed ``s + r``, ``s`` drawn by rank 0 (:func:`seed_from_rank0`)."""
        seed_from_rank0(self._comm_device, self.timeout, f"{self.who} failed in sharing the epoch's random seed")


def _check_shardable(network: FFNetwork, options: dict[str, Any]) -> None:
    """Refuse the options that FSDP2 sharding of each layer cannot serve, naming them."""
    refused = {
        "overlap": "overlap=True (OLU): a layer's optimizer also steps the previous layer's parameters, which would "
                   "then be sharded in another FSDP unit",
        "channels_last": "channels_last=True: FSDP2 gathers parameters as contiguous tensors",
        "compile": "compile: torch.compile of a layer's forward around FSDP2's hooks is not supported here",
    }
    for name, why in refused.items():
        if options.get(name):
            raise ValueError(f"shard_parameters=True conflicts with {why}")
    if not isinstance(network, FFNetwork):
        return  # refused with its own message by _setup_replicas
    mixed = any(p.requires_grad for p in network.objective.parameters()) or any(
        p.dim() == 0 for p in network.parameters())
    if mixed:
        if options.get("fused_optimizer"):
            raise ValueError(
                "shard_parameters=True conflicts with fused_optimizer=True for this network: an optimizer steps both "
                "sharded parameters and whole ones (a learned label encoder, or a scalar parameter FSDP2 cannot "
                "cut), which the fused and foreach kernels cannot mix; leave fused_optimizer unset")
        options["fused_optimizer"] = False  # the per-tensor loop steps DTensors and plain tensors alike
