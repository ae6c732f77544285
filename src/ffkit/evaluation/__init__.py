"""Evaluation: per-layer scores, read-outs (per layer, range, last k) and SIP layer selection."""

from .activity import ActivityMonitor, dead_unit_ratio
from .metrics import last_k_accuracy, layer_accuracies, mean_goodness, range_accuracy, range_accuracy_grid
from .report import EvalReport, make_report
from .scores import TTA_MODES, CollectedScores, check_tta, collect_scores
from .sip import SIPResult, select_layers

__all__ = [
    "collect_scores",
    "CollectedScores",
    "TTA_MODES",
    "check_tta",
    "layer_accuracies",
    "range_accuracy",
    "last_k_accuracy",
    "range_accuracy_grid",
    "mean_goodness",
    "ActivityMonitor",
    "dead_unit_ratio",
    "SIPResult",
    "select_layers",
    "EvalReport",
    "make_report",
]
