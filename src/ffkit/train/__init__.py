"""Training engines."""

from .checkpoint import load_checkpoint, save_checkpoint
from .local import DivergenceError, LocalTrainer, StepResult, check_same_model

__all__ = ["LocalTrainer", "StepResult", "DivergenceError", "save_checkpoint", "load_checkpoint", "check_same_model"]
