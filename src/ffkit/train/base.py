"""What every ffkit trainer shares: epochs, evaluation with SIP, logging, metrics files, checkpoints, resume."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import RandomSampler

from .._validation import check_device, check_int, check_real
from .._version import __version__
from ..evaluation import check_tta, collect_scores, make_report, select_layers
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .rng import capture_rng, restore_rng

__all__ = ["Trainer", "StepResult", "EpochProgress", "DivergenceError", "make_optimizer", "check_same_model"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


DIVERGENCE_ACTIONS = ("stop", "skip")


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
    """

    losses: torch.Tensor
    correct: torch.Tensor
    batch_size: int
    head: tuple[torch.Tensor, torch.Tensor] | None = None
    skipped: bool = False


def make_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float, *, fused: bool | None = None
) -> torch.optim.Optimizer:
    """An optimizer by name (``"adam"``, ``"adamw"``, ``"sgd"``; SGD gets momentum 0.9).

    ``fused=None`` (default) uses PyTorch's fused implementation (one kernel over all of an optimizer's tensors) when
    every parameter is a floating-point tensor on CPU or CUDA; ``False`` forces the reference per-tensor loop.
    """
    try:
        cls = _OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(_OPTIMIZERS)}") from None
    params = list(params)
    extra: dict[str, Any] = {"momentum": 0.9} if name == "sgd" else {}
    if fused is None:
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if fused:
        extra["fused"] = True
    else:
        extra["foreach"] = False
    return cls(params, lr=lr, weight_decay=weight_decay, **extra)


class _LrFactor:
    """Picklable lr multiplier for ``LambdaLR`` (its state is saved in checkpoints).

    ``every``: the schedule advances once per ``every`` steps (the batches of an epoch for an epoch-wise schedule),
    so the factor of step ``s`` is the schedule's value at tick ``s // every`` of ``total_steps // every``.
    """

    def __init__(
        self, kind: str, total_steps: int, final_factor: float, milestones: tuple = (), every: int = 1
    ) -> None:
        self.kind, self.total_steps, self.final_factor = kind, total_steps, final_factor
        self.milestones = tuple(sorted((int(s), float(f)) for s, f in milestones))
        self.every = every

    def __call__(self, step: int) -> float:
        every = getattr(self, "every", 1)  # absent from the state of checkpoints written before it existed
        tick, total = step // every, max(1, self.total_steps // every)
        if self.kind == "cosine":  # the closed form of CosineAnnealingLR(T_max=total, eta_min=final)
            cosine = (1.0 + math.cos(math.pi * min(tick, total) / total)) / 2
            return self.final_factor + (1.0 - self.final_factor) * cosine
        if self.kind == "cooldown":
            # Pipeline-FF's released trainer: for 1-based epoch e of E, lr * 2 (E - e) / E once e > E / 2, the last
            # epoch keeping the rate of the one before; for 0-based tick t: min(1, 2 max(E - 1 - t, 1) / E), here
            # between the full lr and final_lr.
            frac = min(1.0, 2 * max(total - 1 - tick, 1) / total)
            return self.final_factor + (1.0 - self.final_factor) * frac
        if self.kind == "linear-cooldown":
            # loeweX's get_linear_cooldown_lr: for 0-based epoch t of E, lr * 2 (1 + E - t) / E once t > E // 2
            frac = 1.0 if tick <= total // 2 else 2 * (1 + total - min(tick, total)) / total
            return self.final_factor + (1.0 - self.final_factor) * frac
        factor = 1.0  # piecewise: the factor of the last milestone passed (milestones are in steps)
        for at, f in self.milestones:
            if step >= at:
                factor = f
        return factor


SCHEDULES = ("cosine", "constant", "cooldown", "linear-cooldown", "piecewise")


