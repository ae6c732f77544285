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

Launch one process per rank with ``torchrun``::

    rank, world = init_distributed()
    trainer = DataParallelTrainer(network, lr=0.005, total_steps=epochs * len(loader))
    trainer.fit(shard_loader(train_set, batch_size=global_batch // world), epochs=epochs, out_dir="runs/dp")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from ..network import FFNetwork
from ._distributed import lost_peer, run_collective, wait_work
from .base import EpochProgress, StepResult, reject_mid_epoch
from .replicated import ReplicatedTrainer, flat_buffers, unflatten_into
from .schedules import optimizer_params

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
        """Start averaging ``optimizer``'s gradients (those not ``None``), one flat buffer per dtype and device."""
        grads = [p.grad for p in optimizer_params(optimizer) if p.grad is not None]
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
        **trainer_options: the optimisation of :class:`~ffkit.LocalTrainer` (``lr``, ``optimizer``, ``schedule``,
            ``total_steps`` (this rank's steps = global steps), ``overlap`` for OLU, ...).

    Data: each rank iterates its own loader over a disjoint shard with the same number of batches on every rank
    (checked each epoch); :func:`~ffkit.train.shard_loader` with ``batch_size = global batch // world`` builds one.

    Random draws (negative labels, dropout) differ between ranks, as their samples do: at the start of every epoch
    each rank seeds its generator from one number drawn by rank 0 and its rank, so a resumed run draws what an
    uninterrupted one would.

    Checkpoints: the ranks hold the same parameters and optimizer states; rank 0 writes the whole-network checkpoint
    (loadable by a single-process trainer) and every rank resumes from it.
    """

    role = "data-parallel rank"

    def __init__(
        self,
        network: FFNetwork,
        *,
        timeout: float = 60.0,
        device: str | torch.device | None = None,
        **trainer_options: Any,
    ) -> None:
        self._setup_replicas(network, device, timeout, trainer_options, "DataParallelTrainer")
        self.gradients = GradientAverage(self.world, self._comm_device, self.timeout, self.who)
        self.inner.gradient_sync = self.gradients

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One FF step of every layer on this rank's part ``x [b, C, H, W]``, ``y [b]`` of the global batch, with
        each layer's gradients averaged across the ranks (a collective: every rank steps together)."""
        result = self.inner.train_step(x, y, index)
        self.step_count = self.inner.step_count
        return result

    def train_epoch(self, loader: Iterable, *, progress: bool = False, desc: str = "train",
                    position: EpochProgress | None = None,
                    on_batch: Callable[[EpochProgress], None] | None = None) -> dict[str, Any]:
        """One pass over this rank's ``loader``; the record covers every rank's images (``train_loss`` and
        ``train_acc`` over all of them, ``train_seconds`` the slowest rank's)."""
        reject_mid_epoch(self, position, on_batch)
        self._begin_epoch(loader)
        self._seed_ranks()
        record = super().train_epoch(loader, progress=progress and self.rank == 0, desc=desc)
        return self._gather_record(record)

    def _seed_ranks(self) -> None:
        """Give rank ``r`` the generator seed ``s + r``, ``s`` drawn by rank 0: distinct streams per rank that a resumed
        run (whose ranks all restore rank 0's state) draws again."""
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(self._comm_device)
        if self.world > 1:
            self._collective("sharing the epoch's random seed", dist.broadcast, seed, src=0)
        torch.manual_seed(int(seed.item()) + self.rank)
