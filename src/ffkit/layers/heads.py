"""Classifier heads on the features of chosen layers.

DTG-FF's classifier path (global average pool per layer, concatenate layers 2..L, BatchNorm1d, dropout, linear,
label smoothing) and Hinton's softmax head (a linear softmax layer on the activities of a neutral-label pass) are both
a :class:`ClassifierHead`. By default its inputs are detached, so it never changes what the FF layers learn. A
*hybrid* head (``hybrid=True``, the released DTG MLP's classifier) sends its cross-entropy back into the layers it
reads, where it adds to their own FF losses' gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_bool, check_int
from .linear import rms_normalize

__all__ = ["ClassifierHead"]

#: Added to the root mean square of ``input_norm="rms"`` (loeweX's ``_layer_norm``).
RMS_EPS = 1e-8


class ClassifierHead(nn.Module):
    """``concat_l pool(features_l) -> [BatchNorm1d] -> [dropout] -> linear -> logits``.

    Args:
        in_features: size of the concatenated pooled features (sum over ``layers``).
        num_classes: ``K``.
        layers: 0-based indices of the layers whose features the head reads.
        pool: ``"avg"`` (global average pool of ``[B, C, H, W]`` to ``[B, C]``) or ``"flatten"``.
        batchnorm: BatchNorm1d before the linear layer (DTG-FF).
        dropout: dropout before the linear layer.
        label_smoothing: label smoothing of the head's cross-entropy.
        bias: whether the linear layer has a bias (Pipeline-FF's released softmax layer has none).
        input_norm: ``None`` or ``"rms"``: each layer's pooled features are divided by their root mean square (plus
            ``1e-8``) before they are concatenated (loeweX's softmax layer reads the normalised activities that the
            next FF layer would receive).
        zero_init: start the linear layer's weights at zero (loeweX); else PyTorch's initialisation.
        pre_update: a head on its own (neutral-label) pass trains, in each step, on the layers as they were before
            that step's update, so it and the layers step together (loeweX computes every loss in one forward pass,
            then takes one optimizer step). Default: on the layers as the step's update left them (Pipeline-FF).
        hybrid: the head's loss reaches the layers it reads (not detached): each of those layers, and every layer
            before them, gets the gradient of the head's cross-entropy added to that of its own loss before its
            optimizer step (the released DTG MLP adds its classifier's cross-entropy to the FF losses). The head then
            reads its own pass through the layers with gradients kept, so only heads on a separate (neutral-label)
            pass can be hybrid under :class:`~ffkit.LocalTrainer`.

    Shape:
        ``forward([f_l for l in layers]) -> [B, K]``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        layers: Sequence[int],
        *,
        pool: str = "avg",
        batchnorm: bool = False,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        bias: bool = True,
        hybrid: bool = False,
        input_norm: str | None = None,
        zero_init: bool = False,
        pre_update: bool = False,
    ) -> None:
        super().__init__()
        check_int(in_features, "in_features", minimum=1)
        check_int(num_classes, "num_classes", minimum=1)
        if not layers:
            raise ValueError("layers must name at least one layer")
        if pool not in ("avg", "flatten"):
            raise ValueError(f"pool must be 'avg' or 'flatten', got {pool!r}")
        self.layers = tuple(int(i) for i in layers)
        self.pool = pool
        self.label_smoothing = label_smoothing
        self.norm = nn.BatchNorm1d(in_features) if batchnorm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        check_bool(bias, "bias")
        self.linear = nn.Linear(in_features, num_classes, bias=bias)
        check_bool(hybrid, "hybrid")
        self.hybrid = hybrid
        if input_norm not in (None, "rms"):
            raise ValueError(f"input_norm must be None or 'rms', got {input_norm!r}")
        self.input_norm = input_norm
        check_bool(zero_init, "zero_init")
        if zero_init:
            nn.init.zeros_(self.linear.weight)
        check_bool(pre_update, "pre_update")
        self.pre_update = pre_update

    def pooled(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pool and concatenate: ``[B, sum_l C_l]``."""
        parts = []
        for f in features:
            if self.pool == "avg" and f.dim() > 2:
                parts.append(f.mean(dim=tuple(range(2, f.dim()))))
            else:
                parts.append(f.flatten(1))
        if self.input_norm == "rms":
            parts = [rms_normalize(p, RMS_EPS) for p in parts]
        z = torch.cat(parts, dim=1)
        if z.shape[1] != self.linear.in_features:
            raise ValueError(f"head expects {self.linear.in_features} pooled features, got {z.shape[1]}")
        return z

    @property
    def min_batch_size(self) -> int:
        """The smallest training batch the head accepts: 2 with BatchNorm1d (it needs a batch variance), else 1."""
        return 2 if isinstance(self.norm, nn.modules.batchnorm._BatchNorm) else 1  # a SyncBatchNorm too

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        z = self.pooled(features)
        if self.training and z.shape[0] < self.min_batch_size:
            # torch's own error ("Expected more than 1 value per channel when training") names neither the head nor
            # the usual cause: a last, partial batch of one sample.
            raise ValueError(
                f"the classifier head's BatchNorm1d needs at least {self.min_batch_size} samples per training batch, "
                f"got a batch of {z.shape[0]}: use a batch size >= 2 and DataLoader(drop_last=True) (or a dataset "
                f"size that leaves no last batch of 1)"
            )
        return self.linear(self.dropout(self.norm(z)))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        hybrid = ", hybrid=True" if self.hybrid else ""
        norm = f", input_norm={self.input_norm!r}" if self.input_norm else ""
        return f"layers={list(self.layers)}, pool={self.pool!r}, label_smoothing={self.label_smoothing}{norm}{hybrid}"
