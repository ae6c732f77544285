"""Collecting every layer's class scores over a dataset, once, so that all read-outs share one pass."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch

from .activity import ActivityMonitor

__all__ = ["CollectedScores", "collect_scores", "TTA_MODES", "check_tta"]

TTA_MODES: tuple[str, ...] = ("flip",)
"""Test-time augmentations of :func:`collect_scores`: ``"flip"`` averages the scores of each image and of its
horizontal mirror image (the views that ``augment="crop-flip"`` trains on)."""


def check_tta(tta: object, name: str = "tta") -> str | None:
    """``tta`` if it is ``None`` or one of :data:`TTA_MODES`; else a ``ValueError`` naming ``name``."""
    if tta is not None and tta not in TTA_MODES:
        raise ValueError(f"{name} must be None or one of {TTA_MODES}, got {tta!r}")
    return tta


class CollectedScores(NamedTuple):
    """Scores of a whole dataset, on the CPU.

    Attributes:
        layers: every layer's class scores ``[L, N, K]`` (float32).
        labels: the true labels ``[N]`` (int64).
        head: the classifier head's logits ``[N, K]``, or ``None`` when the network has no head.
        dead_ratio: each layer's fraction of deactivated units over the pass (:class:`ActivityMonitor`), when
            ``collect_scores(..., track_activity=True)``; else ``None``.
    """

    layers: torch.Tensor
    labels: torch.Tensor
    head: torch.Tensor | None
    dead_ratio: list[float | None] | None = None
    #: each layer's per-unit peak activity (:attr:`ActivityMonitor.peaks`), so passes over parts of a dataset (on
    #: several ranks) can be combined exactly: the elementwise maximum, then :meth:`ActivityMonitor.ratios_of`
    peaks: list[torch.Tensor | None] | None = None


@torch.no_grad()
def collect_scores(
    network,
    batches: Iterable,
    device: torch.device | str = "cpu",
    *,
    with_head: bool = True,
    track_activity: bool = False,
    channels_last: bool = False,
    amp: bool = False,
    tta: str | None = None,
    progress: bool = False,
    desc: str = "evaluate",
) -> CollectedScores:
    """Run the network in eval mode over ``batches`` and keep every layer's scores (and the head's logits).

    For channel-wise networks this is one pass per batch; for label-input networks one pass per label.

    Args:
        network: an :class:`~ffkit.FFNetwork` (or any module with ``scores(x)`` / ``layer_scores(x)``).
        batches: an iterable of ``(x, y)`` or ``(x, y, index)`` batches (e.g. a ``DataLoader``).
        device: where to run.
        with_head: also compute the classifier head's logits, if the network has a head.
        track_activity: also measure each layer's deactivated-unit ratio in the same pass (forward hooks; see
            :class:`~ffkit.evaluation.ActivityMonitor`).
        channels_last: feed ``[B, C, H, W]`` batches in the channels-last memory format (as a trainer with
            ``channels_last=True`` trains; a network converted to it runs its convs fastest on such inputs).
        amp: bf16 autocast on ``device``, as a trainer with ``amp=True`` trains (the scores are returned as float32).
        tta: test-time augmentation: ``None``, or ``"flip"``: every layer's scores (and the head's logits) are the
            mean over each image ``[B, C, H, W]`` and its mirror image ``x.flip(-1)`` (two forward passes per batch).
        progress: show a progress bar (with an estimate of the time left) labelled ``desc``: on a CPU an evaluation
            pass over 10,000 images takes a minute or more, which would otherwise pass without output.
        desc: the progress bar's label.
    """
    check_tta(tta)
    was_training = network.training
    network.eval()
    layers, labels, heads = [], [], []
    use_head = with_head and getattr(network, "head", None) is not None
    monitor = ActivityMonitor(network) if track_activity else None
    try:
        if monitor is not None:
            monitor.__enter__()
        if progress:
            from tqdm.auto import tqdm

            n = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
            batches = tqdm(batches, desc=desc, total=n, leave=False, dynamic_ncols=True)
        for batch in batches:
            x, y = batch[0].to(device, non_blocking=True), batch[1]
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if tta is not None and x.dim() != 4:
                raise ValueError(f"tta={tta!r} mirrors images [B, C, H, W], got a batch of shape {tuple(x.shape)}")
            views: tuple[torch.Tensor, ...] = (x,)
            if tta == "flip":
                mirror = x.flip(-1)
                views = (x, mirror.contiguous(memory_format=torch.channels_last) if channels_last else mirror)
            s_sum = h_sum = None
            for view in views:
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
                    if use_head:
                        s, h = network.scores(view)
                        h_sum = h.float() if h_sum is None else h_sum + h.float()
                    else:
                        s = network.layer_scores(view)
                s_sum = s.float() if s_sum is None else s_sum + s.float()
            assert s_sum is not None
            if h_sum is not None:
                heads.append((h_sum / len(views)).cpu())
            layers.append((s_sum / len(views)).cpu())
            labels.append(torch.as_tensor(y).cpu())
    finally:
        if monitor is not None:
            monitor.__exit__(None, None, None)
        network.train(was_training)
    if not layers:
        raise ValueError("no batches to evaluate: the evaluation dataset is empty")
    return CollectedScores(
        torch.cat(layers, dim=1), torch.cat(labels).long(), torch.cat(heads) if heads else None,
        monitor.dead_ratios() if monitor is not None else None,
        monitor.peaks if monitor is not None else None,
    )
