"""The ``ffkit`` command: ``ffkit train``, ``ffkit test``, ``ffkit plot``, ``ffkit models``, ``ffkit recipes``.

The parser, ``--help``, ``--version``, ``ffkit models`` and ``ffkit recipes`` never import torch (the models are
listed from a generated catalogue, :mod:`ffkit._model_catalogue`), so they answer at once; torch is imported by the
commands that train, test or plot, inside them.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import math
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import defaults
from ._validation import check_real
from ._version import __version__

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader, Dataset

__all__ = ["main", "build_parser"]

#: The CLI's own messages (the settings, the results, hints); the trainers log under ``ffkit.train``.
logger = logging.getLogger(__name__)

#: ``--log-level``'s choices.
LOG_LEVELS: dict[str, int] = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; anything else must be a device torch knows and can use (the
    library's one device policy, :func:`ffkit.device.resolve_device`)."""
    from .device import resolve_device as resolve

    return resolve(name, "--device")


def _positive(kind: type, zero: bool = False):
    """An argparse type: a positive ``kind`` (with ``zero``: or 0)."""
    what = "non-negative" if zero else "positive"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} {kind.__name__}, got {text!r}") from None
        if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
            finite = "finite " if kind is float else ""
            raise argparse.ArgumentTypeError(f"expected a {finite}{what} {kind.__name__}, got {text!r}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ffkit", description="Train and test Forward-Forward family networks.")
    p.add_argument("--version", action="version", version=f"ffkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (or a paper's recipe) and report per-layer test accuracy")
    t.add_argument("--config", default=None, metavar="FILE",
                   help="a TOML (or YAML) file of these settings by flag name (epochs = 2, batch-size = 64, "
                        "model-kwargs = {hidden = [1000, 1000]}); precedence: flags given here > FILE > --recipe > "
                        "defaults")
    t.add_argument("--recipe", default=None, help="a named recipe from 'ffkit recipes'; flags override its fields")
    t.add_argument("--model", default=None, help=f"a builder from 'ffkit models' (default {defaults.MODEL})")
    t.add_argument("--model-kwargs", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                   help="the model builder's own arguments, e.g. hidden=1000,1000,1000 negatives=fixed (Python "
                        "literals, true/false, else strings; 'ffkit models --verbose' lists them); over the recipe's "
                        "model_kwargs")
    t.add_argument("--dataset", default=None, help="mnist, fashion-mnist, cifar10, cifar100 or svhn")
    t.add_argument("--epochs", type=_positive(int), default=None, help="default 1")
    t.add_argument("--batch-size", type=_positive(int), default=None, help="default 128")
    t.add_argument(
        "--lr", type=_positive(float), default=None, help=f"initial lr (default {defaults.LR}; recipes set their own)"
    )
    t.add_argument("--final-lr", type=float, default=None, help="lr at the end of the schedule (default lr/10)")
    t.add_argument("--weight-decay", type=float, default=None, help="default 5e-4")
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=None, help="default adam")
    t.add_argument("--schedule", choices=["cosine", "constant", "cooldown", "linear-cooldown", "piecewise"],
                   default=None)
    t.add_argument("--schedule-interval", choices=["step", "epoch"], default=None,
                   help="the lr changes every step (default) or once per epoch (DeeperForward's release)")
    t.add_argument("--trainer", choices=["local", "chapters", "backprop"], default=None,
                   help="local (FF, every layer once per batch; default), chapters (FF, each layer over a whole epoch "
                        "in turn, as Pipeline-FF's sequential code) or backprop (BP-DeepSup on an FF network; plain BP "
                        "for bp_* models)")
    t.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="The Trifecta's overlapping local updates")
    t.add_argument("--head-lr", type=_positive(float), default=None, help="lr of a classifier head")
    t.add_argument("--head-weight-decay", type=float, default=None,
                   help="weight decay of a classifier head (default: --weight-decay)")
    t.add_argument("--augment", choices=["crop-rotate", "crop-flip", "dtg"], default=None)
    t.add_argument("--normalize", choices=["none", "standard"], default=None,
                   help="standard: standardise each channel with the dataset's mean and std (default: as the recipe; "
                        "none without one)")
    t.add_argument("--holdout", action=argparse.BooleanOptionalAction, default=None,
                   help="hold out part of the training set for SIP's layer selection (default: as the model's paper "
                        "recipes, i.e. for DeeperForward models); --no-holdout trains on the whole training set and "
                        "predicts with the model's own read-out")
    t.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="drop each epoch's last incomplete batch (default: as the recipe; The Trifecta's does)")
    t.add_argument("--width-multiplier", type=_positive(float), default=None, help="scale every layer's width")
    t.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-dir", default=None, help="dataset root (default $FFKIT_DATA_DIR or ~/.cache/ffkit/data)")
    t.add_argument(
        "--out", default=None, help="run directory for checkpoint.pt, metrics.json/csv (default runs/MODEL-DATASET)"
    )
    t.add_argument("--limit", type=_positive(int), default=None, help="train on the first N training samples only")
    t.add_argument(
        "--eval-limit", type=_positive(int), default=None,
        help="evaluate on the first N held-out and test samples only (quick checks; full sets by default)",
    )
    t.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    t.add_argument(
        "--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
        help="resume from CHECKPOINT (default: OUT/checkpoint.pt) and train until --epochs",
    )
    t.add_argument("--checkpoint-every", type=_positive(int), default=None, metavar="N",
                   help="also write OUT/checkpoint.pt after every N-th batch of an epoch, so a killed run loses at "
                        "most N batches (default: at the end of each epoch only)")
    t.add_argument("--log-interval", type=_positive(int, zero=True), default=None, metavar="N",
                   help="every N batches, a step record of each layer's train loss, accuracy and goodness, the lr and "
                        "images/s in OUT/metrics.jsonl, which 'ffkit plot' draws (default 50; 0: epoch records only)")
    t.add_argument("--tensorboard", action="store_true",
                   help="also write the step and epoch records as TensorBoard scalars to OUT/tensorboard/ (needs "
                        "the tensorboard package: pip install tensorboard)")
    # the choices are train.base.DIVERGENCE_ACTIONS, not imported here so that --help stays fast
    t.add_argument("--on-divergence", choices=["stop", "skip"], default="stop",
                   help="a NaN/inf loss or goodness: stop (saving the last good state as the checkpoint) or skip the "
                        "batch and count it (local trainer)")
    t.add_argument("--pipeline", action="store_true",
                   help="train the layers as a pipeline of stages: one per process under torchrun "
                        "(torchrun --nproc-per-node N -m ffkit train ... --pipeline), else threads in this process")
    t.add_argument("--data-parallel", nargs="?", type=_positive(int), const=0, default=None, metavar="D",
                   help="under torchrun (torchrun --nproc-per-node N -m ffkit train ... --data-parallel): every "
                        "process holds the whole network and trains on its 1/N of each --batch-size batch, each "
                        "layer's gradients averaged across the processes behind the next layer's work; with "
                        "--pipeline, D replicas of a pipeline of N/D stages (a 2-D device mesh)")
    t.add_argument("--sync-batchnorm", action="store_true",
                   help="with --data-parallel: BatchNorm statistics of the whole global batch (every process's "
                        "samples), as one process on the whole batch")
    t.add_argument("--shard-parameters", action="store_true",
                   help="with --data-parallel (without --pipeline): shard each layer's parameters, gradients and "
                        "optimizer state over the processes (FSDP2 fully_shard per layer)")
    t.add_argument("--stages", default=None, metavar="N|per-layer|I,J,...",
                   help="pipeline stages without torchrun (default 2), or the stages' first layers, e.g. 0,3; under "
                        "torchrun a first layer may be fractional, e.g. 0,1.6 shares layer 1 (60%% of each batch on "
                        "stage 0)")
    t.add_argument("--no-share-layers", action="store_true",
                   help="under torchrun: automatic balancing keeps whole layers per stage (no layer shared by two)")
    t.add_argument("--pipeline-variant", choices=["stages", "federated", "all-layers"], default=None,
                   help="with --pipeline under torchrun: stages of layers (default), federated (each rank trains the "
                        "whole network on its data shard, parameters averaged) or all-layers (chapters)")
    t.add_argument("--sync-every", type=_positive(int), default=None,
                   help="federated: steps between parameter averages (default 1)")
    t.add_argument("--chapter-batches", type=_positive(int), default=None,
                   help="all-layers: batches per chapter (default 10)")
    t.add_argument("--pipeline-timeout", type=_positive(float), default=None,
                   help="seconds a pipeline stage waits for a peer before stopping with an error (default 60)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (faster convs; default: the recipe's, else off)")
    t.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast of each layer's forward and of evaluation (GPUs; CPUs with AMX or AVX-512 "
                        "BF16); default: the recipe's, else off")
    t.add_argument("--tta", choices=["flip", "none"], default=None,
                   help="test-time augmentation of every evaluation: flip averages each image's class scores with "
                        "its mirror image's (two forward passes); default: the recipe's, else none")
    t.add_argument("--data-on-device", action=argparse.BooleanOptionalAction, default=None,
                   help="hold the dataset on the training device as 8-bit images and make each batch there (resize, "
                        "augmentation, normalisation), without DataLoader workers; default: on for CUDA")
    t.add_argument("--compile", action="store_true", help="torch.compile each layer's forward and backward")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print a machine-readable summary as the last line")
    _add_log_options(t)

    e = sub.add_parser("test", help="evaluate a checkpoint: per-layer, all-layer and SIP test accuracy")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", default=None, help="default: the dataset the checkpoint was trained on")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=_positive(int), default=256)
    e.add_argument("--eval-limit", type=_positive(int), default=None)
    e.add_argument("--tta", choices=["flip", "none"], default=None,
                   help="test-time augmentation (flip: each image's scores averaged with its mirror image's); "
                        "default: what the run was trained with")
    e.add_argument("--json", action="store_true", help="print the report as one JSON line after the table")
    _add_log_options(e)

    pl = sub.add_parser("plot", help="draw a run's plots (per-layer accuracy, goodness, dead neurons, SIP grid)")
    pl.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'ffkit train --out RUN_DIR'")
    pl.add_argument("--out", default=None, metavar="DIR", help="where to write the figures (default RUN_DIR)")
    pl.add_argument("--format", nargs="+", choices=["png", "pdf", "svg"], default=["png"], dest="formats",
                    help="file format(s) (default png)")

    m = sub.add_parser("models", help="list the registered model builders")
    m.add_argument("names", nargs="*", metavar="MODEL", help="only these models (default: all)")
    m.add_argument("-v", "--verbose", action="store_true",
                   help="also each builder's keyword arguments and defaults (what 'ffkit train --model-kwargs' takes)")
    sub.add_parser("recipes", help="list the papers' named training recipes")
    return p


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    """``-q`` and ``--log-level``: how much of the ``ffkit`` loggers' output a command shows
    (:func:`console_logging`)."""
    parser.add_argument("-q", "--quiet", action="store_const", const="warning", dest="log_level",
                        help="report nothing but warnings and errors, as --log-level warning (--json's line stays)")
    parser.add_argument("--log-level", choices=list(LOG_LEVELS), default=None,
                        help="the least severe messages shown (default info: the settings, the per-epoch tables and "
                             "the results)")


