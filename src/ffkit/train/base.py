"""What every ffkit trainer shares: epochs, evaluation with SIP, logging, metrics files, checkpoints, resume."""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import RandomSampler

from .._files import write_text_atomic
from .._validation import check_int, check_real
from .._version import __version__
from ..device import resolve_device
from ..evaluation import CollectedScores, check_tta, collect_scores, make_report, select_layers
from .checkpoint import CHECKPOINT_FORMAT, check_finite_state, load_checkpoint, nonfinite_entries, save_checkpoint
from .estimate import RunEstimate
from .interrupt import StopRequest, TrainingInterrupted, signal_name
from .rng import capture_rng, restore_rng
from .schedules import SCHEDULES, check_plan, make_optimizer, rebuild_for, replan_schedules, targets
from .undo import StepUndo

__all__ = ["Trainer", "StepResult", "StepSums", "EpochProgress", "DivergenceError", "DEFAULT_LOG_EVERY",
           "make_optimizer", "check_same_model"]


DIVERGENCE_ACTIONS = ("stop", "skip")
#: :meth:`Trainer.fit`'s default ``log_every``: a step record every 50 batches (timm's ``--log-interval``).
DEFAULT_LOG_EVERY = 50

#: Where the trainers log each epoch's table (at INFO); ``logging.basicConfig(level=logging.INFO)`` shows it.
logger = logging.getLogger("ffkit.train")


def log_info(message: str) -> None:
    """:meth:`Trainer.fit`'s default ``log``: ``message`` at INFO on the ``ffkit.train`` logger."""
    logger.info(message)


