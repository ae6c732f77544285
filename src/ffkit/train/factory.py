"""The engine factory: the trainer a :class:`~ffkit.Recipe` asks for, built around a network."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..models import model_kind
from .backprop import BackpropTrainer
from .chapters import ChapterTrainer
from .data_parallel import DataParallelTrainer
from .federated import FederatedTrainer
from .local import LocalTrainer
from .pipeline import PipelineTrainer

if TYPE_CHECKING:  # pragma: no cover
    from ..recipes import Recipe

__all__ = ["build_trainer", "TRAINERS", "SCHEDULE_INTERVALS"]

#: Valid :attr:`Recipe.trainer` values.
TRAINERS = ("local", "chapters", "backprop")

#: Valid :attr:`Recipe.schedule_interval` values.
SCHEDULE_INTERVALS = ("step", "epoch")


def build_trainer(
    recipe: Recipe, network: Any, *, steps_per_epoch: int, device: Any = None, pipeline: dict | None = None,
    **performance: Any,
):
    """The recipe's trainer for ``network``: a LocalTrainer, or a BackpropTrainer for ``trainer="backprop"`` (and for
    single-head baselines). Milestones given in epochs become steps. ``performance``: the trainers' speed options
    (``channels_last``, ``amp``, overriding the recipe's, ``compile``, ``fused_optimizer``) and the local trainer's
    ``on_divergence``."""
    kind = model_kind(network.model_name) if network.model_name else "ff"
    name = recipe.trainer
    if kind == "backprop" and name in ("local", "chapters"):
        raise ValueError(f"{recipe.model} is a single-head backprop baseline; it cannot be trained with the local "
                         "trainer (use trainer='backprop')")
    if name not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {name!r}")
    if name == "backprop" and recipe.overlap:
        raise ValueError("overlap (OLU) is an option of the local trainer; it conflicts with trainer='backprop'")
    if recipe.schedule_interval not in SCHEDULE_INTERVALS:
        raise ValueError(f"schedule_interval must be one of {SCHEDULE_INTERVALS}, got {recipe.schedule_interval!r}")
    common = {
        "lr": recipe.lr, "final_lr": recipe.final_lr, "weight_decay": recipe.weight_decay,
        "optimizer": recipe.optimizer, "schedule": recipe.schedule, "total_steps": recipe.epochs * steps_per_epoch,
        "schedule_every": steps_per_epoch if recipe.schedule_interval == "epoch" else 1,
        "milestones": tuple((int(ep) * steps_per_epoch, float(f)) for ep, f in recipe.milestones),
        "device": device, "channels_last": recipe.channels_last, "amp": recipe.amp,
        "tta": recipe.tta,
        **({"head_weight_decay": recipe.head_weight_decay} if recipe.head_weight_decay is not None else {}),
        **performance,
    }
    if recipe.layer_epochs:
        if name != "local" or pipeline is not None:
            raise ValueError("layer_epochs (training windows per layer) is an option of the sequential local trainer")
        common["layer_steps"] = tuple((a * steps_per_epoch, b * steps_per_epoch) for a, b in recipe.layer_epochs)
    if pipeline is not None:  # a distributed engine around the recipe's local trainer
        if name not in ("local", "chapters") or kind != "ff":
            raise ValueError("a pipeline trains an FF network with the local trainer")
        options = dict(pipeline)
        variant = options.pop("variant", "stages")
        if variant == "federated":
            options.pop("backend", None)
            return FederatedTrainer(network, overlap=recipe.overlap, head_lr=recipe.head_lr, **options, **common)
        if variant == "data-parallel":
            options.pop("backend", None)
            return DataParallelTrainer(network, overlap=recipe.overlap, head_lr=recipe.head_lr, **options, **common)
        if variant == "all-layers":
            options.pop("backend", None)
            return ChapterTrainer(network, overlap=recipe.overlap, head_lr=recipe.head_lr, **options, **common)
        return PipelineTrainer(network, overlap=recipe.overlap, **options, **common)
    if name == "chapters":  # sequential: one chapter (every layer in turn over the whole epoch) per epoch
        return ChapterTrainer(network, chapter_batches=steps_per_epoch, overlap=recipe.overlap,
                              head_lr=recipe.head_lr, **common)
    if name == "local" and kind == "ff":
        return LocalTrainer(network, overlap=recipe.overlap, head_lr=recipe.head_lr, **common)
    return BackpropTrainer(network, **common)
