"""What every ffkit trainer shares: epochs, evaluation with SIP, logging, metrics files, checkpoints, resume."""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import RandomSampler

from .._version import __version__
from ..evaluation import collect_scores, make_report, select_layers
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

__all__ = ["Trainer", "StepResult", "DivergenceError", "make_optimizer", "check_same_model"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class DivergenceError(FloatingPointError):
    """A layer's loss became NaN or infinite; the message names the layer, epoch and step."""


class StepResult(NamedTuple):
    """Per-layer results of one training step, kept on the training device (no host synchronisation).

    Attributes:
        losses: ``[L]`` each layer's loss.
        correct: ``[L]`` samples each layer got right (class argmax, or ``g_pos > g_neg``).
        batch_size: ``B``.
        head: ``(loss, correct)`` of the network's classifier head, if it has one.
    """

    losses: torch.Tensor
    correct: torch.Tensor
    batch_size: int
    head: tuple[torch.Tensor, torch.Tensor] | None = None


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
    """Picklable lr multiplier for ``LambdaLR`` (its state is saved in checkpoints)."""

    def __init__(self, kind: str, total_steps: int, final_factor: float, milestones: tuple = ()) -> None:
        self.kind, self.total_steps, self.final_factor = kind, total_steps, final_factor
        self.milestones = tuple(sorted((int(s), float(f)) for s, f in milestones))

    def __call__(self, step: int) -> float:
        if self.kind == "cooldown":  # constant for the first half, then linear to the final lr
            half = self.total_steps / 2
            if step <= half:
                return 1.0
            t = min(1.0, (step - half) / max(1.0, self.total_steps - half))
            return 1.0 + t * (self.final_factor - 1.0)
        factor = 1.0  # piecewise: the factor of the last milestone passed
        for at, f in self.milestones:
            if step >= at:
                factor = f
        return factor


SCHEDULES = ("cosine", "constant", "cooldown", "piecewise")


def make_schedule(
    opt: torch.optim.Optimizer,
    schedule: str,
    total_steps: int | None,
    final_lr: float,
    milestones: tuple[tuple[int, float], ...] = (),
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of one optimizer, stepped once per training step.

    ``"cosine"``: from the optimizer's lr to ``final_lr`` over ``total_steps``; ``"constant"``: none;
    ``"cooldown"``: constant for the first half, then linear to ``final_lr`` (Pipeline-FF); ``"piecewise"``: the lr
    is multiplied by ``factor`` from step ``s`` on, for each ``(s, factor)`` in ``milestones`` (The Trifecta).
    """
    if schedule == "constant":
        return None
    if schedule == "cosine":
        if total_steps is None:
            raise ValueError("schedule='cosine' needs total_steps (epochs x batches per epoch)")
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=final_lr)
    base = opt.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        opt, _LrFactor(schedule, total_steps or 1, final_lr / base if base else 0.0, milestones)
    )


def check_trainer_args(network: nn.Module, lr: float, schedule: str, total_steps: int | None) -> None:
    """Shared argument checks of the trainers."""
    from ..network import FFNetwork

    if not isinstance(network, FFNetwork) and not hasattr(network, "layer_scores"):
        raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule in ("cosine", "cooldown") and (total_steps is None or total_steps < 1):
        raise ValueError(f"schedule={schedule!r} needs total_steps >= 1 (epochs x batches per epoch)")


class Trainer:
    """Base class: subclasses set ``network``, ``device``, ``optimizers``, ``schedulers`` and implement
    :meth:`train_step`; everything else (epochs, SIP, evaluation, logging, checkpoints, resume) is shared."""

    network: Any
    device: torch.device
    optimizers: list[torch.optim.Optimizer | None]
    schedulers: list[torch.optim.lr_scheduler.LRScheduler | None]

    def _setup(self, network: Any, lr: float, final_lr: float | None, device: str | torch.device) -> None:
        """Place the network and record the learning rates (``final_lr`` defaults to ``lr / 10``)."""
        self.device = torch.device(device)
        self.network = network.to(self.device)
        self.lr = float(lr)
        self.final_lr = self.lr / 10 if final_lr is None else float(final_lr)

    def _setup_performance(self, channels_last: bool, amp: bool, compile: bool | str) -> None:
        """Memory format, bf16 autocast and per-layer ``torch.compile`` (see :class:`~ffkit.LocalTrainer`)."""
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

    def _autocast(self):
        """bf16 autocast on the training device when ``amp`` is on, else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=getattr(self, "amp", False))

    def _batch_to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check a batch against the network, move it to the training device, and put the network in train mode.

        The labels are range-checked before the transfer, so a CUDA step needs no host synchronisation for it.
        """
        self.network.check_input(x, y)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if getattr(self, "channels_last", False):
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
    def train_epoch(self, loader: Iterable, *, progress: bool = False, desc: str = "train") -> dict[str, Any]:
        """Train one pass over ``loader`` (batches ``(x, y)`` or ``(x, y, index)``); return per-layer means."""
        loss_sum: torch.Tensor | None = None
        correct_sum: torch.Tensor | None = None
        head_sum: torch.Tensor | None = None
        seen = 0
        start = time.perf_counter()
        bar = _progress(loader, progress, desc)
        for step, batch in enumerate(bar):
            index = batch[2] if len(batch) > 2 else None
            res = self.train_step(batch[0], batch[1], index)
            loss_sum = res.losses * res.batch_size if loss_sum is None else loss_sum + res.losses * res.batch_size
            correct_sum = res.correct if correct_sum is None else correct_sum + res.correct
            if res.head is not None:
                h = torch.stack([res.head[0] * res.batch_size, res.head[1].to(res.head[0].dtype)])
                head_sum = h if head_sum is None else head_sum + h
            seen += res.batch_size
            if progress and step % 10 == 0:
                last_acc = res.correct[-1].item() / res.batch_size
                bar.set_postfix(loss=f"{res.losses[-1].item():.3f}", acc=f"{last_acc:.3f}")
        seconds = time.perf_counter() - start
        if seen == 0:
            raise ValueError("the training data is empty: no batch was produced")
        assert loss_sum is not None and correct_sum is not None  # set by the first batch
        record = {
            "train_loss": (loss_sum / seen).tolist(),
            "train_acc": (correct_sum.double() / seen).tolist(),
            "train_images": seen,
            "train_seconds": seconds,
            "train_images_per_s": seen / seconds,
        }
        if head_sum is not None:
            record["train_head_loss"], record["train_head_acc"] = (head_sum.double() / seen).tolist()
        return record

    def evaluate(self, loader: Iterable, sip_range: tuple[int, int] | None = None):
        """Per-layer, all-layer, last-3 and (if given) SIP-range accuracy on ``loader``: an ``EvalReport``, which also
        holds each layer's goodness of positive and negative data, its deactivated-unit ratio (measured in the same
        pass) and SIP's accuracy grid over every layer range."""
        collected = collect_scores(self.network, loader, self.device, track_activity=True)
        return make_report(
            collected.layers, collected.labels, sip_range, head_scores=collected.head, dead_ratio=collected.dead_ratio
        )

    def select_layers(self, loader: Iterable):
        """SIP on a held-out loader: choose the best layer range and prune the network's inference to it."""
        collected = collect_scores(self.network, loader, self.device, with_head=False)
        result = select_layers(collected.layers, collected.labels)
        self.network.set_inference_range(result.start, result.end)
        return result

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
    ) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are complete (continuing after a :meth:`resume`).

        After each epoch: SIP on ``holdout`` (if given), evaluation on ``test`` (if given), the per-layer table is
        logged, and ``out_dir`` receives ``metrics.json``, ``metrics.csv`` and ``checkpoint.pt`` (atomically).

        The shuffling order of epoch ``e`` is seeded by ``seed + e`` when ``train`` shuffles with its own generator,
        so a resumed run sees the same data order as an uninterrupted one.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        out = Path(out_dir) if out_dir is not None else None
        self.metadata = dict(metadata or {})
        while self.epoch < epochs:
            e = self.epoch + 1
            sampler = getattr(train, "sampler", None)
            if isinstance(sampler, RandomSampler) and sampler.generator is not None:
                sampler.generator.manual_seed(seed + e)
            record: dict[str, Any] = {"epoch": e}
            record.update(self.train_epoch(train, progress=progress, desc=f"epoch {e}/{epochs}"))
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
            if out is not None:
                self.save(out / "checkpoint.pt")
                write_metrics(self.history, out)
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

    def save(self, path: str | Path) -> Path:
        """Write network, optimizers, schedulers, progress and RNG states atomically to ``path``."""
        net = self.network
        payload = {
            "ffkit_checkpoint_format": CHECKPOINT_FORMAT,
            "ffkit_version": __version__,
            "model_name": net.model_name,
            "model_kwargs": net.model_kwargs,
            "network": net.state_dict(),
            "trainer": self.state_dict(),
            "metadata": getattr(self, "metadata", {}),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        return save_checkpoint(payload, path)

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Restore everything :meth:`save` wrote; raises ``ValueError`` for a checkpoint of another model."""
        payload = load_checkpoint(path, map_location=self.device)
        check_same_model(payload, self.network, path)
        self.network.load_state_dict(payload["network"])
        self.load_state_dict(payload["trainer"])
        rng = payload.get("rng") or {}
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"].cpu())
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if rng.get("numpy") is not None:
            np.random.set_state(rng["numpy"])
        if rng.get("python") is not None:
            random.setstate(rng["python"])
        self.metadata = payload.get("metadata", {})
        return payload


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


def _progress(loader: Iterable, enabled: bool, desc: str):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)


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
