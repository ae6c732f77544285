"""``FederatedTrainer``: every rank trains the whole network on its own data shard, and the ranks average parameters.

Each process runs the same local FF step (:class:`~ffkit.LocalTrainer`) on its own shard of the training data, and the
processes exchange parameters, never data. After every *chapter* of ``sync_every`` steps, and once more at the end of
every epoch, each parameter and floating-point buffer (e.g. BatchNorm running statistics) is replaced by its mean over
the ranks (FedAvg) with one ``torch.distributed.all_reduce`` per dtype. Optimizer states stay local to each rank.

This is ffkit's data-parallel variant, not the federated variant of Pipeline-FF (Aktemur et al., "Going Forward-Forward
in Distributed Deep Learning", Sec. 4.3): there, the nodes run the all-layers procedure (layers handed from node to
node, chapter after chapter, "without central aggregation") on their own local data, which is
:class:`~ffkit.train.ChapterTrainer` with ``local_data=True``. The paper reports no figure for it.

Launch one process per rank with ``torchrun`` and call :func:`ffkit.train.pipeline.init_distributed` first (gloo on
CPU, NCCL on GPU); give each rank its own shard, e.g. with :func:`shard_loader`::

    rank, world = init_distributed()
    trainer = FederatedTrainer(network, sync_every=4, lr=0.005, schedule="constant")
    trainer.fit(shard_loader(train_set, batch_size=64, seed=0), epochs=10, out_dir="runs/fed")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .._validation import check_int
from ..network import FFNetwork
from .base import EpochProgress, StepResult, reject_mid_epoch
from .replicated import ReplicatedTrainer, shard_loader

__all__ = ["FederatedTrainer", "shard_loader"]


class FederatedTrainer(ReplicatedTrainer):
    """Train a whole :class:`~ffkit.FFNetwork` on every rank and average the ranks' parameters (FedAvg).

    Every rank must construct the trainer with the same network architecture and options; rank 0's initial parameters
    and buffers are broadcast, so the ranks start identical whatever their seeds.

    Args:
        network: the network to train (each rank holds a full copy).
        sync_every: steps per chapter: parameters and floating-point buffers are averaged across ranks after every
            ``sync_every`` steps, and at the end of every epoch.
        timeout: seconds a rank waits in a collective (averaging, gathering metrics) before it stops with
            :class:`~ffkit.train.PipelineError`. The process group's own timeout
            (``init_distributed(timeout=...)``) also bounds every collective.
        device: this rank's device (default: CUDA ``LOCAL_RANK`` if available, else CPU).
        **trainer_options: the local optimisation of :class:`~ffkit.LocalTrainer` (``lr``, ``optimizer``,
            ``schedule``, ``total_steps``, ...). ``total_steps`` counts this rank's steps (its shard's batches x
            epochs).

    Data: each rank iterates its *own* loader, which must hold a disjoint shard of the data with the same number of
    batches on every rank (checked at the start of each epoch); :func:`shard_loader` builds one with
    ``DistributedSampler(drop_last=True)``. :meth:`train_epoch` calls ``set_epoch(self.epoch)`` on a loader's
    ``DistributedSampler``, so the shuffling of epoch ``e`` is the same in a resumed run.

    Checkpoints: rank 0 writes the usual whole-network checkpoint (with its own optimizer states and RNG state);
    :meth:`resume` loads that same checkpoint on every rank, so every rank continues from rank 0's optimizer states.
    """

    role = "federated rank"

    def __init__(
        self,
        network: FFNetwork,
        *,
        sync_every: int = 1,
        timeout: float = 60.0,
        device: str | torch.device | None = None,
        **trainer_options: Any,
    ) -> None:
        check_int(sync_every, "sync_every", minimum=1, what="steps between parameter averages")
        self.sync_every = sync_every
        self._unsynced = 0  # steps since the ranks last held the same parameters
        self.syncs = 0  # parameter averages done so far (for logs and tests)
        self._setup_replicas(network, device, timeout, trainer_options, "FederatedTrainer")

    def synchronize(self) -> None:
        """Average parameters and floating-point buffers across the ranks (a collective: every rank must call it).

        Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are left alone: the ranks count the same steps.
        """
        if self.world > 1:
            def average(flat: torch.Tensor) -> None:
                self._collective(f"averaging parameters after step {self.step_count}", dist.all_reduce, flat,
                                 op=dist.ReduceOp.SUM)
                flat.div_(self.world)

            self._apply_flat(self._state_tensors(floating_only=True), average)
        self._unsynced = 0
        self.syncs += 1

    @property
    def in_sync(self) -> bool:
        """Whether every rank holds the same parameters (no local step since the last average)."""
        return self._unsynced == 0

    # -- training -----------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One local FF step of the whole network on this rank's batch ``x [B, C, H, W]``, ``y [B]``; at the end of a
        chapter (every ``sync_every`` steps) the ranks average their parameters. Collective at chapter ends."""
        result = self.inner.train_step(x, y, index)
        self.step_count = self.inner.step_count
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self.synchronize()
        return result

    def train_epoch(self, loader: Iterable, *, progress: bool = False, desc: str = "train",
                    position: EpochProgress | None = None,
                    on_batch: Callable[[EpochProgress], None] | None = None, log_every: int | None = None,
                    on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """One pass over this rank's ``loader``, then a final average; the record covers every rank's images.

        ``train_loss``/``train_acc`` are means over all ranks' samples, ``train_images`` their total, and
        ``train_seconds`` the slowest rank's time.
        """
        reject_mid_epoch(self, position, on_batch)
        self._begin_epoch(loader)
        # step records (log_every) cover this rank's batches only: gathering them would add a collective
        record = super().train_epoch(loader, progress=progress and self.rank == 0, desc=desc, log_every=log_every,
                                     on_record=on_record)
        if not self.in_sync:
            self.synchronize()
        return self._gather_record(record)

    # -- state ----------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, position: EpochProgress | None = None) -> Path:
        """Rank 0 writes the whole-network checkpoint; other ranks write nothing.

        Called mid-chapter (ranks not in sync) it first averages, which is a collective: then call it on every rank.
        """
        reject_mid_epoch(self, position, None)
        if not self.in_sync:
            self.synchronize()
        if self.rank == 0:
            return super().save(path)
        return Path(path)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._unsynced = 0  # every rank loads the same checkpoint