class _ConsoleHandler(logging.Handler):
    """Each record's message on a line of the console: up to INFO on ``sys.stdout``, warnings and errors on
    ``sys.stderr``. The streams are looked up at each record, not once, so that a stream replaced during the
    command (a test's capture, a non-zero rank's ``os.devnull``) receives the messages as it would ``print``'s.
    A message during a progress bar (the run-time estimate) clears the bar, is written on its own line, and the bar
    is drawn again below it, as ``tqdm.write`` does."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            bars = sys.modules.get("tqdm.std")  # loaded only once a bar exists
            with bars.tqdm.external_write_mode(file=stream) if bars is not None else contextlib.nullcontext():
                stream.write(self.format(record) + "\n")
                stream.flush()  # each line as it happens, before a long epoch or a progress bar
        except Exception:  # noqa: BLE001 - logging's own policy: report and go on
            self.handleError(record)


@contextlib.contextmanager
def console_logging(level: str = "info") -> Iterator[None]:
    """For the duration of the block, the ``ffkit`` loggers' records at ``level`` (``"debug"``, ``"info"`` or
    ``"warning"``) and above on the console, as bare messages: what ``ffkit train`` and ``ffkit test`` show (the
    trainers' per-epoch tables under ``ffkit.train``, the CLI's own lines under ``ffkit.cli``). The ``ffkit``
    logger's level and handlers are as before afterwards."""
    if level not in LOG_LEVELS:
        raise ValueError(f"level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    root = logging.getLogger("ffkit")
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = root.level
    root.setLevel(LOG_LEVELS[level])
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _size(dataset: Dataset) -> int:
    """``len(dataset)``: ffkit's datasets are map-style with a length, which torch's ``Dataset`` type leaves out."""
    return len(cast(Sized, dataset))


def _first(dataset: Dataset, n: int | None) -> Dataset:
    from torch.utils.data import Subset

    return Subset(dataset, range(min(n, _size(dataset)))) if n is not None else dataset


def _train_defaults() -> dict[str, Any]:
    """What ``ffkit train`` uses for a field that neither a flag nor a recipe sets: :class:`~ffkit.Recipe`'s own
    defaults (from :mod:`ffkit.defaults`), except ``trainer`` and ``holdout``, which are chosen from the model."""
    from dataclasses import MISSING, fields

    from .recipes import Recipe

    found = {f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
             for f in fields(Recipe) if f.name not in ("name", "reference")
             and (f.default is not MISSING or f.default_factory is not MISSING)}
    return {"model": defaults.MODEL, "dataset": defaults.DATASET, "epochs": defaults.EPOCHS, **found,
            "trainer": None, "holdout": None}


#: What ``ffkit train`` uses for a field that neither a flag nor a recipe sets.
TRAIN_DEFAULTS: dict[str, Any] = _train_defaults()


#: Builder arguments that ``--model-kwargs`` and a config file's ``model-kwargs`` must not set, and what sets them:
#: the dataset fixes the classes and channels, and ``--width-multiplier`` owns the width (one way to set each value,
#: so that a run's settings never disagree about it).
MODEL_KWARGS_OWNED: dict[str, tuple[str, str]] = {
    "num_classes": ("--dataset", "comes from the dataset (--dataset)"),
    "in_channels": ("--dataset", "comes from the dataset (--dataset)"),
    "width_multiplier": ("--width-multiplier", "is set by --width-multiplier (width-multiplier = M in a config file)"),
}


def parse_model_kwarg_value(text: str) -> Any:
    """One ``--model-kwargs`` value: a Python literal where it parses (``1000``, ``0.5``, ``True``, ``None``,
    ``1000,1000`` or ``[1000, 1000]``; ``true``/``false`` too), else the text itself (``fixed``, ``relu-full-grad``).
    Lists become tuples, as the recipes write sequences, so that equal settings compare equal on resume."""
    import ast

    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _as_tuples(value)


def parse_model_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``--model-kwargs KEY=VALUE ...`` as a dict (values by :func:`parse_model_kwarg_value`); a malformed item, an
    empty value or a key given twice raises ``ValueError``."""
    found: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-kwargs {item!r}: expected KEY=VALUE with KEY an argument name, e.g. "
                             f"hidden=1000,1000,1000")
        if not text.strip():
            raise ValueError(f"--model-kwargs {item!r}: no value after '=' (quote a string, e.g. {key}=''"
                             f" for an empty one)")
        if key in found:
            raise ValueError(f"--model-kwargs: {key} is given twice ({key}={found[key]!r} and {item!r}); give it once")
        found[key] = parse_model_kwarg_value(text)
    return found


def check_model_kwargs(model: str, kwargs: dict[str, Any], origin: str = "--model-kwargs") -> None:
    """Refuse a key that ``model``'s builder does not take, or that :data:`MODEL_KWARGS_OWNED` reserves for another
    setting, naming the key, the model and the accepted names (``origin`` says where the keys were given)."""
    from ._validation import suggest_names
    from .models import get_model_builder

    params = inspect.signature(get_model_builder(model)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [k for k, p in params.items() if k not in MODEL_KWARGS_OWNED and p.kind is not p.VAR_KEYWORD]
    for key in kwargs:
        if key in MODEL_KWARGS_OWNED:
            raise ValueError(f"{origin}: {key} {MODEL_KWARGS_OWNED[key][1]}, not from model kwargs")
        if key not in params and not takes_any:
            close = suggest_names(key, accepted)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ValueError(f"{origin}: model {model} takes no argument {key!r}{hint}; it accepts: "
                             f"{', '.join(accepted) or 'none'} (see 'ffkit models --verbose {model}')")


#: ``ffkit train`` settings a config file cannot hold, and why.
CONFIG_EXCLUDED: dict[str, str] = {
    "config": "a config file cannot name another one",
    "resume": "resuming is an action on a run directory, not a setting: pass --resume on the command line",
}


def _train_actions(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.Action]:
    """``ffkit train``'s options by destination (``batch_size``), from ``parser`` (default: a new one)."""
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions if a.dest != "help"}


def _given_on_command_line(argv: Sequence[str]) -> set[str]:
    """The ``ffkit train`` options that ``argv`` gives explicitly (destinations), whatever their values: the
    command line is parsed once more with a marker as every default."""
    parser = build_parser()
    unset = object()
    for action in _train_actions(parser).values():
        if action.default is not None:  # a None default stays: given, an option is never None
            action.default = unset
    parsed = vars(parser.parse_args(argv))
    return {k for k, v in parsed.items() if k != "command" and v is not unset and v is not None}


