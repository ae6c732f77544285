"""``ReplicatedTrainer``: what the engines share whose ranks each hold the whole network and train it on their own
shard of the data (:class:`~ffkit.train.FederatedTrainer`, :class:`~ffkit.train.DataParallelTrainer`).

Every rank builds the same :class:`~ffkit.LocalTrainer`; rank 0's initial parameters and buffers are broadcast so the
ranks start identical; every collective is timed and a lost peer is a :class:`~ffkit.train.PipelineError`; the ranks
check they take the same number of steps per epoch; the epoch record covers every rank's images; rank 0 alone logs
and writes the run directory, and every rank resumes from rank 0's checkpoint. :func:`shard_loader` gives each rank
its shard.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .._validation import check_int
from ..evaluation import ActivityMonitor, CollectedScores
from ..network import FFNetwork
from ._distributed import (
    check_divergence_stop,
    check_equal_lengths,
    check_timeout,
    comm_device,
    default_device,
    release_at_exit,
    run_collective,
)
from .base import log_info
from .local import LocalTrainer, WrapsLocalTrainer

__all__ = ["ReplicatedTrainer", "shard_loader", "REDUCE_DTYPE", "flat_buffers", "unflatten_into", "apply_flat",
           "broadcast_state"]

#: Low-precision tensors are summed in float32: with bf16 the sum of a few ranks would already lose bits.
REDUCE_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


class ReplicatedTrainer(WrapsLocalTrainer):
    """Base of the engines whose ranks each train the whole network on their own shard (see the module's doc).

    Subclasses call :meth:`_setup_replicas` in their ``__init__`` and define ``train_step``; their
    ``train_epoch`` calls :meth:`_begin_epoch` before and :meth:`_gather_record` after the local epoch.
    """

    mid_epoch_checkpoints = False  # its ranks checkpoint at epoch ends
    #: How a rank names itself in errors ("federated rank 1 of 2 ...").
    role = "rank"

    rank: int
    world: int
    timeout: float
    _comm_device: torch.device

    def _setup_replicas(self, network: FFNetwork, device: str | torch.device | None, timeout: float,
                        trainer_options: dict[str, Any], engine: str,
                        shard: Callable[[], None] | None = None) -> None:
        """Check the arguments and the process group, build the inner :class:`~ffkit.LocalTrainer` on this rank's
        device and give every rank rank 0's parameters and buffers. ``shard`` (if given) then shards the
        parameters, and the inner trainer is built again so that its optimizers hold the sharded ones (sharding
        replaces the Parameter objects)."""
        if not isinstance(network, FFNetwork):
            raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
        check_timeout(timeout)
        check_divergence_stop(trainer_options, engine)
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{engine} needs torch.distributed initialised: launch one process per rank with "
                               f"torchrun and call ffkit.train.pipeline.init_distributed() first")
        release_at_exit()
        self.timeout = float(timeout)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        here = torch.device(device) if device is not None else default_device()
        self.inner = LocalTrainer(network, device=here, **trainer_options)
        self._comm_device = comm_device(self.device)
        self._init_progress()
        self._broadcast_state()
        if shard is not None:
            shard()
            self.inner = LocalTrainer(network, device=here, **trainer_options)

    # -- collectives --------------------------------------------------------------------------------------------
    @property
    def who(self) -> str:
        """``"<role> <rank> of <world>"``, the start of this rank's errors."""
        return f"{self.role} {self.rank} of {self.world}"

    def _collective(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run one collective, turning a lost or stalled peer into a PipelineError."""
        run_collective(f"{self.who} failed in {what}", self.timeout, fn, *args, **kwargs)

    def _state_tensors(self, floating_only: bool) -> list[torch.Tensor]:
        tensors = [*self.network.parameters(), *self.network.buffers()]
        return [t for t in tensors if t.is_floating_point() or not floating_only]

    def _apply_flat(self, tensors: list[torch.Tensor], op: Callable[[torch.Tensor], None]) -> None:
        """Run ``op`` (a collective, in place) on one flat buffer per (dtype, device) and copy the result back."""
        apply_flat(tensors, self._comm_device, op)

    def _broadcast_state(self) -> None:
        """Give every rank rank 0's parameters and buffers (all dtypes), so the ranks start identical."""
        if self.world == 1:
            return
        broadcast_state(self.network, self._comm_device, self.timeout, self.who)

    # -- epochs ---------------------------------------------------------------------------------------------------
    def _begin_epoch(self, loader: Iterable) -> None:
        """Seed the loader's ``DistributedSampler`` with the epoch (the same shuffles after a resume) and check that
        every rank takes the same number of steps, or one would wait forever in a collective."""
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)
        check_equal_lengths(
            loader, self.rank, self.world, self._comm_device,
            lambda every, mine: self._collective("comparing the ranks' batches per epoch", dist.all_gather, every,
                                                 mine),
            needs_len="loader must have a len() (batches per epoch) so the ranks can check they take the same number "
                      "of steps",
            mismatch="every rank must take the same number of steps per epoch, but the ranks' loaders have {lengths} "
                     "batches (rank {rank}: {n}); shard the data with DistributedSampler "
                     "(ffkit.train.shard_loader)",
        )

    def _gather_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Combine the ranks' epoch records: sample-weighted means (losses, accuracies, goodness), total images, the
        slowest rank's time."""
        seen = record["train_images"]
        n = len(record["train_loss"])
        head = "train_head_loss" in record
        goodness = "train_goodness_pos" in record  # every rank runs the same engine: all have it or none
        row = [*(v * seen for v in record["train_loss"]), *(v * seen for v in record["train_acc"]), seen,
               record["train_seconds"], record.get("train_head_loss", 0.0) * seen,
               record.get("train_head_acc", 0.0) * seen]
        if goodness:
            row += [v * seen for key in ("train_goodness_pos", "train_goodness_neg") for v in record[key]]
        mine = torch.tensor(row, dtype=torch.float64, device=self._comm_device)
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        self._collective("gathering the epoch's training metrics", dist.all_gather, every, mine)
        table = torch.stack(every).cpu()  # [world, 2 L + 4 (+ 2 L goodness)]
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
        if goodness:
            out["train_goodness_pos"] = (sums[2 * n + 4 : 3 * n + 4] / total).tolist()
            out["train_goodness_neg"] = (sums[3 * n + 4 : 4 * n + 4] / total).tolist()
        return out

    # -- evaluation -----------------------------------------------------------------------------------------------
    def _collect(self, loader: Iterable, **options: Any) -> CollectedScores:
        """Every rank scores every ``world``-th batch of ``loader`` (rank ``r`` from batch ``r``) and the ranks
        gather the scores, so each holds the whole set's (in another order, which no accuracy depends on) for about
        ``1 / world`` of the work. Unit activity is combined exactly (the elementwise maximum of the ranks' peaks).
        A loader without a length, or with fewer batches than ranks, is scored whole on every rank."""
        n = len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
        if self.world == 1 or n < self.world:
            return super()._collect(loader, **options)
        part = super()._collect(_EveryNth(loader, self.rank, self.world), **options)
        layers = self._gather_rows(part.layers.transpose(0, 1), "scores").transpose(0, 1)
        labels = self._gather_rows(part.labels, "labels")
        head = self._gather_rows(part.head, "head logits") if part.head is not None else None
        dead, peaks = part.dead_ratio, part.peaks
        if peaks is not None:
            peaks = [self._max_over_ranks(p) if p is not None else None for p in peaks]
            dead = ActivityMonitor.ratios_of(peaks)
        return CollectedScores(layers, labels, head, dead, peaks)

    def _gather_rows(self, rows: torch.Tensor, what: str) -> torch.Tensor:
        """Every rank's ``rows [n_r, ...]`` (``n_r`` may differ), concatenated in rank order."""
        count = torch.tensor([rows.shape[0]], device=self._comm_device)
        counts = [torch.zeros_like(count) for _ in range(self.world)]
        self._collective(f"gathering the number of evaluated {what}", dist.all_gather, counts, count)
        longest = int(max(c.item() for c in counts))
        padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=self._comm_device)
        padded[: rows.shape[0]] = rows
        every = [torch.zeros_like(padded) for _ in range(self.world)]
        self._collective(f"gathering the evaluated {what}", dist.all_gather, every, padded)
        return torch.cat([e[: int(c.item())] for e, c in zip(every, counts)]).to(rows.device)

    def _max_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.to(self._comm_device, torch.float32).clone()
        self._collective("combining unit activity", dist.all_reduce, flat, op=dist.ReduceOp.MAX)
        return flat.to(t.device, t.dtype)

    def fit(self, train: Iterable, *, epochs: int, holdout: Iterable | None = None, test: Iterable | None = None,
            out_dir: str | Path | None = None, log: Callable[[str], None] | None = log_info,
            **kwargs: Any) -> list[dict[str, Any]]:
        """As :meth:`Trainer.fit`, on every rank with the same arguments: each rank trains on its shard; rank 0 alone
        logs and writes ``out_dir`` (metrics and the whole checkpoint; the others ignore ``out_dir`` and ``log``).

        Pass the same ``holdout`` and ``test`` loaders on every rank: the ranks share their batches and gather the
        scores (:meth:`_collect`), so SIP prunes every copy alike.
        """
        if self.rank != 0:
            out_dir, log = None, None
            kwargs["tensorboard"] = False  # rank 0 writes the event files
        return super().fit(train, epochs=epochs, holdout=holdout, test=test, out_dir=out_dir, log=log, **kwargs)

    # -- state ----------------------------------------------------------------------------------------------------
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner.step_count, self.inner.epoch = self.step_count, self.epoch  # OLU's parity reads the inner count

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Load the checkpoint at ``path`` on this rank: call it on every rank with the same (rank 0's) checkpoint,
        so every rank continues from the same parameters, optimizer states, schedules, progress and RNG state."""
        return super().resume(path)


def flat_buffers(
    tensors: list[torch.Tensor], comm_device: torch.device
) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """``tensors`` grouped by dtype and device, each group with one flat copy on ``comm_device`` for a collective
    (low-precision groups in float32)."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return [(group, _flatten_dense_tensors([t.detach() for t in group]).to(comm_device, REDUCE_DTYPE.get(dtype, dtype)))
            for (dtype, _), group in groups.items()]


