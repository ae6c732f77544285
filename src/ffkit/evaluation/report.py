"""One evaluation report: every read-out the CLI prints, from a single collection of scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .metrics import last_k_accuracy, layer_accuracies, range_accuracy

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
    """

    per_layer: list[float]
    all_layers: float
    last3: float
    sip: float | None
    sip_range: tuple[int, int] | None
    num_samples: int
    head: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def make_report(
    scores: torch.Tensor,
    labels: torch.Tensor,
    sip_range: tuple[int, int] | None = None,
    head_scores: torch.Tensor | None = None,
) -> EvalReport:
    """Build an :class:`EvalReport` from per-layer scores ``[L, N, K]``, labels ``[N]`` and head logits ``[N, K]``."""
    n_layers = scores.shape[0]
    return EvalReport(
        per_layer=layer_accuracies(scores, labels),
        all_layers=range_accuracy(scores, labels, 0, n_layers - 1),
        last3=last_k_accuracy(scores, labels, min(3, n_layers)),
        sip=range_accuracy(scores, labels, *sip_range) if sip_range is not None else None,
        sip_range=tuple(sip_range) if sip_range is not None else None,
        num_samples=int(labels.shape[0]),
        head=(head_scores.argmax(dim=1) == labels).double().mean().item() if head_scores is not None else None,
    )
