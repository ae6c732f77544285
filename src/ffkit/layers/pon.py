"""The layer of Pipeline Forward-Forward's Performance-Optimized Network (PON; Aktemur et al.): a fully-connected
layer trained by its own softmax head, with no negative data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_int
from .base import FFLayer, LayerOutput

__all__ = ["PONLinear"]


class PONLinear(FFLayer):
    """Fully-connected layer with its own linear softmax head: ``h = ReLU(W x / |x| + b)``, scores ``= head(h)``.

    The input is divided by its L2 length, as in Hinton's FF layer (:class:`~ffkit.layers.FFLinear`), so only the
    direction of the previous layer's activity is passed on. The class scores are the head's logits; a local
    cross-entropy on them (:class:`~ffkit.objectives.ClassScoreObjective`) back-propagates through ``h`` into the
    layer's own weights -- that is how PON trains a layer, with no positive/negative data. The next layer receives
    ``h`` (detached by the network).

    Args:
        in_features: input size ``D_in`` (images are flattened).
        out_features: number of units ``D``.
        num_classes: ``K``, outputs of the layer's softmax head.
        eps: added to the input length to avoid dividing by zero.

    Shape:
        ``x [B, D_in] or [B, C, H, W] -> LayerOutput(features h [B, D], scores [B, K])``.
    """

    num_classes: int

    def __init__(self, in_features: int, out_features: int, num_classes: int, *, eps: float = 1e-8) -> None:
        super().__init__()
        check_int(in_features, "in_features", minimum=1)
        check_int(out_features, "out_features", minimum=1)
        check_int(num_classes, "num_classes", minimum=2)
        self.linear = nn.Linear(in_features, out_features)
        self.head = nn.Linear(out_features, num_classes)
        self.num_classes = num_classes
        self.eps = eps

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        x = x.flatten(1)
        if x.shape[1] != self.linear.in_features:
            raise ValueError(f"PONLinear expects {self.linear.in_features} input features, got {x.shape[1]}")
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        h = F.relu(self.linear(x))
        return LayerOutput(features=h, scores=self.head(h))

    def extra_repr(self) -> str:
        return f"in_features={self.linear.in_features}, out_features={self.linear.out_features}, " \
            f"num_classes={self.num_classes}"