def _config_value(action: argparse.Action, value: Any, key: str, where: str) -> Any:
    """A config file's value for ``action``'s option, converted and checked as the flag's text would be."""
    what = f"{key!r} in {where}"
    if action.nargs == 0:  # --flag / --[no-]flag
        if not isinstance(value, bool):
            raise TypeError(f"{what}: expected true or false, got {value!r}")
        return value
    if action.nargs == "?" and isinstance(value, bool):  # --data-parallel [D]: true means the flag alone
        return action.const if value else None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"{what}: expected {'a number' if action.type else 'a string'}, got {value!r}")
    if action.type is not None:
        try:
            value = cast(Any, action.type)(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
            raise ValueError(f"{what}: {err}") from None
    else:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{what}: expected one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a ``--config`` file as a mapping, by the file's own keys: TOML (``.toml``, Python's
    :mod:`tomllib`) or YAML (``.yaml``/``.yml``, needs PyYAML)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"--config {path}: expected a .toml file (or .yaml/.yml with PyYAML), got {suffix or 'none'}")
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    if suffix == ".toml":
        toml = _import_one(("tomllib", "tomli"), f"--config {path}: reading TOML needs Python 3.11 or later "
                                                  f"(tomllib), or tomli on Python 3.10 (pip install tomli)")
        try:
            with path.open("rb") as f:
                data: Any = toml.load(f)
        except toml.TOMLDecodeError as err:
            raise ValueError(f"--config {path} is not valid TOML: {err}") from None
    else:
        yaml = _import_one(("yaml",), f"--config {path}: reading YAML needs PyYAML (pip install pyyaml), or write "
                                      f"the settings as TOML")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path} is not valid YAML: {err}") from None
        data = {} if data is None else data
    if not isinstance(data, dict):
        raise TypeError(f"--config {path}: expected a mapping of settings (key = value), got {type(data).__name__}")
    return data


def _import_one(names: Sequence[str], missing: str) -> Any:
    """The first of ``names`` that imports (optional parsers, imported by name: no dependency, no stubs needed)."""
    import importlib

    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(missing)


def load_train_config(path: str | Path) -> dict[str, Any]:
    """``ffkit train --config FILE``: the file's settings by destination (``batch-size`` and ``batch_size`` both
    name ``--batch-size``), each converted and checked as its flag's text would be; ``model_kwargs`` is a dict.
    An unknown key, a key given twice or a bad value raises, naming the key and the file."""
    from ._validation import suggest_names

    actions = _train_actions()
    settings: dict[str, Any] = {}
    for key, value in read_config_file(path).items():
        dest = str(key).replace("-", "_")
        if dest in CONFIG_EXCLUDED:
            raise ValueError(f"{key!r} in {path}: {CONFIG_EXCLUDED[dest]}")
        if dest not in actions:
            names = sorted(_flag(d)[2:] for d in actions if d not in CONFIG_EXCLUDED)
            close = suggest_names(_flag(dest)[2:], names)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ValueError(f"unknown setting {key!r} in {path}{hint}; a config file holds ffkit train's flags by "
                             f"name: {', '.join(names)}")
        if dest in settings:
            raise ValueError(f"{key!r} in {path}: {_flag(dest)} is set twice (as - and _ spellings); set it once")
        if dest == "model_kwargs":
            if not isinstance(value, dict):
                raise TypeError(f"{key!r} in {path}: expected a table, e.g. model-kwargs = {{hidden = [1000, 1000]}}, "
                                f"got {value!r}")
            settings[dest] = {str(k): _as_tuples(v) for k, v in value.items()}
        else:
            settings[dest] = _config_value(actions[dest], value, key, str(path))
    return settings


