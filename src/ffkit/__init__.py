"""ffkit: Forward-Forward family networks from one set of parts.

Goodness functions (:mod:`ffkit.goodness`), local losses (:mod:`ffkit.losses`), layers (:mod:`ffkit.layers`),
objectives with their label encoders and negative samplers (:mod:`ffkit.objectives`), datasets (:mod:`ffkit.data`),
evaluation read-outs (:mod:`ffkit.evaluation`), model
builders (:mod:`ffkit.models`) and the :class:`LocalTrainer` engine; :func:`load` gives back a trained network from
its checkpoint, and :mod:`ffkit.device` holds the default device policy (CUDA when available, else the CPU).

``import ffkit`` itself is cheap: each name is imported from its submodule on first use (``ffkit.FFNetwork``, ``from
ffkit import LocalTrainer``), and torch with it.
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__

# A library leaves logging's configuration to the application: without a handler of its own, ffkit's records (the
# trainers' per-epoch tables under "ffkit.train", at INFO) would reach logging's last-resort handler.
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:  # the real imports, for type checkers and IDEs; at run time __getattr__ imports on first use
    from . import goodness, losses
    from .data import load_dataset
    from .evaluation import EvalReport, SIPResult, collect_scores, select_layers
    from .goodness import DTGTemperature
    from .layers import (
        ClassifierHead,
        CwCompConv,
        CWConv,
        DTGConv,
        DTGLinear,
        FFLayer,
        FFLinear,
        LayerOutput,
        ParamFreeResidual,
        PONLinear,
        TrifectaConv,
        TrifectaLinear,
    )
    from .loading import load
    from .models import create_model, list_models, register_model
    from .network import FFNetwork
    from .objectives import (
        AdaptiveNegative,
        ClassScoreObjective,
        FixedNegative,
        LabelChannel,
        LabelOverlay,
        Objective,
        PosNegObjective,
        RandomNegative,
    )
    from .profiling import SavedTensorMeter
    from .recipes import Recipe, get_recipe, list_recipes
    from .train import (
        BackpropTrainer,
        DivergenceError,
        LocalTrainer,
        PipelineError,
        PipelineTrainer,
        TrainingInterrupted,
        load_checkpoint,
        save_checkpoint,
    )

__all__ = [
    "__version__",
    "goodness",
    "losses",
    "DTGTemperature",
    "FFLayer",
    "LayerOutput",
    "CWConv",
    "CwCompConv",
    "ParamFreeResidual",
    "FFLinear",
    "TrifectaConv",
    "TrifectaLinear",
    "DTGConv",
    "DTGLinear",
    "PONLinear",
    "ClassifierHead",
    "LabelOverlay",
    "LabelChannel",
    "RandomNegative",
    "FixedNegative",
    "AdaptiveNegative",
    "load_dataset",
    "FFNetwork",
    "Objective",
    "ClassScoreObjective",
    "PosNegObjective",
    "LocalTrainer",
    "BackpropTrainer",
    "DivergenceError",
    "TrainingInterrupted",
    "save_checkpoint",
    "load_checkpoint",
    "load",
    "collect_scores",
    "select_layers",
    "SIPResult",
    "EvalReport",
    "create_model",
    "list_models",
    "register_model",
    "Recipe",
    "get_recipe",
    "list_recipes",
    "SavedTensorMeter",
    "PipelineTrainer",
    "PipelineError",
]


#: Where each public name of the package is defined (a submodule of ffkit): ``import ffkit`` is cheap (no torch), and
#: ``ffkit.FFNetwork`` or ``from ffkit import FFNetwork`` imports ``ffkit.network`` (and torch) on first use.
_LAZY: dict[str, str] = {
    "load_dataset": "data",
    **dict.fromkeys(["EvalReport", "SIPResult", "collect_scores", "select_layers"], "evaluation"),
    "DTGTemperature": "goodness",
    **dict.fromkeys(["ClassifierHead", "CwCompConv", "CWConv", "DTGConv", "DTGLinear", "FFLayer", "FFLinear",
                     "LayerOutput", "ParamFreeResidual", "PONLinear", "TrifectaConv", "TrifectaLinear"], "layers"),
    "load": "loading",
    **dict.fromkeys(["create_model", "list_models", "register_model"], "models"),
    "FFNetwork": "network",
    **dict.fromkeys(["AdaptiveNegative", "ClassScoreObjective", "FixedNegative", "LabelChannel", "LabelOverlay",
                     "Objective", "PosNegObjective", "RandomNegative"], "objectives"),
    "SavedTensorMeter": "profiling",
    **dict.fromkeys(["Recipe", "get_recipe", "list_recipes"], "recipes"),
    **dict.fromkeys(["BackpropTrainer", "DivergenceError", "LocalTrainer", "PipelineError", "PipelineTrainer",
                     "TrainingInterrupted", "load_checkpoint", "save_checkpoint"], "train"),
}

#: The submodules reachable as attributes of the package without importing them first (``ffkit.train.X`` after a
#: bare ``import ffkit``), as they were when the package imported everything.
_SUBMODULES = frozenset({"data", "defaults", "device", "evaluation", "goodness", "layers", "loading", "losses",
                         "models", "network", "objectives", "profiling", "recipes", "train"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    # the package's own attributes (__version__, __all__, ...), its public names and submodules; not the helpers
    # this file imports for itself (importlib, logging, typing's names)
    return sorted({*(name for name in globals() if name.startswith("__")), *__all__, *_SUBMODULES})
