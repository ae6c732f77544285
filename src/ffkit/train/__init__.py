"""Training engines."""

from .backprop import BackpropTrainer
from .base import DivergenceError, StepResult, Trainer, check_same_model
from .chapters import ChapterTrainer
from .checkpoint import load_checkpoint, save_checkpoint
from .factory import build_trainer
from .federated import FederatedTrainer, shard_loader
from .interrupt import TrainingInterrupted
from .local import LocalTrainer
from .pipeline import PipelineError, PipelineTrainer, init_distributed

__all__ = [
    "Trainer",
    "LocalTrainer",
    "BackpropTrainer",
    "StepResult",
    "DivergenceError",
    "TrainingInterrupted",
    "save_checkpoint",
    "load_checkpoint",
    "check_same_model",
    "PipelineTrainer",
    "PipelineError",
    "init_distributed",
    "FederatedTrainer",
    "shard_loader",
    "ChapterTrainer",
    "build_trainer",
]
