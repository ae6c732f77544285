"""A negative-label sampler for reference tests: the same preset wrong labels on ffkit's side and the restatement's."""

from __future__ import annotations

import torch

from ffkit.objectives import NegativeLabels


class TableNegatives(NegativeLabels):
    """``table[index]``: the wrong label drawn in advance for each sample index."""

    def __init__(self, table: torch.Tensor, num_classes: int) -> None:
        super().__init__(num_classes)
        self.table = table

    def __call__(self, y, *, x=None, network=None, index=None):
        return self.table[index]
