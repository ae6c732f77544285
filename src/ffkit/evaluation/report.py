"""One evaluation report: every read-out the CLI prints, from a single collection of scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .metrics import correct, last_k_accuracy, layer_accuracies, mean_goodness, range_accuracy, range_accuracy_grid

__all__ = ["EvalReport", "make_report"]


@dataclass(frozen=True)
class EvalReport:
    """Test-time accuracies (fractions in [0, 1]).

    Attributes:
        per_layer: each layer's own accuracy.
        all_layers: accuracy of the scores summed over every layer (one-pass prediction).
        last3: accuracy of the last three layers' summed scores (The Trifecta's read-out).
        sip: accuracy of the SIP-selected range, if one was given.
        sip_range: that range ``(start, end)``, 0-based inclusive.
        num_samples: how many samples were evaluated.
        head: accuracy of the network's classifier head, if it has one.
        goodness_pos: each layer's mean goodness of positive data: its score of the true label, averaged over the
            samples (:func:`~ffkit.evaluation.mean_goodness`).
        goodness_neg: each layer's mean goodness of negative data: its mean score of the wrong labels.
        dead_ratio: each layer's fraction of deactivated units, zero for every input of the evaluation (DeeperForward
            Appendix I; :class:`~ffkit.evaluation.ActivityMonitor`); ``None`` where not measured.
        sip_grid: SIP's accuracy grid, ``sip_grid[start][end]`` the accuracy of layers ``start..end``'s summed scores
            (``None`` below the diagonal; :func:`~ffkit.evaluation.range_accuracy_grid`).
        prediction: accuracy of what the network predicts (``FFNetwork.forward``): the layers of
            ``prediction_range`` summed, or the classifier head when ``prediction_range`` is ``None``. This is the
            paper's read-out of a recipe (the SIP range when SIP ran).
        prediction_range: the layers the network predicts with ``(start, end)``, or ``None`` when its head does.

    The last six are ``None`` in reports built by older ffkit versions.
    """

    per_layer: list[float]
    all_layers: float
    last3: float
    sip: float | None
    sip_range: tuple[int, int] | None
    num_samples: int
    head: float | None = None
    goodness_pos: list[float] | None = None
    goodness_neg: list[float] | None = None
    dead_ratio: list[float | None] | None = None
    sip_grid: list[list[float | None]] | None = None
    prediction: float | None = None
    prediction_range: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def make_report(
    scores: torch.Tensor,
    labels: torch.Tensor,
    sip_range: tuple[int, int] | None = None,
    head_scores: torch.Tensor | None = None,
    dead_ratio: Sequence[float | None] | None = None,
    prediction_range: tuple[int, int] | None = None,
    head_predicts: bool = False,
) -> EvalReport:
    """Build an :class:`EvalReport` from per-layer scores ``[L, N, K]``, labels ``[N]`` and head logits ``[N, K]``.

    ``dead_ratio`` (one entry per layer, e.g. :attr:`CollectedScores.dead_ratio`) is passed through; the goodness of
    positive and negative data and SIP's grid are computed from ``scores``. ``prediction_range`` (the network's
    inference range) or ``head_predicts`` (with ``head_scores``) give :attr:`EvalReport.prediction`.
    """
    n_layers = scores.shape[0]
    head = correct(head_scores, labels).double().mean().item() if head_scores is not None else None
    if head_predicts and head is None:
        raise ValueError("head_predicts=True needs head_scores")
    prediction: float | None = None
    if head_predicts:
        prediction, prediction_range = head, None
    elif prediction_range is not None:
        prediction = range_accuracy(scores, labels, *prediction_range)
    goodness_pos, goodness_neg = mean_goodness(scores, labels)
    grid = range_accuracy_grid(scores, labels)
    return EvalReport(
        per_layer=layer_accuracies(scores, labels),
        all_layers=range_accuracy(scores, labels, 0, n_layers - 1),
        last3=last_k_accuracy(scores, labels, min(3, n_layers)),
        sip=range_accuracy(scores, labels, *sip_range) if sip_range is not None else None,
        sip_range=(sip_range[0], sip_range[1]) if sip_range is not None else None,
        num_samples=int(labels.shape[0]),
        head=head,
        goodness_pos=goodness_pos,
        goodness_neg=goodness_neg,
        dead_ratio=list(dead_ratio) if dead_ratio is not None else None,
        # JSON-friendly: None (null) below the diagonal instead of NaN
        sip_grid=[[v if j >= i else None for j, v in enumerate(row)] for i, row in enumerate(grid.tolist())],
        prediction=prediction,
        prediction_range=(prediction_range[0], prediction_range[1]) if prediction_range is not None else None,
    )
