"""Collecting every layer's class scores over a dataset, once, so that all read-outs share one pass."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..network import FFNetwork

__all__ = ["collect_scores"]


@torch.no_grad()
def collect_scores(
    network: FFNetwork,
    batches: Iterable,
    device: torch.device | str = "cpu",
    *,
    end: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network in eval mode over ``batches`` and keep every layer's scores.

    For channel-wise networks this is one pass per batch; for label-input networks one pass per label.

    Args:
        network: the network.
        batches: an iterable of ``(x, y)`` or ``(x, y, index)`` batches (e.g. a ``DataLoader``).
        device: where to run.
        end: last layer to run (``None``: all).

    Returns:
        ``(scores [L, N, K] float32 on CPU, labels [N] int64 on CPU)``.
    """
    was_training = network.training
    network.eval()
    all_scores, all_labels = [], []
    try:
        for batch in batches:
            x, y = batch[0].to(device, non_blocking=True), batch[1]
            all_scores.append(network.layer_scores(x, end=end).float().cpu())
            all_labels.append(torch.as_tensor(y).cpu())
    finally:
        network.train(was_training)
    if not all_scores:
        raise ValueError("no batches to evaluate: the evaluation dataset is empty")
    return torch.cat(all_scores, dim=1), torch.cat(all_labels).long()
