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
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .._validation import check_int
from ..network import FFNetwork
from ._distributed import (
    check_divergence_stop,
    check_equal_lengths,
    check_timeout,
    default_device,
    lost_peer,
    wait_work,
)
from .base import EpochProgress, StepResult, reject_mid_epoch
from .local import LocalTrainer, WrapsLocalTrainer

__all__ = ["FederatedTrainer", "shard_loader"]

# Low-precision parameters are summed in float32: with bf16 the sum of a few ranks would already lose bits.
_REDUCE_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


class FederatedTrainer(WrapsLocalTrainer):
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

    mid_epoch_checkpoints = False  # its ranks checkpoint at epoch ends

    def __init__(
        self,
        network: FFNetwork,
        *,
        sync_every: int = 1,
        timeout: float = 60.0,
        device: str | torch.device | None = None,
        **trainer_options: Any,
    ) -> None:
        if not isinstance(network, FFNetwork):
            raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
        check_int(sync_every, "sync_every", minimum=1, what="steps between parameter averages")
        check_timeout(timeout)
        check_divergence_stop(trainer_options, "FederatedTrainer")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("FederatedTrainer needs torch.distributed initialised: launch one process per rank "
                               "with torchrun and call ffkit.train.pipeline.init_distributed() first")
        self.sync_every = sync_every
        self.timeout = float(timeout)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        here = torch.device(device) if device is not None else default_device()
        self.inner = LocalTrainer(network, device=here, **trainer_options)
        # NCCL reduces CUDA tensors only; gloo is simplest and safest on host tensors.
        if dist.get_backend() == "nccl":
            if self.device.type != "cuda":
                raise ValueError(f"the NCCL backend needs a CUDA device, got device={self.device}")
            self._comm_device = self.device
        else:
            self._comm_device = torch.device("cpu")
        self._unsynced = 0  # steps since the ranks last held the same parameters
        self.syncs = 0  # parameter averages done so far (for logs and tests)
        self._init_progress()
        self._broadcast_state()

    # -- collectives --------------------------------------------------------------------------------------------
    def _collective(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run one asynchronous collective and wait for it, turning a lost or stalled peer into a PipelineError."""
        what = f"federated rank {self.rank} of {self.world} failed in {what}"
        with lost_peer(what, self.timeout):
            work = fn(*args, async_op=True, **kwargs)
        wait_work(work, self.timeout, what)

    def _state_tensors(self, floating_only: bool) -> list[torch.Tensor]:
        tensors = [*self.network.parameters(), *self.network.buffers()]
        return [t for t in tensors if t.is_floating_point() or not floating_only]

    def _apply_flat(self, tensors: list[torch.Tensor], op: Callable[[torch.Tensor], None]) -> None:
        """Run ``op`` (a collective, in place) on one flat buffer per (dtype, device) and copy the result back."""
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        with torch.no_grad():
            for (dtype, _), group in groups.items():
                flat = _flatten_dense_tensors([t.detach() for t in group])
                flat = flat.to(self._comm_device, _REDUCE_DTYPE.get(dtype, dtype))
                op(flat)
                for t, new in zip(group, _unflatten_dense_tensors(flat, group)):
                    t.copy_(new)  # copy_ converts device, dtype and memory format (channels-last convs) back

    def _broadcast_state(self) -> None:
        """Give every rank rank 0's parameters and buffers (all dtypes), so the ranks start identical."""
        if self.world == 1:
            return
        self._apply_flat(self._state_tensors(floating_only=False),
                         lambda flat: self._collective("the initial broadcast of rank 0's parameters",
                                                       dist.broadcast, flat, src=0))

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
                    on_batch: Callable[[EpochProgress], None] | None = None) -> dict[str, Any]:
        """One pass over this rank's ``loader``, then a final average; the record covers every rank's images.

        ``train_loss``/``train_acc`` are means over all ranks' samples, ``train_images`` their total, and
        ``train_seconds`` the slowest rank's time.
        """
        reject_mid_epoch(self, position, on_batch)
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)  # reproducible shuffles, also after a resume
        self._check_lengths(loader)
        record = super().train_epoch(loader, progress=progress and self.rank == 0, desc=desc)
        if not self.in_sync:
            self.synchronize()
        return self._gather_record(record)

    def _check_lengths(self, loader: Iterable) -> None:
        """Every rank must take the same number of steps, or one would wait forever in an average."""
        check_equal_lengths(
            loader, self.rank, self.world, self._comm_device,
            lambda every, mine: self._collective("comparing the ranks' batches per epoch", dist.all_gather, every,
                                                 mine),
            needs_len="loader must have a len() (batches per epoch) so the ranks can check they take the same number "
                      "of steps",
            mismatch="every rank must take the same number of steps per epoch, but the ranks' loaders have {lengths} "
                     "batches (rank {rank}: {n}); shard the data with DistributedSampler "
                     "(ffkit.train.federated.shard_loader)",
        )

    def _gather_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Combine the ranks' epoch records: sample-weighted means, total images, the slowest rank's time."""
        seen = record["train_images"]
        n = len(record["train_loss"])
        head = "train_head_loss" in record
        row = [*(v * seen for v in record["train_loss"]), *(v * seen for v in record["train_acc"]), seen,
               record["train_seconds"], record.get("train_head_loss", 0.0) * seen,
               record.get("train_head_acc", 0.0) * seen]
        mine = torch.tensor(row, dtype=torch.float64, device=self._comm_device)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        self._collective("gathering the epoch's training metrics", dist.all_gather, every, mine)
        table = torch.stack(every).cpu()  # [world, 2 L + 4]
        sums = table.sum(dim=0)
        total = sums[2 * n].item()
        seconds = table[:, 2 * n + 1].max().item()
        out = dict(record)
        out["train_loss"] = (sums[:n] / total).tolist()
        out["train_acc"] = (sums[n : 2 * n].round() / total).tolist()  # correct counts are integers on each rank
        out["train_images"] = int(round(total))
        out["train_seconds"] = seconds
        out["train_images_per_s"] = total / seconds if seconds > 0 else float("inf")
        out["ranks"] = self.world
        if head:
            out["train_head_loss"] = sums[2 * n + 2].item() / total
            out["train_head_acc"] = sums[2 * n + 3].round().item() / total
        return out

    def fit(self, train: Iterable, *, epochs: int, holdout: Iterable | None = None, test: Iterable | None = None,
            out_dir: str | Path | None = None, log: Callable[[str], None] | None = print,
            **kwargs: Any) -> list[dict[str, Any]]:
        """As :meth:`Trainer.fit`, on every rank with the same arguments: each rank trains on its shard; rank 0 alone
        logs and writes ``out_dir`` (metrics and the whole checkpoint; the others ignore ``out_dir`` and ``log``).

        Every rank evaluates the ``holdout`` and ``test`` loaders it is given on the averaged network: pass the same
        ones everywhere so SIP prunes every copy alike, or pass them on rank 0 only if evaluation takes less than
        ``timeout`` (the other ranks wait for it in the next epoch's first collective).
        """
        if self.rank != 0:
            out_dir, log = None, None
        return super().fit(train, epochs=epochs, holdout=holdout, test=test, out_dir=out_dir, log=log, **kwargs)

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
        self.inner.step_count, self.inner.epoch = self.step_count, self.epoch  # OLU's parity reads the inner count
        self._unsynced = 0  # every rank loads the same checkpoint

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Load the checkpoint at ``path`` on this rank: call it on every rank with the same (rank 0's) checkpoint,
        so every rank continues from the same parameters, optimizer states, schedules, progress and RNG state."""
        return super().resume(path)


def shard_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_replicas: int | None = None,
    rank: int | None = None,
    **loader_options: Any,
) -> DataLoader:
    """A ``DataLoader`` over this rank's shard of ``dataset``: ``DistributedSampler(drop_last=True)``.

    Every rank gets ``len(dataset) // world`` distinct samples (the remainder is dropped), so every rank takes the same
    number of steps; the shuffle of epoch ``e`` is seeded by ``seed + e`` (``FederatedTrainer.train_epoch`` calls
    ``set_epoch``). ``num_replicas`` and ``rank`` default to the process group's.

    Args:
        dataset: the whole training set (map-style), the same on every rank.
        batch_size: samples per batch on each rank (the global batch is ``world x batch_size``).
        seed: shuffling seed, the same on every rank.
        shuffle: shuffle the shards each epoch.
        **loader_options: further ``DataLoader`` options (``num_workers``, ``pin_memory``, ``drop_last``, ...).
    """
    check_int(batch_size, "batch_size", minimum=1)
    check_int(seed, "seed")
    for name in ("sampler", "shuffle", "batch_sampler"):
        if name in loader_options:
            raise ValueError(f"shard_loader sets the sampler itself; do not pass {name!r} in loader_options")
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **loader_options)

