"""Datasets (torchvision), in-memory and on-device copies of them, and synthetic data."""

from __future__ import annotations

import warnings
from typing import Any

from .datasets import *  # noqa: F403
from .datasets import __all__ as _datasets_all
from .device import DeviceDataset, stored_images
from .indexed import WithIndex
from .memory import InMemory
from .synthetic import make_teacher, teacher_student, teacher_student_images

__all__ = [
    *_datasets_all,
    "WithIndex",
    "InMemory",
    "DeviceDataset",
    "stored_images",
    "make_teacher",
    "teacher_student",
    "teacher_student_images",
]

# Label encoders and negative samplers belong to the positive/negative objective; they moved to ffkit.objectives
# after 0.1.0 (ffkit exports them too). The old names keep working for a while, with a warning.
_MOVED = ("LabelOverlay", "LabelChannel", "NegativeLabels", "RandomNegative", "FixedNegative", "AdaptiveNegative",
          "get_negatives")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"ffkit.data.{name} moved to ffkit.objectives.{name}; the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        from .. import objectives

        return getattr(objectives, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
