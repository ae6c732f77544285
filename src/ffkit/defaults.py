"""ffkit's defaults, in one place: the training hyper-parameters that a run gets when nothing sets them.

:class:`~ffkit.Recipe`'s fields, ``ffkit train`` (a flag, else the recipe, else these) and the trainers' keyword
arguments all read them from here, so a default is changed once.
"""

from __future__ import annotations

__all__ = ["MODEL", "DATASET", "EPOCHS", "BATCH_SIZE", "LR", "BACKPROP_LR", "WEIGHT_DECAY", "OPTIMIZER", "SCHEDULE"]

MODEL = "deeperforward_tinycnn"
DATASET = "fashion-mnist"
EPOCHS = 1
BATCH_SIZE = 128
#: A local trainer's initial learning rate, chosen for short runs; the papers' recipes set their own (DeeperForward:
#: 0.08 over 150 epochs). Measured on TinyCNN / Fashion-MNIST, 5k images x 3 epochs, test accuracy: lr 0.08 -> 67.6%,
#: 0.02 -> 73.95%, 0.005 -> 75.4% (docs/results.md).
LR = 0.005
#: :class:`~ffkit.BackpropTrainer`'s initial learning rate when it is built in Python without one (Adam's usual).
BACKPROP_LR = 1e-3
WEIGHT_DECAY = 5e-4
OPTIMIZER = "adam"
SCHEDULE = "cosine"
