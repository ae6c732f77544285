"""Model builders, registered by name: ``list_models()``, ``create_model(name, **kwargs)``.

One module per family; importing it registers its builders.
"""

from . import baselines, cwcomp, deeperforward, dtg, mlp, trifecta
from ._registry import create_model, get_model_builder, list_models, model_kind, register_model
from .baselines import *  # noqa: F403
from .cwcomp import *  # noqa: F403
from .deeperforward import *  # noqa: F403
from .dtg import *  # noqa: F403
from .mlp import *  # noqa: F403
from .trifecta import *  # noqa: F403

__all__ = [
    "register_model",
    "list_models",
    "create_model",
    "get_model_builder",
    "model_kind",
    *baselines.__all__,
    *cwcomp.__all__,
    *deeperforward.__all__,
    *dtg.__all__,
    *mlp.__all__,
    *trifecta.__all__,
]
