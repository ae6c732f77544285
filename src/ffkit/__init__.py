"""ffkit: Forward-Forward family networks from one set of parts.

Goodness functions (:mod:`ffkit.goodness`), local losses (:mod:`ffkit.losses`), layers (:mod:`ffkit.layers`),
objectives with their label encoders and negative samplers (:mod:`ffkit.objectives`), datasets (:mod:`ffkit.data`),
evaluation read-outs (:mod:`ffkit.evaluation`), model
builders (:mod:`ffkit.models`) and the :class:`LocalTrainer` engine; :func:`load` gives back a trained network from
its checkpoint, and :mod:`ffkit.device` holds the default device policy (CUDA when available, else the CPU).
"""

from . import goodness, losses
from ._version import __version__
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
