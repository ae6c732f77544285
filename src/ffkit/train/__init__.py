"""Training engines."""

from .backprop import BackpropTrainer
from .base import DivergenceError, StepResult, Trainer, check_same_model
from .chapters import ChapterTrainer
from .checkpoint import load_checkpoint, save_checkpoint
from .data_parallel import DataParallelTrainer
from .factory import build_trainer
from .federated import FederatedTrainer
from .interrupt import TrainingInterrupted
from .local import LocalTrainer
from .pipeline import PipelineError, PipelineTrainer, init_distributed
from .replicated import shard_loader
from .sync_batchnorm import SyncBatchNorm, sync_batchnorm

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
    "DataParallelTrainer",
    "shard_loader",
    "sync_batchnorm",
    "SyncBatchNorm",
    "ChapterTrainer",
    "build_trainer",
]
