"""Fully-connected Forward-Forward networks: Hinton's FF MLP as Pipeline Forward-Forward trains it, and Pipeline-FF's
Performance-Optimized Network (PON).

* :func:`hinton_mlp` -- Hinton, "The Forward-Forward Algorithm" (2022), Sec. 3; Pipeline-FF (Aktemur et al.) uses
  784-2000-2000-2000-2000 on MNIST. The label is overlaid on the first ``K`` input pixels; each layer separates
  positive (true label) from negative (wrong label) inputs with the threshold loss on its sum-of-squares goodness.
* :func:`pon_mlp` -- Pipeline-FF's PON: the same widths, each layer trained by its own softmax head, no negatives.

ffkit's inputs are 32x32 images, so the first layer has ``in_channels * 1024`` inputs (MNIST is resized from 28x28;
784 in the papers).
"""

from __future__ import annotations

from collections.abc import Sequence

from .._validation import check_positive_int
from ..data import LabelOverlay, get_negatives
from ..layers import ClassifierHead, FFLinear, PONLinear
from ..network import FFNetwork
from ..objectives import ClassScoreObjective, PosNegObjective
from ._registry import register_model
from ._widths import scale_width

__all__ = ["hinton_mlp", "pon_mlp"]

IMAGE_PIXELS = 32 * 32


def _check_common(num_classes: int, in_channels: int) -> None:
    check_positive_int(num_classes, "num_classes", minimum=2)
    check_positive_int(in_channels, "in_channels")


def _widths(hidden: Sequence[int], width_multiplier: float, minimum_layers: int) -> list[int]:
    """``hidden`` scaled by ``width_multiplier`` (rounded, at least 1 unit)."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of layer widths, got {type(hidden).__name__}")
    if len(hidden) < minimum_layers:
        raise ValueError(f"hidden must list at least {minimum_layers} layer width(s), got {list(hidden)}")
    for i, w in enumerate(hidden):
        check_positive_int(w, f"hidden[{i}]")
    return [scale_width(w, width_multiplier) for w in hidden]


@register_model
def hinton_mlp(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (2000, 2000, 2000, 2000),
    negatives: str = "random",
    head: bool = False,
    threshold: float = 2.0,
    label_value: float = 1.0,
) -> FFNetwork:
    """Hinton's FF MLP (Pipeline-FF: 784-2000-2000-2000-2000; here ``in_channels * 1024`` inputs).

    Each layer is an :class:`~ffkit.layers.FFLinear` (length-normalised input, linear, ReLU, goodness = sum of
    squares). The label is overlaid on the first ``num_classes`` pixels (:class:`~ffkit.data.LabelOverlay`);
    positives carry the true label, negatives a wrong one from the ``negatives`` sampler. Every layer minimises the
    threshold loss ``softplus(theta - g_pos) + softplus(g_neg - theta)`` (:func:`ffkit.losses.ff_threshold`).

    The default ``theta = 2``: :class:`~ffkit.layers.FFLinear` divides its input by its length, so with PyTorch's
    default init a layer's sum-of-squares goodness starts near ``width / (3 * D_in)`` (about 0.65 for 2000 units on
    1024 inputs) and a threshold of a few units sits just above it. (loeweX's re-implementation instead divides by
    the RMS and uses the layer width; measured on Fashion-MNIST with ffkit's layers, the width learned far worse in
    short runs: 0.48 vs 0.62 first-layer test accuracy after 5 epochs on 12k images with 500-unit layers.)

    Goodness prediction uses all layers but the first (Hinton 2022, Sec. 3.3): ``inference_start=1``, the label
    with the largest goodness summed over layers ``1..L-1`` wins. ``head=True`` adds Hinton's softmax-head
    prediction: a linear softmax layer (:class:`~ffkit.layers.ClassifierHead`, ``pool="flatten"``) on the
    activities of layers ``1..L-1`` of a neutral-label pass (every label pixel ``1/K``), trained on detached
    features, so it never changes what the FF layers learn.

    Args:
        num_classes: ``K``.
        in_channels: image channels; the first layer has ``in_channels * 1024`` inputs.
        width_multiplier: scales every hidden width (rounded).
        hidden: hidden-layer widths; at least two layers (prediction skips the first).
        negatives: ``"random"`` (RandomNEG), ``"fixed"`` (FixedNEG: the same wrong label per sample every epoch;
            the training loader must yield ``(x, y, index)``) or ``"adaptive"`` (AdaptiveNEG: the hardest wrong
            label under the current network), via :func:`ffkit.data.get_negatives`.
        head: add the softmax head.
        threshold: the threshold loss's ``theta``.
        label_value: the value written at the label's pixel (Hinton uses the image's maximum: 1.0 for images in
            ``[0, 1]``; about 4 suits standard-Gaussian inputs such as :func:`ffkit.data.teacher_student_images`).

    Shape:
        ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    widths = _widths(hidden, width_multiplier, minimum_layers=2)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    elif threshold <= 0:
        raise ValueError(f"threshold must be > 0 (goodness is a sum of squares), got {threshold}")
    if isinstance(label_value, bool) or not isinstance(label_value, (int, float)) or label_value <= 0:
        raise ValueError(f"label_value must be a positive number, got {label_value!r}")
    if not isinstance(head, bool):
        raise TypeError(f"head must be a bool, got {type(head).__name__}")
    sizes = [in_channels * IMAGE_PIXELS, *widths]
    layers = [FFLinear(d_in, d_out, goodness="sum") for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    objective = PosNegObjective(
        LabelOverlay(num_classes, on_value=label_value),
        get_negatives(negatives, num_classes),
        loss="threshold",
        threshold=float(threshold),
    )
    classifier = None
    if head:
        read = list(range(1, len(layers)))  # all but the first layer, as for goodness prediction
        classifier = ClassifierHead(sum(widths[i] for i in read), num_classes, read, pool="flatten")
    return FFNetwork(
        layers,
        objective,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=(32, 32),
        head=classifier,
        inference_start=1,
    )


@register_model
def pon_mlp(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (2000, 2000, 2000, 2000),
) -> FFNetwork:
    """Pipeline-FF's Performance-Optimized Network (PON): an MLP whose every layer is trained by its own softmax
    head, with no negative data (:class:`~ffkit.layers.PONLinear`, local cross-entropy via
    :class:`~ffkit.objectives.ClassScoreObjective`). Pipeline-FF: MNIST 98.38, CIFAR-10 53.50.

    The network predicts with the sum of every layer's head logits (SIP can narrow the range after training).

    Args:
        num_classes: ``K``.
        in_channels: image channels; the first layer has ``in_channels * 1024`` inputs.
        width_multiplier: scales every hidden width (rounded).
        hidden: hidden-layer widths.

    Shape:
        ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    widths = _widths(hidden, width_multiplier, minimum_layers=1)
    sizes = [in_channels * IMAGE_PIXELS, *widths]
    layers = [PONLinear(d_in, d_out, num_classes) for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    return FFNetwork(
        layers, ClassScoreObjective(), num_classes=num_classes, in_channels=in_channels, input_size=(32, 32)
    )
