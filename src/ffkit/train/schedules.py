"""Optimizers and learning-rate schedules by name, and what a resumed run does with them when it is asked for another
learning rate, weight decay or length than its checkpoint was trained with (:func:`replan_schedules`)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch

from .._validation import check_int, check_real

__all__ = ["optimizer_params", "all_finite", "local_shards", "is_sharded",
           "make_optimizer", "make_schedule", "SCHEDULES", "run_plan", "check_plan", "replan_schedules", "targets",
           "Targets", "rebuild_for"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def optimizer_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter ``opt`` steps, in its groups' order."""
    return [p for g in opt.param_groups for p in g["params"]]


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Whether every element of ``tensors`` is finite, as a device flag (one norm per tensor, no host
    synchronisation; a NaN or an infinity anywhere makes its tensor's norm non-finite). Of a sharded parameter
    (a DTensor), this rank's shard only, without a collective: the data-parallel ranks combine their flags."""
    return torch.isfinite(torch.stack(torch._foreach_norm(local_shards(tensors)))).all()


def is_sharded(t: object) -> bool:
    """Whether ``t`` is a DTensor (a parameter, gradient or state sharded by ``DataParallelTrainer(
    shard_parameters=True)``)."""
    # torch.distributed.tensor is loaded once anything made a DTensor; importing it here would add a third of a
    # second to ``import ffkit``
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def local_shards(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` with each DTensor (:func:`is_sharded`) replaced by this rank's shard, which shares its storage."""
    return [t.to_local() if is_sharded(t) else t for t in tensors]  # type: ignore[attr-defined]


def make_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float, *, fused: bool | None = None
) -> torch.optim.Optimizer:
    """An optimizer by name (``"adam"``, ``"adamw"``, ``"sgd"``; SGD gets momentum 0.9).

    ``fused=None`` (default) uses PyTorch's fused implementation (one kernel over all of an optimizer's tensors) when
    every parameter is a floating-point tensor on CPU or CUDA; ``False`` forces the reference per-tensor loop.
    """
    check_real(lr, "lr", low=0.0, low_open=True)
    check_real(weight_decay, "weight_decay", low=0.0)
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
        self, kind: str, total_steps: int, final_factor: float, milestones: tuple = (), every: int = 1,
        start: int = 0, start_factor: float = 1.0,
    ) -> None:
        self.kind, self.total_steps, self.final_factor = kind, total_steps, final_factor
        self.milestones = tuple(sorted((int(s), float(f)) for s, f in milestones))
        self.every = every
        # A cosine re-planned at step ``start`` (a resumed run given another length): from ``start_factor`` there
        # to ``final_factor`` at ``total_steps``.
        self.start, self.start_factor = start, start_factor

    def __call__(self, step: int) -> float:
        every = getattr(self, "every", 1)  # absent from the state of checkpoints written before it existed
        tick, total = step // every, max(1, self.total_steps // every)
        if self.kind == "cosine":  # the closed form of CosineAnnealingLR(T_max=total, eta_min=final)
            begin, top = getattr(self, "start", 0) // every, getattr(self, "start_factor", 1.0)
            span = max(1, total - begin)
            cosine = (1.0 + math.cos(math.pi * min(max(tick - begin, 0), span) / span)) / 2
            return self.final_factor + (top - self.final_factor) * cosine
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




def run_plan(optimizer: str, schedule: str, total_steps: int | None, every: int) -> dict[str, Any]:
    """What a trainer's checkpoints record of its optimisation beyond the optimizer and schedule states: the names,
    the schedule's length in steps and its update interval, so that a resume can tell what changed."""
    return {"optimizer": optimizer, "schedule": schedule, "total_steps": total_steps, "every": every}


class Targets(NamedTuple):
    """One optimizer's planned start lr, final lr and weight decay."""

    lr: float
    final_lr: float
    weight_decay: float


def targets(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler | None) -> Targets:
    """The start lr, final lr and weight decay that ``opt`` and its schedule ``sched`` are planned with."""
    group = opt.param_groups[0]
    base = float(group.get("initial_lr", group["lr"]))
    if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        final = float(sched.eta_min)
    elif isinstance(sched, torch.optim.lr_scheduler.LambdaLR) and isinstance(sched.lr_lambdas[0], _LrFactor):
        final = base * float(sched.lr_lambdas[0].final_factor)
    else:
        final = base
    return Targets(base, final, float(group["weight_decay"]))


def check_plan(saved: dict[str, Any] | None, plan: dict[str, Any], steps_taken: int) -> None:
    """Refuse a resume whose trainer cannot continue the checkpoint's optimisation: another optimizer (its state does
    not convert), another schedule or update interval, a whole-run schedule of another length, or a length shorter
    than the steps already taken."""
    if saved is None:  # checkpoints written before plans were recorded: their states are loaded as they are
        return
    for key, what, flag in (("optimizer", "optimizer", "--optimizer"), ("schedule", "schedule", "--schedule"),
                            ("every", "schedule_every", "--schedule-interval")):
        if saved.get(key) != plan.get(key):
            raise ValueError(
                f"the checkpoint was trained with {what}={saved.get(key)!r}, this trainer has "
                f"{what}={plan.get(key)!r}; a run cannot change its {what} when it resumes: resume with "
                f"{what}={saved.get(key)!r} ({flag} on the command line), or start a new run"
            )
    old, new = saved.get("total_steps"), plan.get("total_steps")
    if old == new:
        return
    if plan["schedule"] in ("cooldown", "linear-cooldown"):
        raise ValueError(
            f"the checkpoint's {plan['schedule']!r} schedule spans {old} steps, this trainer's {new}; that schedule is "
            f"shaped by the whole run, so it cannot be re-planned for another length: resume with total_steps={old} "
            f"(the same --epochs), or start a new run"
        )
    if new is not None and new < steps_taken:
        raise ValueError(
            f"the checkpoint has already taken {steps_taken} steps, more than this trainer's total_steps={new} "
            f"(--epochs too small for the run being resumed)"
        )


def replan_schedules(
    saved: dict[str, Any] | None,
    plan: dict[str, Any],
    optimizers: list[torch.optim.Optimizer | None],
    schedulers: list[torch.optim.lr_scheduler.LRScheduler | None],
    wanted: list[Targets | None],
) -> list[str]:
    """After a resume has loaded the checkpoint's optimizer and schedule states, give each optimizer the lr, final lr
    and weight decay this trainer was built with (``wanted``, read before loading) and the schedule's new length.

    At each optimizer's own position ``s`` (its scheduler's step count):

    * same length: the lr follows the schedule as planned with the new values (the run as if it had been started
      with them);
    * another length (a cosine): the lr keeps its place on the old curve at ``s`` (with the new start and final lr)
      and from there follows a half cosine down to the final lr at the new end; a finished run resumed for longer
      stays at its final lr. Constant and piecewise schedules do not depend on the length.

    Schedulers replaced in ``schedulers`` are ``LambdaLR``s, whose state (the re-planned curve) checkpoints carry.
    Returns one line per change, for the log (none when nothing changed).
    """
    if saved is None:
        return []
    notes: list[str] = []
    old_total, new_total = saved.get("total_steps"), plan.get("total_steps")
    for i, (opt, want) in enumerate(zip(optimizers, wanted)):
        if opt is None or want is None:
            continue
        sched = schedulers[i]
        have = targets(opt, sched)
        if have == want and old_total == new_total:
            continue
        for group in opt.param_groups:
            group["weight_decay"] = want.weight_decay
            group["initial_lr"] = want.lr
        if sched is None:
            for group in opt.param_groups:
                group["lr"] = want.lr
            notes.append(f"optimizer {i}: lr {have.lr:g} -> {want.lr:g}, weight decay {have.weight_decay:g} -> "
                         f"{want.weight_decay:g}")
            continue
        pos = int(sched.last_epoch)
        kind, every = plan["schedule"], int(plan.get("every") or 1)
        milestones = getattr(getattr(sched, "lr_lambdas", [None])[0], "milestones", ())
        final = want.final_lr / want.lr if want.lr else 0.0
        factor = _LrFactor(kind, new_total or 1, final, milestones, every)
        if old_total != new_total and kind == "cosine":
            top = _LrFactor(kind, old_total or 1, final, milestones, every)(pos)
            factor = _LrFactor(kind, new_total or 1, final, milestones, every, start=pos, start_factor=top)
        new = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        new.last_epoch = pos
        lrs = [want.lr * factor(pos) for _ in opt.param_groups]
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
        new._last_lr = list(lrs)
        schedulers[i] = new
        notes.append(
            f"optimizer {i}: lr {have.lr:g} -> {want.lr:g} (final {have.final_lr:g} -> {want.final_lr:g}), weight "
            f"decay {have.weight_decay:g} -> {want.weight_decay:g}, schedule of {old_total} -> {new_total} steps; at "
            f"step {pos} the lr is {lrs[0]:g}"
        )
    return notes


def rebuild_for(state: dict[str, Any], opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.LRScheduler) -> torch.optim.lr_scheduler.LRScheduler:
    """``sched``, or a ``LambdaLR`` in its place when ``state`` is a ``LambdaLR``'s (a schedule re-planned by an
    earlier resume), so that loading ``state`` restores the re-planned curve."""
    if "lr_lambdas" in state and not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
        lrs = [g["lr"] for g in opt.param_groups]  # the loaded ones: a new scheduler's first step would reset them
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _LrFactor("cosine", 1, 0.0))
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"] = lr
    return sched
