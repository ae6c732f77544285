"""Model builders, registered by name: ``list_models()``, ``create_model(name, **kwargs)``."""

from . import deeperforward  # noqa: F401  (registers the builders)
from ._registry import create_model, get_model_builder, list_models, register_model
from .deeperforward import deeperforward_cnn14, deeperforward_resnet17, deeperforward_tinycnn

__all__ = [
    "register_model",
    "list_models",
    "create_model",
    "get_model_builder",
    "deeperforward_tinycnn",
    "deeperforward_cnn14",
    "deeperforward_resnet17",
]
