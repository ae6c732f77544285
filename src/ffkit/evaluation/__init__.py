"""Evaluation: per-layer scores, read-outs (per layer, range, last k) and SIP layer selection."""

from .metrics import last_k_accuracy, layer_accuracies, range_accuracy
from .report import EvalReport, make_report
from .scores import CollectedScores, collect_scores
from .sip import SIPResult, select_layers

__all__ = [
    "collect_scores",
    "CollectedScores",
    "layer_accuracies",
    "range_accuracy",
    "last_k_accuracy",
    "SIPResult",
    "select_layers",
    "EvalReport",
    "make_report",
]