class DivergenceError(FloatingPointError):
    """A layer's loss or goodness became NaN or infinite; the message names the layer, the epoch and the step.

    Attributes:
        layer: index of the layer (``None``: the classifier head, or a whole-network loss).
        epoch: the epoch (1-based) the step belonged to.
        step: the training step (1-based, counted over the whole run).
        checkpoint: where :meth:`Trainer.fit` saved the last good state before raising, if it had a run directory.
    """

    def __init__(
        self, message: str, *, layer: int | None = None, epoch: int | None = None, step: int | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.layer, self.epoch, self.step, self.checkpoint = layer, epoch, step, checkpoint


class StepResult(NamedTuple):
    """Per-layer results of one training step, kept on the training device (no host synchronisation).

    Attributes:
        losses: ``[L]`` each layer's loss.
        correct: ``[L]`` samples each layer got right (class argmax, or ``g_pos > g_neg``).
        batch_size: ``B``.
        head: ``(loss, correct)`` of the network's classifier head, if it has one.
        skipped: the update was dropped because a value was not finite (``on_divergence="skip"``).
        goodness_pos: ``[L]`` each layer's mean goodness of the batch's positive data, ``goodness_neg`` ``[L]`` of its
            negative data (:meth:`~ffkit.objectives.Objective.batch_goodness`); ``None`` for an engine or objective
            without them (the backprop baselines).
    """

    losses: torch.Tensor
    correct: torch.Tensor
    batch_size: int
    head: tuple[torch.Tensor, torch.Tensor] | None = None
    skipped: bool = False
    goodness_pos: torch.Tensor | None = None
    goodness_neg: torch.Tensor | None = None


def check_trainer_args(network: nn.Module, lr: float, schedule: str, total_steps: int | None) -> None:
    """Shared argument checks of the trainers."""
    from ..network import FFNetwork

    if not isinstance(network, FFNetwork) and not hasattr(network, "layer_scores"):
        raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
    check_real(lr, "lr", low=0.0, low_open=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule in ("cosine", "cooldown", "linear-cooldown") and (total_steps is None or total_steps < 1):
        raise ValueError(f"schedule={schedule!r} needs total_steps >= 1 (epochs x batches per epoch)")


class Trainer:
    """Base class: subclasses set ``network``, ``device``, ``optimizers``, ``schedulers`` and implement
    :meth:`train_step`; everything else (epochs, SIP, evaluation, logging, checkpoints, resume) is shared."""

    network: Any
    device: torch.device
    _epoch_progress: EpochProgress | None = None  # the epoch in flight (fit saves it when a step diverges)
    #: Precision and memory format of the training forward, which evaluation follows (engines that offer them set
    #: them from their arguments).
    amp: bool = False
    channels_last: bool = False
    #: Test-time augmentation of every evaluation and SIP pass (``None`` or ``"flip"``, see
    #: :func:`~ffkit.evaluation.collect_scores`).
    tta: str | None = None
    _resume_position: EpochProgress | None = None  # from a checkpoint written inside an epoch
    #: The optimizer and schedule names and the schedule's length (``schedules.run_plan``), which checkpoints record
    #: so a resume can tell what changed (``None``: an engine without one, whose states load as they are).
    plan: dict[str, Any] | None = None
    #: What the last resume changed in the optimisation (lr, weight decay, schedule length), one line each.
    resume_notes: list[str] = []
    optimizers: list[torch.optim.Optimizer | None]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler | None]
    #: The state before each optimizer's latest step (:class:`~ffkit.train.undo.StepUndo`), which engines that
    #: support it record before stepping; :meth:`fit` keeps one while it can save the last good state.
    step_undo: StepUndo | None = None

    def __init__(
        self,
        network: Any,
        *,
        device: str | torch.device | None = None,
        optimizers: Sequence[torch.optim.Optimizer | None] = (),
        schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler | None] | None = None,
    ) -> None:
        """For a new engine: place ``network`` on ``device`` (``None``: ffkit's default, CUDA when available, else the
        CPU; see :mod:`ffkit.device`), hold its optimizers (one per layer, ``None`` for a
        layer without parameters, a classifier head's last) and their lr schedules (default: none), and start at
        epoch 0. The subclass implements :meth:`train_step`; ``fit`` saves and resumes the optimizers and schedules
        with the network. (ffkit's own engines set these themselves.)"""
        self.device = resolve_device(device)
        self.network = network.to(self.device)
        self.optimizers = list(optimizers)
        self.schedulers = list(schedulers) if schedulers is not None else [None] * len(self.optimizers)
        if len(self.schedulers) != len(self.optimizers):
            raise ValueError(f"schedulers must have one entry per optimizer ({len(self.optimizers)}), got "
                             f"{len(self.schedulers)}")
        self._init_progress()

    def _setup(self, network: Any, lr: float, final_lr: float | None, device: str | torch.device | None) -> None:
        """Place the network on ``device`` (``None``: :func:`ffkit.device.resolve_device`'s default) and record the
        learning rates (``final_lr`` defaults to ``lr / 10``)."""
        self.device = resolve_device(device)
        self.network = network.to(self.device)
        self.lr = float(lr)
        self.final_lr = self.lr / 10 if final_lr is None else check_real(final_lr, "final_lr", low=0.0)

    def _setup_performance(self, channels_last: bool, amp: bool, compile: bool | str, tta: str | None = None) -> None:
        """Memory format, bf16 autocast, per-layer ``torch.compile`` and evaluation's test-time augmentation (see
        :class:`~ffkit.LocalTrainer`)."""
        self.tta = check_tta(tta)
        if not isinstance(compile, (bool, str)):
            raise TypeError(f"compile must be a bool or a torch.compile backend name, got {type(compile).__name__}")
        self.channels_last = bool(channels_last)
        self.amp = bool(amp)
        self.compile = compile
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        if compile:
            layers = getattr(self.network, "layers", None)
            modules = list(layers) if layers is not None else [self.network]
            for m in modules:  # in place: parameter names and the state_dict stay those of the plain module
                m.compile(**({} if compile is True else {"backend": compile}))

    def autocast(self):
        """bf16 autocast on the training device when ``amp`` is on, else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _eval_options(self) -> dict[str, Any]:
        """Evaluate in the memory format and precision the network trains in, with the trainer's test-time
        augmentation."""
        return {"channels_last": self.channels_last, "amp": self.amp, "tta": self.tta}

    def batch_to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check a batch against the network, move it to the training device, and put the network in train mode.

        The labels are range-checked before the transfer, so a CUDA step needs no host synchronisation for it.
        """
        self.network.check_input(x, y)
        if x.requires_grad:  # a local step needs no gradient of its input; autograd would keep one for every step
            x = x.detach()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.network.train()
        return x, y

    def _init_progress(self) -> None:
        self.epoch = 0  # epochs completed
        self.step_count = 0  # steps completed
        self.history: list[dict[str, Any]] = []
        #: The step records this trainer made (:meth:`step_record`, ``fit(log_every=N)``), unrounded; not saved in
        #: checkpoints (``metrics.jsonl`` holds a whole run's, resumes included).
        self.step_history: list[dict[str, Any]] = []
        self.metadata: dict[str, Any] = {}
        #: set by :meth:`fit` while it runs with a ``log``: says early how long the training will take
        self.estimate: RunEstimate | None = None

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        raise NotImplementedError  # pragma: no cover

    def _step_schedules(self) -> None:
        self.step_schedules_of(range(len(self.schedulers)))

    def step_schedules_of(self, schedulers: Iterable[int]) -> None:
        """Step the learning-rate schedules with these indices (layer ``i``'s is ``i``; a head's is the last).

        A schedule that has run its ``total_steps`` stays at its final lr (a cosine would otherwise rise again), and
        the trainer warns once that it is stepped past its plan."""
        total: int | None = self.plan.get("total_steps") if self.plan is not None else None
        if self.plan is not None and self.plan.get("schedule") == "piecewise":
            total = None  # its milestones, not a length, end it
        with warnings.catch_warnings():
            # Under OLU a layer's first optimizer step may come one step after its schedule's first step.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for k in schedulers:
                sched = self.schedulers[k]
                if sched is None:
                    continue
                if total is not None and sched.last_epoch >= total:
                    self._warn_past_plan(total)
                    continue
                sched.step()

    def _warn_past_plan(self, total: int) -> None:
        if getattr(self, "_warned_past_plan", False):
            return
        self._warned_past_plan = True
        warnings.warn(
            f"{type(self).__name__} is trained past its total_steps={total}: its learning-rate schedule has ended, so "
            f"the lr stays at its final value; give the trainer total_steps = epochs x batches per epoch to plan "
            f"the whole run",
            UserWarning, stacklevel=3,
        )

    # -- epochs -------------------------------------------------------------------------------------------------
    def train_epoch(
        self,
        loader: Iterable,
        *,
        progress: bool = False,
        desc: str = "train",
        position: EpochProgress | None = None,
        on_batch: Callable[[EpochProgress], None] | None = None,
        log_every: int | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Train one pass over ``loader`` (batches ``(x, y)`` or ``(x, y, index)``); return per-layer means.

        Args:
            loader: the training batches.
            progress: show a progress bar.
            desc: the progress bar's label.
            position: continue an epoch interrupted after ``position.batches`` batches (a checkpoint written by
                :meth:`fit` with ``checkpoint_every``): the random state of the epoch's start is restored before the
                loader's iterator is created, so it draws the same order (and worker seeds); the batches already
                trained are read and dropped, then the random state saved with the checkpoint is restored.
            on_batch: called with the epoch's progress after every batch (``fit`` writes checkpoints from it).
            log_every: make a step record (:meth:`step_record`) after every ``log_every``-th batch of the epoch and
                after its last batch (covering the batches since the previous record), and pass it to
                ``on_record``; ``None``: no step records.
            on_record: receives each step record (before ``on_batch`` sees the batch, so a checkpoint written there
                comes after the record).
        """
        if position is not None and position.batches > 0:
            step_rng = capture_rng(self.network)  # the checkpoint's random state, put back by resume()
            restore_rng(position.rng, self.network)
            it = iter(loader)
            for k in range(position.batches):
                if next(it, None) is None:
                    raise ValueError(
                        f"the checkpoint stopped after batch {position.batches} of epoch {position.epoch}, but the "
                        f"training data has only {k} batches: resume with the same data, limit and batch size"
                    )
            restore_rng(step_rng, self.network)
            pos = position
        else:
            pos = EpochProgress(epoch=self.epoch + 1, rng=capture_rng(self.network))
            it = iter(loader)
        self._epoch_progress = pos
        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        if log_every is not None and pos.interval is None:
            pos.interval = StepSums()
        elif log_every is None:
            pos.interval = None
        bar = _progress(it, progress, desc, initial=pos.batches, total=total)
        began = time.perf_counter() - pos.seconds

        def clock() -> float:  # the epoch's training time so far (continued from a checkpoint's)
            return time.perf_counter() - began

        for batch in bar:
            if not isinstance(batch, (tuple, list)) or not 2 <= len(batch) <= 3:
                got = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                raise TypeError(f"each training batch must be (x, y) or (x, y, index), got {got}: give the loader "
                                f"a dataset of (image, label) pairs, e.g. TensorDataset(x, y)")
            index = batch[2] if len(batch) > 2 else None
            res = self.train_step(batch[0], batch[1], index)
            pos.add(res)
            pos.seconds = time.perf_counter() - began
            if self.estimate is not None:
                self.estimate.batch_done(pos.batches, total, res.batch_size)
            if pos.interval is not None:
                pos.interval.add(res)  # device additions only: the host waits once per record, in step_record
                # the epoch's last batch ends its interval here, before on_batch: a checkpoint written after it
                # then holds no steps that a record already covers
                if log_every is not None and (pos.batches % log_every == 0 or pos.batches == total):
                    record = self.step_record(pos, total, clock)
                    if on_record is not None:
                        on_record(record)
            if progress and pos.batches % 10 == 1:
                last_acc = res.correct[-1].item() / res.batch_size
                bar.set_postfix(loss=f"{res.losses[-1].item():.3f}", acc=f"{last_acc:.3f}")
            if on_batch is not None:
                on_batch(pos)
        self._epoch_progress = None
        if pos.batches == 0:
            raise ValueError("the training data is empty: no batch was produced")
        if pos.interval is not None and pos.interval.batches > 0:  # the last interval of a loader without a length
            record = self.step_record(pos, pos.batches, clock)
            if on_record is not None:
                on_record(record)
        pos.interval = None
        if pos.seen == 0:
            raise DivergenceError(
                f"every one of the {pos.batches} batches of epoch {pos.epoch} had a non-finite loss or goodness and "
                f"was skipped: lower the learning rate or check the input data", epoch=pos.epoch,
            )
        record = {
            **pos.means(),
            "train_images": pos.seen,
            "train_seconds": pos.seconds,
            "train_images_per_s": pos.seen / pos.seconds if pos.seconds > 0 else math.inf,
        }
        if getattr(self, "on_divergence", "stop") == "skip":
            record["skipped_batches"] = pos.skipped
        return record

    def step_record(self, pos: EpochProgress, batches_per_epoch: int | None, clock: Callable[[], float]
                    ) -> dict[str, Any]:
        """The step record of the steps in ``pos.interval`` (then reset), in the order ``metrics.jsonl`` gives them.

        Fields: ``step`` (the training steps completed, over the whole run), ``epoch`` (fractional: the epochs
        completed before this one plus the share of this epoch's batches trained, ``(e - 1) + b / n``, so a record
        after batch 32 of 100 in epoch 1 has 0.32 and one at an epoch's end has ``e``; ``None`` mid-epoch when the
        loader has no length), ``batches`` (the batches the record covers), the per-layer means over their samples
        (:meth:`StepSums.means`: ``train_loss``, ``train_acc``, ``train_goodness_pos``, ``train_goodness_neg``, and a
        head's), ``train_images``, ``train_images_per_s`` (over the training time since the previous record, read from
        ``clock``, the epoch's seconds so far, after the wait for the interval's steps), ``lr``
        (:meth:`logged_lr`), ``skipped_batches`` (``on_divergence="skip"``) and ``time`` (UTC, ISO 8601)."""
        interval = pos.interval
        assert interval is not None
        n = batches_per_epoch
        record: dict[str, Any] = {
            "step": self.step_count,
            "epoch": (pos.epoch - 1) + pos.batches / n if n else None,
            "batches": interval.batches,
            **interval.means(),  # waits for the interval's steps to finish
        }
        now = clock()
        seconds, pos.interval_began = now - pos.interval_began, now
        record["train_images"] = interval.seen
        record["train_images_per_s"] = interval.seen / seconds if seconds > 0 else math.inf
        lr = self.logged_lr()
        if lr is not None:
            record["lr"] = lr
        if getattr(self, "on_divergence", "stop") == "skip":
            record["skipped_batches"] = interval.skipped
        record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        pos.interval = StepSums()
        return record

    def evaluate(self, loader: Iterable, sip_range: tuple[int, int] | None = None, *, progress: bool = False):
        """Per-layer, all-layer, last-3, the network's own prediction (its inference range, or its head) and (if
        given) SIP-range accuracy on ``loader``: an ``EvalReport``, which also holds each layer's goodness of positive
        and negative data, its deactivated-unit ratio (measured in the same pass) and SIP's accuracy grid over every
        layer range. ``progress`` shows a progress bar over the batches."""
        collected = self._collect(loader, track_activity=True, **_bar(progress, "test"))
        net = self.network
        head_predicts = bool(getattr(net, "head_predicts", False)) and collected.head is not None
        rng = getattr(net, "inference_range", None)
        prediction_range = (int(rng[0]), int(rng[1])) if rng is not None else None
        return make_report(
            collected.layers, collected.labels, sip_range, head_scores=collected.head, dead_ratio=collected.dead_ratio,
            prediction_range=prediction_range, head_predicts=head_predicts,
        )

    def _collect(self, loader: Iterable, **options: Any) -> CollectedScores:
        """Every layer's scores on ``loader`` (:func:`~ffkit.evaluation.collect_scores`), in the precision, layout
        and test-time augmentation of training; engines with several ranks split the work."""
        return collect_scores(self.network, loader, self.device, **options, **self._eval_options())

    def select_layers(self, loader: Iterable, *, progress: bool = False):
        """SIP on a held-out loader: choose the best layer range and prune the network's inference to it
        (``progress``: a progress bar over the batches)."""
        collected = self._collect(loader, with_head=False, **_bar(progress, "held-out (SIP)"))
        result = select_layers(collected.layers, collected.labels)
        self.network.set_inference_range(result.start, result.end)
        return result

    #: Whether :meth:`fit` can write checkpoints inside an epoch and continue from them (``checkpoint_every``).
    mid_epoch_checkpoints: bool = True

    def fit(
        self,
        train: Iterable,
        *,
        epochs: int,
        holdout: Iterable | None = None,
        test: Iterable | None = None,
        out_dir: str | Path | None = None,
        seed: int = 0,
        progress: bool = False,
        log: Callable[[str], None] | None = log_info,
        metadata: dict[str, Any] | None = None,
        checkpoint_every: int | None = None,
        log_every: int | None = DEFAULT_LOG_EVERY,
        tensorboard: bool = False,
    ) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are complete (continuing after a :meth:`resume`).

        After each epoch: SIP on ``holdout`` (if given), evaluation on ``test`` (if given), the per-layer table is
        logged, and ``out_dir`` receives ``metrics.json``, ``metrics.csv`` and ``checkpoint.pt`` (atomically).
        Each epoch's record (the list returned holds one per epoch) has the per-layer ``train_loss`` and
        ``train_acc``, ``train_images``, ``train_seconds``, ``train_images_per_s``, ``holdout_sip`` and ``test``
        (when given), ``lr`` (the learning rate at the epoch's end, :meth:`logged_lr`) and ``time`` (when the epoch
        ended, UTC ISO 8601). ``metrics.json`` holds the same records with numbers rounded to 7 significant digits
        and 1-based layer ranges beside the 0-based ones (:func:`metrics_record`: ``test.sip_layers`` ``[4, 4]`` for
        ``test.sip_range`` ``[3, 3]``, "SIP layers 4..4" on the console).
        With ``checkpoint_every=N`` the checkpoint is also written after every ``N``-th batch of an epoch, with the
        epoch's position; a run killed at any point resumes from its last checkpoint and, on CPU with the same seed
        and data, ends with exactly the weights of an uninterrupted run.

        If a step diverges (``DivergenceError``, see ``LocalTrainer(on_divergence=...)``) and ``out_dir`` is given,
        the trainer's last good state (the one before that step) is saved as ``out_dir/checkpoint.pt`` first, and
        the error names it.

        The shuffling order of epoch ``e`` is seeded by ``seed + e`` when ``train`` shuffles with its own generator,
        so a resumed run sees the same data order as an uninterrupted one.

        Training curves: with ``log_every=N`` (default :data:`DEFAULT_LOG_EVERY`; ``None`` turns them off) a *step
        record* is made after every ``N``-th batch of an epoch and after its last batch (that one covers the batches
        since the previous record, fewer than ``N`` when ``N`` does not divide the epoch): the per-layer means of
        ``train_loss``, ``train_acc`` and the goodness of positive and negative data over those batches, with the
        step, the fractional epoch, images/s, lr and time (:meth:`step_record`). The sums stay on the device and the
        host waits for them once per record. They are appended to :attr:`step_history` and, with ``out_dir``, to
        ``out_dir/metrics.jsonl`` with the epoch records (:mod:`ffkit.train.runlog`; a resumed run first drops the
        lines written after its checkpoint). ``tensorboard=True`` also writes them as TensorBoard scalars to
        ``out_dir/tensorboard/`` (needs ``out_dir`` and the ``tensorboard`` package). :class:`LocalTrainer`,
        :class:`BackpropTrainer` (without the goodness fields),
        :class:`DataParallelTrainer` (rank 0's share of each batch) and :class:`FederatedTrainer` (rank 0's batches)
        make step records; :class:`ChapterTrainer` and :class:`PipelineTrainer` make epoch records only.
        Each epoch's table goes to ``log``: by default the ``ffkit.train`` logger at INFO, which ``ffkit train``
        shows and a script shows with ``logging.basicConfig(level=logging.INFO)``; ``None``: no table.
        """
        check_int(epochs, "epochs", minimum=1)
        if log_every is not None:
            check_int(log_every, "log_every", minimum=1, what="batches between step records; None turns them off")
        if tensorboard and out_dir is None:
            raise ValueError("tensorboard=True writes event files into the run directory: give out_dir")
        out = Path(out_dir) if out_dir is not None else None
        if checkpoint_every is not None:
            check_int(checkpoint_every, "checkpoint_every", minimum=1, what="batches")
            if not self.mid_epoch_checkpoints:
                raise ValueError(
                    f"checkpoint_every is not supported by {type(self).__name__}, which checkpoints at the end of "
                    f"each epoch; use LocalTrainer or BackpropTrainer for checkpoints inside an epoch"
                )
        self.metadata = dict(metadata or {})
        ckpt = out / "checkpoint.pt" if out is not None else None
        # Every engine here takes log_every (those that cannot make step records ignore it); an engine written
        # against the older train_epoch, without it, is called as before and makes epoch records only.
        steps = "log_every" in inspect.signature(self.train_epoch).parameters
        run_log = None
        if out is not None:
            from .runlog import RunLog

            run_log = RunLog(out, step=self.step_count, epoch=self.epoch, tensorboard=tensorboard)

        def on_record(record: dict[str, Any]) -> None:
            self.step_history.append(record)
            if run_log is not None:
                run_log.step(record)

        trained = self.epoch < epochs
        self.estimate = RunEstimate(log, epochs - self.epoch) if log is not None and trained else None
        # Ctrl-C and SIGTERM stop at the next step boundary with a resumable checkpoint (engines that checkpoint
        # inside an epoch, with a run directory); elsewhere they keep their usual effect.
        graceful = ckpt is not None and self.mid_epoch_checkpoints
        keep_undo = graceful and getattr(self, "on_divergence", "stop") == "stop"  # what _save_last_good needs
        with contextlib.ExitStack() as scope:
            if run_log is not None:
                scope.callback(run_log.close)
            stop = scope.enter_context(StopRequest() if graceful else contextlib.nullcontext(StopRequest()))
            scope.enter_context(self._undo_scope(keep_undo))
            while self.epoch < epochs:
                e = self.epoch + 1
                sampler = getattr(train, "sampler", None)
                if isinstance(sampler, RandomSampler) and sampler.generator is not None:
                    sampler.generator.manual_seed(seed + e)
                record: dict[str, Any] = {"epoch": e}
                extra: dict[str, Any] = {}
                if self.mid_epoch_checkpoints:
                    position, self._resume_position = self._resume_position, None
                    extra["position"] = position if position is not None and position.epoch == e else None
                    if ckpt is not None:
                        extra["on_batch"] = _on_batch(self, ckpt, checkpoint_every, stop)
                if steps and log_every is not None:
                    extra.update(log_every=log_every, on_record=on_record)
                try:
                    record.update(self.train_epoch(train, progress=progress, desc=f"epoch {e}/{epochs}", **extra))
                except DivergenceError as err:
                    if ckpt is None or self._epoch_progress is None or not self.mid_epoch_checkpoints:
                        raise
                    raise self._save_last_good(err, ckpt, self._epoch_progress) from None
                evaluating = time.perf_counter()
                if holdout is not None:
                    sip = self.select_layers(holdout, progress=progress)
                    record["holdout_sip"] = {"start": sip.start, "end": sip.end, "accuracy": sip.accuracy}
                if test is not None:
                    start, end = (int(v) for v in self.network.inference_range)
                    record["test"] = self.evaluate(test, (start, end) if holdout is not None else None,
                                                   progress=progress).to_dict()
                lr = self.logged_lr()
                if lr is not None:
                    record["lr"] = lr
                record["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                self.epoch = e
                self.history.append(record)
                if run_log is not None:
                    run_log.epoch(record, self.step_count)
                if log is not None:
                    log(format_epoch(record, epochs))
                if self.estimate is not None:
                    self.estimate.epoch_done(record["train_seconds"], time.perf_counter() - evaluating, epochs - e)
                if ckpt is not None and out is not None:
                    self.save(ckpt)
                    write_metrics(self.history, out)
                if stop.signum is not None:  # a signal during evaluation or the epoch's last step: the epoch is saved
                    raise TrainingInterrupted(f"{signal_name(stop.signum)}: stopped after epoch {e}; its checkpoint is "
                                              f"{ckpt}", signum=stop.signum, checkpoint=ckpt)
        self.estimate = None
        if out is not None and self.history and not trained:
            write_metrics(self.history, out)  # a run may have stopped between its last checkpoint and its metrics
        return self.history

    def logged_lr(self) -> float | None:
        """The learning rate an epoch record gives (``"lr"``): the first layer optimizer's at the end of the epoch
        (after its last step's schedule update: the lr the next step takes; every layer follows the same schedule),
        or ``None`` for an engine without optimizers."""
        for opt in self.optimizers:
            if opt is not None and opt.param_groups:
                return float(opt.param_groups[0]["lr"])
        return None

    @contextlib.contextmanager
    def _undo_scope(self, keep: bool) -> Iterator[None]:
        """Keep a :class:`StepUndo` (if ``keep``) for the scope only: its copies matter while fit can save them."""
        self.step_undo = StepUndo() if keep else None
        try:
            yield
        finally:
            self.step_undo = None

    def _save_last_good(self, err: DivergenceError, ckpt: Path, pos: EpochProgress) -> DivergenceError:
        """Save the last good state and return the error that says where: the state before the last step taken
        (the failing step's input state came out of that step, so it is the one that cannot be trusted), or, without
        a record of that step, the state before the failing step, if it is finite."""
        undone = self.step_undo is not None and self.step_undo.restore(self.optimizers)
        bad = nonfinite_entries(self.network.state_dict())
        if bad:  # a state that cannot be resumed would overwrite the last checkpoint that can
            return DivergenceError(
                f"{err}. The state before this step is not finite either ({', '.join(bad[:3])}), so it was not saved: "
                f"resume from the last checkpoint in {ckpt.parent} (--checkpoint-every N keeps one every N batches) "
                f"with a lower learning rate",
                layer=err.layer, epoch=err.epoch, step=err.step,
            )
        self.save(ckpt, position=pos)
        skip = ", or with on_divergence='skip' to drop such batches" if hasattr(self, "on_divergence") else ""
        which = ("before the last step taken, which led here; a resume does not train that step's batch again"
                 if undone else "before this step")
        return DivergenceError(
            f"{err}. The last good state ({which}) is saved in {ckpt}: resume from it with a lower learning "
            f"rate{skip}",
            layer=err.layer, epoch=err.epoch, step=err.step, checkpoint=ckpt,
        )

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "optimizers": [o.state_dict() if o is not None else None for o in self.optimizers],
            "schedulers": [s.state_dict() if s is not None else None for s in self.schedulers],
            "epoch": self.epoch,
            "step_count": self.step_count,
            "history": self.history,
        }
        if self.plan is not None:
            state["plan"] = dict(self.plan)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s optimizer and schedule states, progress and history.

        A trainer built with another lr, final lr, weight decay (a classifier head's too) or schedule length than the
        checkpoint's continues with its own (:func:`~ffkit.train.schedules.replan_schedules` says how; the changes
        are listed in :attr:`resume_notes`); one with another optimizer, schedule or update interval is refused with
        a ``ValueError``, as is a length shorter than the steps already taken.
        """
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"trainer state has {len(state['optimizers'])} layers, this network has {len(self.optimizers)}"
            )
        if self.plan is not None:
            check_plan(state.get("plan"), self.plan, int(state["step_count"]))
        self.resume_notes = self._load_optimization(state.get("plan"), enumerate(state["optimizers"]),
                                                    enumerate(state["schedulers"]))
        self.epoch = state["epoch"]
        self.step_count = state["step_count"]
        self.history = list(state["history"])

    def _load_optimization(self, saved_plan: dict[str, Any] | None, optimizers: Iterable[tuple[int, Any]],
                           schedulers: Iterable[tuple[int, Any]]) -> list[str]:
        """Load ``(index, state)`` pairs of optimizer and schedule states (checked by ``check_plan`` first), then give
        those optimizers this trainer's lr, final lr, weight decay and schedule length
        (:func:`~ffkit.train.schedules.replan_schedules`); returns its notes."""
        optimizers = list(optimizers)
        loaded = {int(i) for i, _ in optimizers}
        wanted = [targets(o, s) if o is not None and i in loaded else None  # read before the states overwrite them
                  for i, (o, s) in enumerate(zip(self.optimizers, self.schedulers))]
        self._load_optimizer_states(optimizers, schedulers)
        if self.plan is None:
            return []
        return replan_schedules(saved_plan, self.plan, self.optimizers, self.schedulers, wanted)

    def _load_optimizer_states(self, optimizers: Iterable[tuple[int, Any]], schedulers: Iterable[tuple[int, Any]]):
        """Load ``(index, state)`` pairs into ``self.optimizers`` / ``self.schedulers`` (``None`` entries skipped)."""
        for i, s in optimizers:
            opt = self.optimizers[int(i)]
            if opt is not None and s is not None:
                opt.load_state_dict(s)
        for i, s in schedulers:
            sched, opt = self.schedulers[int(i)], self.optimizers[int(i)]
            if sched is not None and opt is not None and s is not None:
                sched = self.schedulers[int(i)] = rebuild_for(s, opt, sched)
                sched.load_state_dict(s)

    def save(self, path: str | Path, *, position: EpochProgress | None = None) -> Path:
        """Write network, optimizers, schedulers, progress and random states atomically to ``path``; ``position``:
        the progress of an epoch in flight (a checkpoint inside an epoch)."""
        net = self.network
        payload = {
            "ffkit_checkpoint_format": CHECKPOINT_FORMAT,
            "ffkit_version": __version__,
            "model_name": net.model_name,
            "model_kwargs": net.model_kwargs,
            "trainer_class": type(self).__name__,
            "network": self._network_state(),
            "trainer": self.state_dict(),
            "metadata": getattr(self, "metadata", {}),
            "rng": capture_rng(net),
            "position": position.state_dict() if position is not None else None,
        }
        return save_checkpoint(payload, path)

    def _network_state(self) -> dict[str, Any]:
        """The network's state_dict as :meth:`save` writes it (an engine whose parameters are sharded over ranks
        gathers them here)."""
        return self.network.state_dict()

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Restore everything :meth:`save` wrote; raises ``ValueError`` for a checkpoint of another model. A
        checkpoint written inside an epoch makes the next :meth:`fit` continue that epoch where it stopped."""
        payload = load_checkpoint(path, map_location=self.device)
        check_same_model(payload, self.network, path)
        written_by = payload.get("trainer_class")
        if written_by and len(payload["trainer"]["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"checkpoint {path} was written by a {written_by}, whose optimizer states do not fit this "
                f"{type(self).__name__}: resume it with a {written_by}"
            )
        check_finite_state(payload["network"], f"checkpoint {path}")
        self.network.load_state_dict(payload["network"])
        self.load_state_dict(payload["trainer"])
        restore_rng(payload.get("rng") or {}, self.network)
        position = payload.get("position")
        self._resume_position = EpochProgress.from_state(position, self.device) if position else None
        self.metadata = payload.get("metadata", {})
        return payload


def reject_mid_epoch(trainer: Trainer, position: Any, on_batch: Any) -> None:
    """For engines that checkpoint only at epoch ends: refuse an epoch position or a per-batch hook."""
    if position is not None or on_batch is not None:
        raise ValueError(f"{type(trainer).__name__} checkpoints at the end of each epoch only; it cannot continue "
                         f"or checkpoint an epoch in flight")


def _on_batch(trainer: Trainer, path: Path, every: int | None, stop: StopRequest) -> Callable[[EpochProgress], None]:
    """After each step: the checkpoint every ``every`` batches, and a checkpoint and :class:`TrainingInterrupted` once
    ``stop`` has recorded a signal (the step itself is whole: the signal only set a flag)."""

    def on_batch(pos: EpochProgress) -> None:
        if stop.signum is not None:
            trainer.save(path, position=pos)
            raise TrainingInterrupted(
                f"{signal_name(stop.signum)}: stopped after batch {pos.batches} of epoch {pos.epoch}; saved a "
                f"resumable checkpoint in {path}",
                signum=stop.signum, checkpoint=path,
            )
        if every is not None and pos.batches % every == 0:
            trainer.save(path, position=pos)

    return on_batch


@dataclass(kw_only=True)
class StepSums:
    """Training steps' results summed on the training device (no host synchronisation until :meth:`means`).

    Attributes:
        batches: batches counted (skipped ones included).
        seen: samples of the applied batches.
        skipped: batches whose update was dropped as non-finite.
        loss_sum: ``[L]`` per-layer losses weighted by batch size, summed; ``correct_sum`` ``[L]`` correct samples;
            ``head_sum`` ``[2]`` the head's weighted loss and correct count; ``goodness_sum`` ``[2, L]`` the layers'
            mean goodness of positive (row 0) and negative (row 1) data, weighted by batch size (``None`` when the
            steps gave none).
    """

    batches: int = 0
    seen: int = 0
    skipped: int = 0
    loss_sum: torch.Tensor | None = None
    correct_sum: torch.Tensor | None = None
    head_sum: torch.Tensor | None = None
    goodness_sum: torch.Tensor | None = None

    def add(self, res: StepResult) -> None:
        """Count one step's result (a skipped step only as a batch)."""
        self.batches += 1
        if res.skipped:
            self.skipped += 1
            return
        w = res.losses * res.batch_size
        self.loss_sum = w if self.loss_sum is None else self.loss_sum + w
        self.correct_sum = res.correct if self.correct_sum is None else self.correct_sum + res.correct
        if res.head is not None:
            h = torch.stack([res.head[0] * res.batch_size, res.head[1].to(res.head[0].dtype)])
            self.head_sum = h if self.head_sum is None else self.head_sum + h
        if res.goodness_pos is not None and res.goodness_neg is not None:  # an engine gives them at every step or never
            g = torch.stack([res.goodness_pos, res.goodness_neg]) * res.batch_size
            self.goodness_sum = g if self.goodness_sum is None else self.goodness_sum + g
        self.seen += res.batch_size

    def means(self) -> dict[str, Any]:
        """The per-layer means of the steps counted, as a record's fields: ``train_loss`` and ``train_acc`` (lists of
        ``L`` floats), ``train_goodness_pos`` and ``train_goodness_neg`` (when the steps gave goodness), and
        ``train_head_loss`` / ``train_head_acc`` (a classifier head). One host synchronisation; empty when no step
        was applied."""
        if self.seen == 0 or self.loss_sum is None or self.correct_sum is None:
            return {}
        # float32 loss means, as the epoch records have always had them; everything else in float64
        parts = [(self.loss_sum / self.seen).double(), self.correct_sum.double() / self.seen]
        if self.goodness_sum is not None:
            parts += [self.goodness_sum[0].double() / self.seen, self.goodness_sum[1].double() / self.seen]
        if self.head_sum is not None:
            parts.append(self.head_sum.double() / self.seen)
        values = torch.cat([p.flatten() for p in parts]).tolist()  # the one synchronisation
        n = len(self.loss_sum)
        rows = [values[k * n:(k + 1) * n] for k in range(len(parts) - (self.head_sum is not None))]
        out: dict[str, Any] = {"train_loss": rows[0], "train_acc": rows[1]}
        if self.goodness_sum is not None:
            out["train_goodness_pos"], out["train_goodness_neg"] = rows[2], rows[3]
        if self.head_sum is not None:
            out["train_head_loss"], out["train_head_acc"] = values[-2:]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> StepSums:
        moved: dict[str, Any] = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        return cls(**moved)


@dataclass(kw_only=True)
class EpochProgress(StepSums):
    """The progress of an epoch in flight: what a checkpoint written inside an epoch needs to continue it (the
    epoch's sums, :class:`StepSums`, and these).

    Attributes:
        epoch: the epoch (1-based).
        rng: the random state at the epoch's start, before its data iterator was created.
        seconds: training time so far.
        interval: the sums of the steps since the last step record (``Trainer.fit(log_every=N)``), so that a resumed
            epoch's next step record covers the same batches as an uninterrupted run's; ``None`` without step
            records; ``interval_began``: the epoch's ``seconds`` when it began.
    """

    epoch: int
    rng: dict[str, Any]
    seconds: float = 0.0
    interval: StepSums | None = None
    interval_began: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["interval"] = self.interval.state_dict() if self.interval is not None else None
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        state = dict(state)
        interval = state.pop("interval", None)
        moved: dict[str, Any] = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        return cls(**moved, interval=StepSums.from_state(interval, device) if interval is not None else None)


def check_same_model(payload: dict[str, Any], network: nn.Module, path: str | Path) -> None:
    """Raise ``ValueError`` if the checkpoint was written for a different model or configuration."""
    name, kwargs = payload.get("model_name"), payload.get("model_kwargs", {})
    if network.model_name is not None and name is not None and name != network.model_name:
        raise ValueError(f"checkpoint {path} is from model {name!r}, not {network.model_name!r}")
    if network.model_name is not None and name == network.model_name and kwargs != network.model_kwargs:
        raise ValueError(
            f"checkpoint {path} is from {name!r} built with {kwargs}, but this network was built with "
            f"{network.model_kwargs}"
        )
    own = network.state_dict()
    theirs = payload["network"]
    if set(own) != set(theirs) or any(own[k].shape != theirs[k].shape for k in own):
        raise ValueError(
            f"checkpoint {path} does not match this network's architecture (parameter names or shapes differ)"
        )


def _bar(enabled: bool, desc: str) -> dict[str, Any]:
    """The options that give an evaluation pass a progress bar labelled ``desc`` (none when not ``enabled``)."""
    return {"progress": True, "desc": desc} if enabled else {}


def _progress(loader: Iterable, enabled: bool, desc: str, initial: int = 0, total: int | None = None):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, initial=initial, total=total)


