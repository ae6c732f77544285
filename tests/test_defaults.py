"""Every default training hyper-parameter is defined once, in ffkit.defaults, and read from there."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from ffkit import BackpropTrainer, LocalTrainer, Recipe, defaults
from ffkit.cli import TRAIN_DEFAULTS, build_parser, resolve_train_config


def _signature_defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("field, value", [("batch_size", defaults.BATCH_SIZE), ("lr", defaults.LR),
                                          ("weight_decay", defaults.WEIGHT_DECAY), ("optimizer", defaults.OPTIMIZER),
                                          ("schedule", defaults.SCHEDULE)])
def test_recipe_cli_and_trainers_share_one_default(field, value):
    recipe_defaults = {f.name: f.default for f in dataclasses.fields(Recipe)}
    assert recipe_defaults[field] == value
    assert TRAIN_DEFAULTS[field] == value
    if field != "batch_size":  # trainers take batches, not a batch size
        expected = defaults.BACKPROP_LR if field == "lr" else value
        assert _signature_defaults(LocalTrainer)[field] == value
        assert _signature_defaults(BackpropTrainer)[field] == expected


def test_a_bare_ffkit_train_resolves_to_the_defaults():
    cfg = resolve_train_config(build_parser().parse_args(["train"]))
    assert (cfg["model"], cfg["dataset"], cfg["epochs"], cfg["lr"]) == (defaults.MODEL, defaults.DATASET,
                                                                        defaults.EPOCHS, defaults.LR)
    assert cfg["trainer"] is None  # chosen from the model: local for FF models, backprop for the baselines
    assert cfg["holdout"] is True  # as deeperforward_tinycnn's paper recipes: SIP on a held-out split


def test_the_cli_takes_every_other_default_from_the_recipe():
    for f in dataclasses.fields(Recipe):
        if f.name in ("name", "reference", "trainer", "holdout"):
            continue
        if f.name in ("model", "dataset", "epochs"):  # required fields of a Recipe
            assert TRAIN_DEFAULTS[f.name] == getattr(defaults, f.name.upper())
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert TRAIN_DEFAULTS[f.name] == default, f.name
