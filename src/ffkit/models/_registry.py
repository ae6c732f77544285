"""Model registry: builders are plain keyword-only functions registered by name (as timm and torchvision do)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .._validation import unknown_model

__all__ = ["register_model", "list_models", "create_model", "get_model_builder", "model_kind"]

_MODELS: dict[str, Callable[..., Any]] = {}
_KINDS: dict[str, str] = {}
KINDS = ("ff", "backprop")


def register_model(fn: Callable[..., Any] | None = None, *, kind: str = "ff"):
    """Register a builder under its function name; a duplicate name raises ``ValueError``.

    Use as ``@register_model`` (a Forward-Forward network, ``kind="ff"``) or ``@register_model(kind="backprop")``
    (a single-head model trained end to end, for baselines). The wrapped builder records its name and keyword
    arguments on the model (``model_name``, ``model_kwargs``), which checkpoints use to rebuild it.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if fn is None:
        return lambda f: register_model(f, kind=kind)
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    sig = inspect.signature(fn)
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional:
        raise TypeError(f"model builder {name!r} must take keyword-only arguments, got positional {positional}")

    @functools.wraps(fn)
    def builder(**kwargs: Any):
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
    _KINDS[name] = kind
    return builder


def list_models(kind: str | None = None) -> list[str]:
    """Names of the registered model builders, sorted; ``kind="ff"`` or ``"backprop"`` to filter."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return sorted(n for n in _MODELS if kind is None or _KINDS[n] == kind)


def model_kind(name: str) -> str:
    """``"ff"`` for Forward-Forward networks, ``"backprop"`` for single-head baselines."""
    get_model_builder(name)
    return _KINDS[name]


def get_model_builder(name: str) -> Callable[..., Any]:
    """The builder registered as ``name``; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise unknown_model(name, list_models()) from None


def create_model(name: str, **kwargs: Any):
    """Build a registered model by name, e.g. ``create_model("deeperforward_tinycnn", num_classes=10)``."""
    return get_model_builder(name)(**kwargs)