def format_epoch(record: dict[str, Any], epochs: int) -> str:
    """The per-epoch, per-layer table the trainer logs."""
    n = len(record["train_acc"])
    head = f"epoch {record['epoch']}/{epochs}: {record['train_images']} images in {record['train_seconds']:.1f} s " \
        f"({record['train_images_per_s']:.1f} img/s)"
    rows = [head, "  layer      " + " ".join(f"{i + 1:>6d}" for i in range(n))]
    rows.append("  train loss " + " ".join(f"{v:6.3f}" for v in record["train_loss"]))
    rows.append("  train acc  " + " ".join(f"{100 * v:6.2f}" for v in record["train_acc"]))
    if "train_head_acc" in record:
        rows.append(f"  classifier head: train loss {record['train_head_loss']:.3f}, "
                    f"train acc {100 * record['train_head_acc']:.2f}")
    test = record.get("test")
    if test:
        rows.append("  test acc   " + " ".join(f"{100 * v:6.2f}" for v in test["per_layer"]))
        line = f"  test accuracy: all layers {100 * test['all_layers']:.2f}%, last 3 {100 * test['last3']:.2f}%"
        if test.get("sip") is not None:
            s, e = test["sip_range"]
            line += f", SIP layers {s + 1}..{e + 1} {100 * test['sip']:.2f}%"
        elif test.get("prediction") is not None and test.get("prediction_range") is not None:
            s, e = test["prediction_range"]
            line += f", prediction (layers {s + 1}..{e + 1}) {100 * test['prediction']:.2f}%"
        if test.get("head") is not None:
            line += f", classifier head {100 * test['head']:.2f}%"
        rows.append(line)
    return "\n".join(rows)