def make_schedule(
    opt: torch.optim.Optimizer,
    schedule: str,
    total_steps: int | None,
    final_lr: float,
    milestones: tuple[tuple[int, float], ...] = (),
    every: int = 1,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of one optimizer, stepped once per training step.

    ``"cosine"``: from the optimizer's lr to ``final_lr`` over ``total_steps``; ``"constant"``: none;
    ``"cooldown"``: constant for the first half, then linear towards ``final_lr``, as Pipeline-FF's released trainer
    (tick ``t`` of ``T``: ``final + (lr - final) * min(1, 2 max(T - 1 - t, 1) / T)``); ``"linear-cooldown"``: the
    same idea as loeweX's trainer has it (``final + (lr - final) * 2 (1 + T - t) / T`` once ``t > T // 2``, else
    ``lr``); ``"piecewise"``: the lr
    is multiplied by ``factor`` from step ``s`` on, for each ``(s, factor)`` in ``milestones`` (The Trifecta).

    ``every``: the lr changes once per ``every`` steps. With the number of batches per epoch it is an epoch-wise
    schedule: DeeperForward's released code steps ``CosineAnnealingLR(T_max=epochs, eta_min=final_lr)`` once per
    epoch, so the lr is constant within an epoch and epoch ``e`` (0-based) trains at
    ``final + (lr - final) * (1 + cos(pi * e / epochs)) / 2``.
    """
    check_int(every, "every", minimum=1, what="steps per schedule update")
    if schedule == "constant":
        return None
    if schedule == "cosine":
        if total_steps is None:
            raise ValueError("schedule='cosine' needs total_steps (epochs x batches per epoch)")
        if every == 1:
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=final_lr)
    base = opt.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        opt, _LrFactor(schedule, total_steps or 1, final_lr / base if base else 0.0, milestones, every)
    )


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
    optimizers: list[torch.optim.Optimizer | None]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler | None]

    def __init__(
        self,
        network: Any,
        *,
        device: str | torch.device = "cpu",
        optimizers: Sequence[torch.optim.Optimizer | None] = (),
        schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler | None] | None = None,
    ) -> None:
        """For a new engine: place ``network`` on ``device``, hold its optimizers (one per layer, ``None`` for a
        layer without parameters, a classifier head's last) and their lr schedules (default: none), and start at
        epoch 0. The subclass implements :meth:`train_step`; ``fit`` saves and resumes the optimizers and schedules
        with the network. (ffkit's own engines set these themselves.)"""
        self.device = check_device(device)
        self.network = network.to(self.device)
        self.optimizers = list(optimizers)
        self.schedulers = list(schedulers) if schedulers is not None else [None] * len(self.optimizers)
        if len(self.schedulers) != len(self.optimizers):
            raise ValueError(f"schedulers must have one entry per optimizer ({len(self.optimizers)}), got "
                             f"{len(self.schedulers)}")
        self._init_progress()

    def _setup(self, network: Any, lr: float, final_lr: float | None, device: str | torch.device) -> None:
        """Place the network and record the learning rates (``final_lr`` defaults to ``lr / 10``)."""
        self.device = check_device(device)
        self.network = network.to(self.device)
        self.lr = float(lr)
        self.final_lr = self.lr / 10 if final_lr is None else float(final_lr)

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
        self.metadata: dict[str, Any] = {}

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        raise NotImplementedError  # pragma: no cover

    def _step_schedules(self) -> None:
        for sched in self.schedulers:
            if sched is not None:
                sched.step()

    # -- epochs -------------------------------------------------------------------------------------------------
    def train_epoch(
        self,
        loader: Iterable,
        *,
        progress: bool = False,
        desc: str = "train",
        position: EpochProgress | None = None,
        on_batch: Callable[[EpochProgress], None] | None = None,
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
        bar = _progress(it, progress, desc, initial=pos.batches, total=total)
        began = time.perf_counter() - pos.seconds
        for batch in bar:
            if not isinstance(batch, (tuple, list)) or not 2 <= len(batch) <= 3:
                got = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                raise TypeError(f"each training batch must be (x, y) or (x, y, index), got {got}: give the loader "
                                f"a dataset of (image, label) pairs, e.g. TensorDataset(x, y)")
            index = batch[2] if len(batch) > 2 else None
            res = self.train_step(batch[0], batch[1], index)
            pos.add(res)
            pos.seconds = time.perf_counter() - began
            if progress and pos.batches % 10 == 1:
                last_acc = res.correct[-1].item() / res.batch_size
                bar.set_postfix(loss=f"{res.losses[-1].item():.3f}", acc=f"{last_acc:.3f}")
            if on_batch is not None:
                on_batch(pos)
        self._epoch_progress = None
        if pos.batches == 0:
            raise ValueError("the training data is empty: no batch was produced")
        if pos.seen == 0:
            raise DivergenceError(
                f"every one of the {pos.batches} batches of epoch {pos.epoch} had a non-finite loss or goodness and "
                f"was skipped: lower the learning rate or check the input data", epoch=pos.epoch,
            )
        assert pos.loss_sum is not None and pos.correct_sum is not None  # set by the first applied batch
        record: dict[str, Any] = {
            "train_loss": (pos.loss_sum / pos.seen).tolist(),
            "train_acc": (pos.correct_sum.double() / pos.seen).tolist(),
            "train_images": pos.seen,
            "train_seconds": pos.seconds,
            "train_images_per_s": pos.seen / pos.seconds if pos.seconds > 0 else math.inf,
        }
        if pos.head_sum is not None:
            record["train_head_loss"], record["train_head_acc"] = (pos.head_sum.double() / pos.seen).tolist()
        if getattr(self, "on_divergence", "stop") == "skip":
            record["skipped_batches"] = pos.skipped
        return record

    def evaluate(self, loader: Iterable, sip_range: tuple[int, int] | None = None):
        """Per-layer, all-layer, last-3, the network's own prediction (its inference range, or its head) and (if
        given) SIP-range accuracy on ``loader``: an ``EvalReport``, which also holds each layer's goodness of positive
        and negative data, its deactivated-unit ratio (measured in the same pass) and SIP's accuracy grid over every
        layer range."""
        collected = collect_scores(self.network, loader, self.device, track_activity=True, **self._eval_options())
        net = self.network
        head_predicts = bool(getattr(net, "head_predicts", False)) and collected.head is not None
        rng = getattr(net, "inference_range", None)
        prediction_range = (int(rng[0]), int(rng[1])) if rng is not None else None
        return make_report(
            collected.layers, collected.labels, sip_range, head_scores=collected.head, dead_ratio=collected.dead_ratio,
            prediction_range=prediction_range, head_predicts=head_predicts,
        )

    def select_layers(self, loader: Iterable):
        """SIP on a held-out loader: choose the best layer range and prune the network's inference to it."""
        collected = collect_scores(self.network, loader, self.device, with_head=False, **self._eval_options())
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
        log: Callable[[str], None] | None = print,
        metadata: dict[str, Any] | None = None,
        checkpoint_every: int | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are complete (continuing after a :meth:`resume`).

        After each epoch: SIP on ``holdout`` (if given), evaluation on ``test`` (if given), the per-layer table is
        logged, and ``out_dir`` receives ``metrics.json``, ``metrics.csv`` and ``checkpoint.pt`` (atomically).
        With ``checkpoint_every=N`` the checkpoint is also written after every ``N``-th batch of an epoch, with the
        epoch's position; a run killed at any point resumes from its last checkpoint and, on CPU with the same seed
        and data, ends with exactly the weights of an uninterrupted run.

        If a step diverges (``DivergenceError``, see ``LocalTrainer(on_divergence=...)``) and ``out_dir`` is given,
        the trainer's last good state (the one before that step) is saved as ``out_dir/checkpoint.pt`` first, and
        the error names it.

        The shuffling order of epoch ``e`` is seeded by ``seed + e`` when ``train`` shuffles with its own generator,
        so a resumed run sees the same data order as an uninterrupted one.
        """
        check_int(epochs, "epochs", minimum=1)
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
        trained = self.epoch < epochs
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
                if ckpt is not None and checkpoint_every is not None:
                    extra["on_batch"] = _checkpoint_every(self, ckpt, checkpoint_every)
            try:
                record.update(self.train_epoch(train, progress=progress, desc=f"epoch {e}/{epochs}", **extra))
            except DivergenceError as err:
                pos = self._epoch_progress
                if ckpt is None or pos is None or not self.mid_epoch_checkpoints:
                    raise
                self.save(ckpt, position=pos)
                skip = ", or with on_divergence='skip' to drop such batches" if hasattr(self, "on_divergence") else ""
                raise DivergenceError(
                    f"{err}. The last good state (before this step) is saved in {ckpt}: resume from it with a lower "
                    f"learning rate{skip}",
                    layer=err.layer, epoch=err.epoch, step=err.step, checkpoint=ckpt,
                ) from None
            if holdout is not None:
                sip = self.select_layers(holdout)
                record["holdout_sip"] = {"start": sip.start, "end": sip.end, "accuracy": sip.accuracy}
            if test is not None:
                start, end = (int(v) for v in self.network.inference_range)
                record["test"] = self.evaluate(test, (start, end) if holdout is not None else None).to_dict()
            self.epoch = e
            self.history.append(record)
            if log is not None:
                log(format_epoch(record, epochs))
            if ckpt is not None and out is not None:
                self.save(ckpt)
                write_metrics(self.history, out)
        if out is not None and self.history and not trained:
            write_metrics(self.history, out)  # a run may have stopped between its last checkpoint and its metrics
        return self.history

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": [o.state_dict() if o is not None else None for o in self.optimizers],
            "schedulers": [s.state_dict() if s is not None else None for s in self.schedulers],
            "epoch": self.epoch,
            "step_count": self.step_count,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"trainer state has {len(state['optimizers'])} layers, this network has {len(self.optimizers)}"
            )
        self._load_optimizer_states(enumerate(state["optimizers"]), enumerate(state["schedulers"]))
        self.epoch = state["epoch"]
        self.step_count = state["step_count"]
        self.history = list(state["history"])

    def _load_optimizer_states(self, optimizers: Iterable[tuple[int, Any]], schedulers: Iterable[tuple[int, Any]]):
        """Load ``(index, state)`` pairs into ``self.optimizers`` / ``self.schedulers`` (``None`` entries skipped)."""
        for i, s in optimizers:
            opt = self.optimizers[int(i)]
            if opt is not None and s is not None:
                opt.load_state_dict(s)
        for i, s in schedulers:
            sched = self.schedulers[int(i)]
            if sched is not None and s is not None:
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
            "network": net.state_dict(),
            "trainer": self.state_dict(),
            "metadata": getattr(self, "metadata", {}),
            "rng": capture_rng(net),
            "position": position.state_dict() if position is not None else None,
        }
        return save_checkpoint(payload, path)

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


def _checkpoint_every(trainer: Trainer, path: Path, every: int) -> Callable[[EpochProgress], None]:
    def on_batch(pos: EpochProgress) -> None:
        if pos.batches % every == 0:
            trainer.save(path, position=pos)

    return on_batch


@dataclass
class EpochProgress:
    """The progress of an epoch in flight: what a checkpoint written inside an epoch needs to continue it.

    Attributes:
        epoch: the epoch (1-based).
        rng: the random state at the epoch's start, before its data iterator was created.
        batches: batches trained so far (skipped ones included).
        seen: samples of the applied batches.
        skipped: batches whose update was dropped as non-finite.
        seconds: training time so far.
        loss_sum: ``[L]`` per-layer losses weighted by batch size, summed; ``correct_sum`` ``[L]``; ``head_sum``
            ``[2]`` the head's weighted loss and correct count.
    """

    epoch: int
    rng: dict[str, Any]
    batches: int = 0
    seen: int = 0
    skipped: int = 0
    seconds: float = 0.0
    loss_sum: torch.Tensor | None = None
    correct_sum: torch.Tensor | None = None
    head_sum: torch.Tensor | None = None

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
        self.seen += res.batch_size

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        moved: dict[str, Any] = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        return cls(**moved)


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


def write_metrics(history: list[dict[str, Any]], out: Path) -> None:
    """Write the run's history as ``metrics.json`` (everything) and ``metrics.csv`` (one row per epoch and layer)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(history, indent=1))
    tmp.replace(out / "metrics.json")
    with open(out / "metrics.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "layer", "train_loss", "train_acc", "test_acc"])
        for rec in history:
            test = rec.get("test") or {}
            per_layer = test.get("per_layer", [math.nan] * len(rec["train_acc"]))
            for i, (lo, ac, te) in enumerate(zip(rec["train_loss"], rec["train_acc"], per_layer)):
                w.writerow([rec["epoch"], i + 1, f"{lo:.6f}", f"{ac:.6f}", f"{te:.6f}"])
    (out / "metrics.csv.tmp").replace(out / "metrics.csv")
