"""Negative labels for positive/negative training: the image with a wrong label is a negative sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._validation import check_int, check_labels

if TYPE_CHECKING:  # pragma: no cover
    from ..network import FFNetwork

__all__ = ["NegativeLabels", "RandomNegative", "FixedNegative", "AdaptiveNegative", "get_negatives"]


class NegativeLabels:
    """Chooses one wrong label per sample. Call as ``sampler(y, x=..., network=..., index=...) -> [B]``."""

    def __init__(self, num_classes: int) -> None:
        check_int(num_classes, "num_classes", minimum=2)
        self.num_classes = num_classes

    def __call__(
        self,
        y: torch.Tensor,
        *,
        x: torch.Tensor | None = None,
        network: FFNetwork | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"


class RandomNegative(NegativeLabels):
    """A uniformly drawn wrong label, drawn anew each time it is called (Hinton's and Pipeline-FF's RandomNEG).

    A trainer calls it once per batch it prepares, so a sample gets a new wrong label each time it comes round, and
    every layer trained on that batch sees the same one. Pipeline-FF's release draws one wrong label per training
    sample before training and redraws them all after every chapter, so with its one epoch per chapter each sample
    gets one wrong label per epoch, shared by every layer: :class:`~ffkit.train.ChapterTrainer` with one pass over the
    data per chapter (it prepares each batch once per chapter) draws exactly so.

    Args:
        num_classes: ``K``.
        generator: optional ``torch.Generator`` for reproducible draws (else the global RNG).
    """

    def __init__(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes)
        self.generator = generator

    def __call__(self, y, *, x=None, network=None, index=None):
        check_labels(y, self.num_classes, "y")
        offset = torch.randint(1, self.num_classes, y.shape, generator=self.generator).to(y.device)
        return (y + offset) % self.num_classes


class FixedNegative(NegativeLabels):
    """The same wrong label for a sample every epoch (Pipeline-FF's FixedNEG).

    The wrong label is a fixed hash of the sample's dataset index, so it needs no table and survives resuming:
    ``y_neg = (y + 1 + (index * 2654435761 + seed) mod (K - 1)) mod K``.
    """

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        super().__init__(num_classes)
        self.seed = int(seed)

    def __call__(self, y, *, x=None, network=None, index=None):
        check_labels(y, self.num_classes, "y")
        if index is None:
            raise ValueError(
                "FixedNegative needs each sample's dataset index (index=...) to keep its wrong label fixed across "
                "epochs: train with a loader that yields (x, y, index) batches (Trainer.train_epoch passes the third "
                "item on as index). The loaders of 'ffkit train' yield (x, y) only, so negatives='fixed' (FixedNEG) "
                "cannot be trained through the CLI; use negatives='random' or 'adaptive' there, or train from Python "
                "on a dataset that also returns each sample's index"
            )
        offset = 1 + (index.to(torch.int64) * 2654435761 + self.seed) % (self.num_classes - 1)
        return (y + offset.to(y.device)) % self.num_classes


class AdaptiveNegative(NegativeLabels):
    """The hardest wrong label under the current model (Pipeline-FF's AdaptiveNEG; Hinton 2022, Sec. 3.3).

    The network scores every label with its own prediction (no gradient, eval mode): its classifier head's logits if
    it predicts with one (``head_predicts``), else the goodness summed over its inference range. The true label is
    masked out and the best-scoring wrong label is taken, as Pipeline-FF's release does (``sample=True`` draws from
    the softmax over wrong labels instead, as Hinton's paper describes).

    The labels are chosen when a batch is prepared, with the network as it is then. Pipeline-FF's release chooses
    them for the whole training set after every chapter (the first chapter's are drawn at random), so
    :class:`~ffkit.train.ChapterTrainer`, which prepares a chapter's batches before training it, reproduces it.
    """

    def __init__(self, num_classes: int, *, sample: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes)
        self.sample = sample
        self.generator = generator

    def __call__(self, y, *, x=None, network=None, index=None):
        check_labels(y, self.num_classes, "y")
        if x is None or network is None:
            raise ValueError("AdaptiveNegative needs the inputs x and the network to score every label")
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                scores = network(x).float()  # the network's own prediction: its head's logits or summed goodness
        finally:
            network.train(was_training)
        scores = scores.scatter(1, y.view(-1, 1), float("-inf"))
        if self.sample:
            probs = torch.softmax(scores, dim=1)
            return torch.multinomial(probs.cpu(), 1, generator=self.generator).view(-1).to(y.device)
        return scores.argmax(dim=1)


_NEGATIVES = {"random": RandomNegative, "fixed": FixedNegative, "adaptive": AdaptiveNegative}


def get_negatives(name: str, num_classes: int) -> NegativeLabels:
    """Build a negative-label sampler by name: ``"random"``, ``"fixed"`` or ``"adaptive"``."""
    try:
        cls = _NEGATIVES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown negatives {name!r}; expected one of {sorted(_NEGATIVES)}") from None
    return cls(num_classes)