#: Significant digits of the numbers in ``metrics.json`` (and of ``lr`` in ``metrics.csv``): enough that every value
#: is within a relative 5e-7 of the exact one (an accuracy of k out of 128 images, k / 128, is kept exactly), few
#: enough that a float32 accuracy such as 0.40459999442100525 reads 0.4046.
METRICS_DIGITS = 7


def round_metric(value: Any) -> Any:
    """``value`` as the metrics files write it: floats rounded to :data:`METRICS_DIGITS` significant digits (NaN and
    infinities kept), lists, tuples and dicts rounded element by element, anything else as it is. The same value
    always rounds to the same number, so identical runs write identical files."""
    if isinstance(value, float):
        return float(f"{value:.{METRICS_DIGITS}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: round_metric(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_metric(v) for v in value]
    return value


def _layers(span: Any) -> list[int] | None:
    """A 0-based ``(start, end)`` layer range as the 1-based ``[first, last]`` layers that the console prints."""
    return None if span is None else [int(span[0]) + 1, int(span[1]) + 1]


def metrics_record(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch record as ``metrics.json`` holds it: numbers rounded (:func:`round_metric`), and next to each 0-based
    layer range the 1-based layers the console prints: ``test.sip_layers`` beside ``test.sip_range``,
    ``test.prediction_layers`` beside ``test.prediction_range``, ``holdout_sip.layers`` beside its ``start`` and
    ``end`` (``[4, 4]`` for the "SIP layers 4..4" of ``sip_range [3, 3]``)."""
    out = round_metric(record)
    test = out.get("test")
    if isinstance(test, dict):
        for key, named in (("sip_range", "sip_layers"), ("prediction_range", "prediction_layers")):
            if key in test:
                test[named] = _layers(test[key])
    sip = out.get("holdout_sip")
    if isinstance(sip, dict) and "start" in sip and "end" in sip:
        sip["layers"] = _layers((sip["start"], sip["end"]))
    return out


#: The columns of ``metrics.csv``: one row per epoch and layer (``layer`` 1-based); ``test_acc`` is the layer's own
#: test accuracy, ``test_accuracy`` the network's prediction (the headline, ``test.prediction``), ``lr`` the
#: learning rate at the end of the epoch and ``time`` when the epoch ended (UTC, ISO 8601).
METRICS_CSV_COLUMNS = ("epoch", "layer", "train_loss", "train_acc", "test_acc", "test_accuracy", "lr", "time")


def write_metrics(history: list[dict[str, Any]], out: Path) -> None:
    """Write the run's history as ``metrics.json`` (every record, as :func:`metrics_record` gives it) and
    ``metrics.csv`` (one row per epoch and layer, :data:`METRICS_CSV_COLUMNS`); each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.json", json.dumps([metrics_record(r) for r in history], indent=1))
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(METRICS_CSV_COLUMNS)
    for rec in history:
        test = rec.get("test") or {}
        per_layer = test.get("per_layer", [math.nan] * len(rec["train_acc"]))
        overall = test.get("prediction")
        lr = rec.get("lr")
        epoch_cells = [f"{overall:.6f}" if overall is not None else "nan",
                       repr(round_metric(float(lr))) if lr is not None else "nan", rec.get("time", "")]
        for i, (lo, ac, te) in enumerate(zip(rec["train_loss"], rec["train_acc"], per_layer)):
            w.writerow([rec["epoch"], i + 1, f"{lo:.6f}", f"{ac:.6f}", f"{te:.6f}", *epoch_cells])
    write_text_atomic(out / "metrics.csv", table.getvalue())
