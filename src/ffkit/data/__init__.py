"""Datasets (torchvision), label encoders and negative-label samplers."""

from .datasets import *  # noqa: F403
from .datasets import __all__ as _datasets_all
from .labels import LabelChannel, LabelOverlay
from .negatives import AdaptiveNegative, FixedNegative, NegativeLabels, RandomNegative, get_negatives

__all__ = [
    *_datasets_all,
    "LabelOverlay",
    "LabelChannel",
    "NegativeLabels",
    "RandomNegative",
    "FixedNegative",
    "AdaptiveNegative",
    "get_negatives",
]