def unflatten_into(group: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy ``flat`` (a :func:`flat_buffers` buffer, after its collective) back into its tensors."""
    for t, new in zip(group, _unflatten_dense_tensors(flat, group)):
        t.copy_(new)  # copy_ converts device, dtype and memory format (channels-last convs) back


def apply_flat(tensors: list[torch.Tensor], comm_device: torch.device, op: Callable[[torch.Tensor], None]) -> None:
    """Run ``op`` (a collective, in place) on one flat buffer per (dtype, device) of ``tensors`` on ``comm_device``
    and copy the result back into them."""
    with torch.no_grad():
        for group, flat in flat_buffers(tensors, comm_device):
            op(flat)
            unflatten_into(group, flat)


def broadcast_state(network: torch.nn.Module, comm_device: torch.device, timeout: float, who: str) -> None:
    """Give every process rank 0's parameters and buffers of ``network`` (all dtypes), so replicas start identical
    (a collective of the whole world; ``who`` starts a lost peer's error)."""
    apply_flat([*network.parameters(), *network.buffers()], comm_device,
               lambda flat: run_collective(f"{who} failed in the initial broadcast of rank 0's parameters", timeout,
                                           dist.broadcast, flat, src=0))


class _EveryNth:
    """The batches ``start, start + step, ...`` of a loader (one rank's share of an evaluation)."""

    def __init__(self, loader: Iterable, start: int, step: int) -> None:
        self.loader, self.start, self.step = loader, start, step

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.start, None, self.step)


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
    number of steps; the shuffle of epoch ``e`` is seeded by ``seed + e`` (the replicated engines' ``train_epoch``
    calls ``set_epoch``). ``num_replicas`` and ``rank`` default to the process group's.

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