def apply_train_config(args: argparse.Namespace, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Record which ``ffkit train`` options ``argv`` gives (``args.flags_given``), and apply ``--config FILE``: its
    settings replace the defaults of the options the command line does not give (``args.config_keys``; its
    ``model-kwargs`` go to ``args.config_model_kwargs``). So a flag given overrides the file, and the file
    overrides ``--recipe`` (:func:`resolve_train_config`) and the built-in defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args.command_line = argv
    args.flags_given = _given_on_command_line(argv)
    args.config_keys = set()
    args.config_model_kwargs = {}
    if getattr(args, "config", None) is None:
        return args
    settings = load_train_config(args.config)
    args.config_model_kwargs = settings.pop("model_kwargs", {})
    for dest, value in settings.items():
        if dest not in args.flags_given:
            setattr(args, dest, value)
            args.config_keys.add(dest)
    return args


def resolve_train_config(args: argparse.Namespace) -> dict[str, Any]:
    """Flags (and a ``--config`` file's settings, which :func:`apply_train_config` made the defaults of the flags
    not given) override the recipe, which overrides :data:`TRAIN_DEFAULTS`. The model's keyword arguments merge key
    by key in the same order: the recipe's ``model_kwargs``, the file's ``model-kwargs``, ``--model-kwargs``, then
    ``--width-multiplier``. ``cfg["sources"]`` says where each setting that is not a default came from: ``"flag"``,
    ``"config"`` or ``"recipe"`` (model arguments as ``"model_kwargs.NAME"``)."""
    from .recipes import get_recipe

    cfg = dict(TRAIN_DEFAULTS)
    sources: dict[str, str] = {}
    if args.recipe is not None:
        recipe = get_recipe(args.recipe).to_dict()
        cfg.update({k: v for k, v in recipe.items() if k in cfg})
        cfg["reference"] = recipe["reference"]
        sources.update({k: "recipe" for k in TRAIN_DEFAULTS if k != "model_kwargs" and cfg[k] != TRAIN_DEFAULTS[k]})
    for key in TRAIN_DEFAULTS:
        value = getattr(args, key, None)
        if value is not None and key != "model_kwargs":  # --model-kwargs: merged below
            cfg[key] = value
    cfg["model_kwargs"] = model_kwargs = dict(cfg["model_kwargs"])
    kwargs_from = {k: "recipe" for k in model_kwargs}
    config_kwargs = getattr(args, "config_model_kwargs", None) or {}
    if config_kwargs:
        check_model_kwargs(cfg["model"], config_kwargs, f"model-kwargs in {args.config}")
        model_kwargs.update(config_kwargs)
        kwargs_from.update(dict.fromkeys(config_kwargs, "config"))
    if getattr(args, "model_kwargs", None):
        from_flag = parse_model_kwargs(args.model_kwargs)
        check_model_kwargs(cfg["model"], from_flag)
        model_kwargs.update(from_flag)
        kwargs_from.update(dict.fromkeys(from_flag, "flag"))
    for key in ("normalize", "tta"):
        if cfg[key] == "none":
            cfg[key] = None
    if cfg["holdout"] is None:  # as the model's paper recipes: only DeeperForward holds out a split for SIP
        from .recipes import RECIPES

        cfg["holdout"] = any(r.holdout for r in RECIPES.values() if r.model == cfg["model"])
    if args.width_multiplier is not None:
        model_kwargs["width_multiplier"] = args.width_multiplier
        kwargs_from["width_multiplier"] = _origin(args, "width_multiplier")
    cfg["recipe"] = args.recipe
    given: set[str] | None = getattr(args, "flags_given", None)
    if given is None:  # not through main(): every option set is taken as given
        given = {k for k in TRAIN_DEFAULTS if getattr(args, k, None) is not None}
    for key in sorted(set(given) | getattr(args, "config_keys", set())):
        if key not in ("config", "model_kwargs"):
            sources[key] = _origin(args, key)
    sources.update({f"model_kwargs.{k}": v for k, v in kwargs_from.items()})
    cfg["sources"] = sources
    return cfg


def _origin(args: argparse.Namespace, key: str) -> str:
    """Where option ``key``'s value came from: the command line (``"flag"``) or the ``--config`` file."""
    return "config" if key in getattr(args, "config_keys", ()) else "flag"


def _paper_recipe(model: str, dataset: str) -> Any:
    """The paper's recipe for ``model`` on ``dataset`` (its default architecture, trained locally), if one is
    registered."""
    from .recipes import RECIPES

    for r in RECIPES.values():
        if r.model == model and r.dataset == dataset and r.trainer != "backprop" and not r.model_kwargs:
            return r
    return None


#: The recipe :func:`next_steps` suggests for a good Fashion-MNIST model on a CPU, and what it measured.
FAST_CPU_RECIPE = ("fast-fmnist-cpu", "91.36% Fashion-MNIST test accuracy in 10.9 minutes on a 2-core CPU")
#: Longer than this on the run's device, a suggested run is marked as one for a GPU.
GPU_ADVICE_SECONDS = 2 * 3600


def _without_options(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``argv`` without the options ``names`` and their values (``--epochs 3``, ``--epochs=3``, ``--resume`` with
    its optional checkpoint path)."""
    out: list[str] = []
    skip_value = False
    for tok in argv:
        if skip_value:
            skip_value = False
            if not tok.startswith("-"):
                continue
        if tok in names:
            skip_value = True
            continue
        if any(tok.startswith(n + "=") for n in names):
            continue
        out.append(tok)
    return out


def next_steps(args: argparse.Namespace, cfg: dict[str, Any], *, model: str, dataset: str, out: Path,
               epochs: int, epoch_seconds: float, device: Any) -> str:
    """The commands worth running after ``ffkit train``, with how long the longer ones take at this run's pace
    (``epoch_seconds`` per epoch, training and evaluation) and which need a GPU to finish in reasonable time."""
    from .train.estimate import format_duration

    def when(n_epochs: int, more: str = "", whole_dataset: bool = False) -> str:
        if whole_dataset and (args.limit is not None or args.eval_limit is not None):
            return "time not estimated (this run trained or evaluated on part of the data: --limit, --eval-limit)"
        seconds = n_epochs * epoch_seconds
        gpu = device.type == "cpu" and seconds > GPU_ADVICE_SECONDS
        return f"about {format_duration(seconds)}{more} on this {device.type}" + (
            "; it needs a GPU (--device cuda) to finish in reasonable time" if gpu else "")

    import shlex

    rows = [(f"ffkit plot {shlex.quote(str(out))}", "draw this run's learning curves (PNG files in the run directory)"),
            (f"ffkit test --checkpoint {shlex.quote(str(out / 'checkpoint.pt'))} --tta flip",
             "test the trained network again, here with flip test-time augmentation")]
    command = getattr(args, "command_line", None)
    if command is not None:
        more = max(5, 2 * epochs)
        again = _without_options(command, ("--epochs", "--resume"))
        rows.append((shlex.join(["ffkit", *again, "--epochs", str(more), "--resume"]),
                     f"train this run on to {more} epochs: {when(more - epochs, ' more')}"))
    name, figure = FAST_CPU_RECIPE
    if dataset == "fashion-mnist" and cfg.get("recipe") != name:
        rows.append((f"ffkit train --recipe {name}", figure))
    paper = _paper_recipe(model, dataset)
    if paper is not None and cfg.get("recipe") != paper.name:
        rows.append((f"ffkit train --recipe {paper.name}",
                     f"the paper's recipe, {paper.epochs} epochs: {when(paper.epochs, whole_dataset=True)} (published: "
                     f"{paper.reference})"))
    elif paper is None:
        rows.append(("ffkit recipes", f"every paper's recipe (none is registered for {model} on {dataset})"))
    lines = ["Next steps:"]
    for c, what in rows:
        lines += [f"  {c}", f"      {what}"]
    return "\n".join(lines)


def _pipeline_options(args: argparse.Namespace, trainer_name: str, device: torch.device):
    """``--pipeline``: the PipelineTrainer's options, this process's rank and its device."""
    from .train.pipelining.partition import parse_stages

    if trainer_name == "backprop":
        raise ValueError("--pipeline trains with the local trainer; it conflicts with --trainer backprop")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # launched by torchrun: one stage per process
        from .train.pipeline import init_distributed

        rank, _ = init_distributed(timeout=args.pipeline_timeout)
        if device.type == "cuda" and device.index is None:
            import torch

            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        options = {"backend": "distributed", "variant": args.pipeline_variant, "timeout": args.pipeline_timeout}
        if args.pipeline_variant == "stages":
            stages = parse_stages(args.stages)
            if isinstance(stages, tuple):
                options["stages"] = stages
            elif stages != 2 and stages != world:  # 2 is the default, which the world size overrides
                raise ValueError(f"--stages {args.stages} conflicts with torchrun's {world} processes: under torchrun "
                                 "there is one stage per process (give first layers such as 0,1.6, or nothing)")
            options["share_layers"] = not args.no_share_layers
        if args.pipeline_variant == "federated":
            options["sync_every"] = args.sync_every
        elif args.pipeline_variant == "all-layers":
            options["chapter_batches"] = args.chapter_batches
        return options, rank, device
    if args.pipeline_variant != "stages":
        raise ValueError(f"--pipeline-variant {args.pipeline_variant} runs one rank per process: launch with "
                         "torchrun --nproc-per-node N -m ffkit train ... --pipeline")
    stages = parse_stages(args.stages)
    return {"backend": "threads", "variant": "stages", "stages": stages, "timeout": args.pipeline_timeout}, 0, device


def _data_parallel_options(args: argparse.Namespace, cfg: dict[str, Any], trainer_name: str, device: torch.device):
    """``--data-parallel [D]``: the DataParallelTrainer's options (with ``--pipeline``: the hybrid pipeline's), this
    process's rank and its device."""
    from .train.pipelining.partition import parse_stages

    if trainer_name == "backprop":
        raise ValueError("--data-parallel trains with the local trainer; it conflicts with --trainer backprop")
    hybrid = args.pipeline
    if hybrid and args.pipeline_variant != "stages":
        raise ValueError(f"--data-parallel with --pipeline replicates a pipeline of stages; it conflicts with "
                         f"--pipeline-variant {args.pipeline_variant}")
    if hybrid and not args.data_parallel:
        raise ValueError("--data-parallel with --pipeline needs the number of replicas: --data-parallel D --pipeline "
                         "under torchrun --nproc-per-node N runs D pipelines of N/D stages")
    if "RANK" not in os.environ:
        raise ValueError("--data-parallel runs one replica per process: launch with torchrun --nproc-per-node N -m "
                         "ffkit train ... --data-parallel" + (" D --pipeline" if hybrid else ""))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    replicas = args.data_parallel or world
    if world % replicas:
        raise ValueError(f"--data-parallel {replicas} must divide torchrun's {world} processes (--nproc-per-node "
                         f"x --nnodes)")
    if not hybrid and replicas != world:
        raise ValueError(f"--data-parallel {replicas} without --pipeline runs one replica per process: launch "
                         f"{replicas} processes (torchrun --nproc-per-node {replicas}), or add --pipeline for "
                         f"{replicas} pipelines of {world // replicas} stages")
    if cfg["batch_size"] % replicas:
        raise ValueError(f"--batch-size {cfg['batch_size']} (the global batch) must be a multiple of the {replicas} "
                         f"data-parallel {'replicas' if hybrid else 'processes'}")
    if hybrid and args.shard_parameters:
        raise ValueError("--shard-parameters shards every layer over the data-parallel processes; it conflicts with "
                         "--pipeline (a stage's layers are replicated over the replicas, not sharded)")
    options: dict[str, Any] = {"backend": "distributed", "variant": "data-parallel", "timeout": args.pipeline_timeout,
                               "sync_batchnorm": args.sync_batchnorm}
    if not hybrid:
        options["shard_parameters"] = args.shard_parameters
    if hybrid:
        stages = parse_stages(args.stages)
        if isinstance(stages, tuple):
            options["stages"] = stages
        elif stages not in (2, world // replicas):  # 2 is the default, which the world size overrides
            raise ValueError(f"--stages {args.stages} conflicts with torchrun's {world} processes as {replicas} "
                             f"replicas: each replica has {world // replicas} stages (give first layers such as 0,3, "
                             f"or nothing)")
        options.update(variant="stages", data_parallel=replicas, share_layers=False)
    from .train.pipeline import init_distributed

    rank, _ = init_distributed(timeout=args.pipeline_timeout)
    if device.type == "cuda" and device.index is None:
        import torch

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return options, rank, device


#: The options of ``--pipeline`` and their defaults; the parser leaves them ``None`` so that one given without
#: ``--pipeline`` (which would be silently ignored) can be refused.
PIPELINE_DEFAULTS: dict[str, Any] = {
    "stages": "2", "pipeline_variant": "stages", "sync_every": 1, "chapter_batches": 10, "pipeline_timeout": 60.0,
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_pipeline_flags(args: argparse.Namespace) -> None:
    """Refuse ``--pipeline``'s options without ``--pipeline`` (they would be silently ignored), then fill in their
    defaults. A variant's option under another variant is accepted, so that one command line can loop over
    variants."""
    given = [k for k in PIPELINE_DEFAULTS if getattr(args, k, None) is not None
             and not (k == "pipeline_timeout" and args.data_parallel is not None)]  # every multi-process engine's
    given += ["no_share_layers"] if getattr(args, "no_share_layers", False) else []
    if given and not args.pipeline:
        flags = ", ".join(_flag(k) for k in given)
        verb = "only applies" if len(given) == 1 else "only apply"
        raise ValueError(f"{flags} {verb} to --pipeline training; add --pipeline or drop {flags}")
    for key, default in PIPELINE_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, default)


def _check_model_flags(args: argparse.Namespace, cfg: dict[str, Any], net: Any) -> None:
    """Flags that the chosen model would silently ignore or fail on deep inside training."""
    for flag, value in (("--head-lr", args.head_lr), ("--head-weight-decay", args.head_weight_decay)):
        if value is not None and getattr(net, "head", None) is None:
            raise ValueError(f"{flag} configures a classifier head, but {cfg['model']} has none "
                             "(DTG-FF models and hinton_mlp with a head have one)")
    if args.final_lr is not None and cfg["schedule"] in ("constant", "piecewise"):
        origin = f" (set by --recipe {cfg['recipe']})" if args.schedule is None and cfg["recipe"] else ""
        raise ValueError(f"--final-lr is the end of a decaying schedule; it conflicts with --schedule "
                         f"{cfg['schedule']}{origin}, which never reaches it (use cosine or cooldown)")


def _check_batches(n: int, batch_size: int, net: Any, model: str, drop_last: bool) -> None:
    """A training set too small for one batch, or a last batch that a BatchNorm head cannot train on."""
    if drop_last and n < batch_size:
        raise ValueError(f"the training set has {n} samples, fewer than one batch of --batch-size {batch_size}, and "
                         "--pipeline drops incomplete batches, so nothing would be trained: lower --batch-size or "
                         "raise --limit")
    min_batch = getattr(getattr(net, "head", None), "min_batch_size", 1)
    last = n % batch_size
    head_needs = f"{model}'s classifier head (BatchNorm1d) needs at least {min_batch} samples per training batch"
    if batch_size < min_batch:
        raise ValueError(f"--batch-size {batch_size}: {head_needs}")
    if min_batch > 1 and not drop_last and 0 < last < min_batch:
        raise ValueError(f"{n} training samples in batches of --batch-size {batch_size} leave a last batch of {last}, "
                         f"but {head_needs}: change --batch-size or --limit")


def check_train_flags(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    """Every conflict between ``ffkit train``'s flags and the recipe they override, checked once, before the model is
    built or any data is read (``cfg``: :func:`resolve_train_config`'s, with the trainer chosen). What depends on the
    built model is :func:`_check_model_flags`'s; the pipeline's split is checked against the model as soon as it is
    built."""
    model, trainer_name = cfg["model"], cfg["trainer"]
    if trainer_name == "backprop" and cfg["overlap"]:
        origin = f" (set by --recipe {cfg['recipe']}; add --no-overlap)" if args.overlap is None else ""
        raise ValueError(f"--overlap{origin} is an option of the local trainer; it conflicts with --trainer backprop")
    if args.width_multiplier is not None:
        from .models import get_model_builder

        params = inspect.signature(get_model_builder(model)).parameters
        if "width_multiplier" not in params:
            raise ValueError(f"--width-multiplier: model {model} has no width_multiplier (its arguments: "
                             f"{', '.join(params)})")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.pipeline_timeout is not None:
        from .train._distributed import check_timeout

        check_timeout(args.pipeline_timeout, "--pipeline-timeout")
    # Numbers the trainer would refuse only after the data is loaded: checked here, by their flag names.
    for key, flag, positive in (("lr", "--lr", True), ("final_lr", "--final-lr", False),
                                ("weight_decay", "--weight-decay", False), ("head_lr", "--head-lr", True),
                                ("head_weight_decay", "--head-weight-decay", False)):
        if cfg.get(key) is not None:
            check_real(cfg[key], flag, low=0.0, low_open=positive)
    if args.checkpoint_every is not None and args.pipeline:
        raise ValueError("--checkpoint-every conflicts with --pipeline: pipeline stages checkpoint at epoch ends")
    for flag in ("--sync-batchnorm", "--shard-parameters"):
        if getattr(args, flag[2:].replace("-", "_")) and args.data_parallel is None:
            raise ValueError(f"{flag} only applies to --data-parallel training; add --data-parallel or drop {flag}")
    if args.data_parallel is not None:
        for flag, given in (("--checkpoint-every", args.checkpoint_every is not None),
                            (f"--on-divergence {args.on_divergence}", args.on_divergence != "stop"),
                            ("--data-on-device", args.data_on_device)):
            if given:
                raise ValueError(f"{flag} conflicts with --data-parallel (its ranks checkpoint at epoch ends and stop "
                                 f"together on divergence; each reads its shard through a DataLoader)")
    if args.on_divergence != "stop" and trainer_name != "local":
        raise ValueError(f"--on-divergence {args.on_divergence} is an option of the local trainer; it conflicts with "
                         f"--trainer {trainer_name}")
    if args.on_divergence != "stop" and args.pipeline:
        raise ValueError(f"--on-divergence {args.on_divergence} conflicts with --pipeline: pipeline stages and ranks "
                         f"stop on divergence")
    if args.data_on_device and args.pipeline:
        raise ValueError("--data-on-device conflicts with --pipeline: each stage receives its batches from the one "
                         "before it (drop --data-on-device)")
    if args.data_on_device and args.workers:
        raise ValueError(f"--data-on-device makes every batch on the device in the training process; it conflicts "
                         f"with --workers {args.workers} (drop --workers)")
    if getattr(args, "tensorboard", False):  # a missing package is named now, not after the data is loaded
        from .train.runlog import check_tensorboard

        check_tensorboard()
    _check_pipeline_flags(args)


#: A forked DataLoader worker's own memory besides the batches it prefetches: about 9 MiB measured (USS, ffkit
#: train on Fashion-MNIST, 2-core AMD EPYC); counted at 64 MiB, since what a worker touches grows with the dataset.
WORKER_MEMORY = 64 * 2**20


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux ``MemAvailable``; ``None`` if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_count(requested: int, batch_bytes: int = 0) -> int:
    """``--workers``, capped at the CPU cores this process may run on (more workers than cores only thrash) and at
    what half of the available memory holds: each worker is a process with its own memory and ``prefetch_factor``
    (2) batches of ``batch_bytes`` in flight. A capped request is reported on stderr."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap, why = cores, f"the {cores} CPU core(s) this process may use"
    free = available_memory()
    if free is not None:
        each = WORKER_MEMORY + 2 * batch_bytes
        fits = max(1, free // 2 // each)
        if fits < cap:
            cap, why = fits, (f"what half of the {free / 2**30:.1f} GiB of available memory holds at about "
                              f"{each / 2**20:.0f} MiB per worker (its process and 2 prefetched batches)")
    if requested > cap:
        print(f"ffkit train: warning: --workers {requested} is more than {why}; using {cap}", file=sys.stderr,
              flush=True)
        return cap
    return requested


def _check_eval_split(data: Any, split: str, info: Any) -> None:
    """Refuse an evaluation split whose labels lie outside ``[0, num_classes)`` or whose images are not finite,
    before any training: otherwise it fails (or, with NaN images, misleads) only at the end of the first epoch."""
    labels = data.y if hasattr(data, "y") else data.labels
    images = data.x if hasattr(data, "x") else data.images
    if len(labels) == 0:
        raise ValueError(f"the {split} set of {info.name} is empty (check --eval-limit and the dataset files)")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= info.num_classes:
        raise ValueError(f"the {split} set of {info.name} has labels in [{lo}, {hi}], outside [0, {info.num_classes}): "
                         f"its files are damaged or belong to another dataset")
    if images.is_floating_point() and not bool(images.isfinite().all()):
        raise ValueError(f"the {split} set of {info.name} holds non-finite pixel values (NaN or infinity): its files "
                         f"are damaged")


def _train_loaders(
    args: argparse.Namespace, cfg: dict[str, Any], info: Any, net: Any, device: torch.device, pipeline: dict | None
) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """``ffkit train``'s training, held-out and test loaders, as the flags and the recipe ask."""
    import torch
    from torch.utils.data import DataLoader

    from .data import DeviceDataset, InMemory, WithIndex, load_dataset

    model = cfg["model"]
    norm = cfg["normalize"]
    size = _image_size(net)
    train_split = "train" if cfg["holdout"] else "train_full"
    train_set = load_dataset(info.name, train_split, args.data_dir, holdout_seed=args.seed, augment=cfg["augment"],
                             normalize=norm, image_size=size)
    # federated and data-parallel ranks each train on their own shard of every epoch
    sharded = pipeline is not None and (pipeline["variant"] in ("federated", "data-parallel")
                                        or pipeline.get("data_parallel", 1) > 1)
    # Samples that never change (no random augmentation) are read once and fetched a batch at a time: the same
    # batches in the same order, without a per-sample transform and collate every epoch. Indices let FixedNEG keep
    # one wrong label per sample.
    on_device = _data_on_device(args, device, pipeline)
    in_memory = cfg["augment"] is None and not sharded
    holdout_set = (load_dataset(info.name, "holdout", args.data_dir, holdout_seed=args.seed, normalize=norm,
                                image_size=size) if cfg["holdout"] else None)
    test_set = load_dataset(info.name, "test", args.data_dir, normalize=norm, image_size=size)
    holdout: Dataset | None
    test: Dataset
    if on_device:
        # The stored 8-bit images on the device; each batch converted (and augmented) there, in the same order
        stats = {"mean": info.mean, "std": info.std} if norm == "standard" else {}
        train_set = DeviceDataset.from_dataset(_first(train_set, args.limit), device=device, size=size,
                                               augment=cfg["augment"], with_index=True, **stats)
        holdout = (DeviceDataset.from_dataset(_first(holdout_set, args.eval_limit), device=device, size=size, **stats)
                   if holdout_set is not None else None)
        test = DeviceDataset.from_dataset(_first(test_set, args.eval_limit), device=device, size=size, **stats)
        # Reading a set into an InMemory iterates a DataLoader, which draws its base seed from torch's global
        # generator; draw as many here, so that both paths train with the same random stream (dropout masks,
        # negative labels) and give the same run.
        for _ in range(2 + (holdout is not None) - (not in_memory)):
            torch.empty((), dtype=torch.int64).random_()
    else:
        train_set = (InMemory(_first(train_set, args.limit), with_index=True) if in_memory
                     else WithIndex(_first(train_set, args.limit)))
        holdout = InMemory(_first(holdout_set, args.eval_limit)) if holdout_set is not None else None
        test = InMemory(_first(test_set, args.eval_limit))
    for split, data in (("held-out", holdout), ("test", test)):  # evaluated only after an epoch: checked now
        if data is not None:
            _check_eval_split(data, split, info)
    image = test[0][0]  # one stored sample: what a batch of the training set weighs
    batch_bytes = cfg["batch_size"] * image.numel() * 4  # float32 once collated
    loader_kw: dict[str, Any] = {"num_workers": 0 if on_device else worker_count(args.workers, batch_bytes),
                                 "pin_memory": device.type == "cuda" and not on_device}
    if loader_kw["num_workers"]:
        from .train.interrupt import ignore_stop_signals

        # Ctrl-C and a scheduler's SIGTERM reach the whole process group: the workers must outlive them while the
        # trainer finishes its step and saves (they end with the loader, or with their parent).
        loader_kw["worker_init_fn"] = ignore_stop_signals
    batch_size = cfg["batch_size"]
    if not sharded:  # sharded ranks each train on a shard, whose size depends on the world size
        _check_batches(_size(train_set), batch_size, net, model, drop_last=pipeline is not None or cfg["drop_last"])
    if sharded:  # every rank its own shard of the data
        import torch.distributed as dist

        from .train import shard_loader

        assert pipeline is not None  # sharded
        replicas = pipeline.get("data_parallel", 1)
        if replicas > 1:  # a hybrid job: the first stage of each replica reads the replica's shard, batches of one size
            replica = dist.get_rank() // (dist.get_world_size() // replicas)
            train_loader = shard_loader(train_set, batch_size // replicas, seed=args.seed, num_replicas=replicas,
                                        rank=replica, drop_last=True, **loader_kw)
        else:
            data_parallel = pipeline["variant"] == "data-parallel"
            share = batch_size // dist.get_world_size() if data_parallel else batch_size  # of the global batch
            train_loader = shard_loader(train_set, share, seed=args.seed, **loader_kw)
    else:  # a pipeline's stages post their receives ahead for batches of one size
        collate = DeviceDataset.collate if on_device else InMemory.collate if in_memory else None
        train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=torch.Generator(),
                                  drop_last=pipeline is not None or cfg["drop_last"], collate_fn=collate, **loader_kw)
    # On a CPU the per-image forward cost grows past the training batch (caches; fast-fmnist-cpu: 0.56 ms per image
    # at 128, 0.62 at 256, benchmarks/eval_cost.py); on a GPU it falls
    eval_bs = batch_size if device.type == "cpu" else max(256, batch_size)
    eval_kw = {**loader_kw, "collate_fn": DeviceDataset.collate if on_device else InMemory.collate}
    holdout_loader = DataLoader(holdout, batch_size=eval_bs, **eval_kw) if holdout is not None else None
    test_loader = DataLoader(test, batch_size=eval_bs, **eval_kw)
    return train_loader, holdout_loader, test_loader


#: What a resumed run cannot change, with the flag that sets it and why: each fixes the data a step sees (the
#: order, split and batches, so the position inside an epoch), the learning rule or the optimizer state. The lr, final
#: lr, weight decay and --epochs are honoured instead (the trainer re-plans its schedule, see
#: ffkit.train.schedules.replan_schedules); the rest (precision, layout, augmentation, evaluation, workers, device,
#: output) applies to the resumed run as given.
RESUME_FIXED: dict[str, tuple[str, str]] = {
    "batch_size": ("--batch-size", "it sets the batches of every epoch and the position inside one"),
    "seed": ("--seed", "it sets the held-out split and the shuffling order"),
    "limit": ("--limit", "it sets the training images"),
    "holdout": ("--holdout", "it sets the training images, with a held-out split for SIP or without"),
    "drop_last": ("--drop-last", "it sets the batches of every epoch"),
    "normalize": ("--normalize", "it sets what the network was trained on"),
    "optimizer": ("--optimizer", "the optimizer state does not convert"),
    "schedule": ("--schedule", "the schedule's state does not convert"),
    "schedule_interval": ("--schedule-interval", "the schedule's state does not convert"),
    "milestones": ("the recipe's milestones", "the piecewise schedule's steps are part of its state"),
    "overlap": ("--overlap", "overlapping updates change which optimizer steps which layer"),
    "layer_epochs": ("the recipe's layer_epochs", "each layer's training window is part of the run's plan"),
    "model_kwargs": ("--model-kwargs", "they build the network whose weights the checkpoint holds"),
}


def check_resume_flags(saved: dict[str, Any], cfg: dict[str, Any], ckpt: Path) -> None:
    """Refuse a ``--resume`` whose flags change what :data:`RESUME_FIXED` lists, naming the flag and the checkpoint's
    value (checkpoints that do not record a value are not checked for it)."""
    for key, (flag, why) in RESUME_FIXED.items():
        if key not in saved or key not in cfg:
            continue
        if key == "model_kwargs":
            _check_resume_model_kwargs(saved, cfg, ckpt, why)
            continue
        old, new = saved[key], cfg[key]
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = _as_tuples(old), _as_tuples(new)
        if old != new:
            was = _flag_form(flag, saved[key])
            raise ValueError(
                f"checkpoint {ckpt} was trained with {was}, this run asks for {_flag_form(flag, cfg[key])}; a resumed "
                f"run cannot change it ({why}): resume with {was}, or start a new run in another --out"
            )


def _check_resume_model_kwargs(saved: dict[str, Any], cfg: dict[str, Any], ckpt: Path, why: str) -> None:
    """The model arguments of a resumed run against the checkpoint's (same model only: another model is
    ``check_same_model``'s to refuse), each with its builder's default where not given, so that stating a default
    changes nothing."""
    model = cfg.get("model")
    if saved.get("model") != model or model is None:
        return
    from .models import get_model_builder

    params = inspect.signature(get_model_builder(model)).parameters
    builder = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    old = _as_tuples({**builder, **saved["model_kwargs"]})
    new = _as_tuples({**builder, **cfg["model_kwargs"]})
    changed = [k for k in {**old, **new} if old.get(k) != new.get(k)]
    if not changed:
        return
    was = ", ".join(f"{k}={old.get(k)!r}" for k in changed)
    asks = ", ".join(f"{k}={new.get(k)!r}" for k in changed)
    remedy = [f"--width-multiplier {old[k]}" for k in changed if k == "width_multiplier"]
    kwargs = [_kwarg_form(k, old.get(k)) for k in changed if k != "width_multiplier"]
    remedy += [f"--model-kwargs {' '.join(kwargs)}"] if kwargs else []
    raise ValueError(f"checkpoint {ckpt} was trained with {model}({was}), this run asks for {model}({asks}); a "
                     f"resumed run cannot change the model's arguments ({why}): resume with {' '.join(remedy)}, or "
                     f"start a new run in another --out")


def _kwarg_form(key: str, value: Any) -> str:
    """``hidden=1000,1000`` as ``--model-kwargs`` takes it: sequences of numbers comma-joined, strings bare where
    they read back as themselves, anything else as a Python literal."""
    if isinstance(value, tuple) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value):
        text = ",".join(map(str, value)) + ("," if len(value) == 1 else "")
    elif isinstance(value, str) and " " not in value and value and parse_model_kwarg_value(value) == value:
        text = value
    else:
        text = repr(value)
    return f"{key}={text}"


def _as_tuples(value: Any) -> Any:
    """``value`` with every list (at any depth, in dicts too) as a tuple, as the recipes write sequences, so that
    equal settings compare equal."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    return value


def _flag_form(flag: str, value: Any) -> str:
    """How a value reads on the command line: ``--holdout`` / ``--no-holdout``, ``--seed 0``, ``no --limit``."""
    if not flag.startswith("--"):
        return f"{flag} {value}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"no {flag}" if value is None else f"{flag} {value}"


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .data import dataset_info
    from .models import model_kind
    from .recipes import Recipe, build_model, build_trainer
    from .train import check_same_model, load_checkpoint
    from .train.base import DEFAULT_LOG_EVERY
    from .train.checkpoint import CheckpointVersionWarning

    wall_start = time.perf_counter()
    cfg = resolve_train_config(args)
    device = resolve_device(args.device)
    info = dataset_info(cfg["dataset"])
    model = cfg["model"]
    cfg["trainer"] = trainer_name = cfg["trainer"] or ("backprop" if model_kind(model) == "backprop" else "local")
    recipe = Recipe(name=cfg["recipe"] or "command-line", **{k: cfg[k] for k in TRAIN_DEFAULTS})
    check_train_flags(args, cfg)
    out = Path(args.out) if args.out else Path("runs") / f"{model}-{info.name}"
    pipeline, rank = None, 0
    if args.data_parallel is not None:
        pipeline, rank, device = _data_parallel_options(args, cfg, trainer_name, device)
    elif args.pipeline:
        pipeline, rank, device = _pipeline_options(args, trainer_name, device)
    if rank > 0:  # one report: rank 0's
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process
    else:  # before any data is read: the directory can be written, and no other run is using it
        from .train.rundir import claim_run_dir

        args.run_checkpoint = out / "checkpoint.pt"  # what an interruption can point to

        run_lock = claim_run_dir(out)  # noqa: F841 - held (by this reference) until cmd_train returns
    logger.info(describe_train_config(cfg, args, device, out))
    torch.manual_seed(args.seed)
    net = build_model(recipe, num_classes=info.num_classes, in_channels=info.in_channels)
    _check_model_flags(args, cfg, net)
    if pipeline is not None and pipeline["variant"] == "stages":  # before any data is loaded
        import torch.distributed as dist

        from .train.pipelining.partition import resolve_stages

        world = dist.get_world_size() if pipeline["backend"] == "distributed" else 1  # initialised by now
        world //= pipeline.get("data_parallel", 1)  # a hybrid job's processes: replicas x stages
        resolve_stages(pipeline.get("stages", 2), net, backend=pipeline["backend"], world=world)
    ckpt = None
    if args.resume is not None:  # check the checkpoint before spending time on data
        ckpt = Path(args.resume) if args.resume else out / "checkpoint.pt"
        with warnings.catch_warnings():  # a version warning is shown once, when the trainer loads it below
            warnings.simplefilter("ignore", CheckpointVersionWarning)
            payload = load_checkpoint(ckpt)
        if payload.get("model_name") in (None, net.model_name):  # the same model: a changed setting, by its flag
            check_resume_flags(payload.get("metadata", {}), {**cfg, "seed": args.seed, "limit": args.limit}, ckpt)
        check_same_model(payload, net, ckpt)
        trained_with = payload.get("metadata", {}).get("trainer")
        if trained_with is not None and trained_with != trainer_name:
            raise ValueError(f"checkpoint {ckpt} was trained with the {trained_with} trainer; resuming it with "
                             f"--trainer {trainer_name} would not match its optimizer states (pass --trainer "
                             f"{trained_with})")

    train_loader, holdout_loader, test_loader = _train_loaders(args, cfg, info, net, device, pipeline)

    epochs = cfg["epochs"]
    options = {"on_divergence": args.on_divergence} if args.on_divergence != "stop" else {}
    trainer = build_trainer(recipe, net, steps_per_epoch=len(train_loader), device=device, pipeline=pipeline,
                            compile=args.compile, **options)
    metadata = {
        "dataset": info.name, "seed": args.seed, "limit": args.limit, "trainer": trainer_name,
        **{k: v for k, v in cfg.items() if k not in ("dataset", "trainer", "sources")},
    }
    if ckpt is not None:
        payload = trainer.resume(ckpt)
        trained_on = payload.get("metadata", {}).get("dataset")
        if trained_on is not None and trained_on != info.name:
            raise ValueError(f"checkpoint {ckpt} was trained on {trained_on!r}, not {info.name!r}")
        position = payload.get("position")
        where = f"batch {position['batches']} of epoch {position['epoch']}" if position else f"epoch {trainer.epoch}"
        logger.info(f"resumed from {ckpt} after {where}")
        for note in trainer.resume_notes:
            logger.info(f"  re-planned from the checkpoint's: {note}")
    n_params = sum(p.numel() for p in net.parameters())
    logger.info(
        f"ffkit {__version__}: training {model} ({len(net)} layers, {n_params / 1e6:.2f}M parameters) on "
        f"{info.name} ({_size(train_loader.dataset)} training images, "
        + (f"{_size(holdout_loader.dataset)} held-out for SIP, " if holdout_loader is not None else "")
        + f"{_size(test_loader.dataset)} test) "
        f"for {epochs} epoch(s) on {device} with the {trainer_name} trainer"
        + (f" (recipe {cfg['recipe']})" if cfg["recipe"] else "") + f"; run directory {out}"
    )
    if rank == 0:
        write_run_config(out, cfg, args, device)
    first_epoch, fit_start = trainer.epoch, time.perf_counter()
    history = trainer.fit(
        train_loader, epochs=epochs, holdout=holdout_loader, test=test_loader, out_dir=out, seed=args.seed,
        progress=not args.no_progress and rank == 0, metadata=metadata, checkpoint_every=args.checkpoint_every,
        tensorboard=args.tensorboard,
        log_every=DEFAULT_LOG_EVERY if args.log_interval is None else args.log_interval or None,
    )
    if pipeline is not None and pipeline["backend"] == "distributed":
        import torch.distributed as dist

        dist.destroy_process_group()
        if rank > 0:
            return 0
    test_rep = history[-1]["test"]
    train_images = sum(r["train_images"] for r in history)
    train_seconds = sum(r["train_seconds"] for r in history)
    line = (
        f"\nTest accuracy: {100 * test_rep['prediction']:.2f}% ({describe_prediction(test_rep)}); "
        f"all layers {100 * test_rep['all_layers']:.2f}%; best single layer {100 * max(test_rep['per_layer']):.2f}%"
    )
    if test_rep.get("head") is not None:
        line += f"; classifier head {100 * test_rep['head']:.2f}%"
    logger.info(line)
    logger.info(f"Checkpoint: {out / 'checkpoint.pt'}   metrics: {out / 'metrics.json'}")
    if cfg["recipe"] is not None and cfg.get("reference"):
        logger.info(f"Published figure for this recipe: {cfg['reference']}")
    if trainer.epoch > first_epoch:
        logger.info(next_steps(args, cfg, model=model, dataset=info.name, out=out, epochs=trainer.epoch,
                               epoch_seconds=(time.perf_counter() - fit_start) / (trainer.epoch - first_epoch),
                               device=device))
    if args.json:
        summary = {
            "model": model, "dataset": info.name, "recipe": cfg["recipe"], "trainer": trainer_name,
            "epochs": trainer.epoch, "test_accuracy": test_rep["prediction"],
            "test_accuracy_all_layers": test_rep["all_layers"], "test_accuracy_head": test_rep.get("head"),
            "test_accuracy_per_layer": test_rep["per_layer"], "tta": cfg["tta"], "sip_range": test_rep["sip_range"],
            "prediction_range": test_rep["prediction_range"],
            "wall_seconds": time.perf_counter() - wall_start, "train_seconds": train_seconds,
            "images_per_s": train_images / train_seconds, "train_images": train_images, "device": str(device),
        }
        print(json.dumps(summary))
    return 0


#: The settings :func:`describe_train_config` prints, by line: (key in the resolved configuration, label).
_SUMMARY = (
    (("dataset", "dataset"), ("epochs", "epochs"), ("batch_size", "batch size"), ("lr", "lr"),
     ("optimizer", "optimizer"), ("schedule", "schedule"), ("trainer", "trainer")),
    (("device", "device"), ("out", "out")),
)


def describe_train_config(cfg: dict[str, Any], args: argparse.Namespace, device: torch.device, out: Path) -> str:
    """A few lines that ``ffkit train`` prints first: the model and its arguments, the main settings, the device and
    the run directory, each value that is not a default tagged with where it came from (``[flag]``, ``[config]``,
    ``[recipe]``; model arguments of one source share one tag)."""
    sources = cfg.get("sources", {})
    values = {**cfg, "device": f"{device}" + (" (auto)" if args.device == "auto" else ""), "out": str(out)}

    def item(key: str, label: str) -> str:
        tag = f" [{sources[key]}]" if key in sources else ""
        return f"{label} {values[key]}{tag}"

    kwargs = list(cfg["model_kwargs"].items())
    model = [item("model", "model") + (" with" if kwargs else "")]
    for i, (key, value) in enumerate(kwargs):
        source = sources.get(f"model_kwargs.{key}")
        last = i + 1 == len(kwargs) or sources.get(f"model_kwargs.{kwargs[i + 1][0]}") != source
        model.append(_kwarg_form(key, value) + (f" [{source}]" if last and source else ""))
    head = "settings (flag > config file > recipe > default; [source] where not a default)"
    if getattr(args, "config", None):
        head += f": --config {args.config}"
    if cfg.get("recipe"):
        head += f", --recipe {cfg['recipe']}"
    lines = [_pack(model, " ", ", ")] + [_pack([item(k, label) for k, label in line], ", ", ", ") for line in _SUMMARY]
    return "\n".join([head, *lines])


def _pack(items: list[str], first: str, sep: str, width: int = 118) -> str:
    """``items`` joined (``first`` after the first, ``sep`` after the others) into lines of at most ``width``
    characters where they fit, never splitting an item; indented by 2, continuations by 6."""
    lines, line = [], "  " + items[0]
    for k, text in enumerate(items[1:]):
        joint = first if k == 0 else sep
        if len(line) + len(joint) + len(text) > width:
            lines.append(line + joint.rstrip())
            line = "      " + text
        else:
            line += joint + text
    return "\n".join([*lines, line])


#: The run directory's record of the settings a run was started with (``ffkit train`` writes it before training).
RUN_CONFIG = "config.json"


def write_run_config(out: Path, cfg: dict[str, Any], args: argparse.Namespace, device: torch.device) -> Path:
    """``OUT/config.json``: the command line, the ``--config`` file, every resolved setting and where each that is not
    a default came from (``sources``). A resumed run rewrites it with its own command line."""
    import shlex

    internal = {"command", "command_line", "flags_given", "config", "config_keys", "config_model_kwargs",
                "run_checkpoint"}
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in internal}
    settings.update({k: v for k, v in cfg.items() if k != "sources"})
    settings["device"] = str(device)
    settings["out"] = str(out)
    record = {
        "ffkit": __version__,
        "command_line": shlex.join(["ffkit", *args.command_line]) if hasattr(args, "command_line") else None,
        "config_file": getattr(args, "config", None),
        "settings": settings,
        "sources": cfg.get("sources", {}),
    }
    from ._files import write_text_atomic

    return write_text_atomic(out / RUN_CONFIG, json.dumps(record, indent=2, default=str) + "\n")


def _data_on_device(args: argparse.Namespace, device: torch.device, pipeline: dict | None) -> bool:
    """Whether the training and evaluation data live on the training device (:class:`~ffkit.data.DeviceDataset`,
    which performs every augmentation): ``--data-on-device`` / ``--no-data-on-device``, else automatically on CUDA
    for a single-process run."""
    if args.data_on_device is None:
        return device.type == "cuda" and pipeline is None
    return bool(args.data_on_device)  # its conflicts are check_train_flags


def _image_size(net: Any) -> int:
    """The side of the images the network takes (its ``input_size``; the datasets' default side for networks that
    take any)."""
    from .data.datasets import IMAGE_SIZE

    size = getattr(net, "input_size", None)  # single-head baselines have none
    return int(size[0]) if size else IMAGE_SIZE


def cmd_test(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from .data import InMemory, dataset_info, load_dataset
    from .evaluation import collect_scores, make_report
    from .loading import network_from_checkpoint
    from .train import load_checkpoint

    device = resolve_device(args.device)
    payload = load_checkpoint(args.checkpoint, map_location="cpu")
    net = network_from_checkpoint(payload, args.checkpoint, purpose="test")  # as ffkit.load rebuilds it
    name = payload["model_name"]
    dataset = args.dataset or payload.get("metadata", {}).get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not record its dataset; pass --dataset")
    info = dataset_info(dataset)
    metadata = payload.get("metadata", {})
    # the normalisation it was trained with ("standard" takes the constants of the dataset evaluated)
    test = InMemory(_first(load_dataset(info.name, "test", args.data_dir, normalize=metadata.get("normalize"),
                                        image_size=_image_size(net)), args.eval_limit))
    net.to(device)
    tta = metadata.get("tta") if args.tta is None else args.tta  # the run's own, unless --tta is given
    if tta == "none":
        tta = None
    collected = collect_scores(net, DataLoader(test, batch_size=args.batch_size, collate_fn=InMemory.collate), device,
                               track_activity=True, tta=tta)
    start, end = (int(v) for v in net.inference_range)
    sip = (start, end) if metadata.get("holdout", True) else None  # checkpoints of older versions always ran SIP
    head_predicts = bool(getattr(net, "head_predicts", False))
    rep = make_report(collected.layers, collected.labels, sip, head_scores=collected.head,
                      dead_ratio=collected.dead_ratio, prediction_range=(start, end), head_predicts=head_predicts)
    epoch = payload.get("trainer", {}).get("epoch")
    assert rep.prediction is not None  # make_report was given the inference range
    lines = [
        f"{name} on {info.name} test ({rep.num_samples} images), checkpoint after epoch {epoch}"
        + (f", test-time augmentation {tta}" if tta else ""),
        "  layer      " + " ".join(f"{i + 1:>6d}" for i in range(len(rep.per_layer))),
        "  test acc   " + " ".join(f"{100 * v:6.2f}" for v in rep.per_layer),
        f"  one-pass, all layers: {100 * rep.all_layers:.2f}%",
        f"  prediction ({describe_prediction(rep.to_dict())}): {100 * rep.prediction:.2f}%",
        f"  last 3 layers: {100 * rep.last3:.2f}%",
    ]
    if rep.head is not None:
        lines.append(f"  classifier head: {100 * rep.head:.2f}%")
    logger.info("\n".join(lines))
    if args.json:
        print(json.dumps({"model": name, "dataset": info.name, "tta": tta, **rep.to_dict()}))
    return 0


def describe_prediction(report: dict[str, Any]) -> str:
    """What a test report's ``prediction`` read: ``"SIP layers 2..4, chosen on the held-out split"``,
    ``"layers 2..4"`` or ``"the classifier head"`` (1-based)."""
    rng = report.get("prediction_range")
    if rng is None:
        return "the classifier head"
    start, end = rng[0] + 1, rng[1] + 1
    layers = f"layer {start}" if start == end else f"layers {start}..{end}"
    return f"SIP {layers}, chosen on the held-out split" if report.get("sip") is not None else layers


def cmd_plot(args: argparse.Namespace) -> int:
    from .plotting import plot_run

    for path in plot_run(args.run_dir, out_dir=args.out, formats=args.formats):
        print(path)
    return 0


def one_line(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, as plain text: Sphinx roles
    (``:class:`~ffkit.layers.DTGLinear```) become the object's name and double backticks go, so ``ffkit models``
    prints whole sentences without markup."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], paragraph).replace("``", "")
    # a sentence ends at a full stop before a space, not after an abbreviation ("Sec. 4.4", "e.g. 0.5")
    for stop in re.finditer(r"\.(?=\s)", text):
        word = text[: stop.start()].rsplit(" ", 1)[-1].lstrip("([\"'").lower()
        if word not in _ABBREVIATIONS:
            return text[: stop.end()]
    return text


_ABBREVIATIONS = {"sec", "secs", "fig", "eq", "e.g", "i.e", "al", "vs", "cf", "app", "alg", "no"}


def model_catalogue() -> dict[str, dict[str, Any]]:
    """The model builders ``ffkit models`` lists, by name, each as
    :func:`ffkit.models._catalogue.describe_model` gives it: from the live registry when this process has imported
    :mod:`ffkit.models` (then with the models registered at run time by :func:`~ffkit.register_model`), else from the
    catalogue of the built-in builders generated from it (:mod:`ffkit._model_catalogue`), read without torch."""
    if "ffkit.models" in sys.modules:
        from .models._catalogue import describe_models

        return describe_models()
    from ._model_catalogue import MODELS

    return MODELS


def _catalogue_entry(catalogue: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    from ._validation import unknown_model

    if name not in catalogue:
        raise unknown_model(name, sorted(catalogue))
    return catalogue[name]


def cmd_models(args: argparse.Namespace) -> int:
    catalogue = model_catalogue()
    for name in getattr(args, "names", None) or sorted(catalogue):
        entry = _catalogue_entry(catalogue, name)
        print(f"{name:28s} {entry['kind']:9s} {one_line(entry['doc'])}")
        if getattr(args, "verbose", False):
            for line in argument_lines(entry["parameters"]):
                print(f"    {line}")
    return 0


def builder_arguments(model: str) -> list[str]:
    """``ffkit models --verbose``: one line per keyword argument of ``model``'s builder that ``--model-kwargs``
    takes (``hidden: Sequence[int] = (2000, 2000, 2000, 2000)``), then the ones other flags set."""
    return argument_lines(_catalogue_entry(model_catalogue(), model)["parameters"])


def argument_lines(parameters: list[dict[str, Any]]) -> list[str]:
    """:func:`builder_arguments`' lines for a builder's ``parameters`` as the model catalogue holds them."""
    lines: list[str] = []
    owned: dict[str, list[str]] = {}
    for p in parameters:
        name = p["name"]
        if name in MODEL_KWARGS_OWNED:
            owned.setdefault(MODEL_KWARGS_OWNED[name][0], []).append(name)
            continue
        note = f": {p['annotation']}" if p["annotation"] is not None else ""
        default = f" = {p['default']}" if p["default"] is not None else " (required)"
        lines.append(f"{'**' if p['var_keyword'] else ''}{name}{note}{default}")
    if not lines:
        lines.append("(no --model-kwargs)")
    if owned:
        lines.append("set by other flags: " + "; ".join(f"{', '.join(v)} ({k})" for k, v in owned.items()))
    return lines


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import RECIPES, list_recipes

    for name in list_recipes():
        r = RECIPES[name]
        print(f"{name:42s} {r.model:24s} {r.dataset:14s} {r.epochs:4d} ep  {r.reference}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ffkit`` command line ``argv`` (default ``sys.argv[1:]``) and return its exit status: 0, 2 for bad
    input (the message on stderr), 128 + the signal's number when interrupted."""
    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "test": cmd_test, "plot": cmd_plot, "models": cmd_models,
               "recipes": cmd_recipes}[args.command]
    import signal

    in_main = threading.current_thread() is threading.main_thread()  # where Python can install handlers
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main else None
    try:
        if args.command == "train":
            args = apply_train_config(args, argv)
        if args.command in ("models", "recipes"):  # their listing is their output, printed
            return handler(args)
        with console_logging(getattr(args, "log_level", None) or "info"):
            return handler(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError, FloatingPointError) as err:
        if os.environ.get("FFKIT_DEBUG"):
            raise
        print(f"ffkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", None) or signal.SIGINT  # a TrainingInterrupted names its signal
        print(f"\nffkit {args.command}: {_interrupted(args, err)}", file=sys.stderr)
        return 128 + signum
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (batch schedulers, kill) ends a command with a message instead of silently; inside training the
    trainer takes it over and stops at a step boundary with a checkpoint (:mod:`ffkit.train.interrupt`)."""
    from .train.interrupt import TrainingInterrupted, signal_name

    raise TrainingInterrupted(signal_name(signum), signum=signum, checkpoint=None)


def _interrupted(args: argparse.Namespace, err: KeyboardInterrupt) -> str:
    """What an interruption saved, and how to go on."""
    what = "interrupted (Ctrl-C)"
    signum = getattr(err, "signum", None)  # a TrainingInterrupted's; a plain Ctrl-C has none
    if signum is not None:
        from .train.interrupt import signal_name

        if getattr(err, "checkpoint", None) is not None:
            return f"{err}; resume with the same command and --resume"
        what = signal_name(signum)
    ckpt = getattr(args, "run_checkpoint", None)
    if ckpt is not None and Path(ckpt).is_file():
        return (f"{what}: nothing was saved by this interruption; the last checkpoint, {ckpt}, resumes with the same "
                f"command and --resume")
    return f"{what}: stopped before any checkpoint was written; there is nothing to resume"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
