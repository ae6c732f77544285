"""``ChapterTrainer``: Pipeline-FF's *all-layers* variant, where ranks exchange layer parameters instead of activations.

Aktemur et al., "Going Forward-Forward in Distributed Deep Learning" (Sec. 4.2, Alg. 2): training is cut into
*chapters*, and each rank trains every layer of the network on its own chapters, taking each layer over from the rank
that trained the previous chapter. In the paper a chapter is ``E / S`` epochs over the whole training set (one epoch
with its 100 epochs in 100 chapters), and its *sequential* runs are the same chapter loop in one process (the first
author's released code: for each chapter, each layer trains over every batch, then the next layer reads its outputs).
ffkit's reading of it:

* One pass over the loader (an epoch) is cut into ``C`` chapters of ``chapter_batches`` consecutive batches (the last
  one may be shorter). With ``S`` ranks, rank ``r`` trains chapters ``r, r + S, r + 2S, ...``.
* For its chapter ``c`` a rank trains layer ``l = 0 .. L-1`` in turn, each over all of the chapter's batches, with the
  local step of :class:`~ffkit.LocalTrainer`. Before layer ``l`` it receives layer ``l``'s parameters, buffers,
  optimizer state and lr-schedule state as they were after chapter ``c - 1`` (from rank ``(c - 1) % S``); layer
  ``l``'s inputs are computed with layers ``0 .. l-1`` as this rank has just trained them on chapter ``c``. After the
  chapter, layer ``l`` (with its optimizer and schedule) goes on to rank ``(c + 1) % S``.
* The ranks therefore work as a wavefront: rank ``(c + 1) % S`` starts layer 0 of chapter ``c + 1`` as soon as rank
  ``c % S`` has finished layer 0 of chapter ``c``. Sends are non-blocking, so a rank never waits for its receiver.
* A classifier head (Pipeline-FF's softmax layer) trains after the last layer, over the chapter's batches, on the
  detached activities of a neutral-label pass through the layers as this chapter left them, and travels from rank to
  rank like a layer.
* At the end of the epoch the rank of the last chapter broadcasts the whole network with every optimizer and schedule,
  so every rank (rank 0 evaluates and saves) holds the trained network and the next epoch's chapter 0 starts from it.
* Negatives: a chapter's batches are prepared (label encoding, negative labels) once, before the chapter, so every
  layer sees the same wrong label for a sample, and a sample gets a new one per chapter (RandomNEG), as in the release,
  which redraws its negatives after every chapter. Adaptive negatives (AdaptiveNEG) are scored by the network as this
  rank holds it before the chapter: in one process, the network after the previous chapter (the release's rule); with
  ``S`` ranks, the network after this rank's previous chapter ``c - S`` (the paper: "each [node] compute[s] its own
  negative samples after every chapter"). A rank's first chapter of a run draws them uniformly instead, as the release
  trains its first chapter on the random negatives it drew before training.

With ``local_data=True`` every rank trains on its own data instead (Pipeline-FF's *federated* variant, Sec. 4.3: "the
same training procedure", but "each node trains on its own local dataset"): rank ``r``'s ``k``-th run of
``chapter_batches`` batches is chapter ``k * S + r``, and layers travel from rank to rank exactly as above.

The result equals the sequential loop ``for c in chapters: for l in layers: train l on chapter c`` (inputs from layers
``0 .. l-1`` after chapter ``c``), which is what the trainer runs with one process (no ``torch.distributed``, or a
world size of 1). Dropout masks and random negatives come from each rank's own random stream, so with those the ranks
match the sequential loop in distribution only; :class:`~ffkit.objectives.FixedNegative` reproduces it exactly. Adaptive
negatives on several ranks are scored by a network ``S - 1`` chapters behind, so they do not match it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .._validation import check_bool, check_int
from ..network import FFNetwork, _RestoreNormStats
from ..objectives import PreparedBatch
from ._distributed import (
    PipelineError,
    check_divergence_stop,
    check_equal_lengths,
    check_timeout,
    default_device,
    lost_peer,
    release_at_exit,
)
from .base import EpochProgress, StepResult, log_info, reject_mid_epoch
from .local import LocalTrainer, WrapsLocalTrainer
from .pipelining.courier import StateCourier

__all__ = ["ChapterTrainer"]


class _Sums:
    """Per-layer sums over the batches this rank trained: loss x batch size ``[L]``, correct counts ``[L]``; the
    head's ``[2]`` (loss x batch size, correct) when the network has one."""

    def __init__(self, n_layers: int) -> None:
        self.loss = torch.zeros(n_layers, dtype=torch.float64)
        self.correct = torch.zeros(n_layers, dtype=torch.float64)
        self.last_loss = torch.zeros(n_layers)
        self.last_correct = torch.zeros(n_layers, dtype=torch.int64)
        self.head = torch.zeros(2, dtype=torch.float64)
        self.last_head: tuple[torch.Tensor, torch.Tensor] | None = None
        self.images = 0  # images of the chapters this rank trained (every layer sees each of them once)
        self.busy = 0.0  # seconds spent preparing batches and training

    def add(self, layer: int, loss: torch.Tensor, correct: torch.Tensor, batch_size: int) -> None:
        # One host synchronisation per layer and batch; a chapter's layer trains on many batches, and the
        # local step dominates, so this is not worth batching.
        value, right = float(loss), int(correct)
        self.loss[layer] += value * batch_size
        self.correct[layer] += right
        self.last_loss[layer] = value
        self.last_correct[layer] = right

    def add_head(self, result: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> None:
        loss, right = result
        self.head += torch.tensor([float(loss) * batch_size, float(right)], dtype=torch.float64)
        self.last_head = (loss.detach().float().cpu(), right.detach().cpu())


class ChapterTrainer(WrapsLocalTrainer):
    """Train an :class:`~ffkit.FFNetwork` in chapters: every rank trains every layer on its own chapters, and layers
    (parameters, buffers, optimizer and lr-schedule states) travel from rank to rank; activations never do.

    Args:
        network: the network (no Overlapping Local Updates: they couple two layers within a step). A classifier head
            trains after the last layer of each chapter.
        chapter_batches: batches per chapter (the last chapter of an epoch may be shorter). Pipeline-FF trains "100
            epochs in 100 splits (chapters)": one chapter per epoch, i.e. ``chapter_batches`` = the loader's batches
            per pass and one :meth:`train_epoch` per epoch.
        timeout: seconds a rank waits for a layer from its peer (or in an end-of-epoch collective) before it stops
            with :class:`~ffkit.train.PipelineError`.
        local_data: every rank iterates its own loader (its own shard of the data, with the same number of batches
            on every rank, e.g. :func:`ffkit.train.shard_loader`) and trains every chapter it cuts from
            it: Pipeline-FF's federated variant. Default: every rank iterates the same loader and trains every
            ``S``-th chapter of it.
        device: this rank's device (default: CUDA ``LOCAL_RANK`` if available, else CPU).
        **trainer_options: the per-layer optimisation of :class:`~ffkit.LocalTrainer` (``lr``, ``optimizer``,
            ``schedule``, ``total_steps``, ...). Each layer's schedule steps once per batch the layer trains on, so
            ``total_steps`` is epochs x batches per epoch, as for ``LocalTrainer``.

    Distributed runs: launch one process per rank with ``torchrun`` and call
    :func:`ffkit.train.pipeline.init_distributed` before building the trainer; without an initialised process group
    (or with one rank) the trainer runs the chapters sequentially. Every rank must iterate the *same* loader (same
    batches in the same order: no shuffling, or a sampler seeded identically on every rank); rank ``r`` prepares
    (label encoding, negatives) and trains only its own chapters' batches, and skips the others.

    Memory: a rank keeps its current chapter's prepared batches and, per batch, the detached features of the layer
    being fed (plus shortcut sources still to be read), so chapters should be small.
    """

    mid_epoch_checkpoints = False  # its ranks checkpoint at epoch ends

    def __init__(
        self,
        network: FFNetwork,
        *,
        chapter_batches: int,
        timeout: float = 60.0,
        device: str | torch.device | None = None,
        local_data: bool = False,
        **trainer_options: Any,
    ) -> None:
        if not isinstance(network, FFNetwork):
            raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
        check_int(chapter_batches, "chapter_batches", minimum=1, what="batches per chapter")
        check_timeout(timeout)
        check_divergence_stop(trainer_options, "ChapterTrainer")
        if trainer_options.get("overlap"):
            raise ValueError("overlap (OLU) trains layer pairs through one loss; ChapterTrainer trains one layer at a "
                             "time over a whole chapter, so it cannot overlap updates")
        if network.head is not None and network.head.hybrid:
            raise ValueError("a hybrid classifier head sends its loss into the layers it reads, within one step; "
                             "ChapterTrainer trains the head after the chapter's layers, on detached features")
        check_bool(local_data, "local_data")
        self.chapter_batches = chapter_batches
        self.local_data = local_data
        self.timeout = float(timeout)
        if dist.is_available() and dist.is_initialized():
            release_at_exit()
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        if device is None:
            device = default_device() if self.world > 1 else "cpu"
        self.inner = LocalTrainer(network, device=device, **trainer_options)
        # NCCL moves CUDA tensors only; gloo is simplest on host tensors.
        nccl = self.world > 1 and dist.get_backend() == "nccl"
        self.courier = StateCourier(rank=self.rank, world=self.world, timeout=self.timeout, role="chapter rank",
                                    comm_device=self.device if nccl else torch.device("cpu"), load_device=self.device)
        self.chapters_trained = 0  # chapters this rank has trained so far (for logs and tests)
        self._init_progress()

    # -- training -----------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """Train the batch ``x [B, C, H, W]``, ``y [B]`` as a one-batch chapter (one process only: with several ranks
        the chapters of an epoch are shared out by :meth:`train_epoch`)."""
        if self.world > 1:
            raise RuntimeError("ChapterTrainer.train_step runs one process only; with several ranks call train_epoch, "
                               "which shares the chapters out")
        sums = _Sums(len(self.network))
        self._train_chapter(0, [(x, y, index)], last=True, sums=sums)
        self.step_count += 1
        self.inner.step_count = self.step_count
        return StepResult(sums.last_loss.clone(), sums.last_correct.clone(), sums.images, sums.last_head)

    def train_epoch(self, loader: Iterable, *, progress: bool = False, desc: str = "train",
                    position: EpochProgress | None = None,
                    on_batch: Callable[[EpochProgress], None] | None = None, log_every: int | None = None,
                    on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """One pass over ``loader`` (batches ``(x, y)`` or ``(x, y, index)``) cut into chapters; this rank trains its
        own. Collective on distributed runs: every rank must call it with the same loader (with ``local_data``: its
        own loader, of the same length on every rank).

        Returns the record of :meth:`LocalTrainer.train_epoch <ffkit.Trainer.train_epoch>` over every rank's batches
        (per-layer ``train_loss`` / ``train_acc`` ``[L]``, ``train_images``, ...), plus ``chapters``, ``ranks`` and
        ``rank_busy_seconds`` (each rank's time preparing and training, the balance of the wavefront).
        """
        reject_mid_epoch(self, position, on_batch)
        # No step records (epoch records only): a rank trains a share of the layers on a share of the batches, in
        # chapters, so no rank holds an interval's per-layer means without a collective.
        del log_every, on_record
        del progress, desc  # no progress bar: a rank skips most batches, so its bar would mislead
        start = time.perf_counter()
        sums = _Sums(len(self.network))
        n_batches = 0
        mine: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        try:
            if self.local_data and self.world > 1:
                self._check_lengths(loader)
            it = iter(loader)
            ahead = next(it, None)
            while ahead is not None:
                item, ahead = ahead, next(it, None)  # one batch of look-ahead tells which chapter is the last
                chapter, pos = divmod(n_batches, self.chapter_batches)
                n_batches += 1
                if self.local_data:  # this rank's k-th run of batches is chapter k * S + r
                    chapter = chapter * self.world + self.rank
                if self.local_data or chapter % self.world == self.rank:
                    mine.append((item[0], item[1], item[2] if len(item) > 2 else None))
                if (pos == self.chapter_batches - 1 or ahead is None) and mine:
                    # With local data, the last rank's last chapter is the epoch's last: the others pass theirs on.
                    last = ahead is None and (not self.local_data or self.rank == self.world - 1)
                    self._train_chapter(chapter, mine, last=last, sums=sums)
                    mine = []
            if n_batches == 0:  # every rank's loader has the same length, so every rank raises: nobody waits
                raise ValueError("the training data is empty: no batch was produced")
            self.courier.flush("sending a layer to rank {dst}")
            n_chapters = math.ceil(n_batches / self.chapter_batches)
            if self.local_data:
                n_chapters *= self.world
            if self.world > 1:
                self._share_final_state(src=(n_chapters - 1) % self.world)
            record = self._gather_record(sums, time.perf_counter() - start, n_chapters)
        except RuntimeError as e:
            if isinstance(e, PipelineError):
                raise
            raise PipelineError(f"chapter rank {self.rank} of {self.world} failed: {e}") from e
        self.step_count += n_batches
        self.inner.step_count = self.step_count
        return record

    def _check_lengths(self, loader: Iterable) -> None:
        """With local data every rank must cut the same number of chapters, or a rank would wait for a layer that
        never comes."""
        check_equal_lengths(
            loader, self.rank, self.world, self.courier.comm_device,
            lambda every, mine: self.courier.collective("comparing the ranks' batches per epoch", -1, dist.all_gather,
                                                        every, mine),
            needs_len="with local_data the loader must have a len() (batches per epoch) so the ranks can check they "
                      "train the same number of chapters",
            mismatch="with local_data every rank must have the same number of batches per epoch, but the ranks' "
                     "loaders have {lengths} (rank {rank}: {n}); shard the data with "
                     "ffkit.train.shard_loader",
        )

    def _prepare(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None) -> PreparedBatch:
        x, y = self.inner.batch_to_device(x, y)
        if index is not None:
            index = index.to(self.device)
        return self.network.objective.prepare(self.network, x, y, index)

    def _prepare_chapter(self, raw: Sequence[tuple]) -> list[PreparedBatch]:
        """Encode a chapter's batches (and choose their negatives) once, before the chapter. Adaptive negatives of
        this rank's first chapter of the run are drawn uniformly: the network has not been trained yet, and
        Pipeline-FF's release trains its first chapter on negatives it drew at random."""
        from ..objectives.negatives import AdaptiveNegative, RandomNegative

        objective = self.network.objective
        sampler = getattr(objective, "negatives", None)
        first = self.step_count == 0 and self.chapters_trained == 0
        if not (first and isinstance(sampler, AdaptiveNegative)):
            return [self._prepare(*b) for b in raw]
        objective.negatives = RandomNegative(sampler.num_classes, generator=sampler.generator)
        try:
            return [self._prepare(*b) for b in raw]
        finally:
            objective.negatives = sampler

    def _train_chapter(self, chapter: int, raw: Sequence[tuple], *, last: bool, sums: _Sums) -> None:
        """Train every layer, in turn, over this chapter's batches; receive each layer first, pass it on after.

        ``feats[b]`` holds, for batch ``b``, the detached features the next layer reads (key ``l - 1``; ``-1`` is the
        prepared network input) and those of shortcut sources still to be read, all computed after the chapter's
        update of their layer.
        """
        net, t = self.network, self.inner
        began = time.perf_counter()
        batches = self._prepare_chapter(raw)
        feats: list[dict[int, torch.Tensor]] = [{-1: b.inputs} for b in batches]
        n_layers = len(net)
        src, dst = (chapter - 1) % self.world, (chapter + 1) % self.world
        for layer in range(n_layers):
            if self.world > 1 and chapter > 0:
                waited = time.perf_counter()
                self._receive_layer(layer, src)
                began += time.perf_counter() - waited  # waiting for a peer is not this rank's work
            crossing = sorted(net.crossing_shortcuts(layer - 1)) if layer > 0 else []
            for b, batch in enumerate(batches):
                shortcuts = {s: feats[b][s] for s in crossing}
                losses, correct, _, _ = t.train_layers(batch, feats[b][layer - 1], start=layer, end=layer,
                                                       shortcuts=shortcuts)
                t.step_schedules_of([layer])
                sums.add(layer, losses[0], correct[0], batch.batch_size)
            if self.world > 1 and not last:
                self._send_layer(layer, dst)
            if layer < n_layers - 1:
                self._advance(feats, layer, crossing)
        if net.head is not None:
            feats.clear()
            began += self._train_head(chapter, batches, last=last, sums=sums)
        sums.images += sum(b.batch_size for b in batches)
        sums.busy += time.perf_counter() - began
        self.chapters_trained += 1

    def _train_head(self, chapter: int, batches: Sequence[PreparedBatch], *, last: bool, sums: _Sums) -> float:
        """Train the classifier head over the chapter's batches (after every layer has trained on them), receiving it
        first and passing it on after, like a layer; returns the seconds spent waiting for it."""
        net, t = self.network, self.inner
        index = len(net)  # the head's optimizer and schedule come after the layers'
        waited = 0.0
        if self.world > 1 and chapter > 0:
            start = time.perf_counter()
            self._receive_layer(index, (chapter - 1) % self.world)
            waited = time.perf_counter() - start
        empty = torch.zeros(0, device=self.device)
        for batch in batches:
            update = t.begin_update((), head=True)
            result = t.head_step(batch, {}, update)  # reads a neutral-label pass (or the training pass's features)
            t.commit_update(update, empty, result, first_layer=index)
            t.step_schedules_of([index])
            sums.add_head(result, batch.batch_size)
        if self.world > 1 and not last:
            self._send_layer(index, (chapter + 1) % self.world)
        return waited

    def _advance(self, feats: list[dict[int, torch.Tensor]], layer: int, crossing: list[int]) -> None:
        """Replace each batch's input of ``layer`` by ``layer``'s features with its trained weights (the next layer's
        input); drop what no later layer reads."""
        net, t = self.network, self.inner
        needed = {layer} | net.crossing_shortcuts(layer)
        # The forward runs in training mode, like the features LocalTrainer hands on (batch statistics, dropout);
        # running norm statistics are restored, so only the layer's own training pass updates them.
        with torch.no_grad(), _RestoreNormStats(net.layers[layer]), t.autocast():
            for f in feats:
                shortcuts = {s: f[s] for s in crossing}
                _, out = next(net.iter_layers(f[layer - 1], start=layer, end=layer, shortcuts=shortcuts))
                f[layer] = out.features.detach()
                for k in [k for k in f if k not in needed]:
                    del f[k]

    # -- point-to-point: layers travel from chapter to chapter --------------------------------------------------
    def _module(self, layer: int) -> torch.nn.Module:
        """Layer ``layer``, or the classifier head for ``layer == L``."""
        net = self.network
        return net.layers[layer] if layer < len(net) else net.head

    def _layer_state(self, layer: int) -> dict[str, Any]:
        opt, sched = self.optimizers[layer], self.schedulers[layer]
        state: dict[str, Any] = {
            "layer": self._module(layer).state_dict(),
            "optimizer": opt.state_dict() if opt is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
        }
        if layer == 0:  # a learned label encoder trains with layer 0 (FFNetwork.local_parameters)
            state["objective"] = self.network.objective.state_dict()
        return state

    def _load_layer_state(self, layer: int, state: dict[str, Any]) -> None:
        self._module(layer).load_state_dict(state["layer"])
        if "objective" in state:
            self.network.objective.load_state_dict(state["objective"])
        opt, sched = self.optimizers[layer], self.schedulers[layer]
        if opt is not None and state["optimizer"] is not None:
            opt.load_state_dict(state["optimizer"])
        if sched is not None and state["scheduler"] is not None:
            sched.load_state_dict(state["scheduler"])

    def _send_layer(self, layer: int, dst: int) -> None:
        """Post layer ``layer``'s state to rank ``dst`` without waiting."""
        self.courier.send(self._layer_state(layer), dst, 2 * layer, f"sending layer {layer} to rank {dst}")

    def _receive_layer(self, layer: int, src: int) -> None:
        """Take over layer ``layer`` (weights, buffers, optimizer and schedule) as rank ``src`` left it."""
        state = self.courier.receive(src, 2 * layer, f"waiting for layer {layer} from rank {src}")
        self._load_layer_state(layer, state)

    # -- end of the epoch: collectives ----------------------------------------------------------------------------
    def _share_final_state(self, src: int) -> None:
        """The last chapter's rank broadcasts the whole network, every optimizer and schedule: all ranks then hold the
        trained network, and the next epoch's chapter 0 starts from it."""
        mine = None
        if self.rank == src:
            mine = {
                "network": self.network.state_dict(),
                "optimizers": [o.state_dict() if o is not None else None for o in self.optimizers],
                "schedulers": [s.state_dict() if s is not None else None for s in self.schedulers],
            }
        state = self.courier.broadcast(mine, src, f"the end-of-epoch broadcast of the trained network from rank {src}")
        if state is None:
            return
        self.network.load_state_dict(state["network"])
        self._load_optimizer_states(enumerate(state["optimizers"]), enumerate(state["schedulers"]))

    def _gather_record(self, sums: _Sums, seconds: float, n_chapters: int) -> dict[str, Any]:
        """Per-layer means over every rank's batches (each rank reports the sums of its own chapters)."""
        mine = (sums.loss, sums.correct, sums.images, sums.busy, sums.head)
        parts: list[Any] = [mine]
        if self.world > 1:
            parts = [None] * self.world
            with lost_peer(f"chapter rank {self.rank} of {self.world} failed gathering the epoch's training metrics",
                           self.timeout):
                dist.all_gather_object(parts, mine)
        images = sum(p[2] for p in parts)
        loss = sum(p[0] for p in parts) / images
        correct = sum(p[1] for p in parts) / images
        record: dict[str, Any] = {
            "train_loss": loss.tolist(),
            "train_acc": correct.tolist(),
            "train_images": images,
            "train_seconds": seconds,
            "train_images_per_s": images / seconds if seconds > 0 else float("inf"),
            "chapters": n_chapters,
            "ranks": self.world,
            "rank_busy_seconds": [p[3] for p in parts],
        }
        if self.network.head is not None:
            record["train_head_loss"], record["train_head_acc"] = (sum(p[4] for p in parts) / images).tolist()
        return record

    # -- fit and state --------------------------------------------------------------------------------------------
    def fit(self, train: Iterable, *, epochs: int, holdout: Iterable | None = None, test: Iterable | None = None,
            out_dir: str | Path | None = None, log: Callable[[str], None] | None = log_info,
            **kwargs: Any) -> list[dict[str, Any]]:
        """As :meth:`Trainer.fit`, on every rank with the same arguments; rank 0 alone logs and writes ``out_dir``.

        Every rank holds the whole trained network after each epoch. Evaluation on ``holdout``/``test`` runs on every
        rank given them; pass them on rank 0 only if evaluating takes less than ``timeout`` (rank 1 waits for layer
        0 of the next epoch's chapter 0 meanwhile).
        """
        if self.rank != 0:
            out_dir, log = None, None
            kwargs["tensorboard"] = False  # rank 0 writes the event files
        return super().fit(train, epochs=epochs, holdout=holdout, test=test, out_dir=out_dir, log=log, **kwargs)

    def save(self, path: str | Path, *, position: EpochProgress | None = None) -> Path:
        """Rank 0 writes the whole checkpoint (every rank holds the same state between epochs); others write nothing."""
        reject_mid_epoch(self, position, None)
        if self.rank == 0:
            return super().save(path)
        return Path(path)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner.step_count, self.inner.epoch = self.step_count, self.epoch

