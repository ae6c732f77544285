"""Model registry: builders are plain keyword-only functions registered by name (as timm and torchvision do)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from ..network import FFNetwork

__all__ = ["register_model", "list_models", "create_model", "get_model_builder"]

_MODELS: dict[str, Callable[..., FFNetwork]] = {}


def register_model(fn: Callable[..., FFNetwork]) -> Callable[..., FFNetwork]:
    """Register a builder under its function name; a duplicate name raises ``ValueError``.

    The wrapped builder records its name and keyword arguments on the network (``model_name``, ``model_kwargs``),
    which checkpoints use to rebuild it.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    sig = inspect.signature(fn)
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional:
        raise TypeError(f"model builder {name!r} must take keyword-only arguments, got positional {positional}")

    @functools.wraps(fn)
    def builder(**kwargs: Any) -> FFNetwork:
        try:
            bound = sig.bind(**kwargs)
        except TypeError as e:
            valid = ", ".join(sig.parameters)
            raise TypeError(f"{name}(): {e}; valid arguments: {valid}") from None
        bound.apply_defaults()
        net = fn(**bound.arguments)
        net.model_name = name
        net.model_kwargs = dict(bound.arguments)
        return net

    _MODELS[name] = builder
    return builder


def list_models() -> list[str]:
    """Names of every registered model builder, sorted."""
    return sorted(_MODELS)


def get_model_builder(name: str) -> Callable[..., FFNetwork]:
    """The builder registered as ``name``; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any) -> FFNetwork:
    """Build a registered model by name, e.g. ``create_model("deeperforward_tinycnn", num_classes=10)``."""
    return get_model_builder(name)(**kwargs)
