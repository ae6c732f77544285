"""A dataset view that also yields each sample's index, for samplers that need it (FixedNEG)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

__all__ = ["WithIndex"]


class WithIndex(Dataset):
    """``WithIndex(ds)[i] == (*ds[i], i)``: batches become ``(x, y, index)``, which the trainers pass on to the
    objective (a :class:`~ffkit.objectives.FixedNegative` keeps one wrong label per index)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, y = self.dataset[i]
        return x, y, i
