"""Label encoders for networks that take the label as part of their input (Hinton's FF, The Trifecta)."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_int, check_labels, check_tensor

__all__ = ["LabelOverlay", "LabelChannel"]


class LabelOverlay(nn.Module):
    """Hinton's label overlay: ``num_classes`` pixels of the flattened input become a one-hot label.

    ``y=None`` writes the neutral label (``on_value / num_classes`` in every label pixel), used by softmax-head
    prediction.

    Args:
        num_classes: ``K``; the input must have at least ``K`` elements per sample.
        on_value: the value written at the label's position (Hinton uses the image's maximum, 1.0 for [0, 1] data);
            the other label pixels become 0.
        position: ``"first"`` (the first ``K`` elements of the flattened input: Hinton's top-left border pixels) or
            ``"last"`` (the last ``K``: where Pipeline-FF's released code writes the label).

    Shape:
        ``x [B, ...], y [B] -> [B, ...]`` (same shape as ``x``).
    """

    def __init__(self, num_classes: int, on_value: float = 1.0, position: str = "first") -> None:
        super().__init__()
        check_int(num_classes, "num_classes", minimum=2)
        if position not in ("first", "last"):
            raise ValueError(f"position must be 'first' or 'last', got {position!r}")
        self.num_classes = num_classes
        self.on_value = float(on_value)
        self.position = position

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        flat = x.reshape(x.shape[0], -1).clone()
        if flat.shape[1] < self.num_classes:
            raise ValueError(f"x has {flat.shape[1]} elements per sample, fewer than num_classes={self.num_classes}")
        first = 0 if self.position == "first" else flat.shape[1] - self.num_classes
        label = flat[:, first : first + self.num_classes]  # a view: writing it writes flat
        if y is None:
            label.fill_(self.on_value / self.num_classes)
        else:
            check_labels(y, self.num_classes, "y", batch_size=x.shape[0])
            label.zero_()
            label[torch.arange(x.shape[0], device=x.device), y] = self.on_value
        return flat.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, on_value={self.on_value}, position={self.position!r}"


class LabelChannel(nn.Module):
    """The Trifecta's label channel: ``onehot(y) @ M`` reshaped to ``[B, 1, H, W]`` and appended to the input.

    ``M`` is a ``num_classes x (H*W)`` matrix, fixed random (a buffer, reproducible from ``seed``) or learned
    (a parameter; ffkit trains it with the first layer). ``y=None`` appends the mean row (a neutral label).

    Args:
        num_classes: ``K``.
        height: image height ``H``.
        width: image width ``W``.
        learned: make ``M`` a learnable parameter.
        seed: seed of the random initial ``M``.

    Shape:
        ``x [B, C, H, W], y [B] -> [B, C + 1, H, W]``.
    """

    def __init__(self, num_classes: int, height: int, width: int, *, learned: bool = False, seed: int = 0) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("height", height), ("width", width)):
            check_int(v, name, minimum=1)
        self.num_classes, self.height, self.width = num_classes, height, width
        self.learned = learned
        gen = torch.Generator().manual_seed(seed)
        matrix = torch.randn(num_classes, height * width, generator=gen)
        if learned:
            self.matrix = nn.Parameter(matrix)
        else:
            self.register_buffer("matrix", matrix)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        check_tensor(x, "x", min_dim=4)
        if x.dim() != 4 or x.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"LabelChannel expects x of shape [B, C, {self.height}, {self.width}], got {tuple(x.shape)}"
            )
        if y is None:
            plane = self.matrix.mean(dim=0).expand(x.shape[0], -1)
        else:
            check_labels(y, self.num_classes, "y", batch_size=x.shape[0])
            plane = self.matrix[y]
        return torch.cat([x, plane.reshape(x.shape[0], 1, self.height, self.width).to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, size=({self.height}, {self.width}), learned={self.learned}"
