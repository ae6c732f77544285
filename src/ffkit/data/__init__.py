"""Datasets (torchvision), label encoders and negative-label samplers."""

from .datasets import *  # noqa: F403
from .datasets import __all__ as _datasets_all
from .device import DeviceDataset, stored_images
from .indexed import WithIndex
from .labels import LabelChannel, LabelOverlay
from .memory import InMemory
from .negatives import AdaptiveNegative, FixedNegative, NegativeLabels, RandomNegative, get_negatives
from .synthetic import make_teacher, teacher_student, teacher_student_images

__all__ = [
    *_datasets_all,
    "WithIndex",
    "InMemory",
    "DeviceDataset",
    "stored_images",
    "LabelOverlay",
    "LabelChannel",
    "NegativeLabels",
    "RandomNegative",
    "FixedNegative",
    "AdaptiveNegative",
    "get_negatives",
    "make_teacher",
    "teacher_student",
    "teacher_student_images",
]
