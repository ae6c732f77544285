"""Fully-connected Forward-Forward networks: Hinton's FF MLP as Pipeline Forward-Forward trains it, and Pipeline-FF's
Performance-Optimized Network (PON).

* :func:`hinton_mlp` -- Hinton, "The Forward-Forward Algorithm" (2022), Sec. 3, with the settings of Pipeline-FF
  (Aktemur et al., "Going Forward-Forward in Distributed Deep Learning", Sec. 5.1) and of the first author's released
  code: 784-2000-2000-2000-2000 on MNIST, the label on the last ``K`` input pixels, mean-of-squares goodness and the
  threshold ``0.01 x width``.
* :func:`pon_mlp` -- Pipeline-FF's PON (Sec. 4.4): the same widths, each layer trained by its own softmax head, no
  negatives.

ffkit's datasets yield 32x32 images by default, so the first layer has ``in_channels * 1024`` inputs (MNIST resized
from 28x28); ``image_size=28`` builds it for MNIST as stored, 784 inputs, as in the papers.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._validation import check_bool, check_int, check_real
from ..layers import ClassifierHead, FFLinear, PONLinear
from ..network import FFNetwork
from ..objectives import ClassScoreObjective, LabelOverlay, PosNegObjective, get_negatives
from ._registry import register_model
from ._widths import scale_width

__all__ = ["hinton_mlp", "pon_mlp"]



def _check_common(num_classes: int, in_channels: int) -> None:
    check_int(num_classes, "num_classes", minimum=2)
    check_int(in_channels, "in_channels", minimum=1)


def _widths(hidden: Sequence[int], width_multiplier: float, minimum_layers: int) -> list[int]:
    """``hidden`` scaled by ``width_multiplier`` (rounded, at least 1 unit)."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of layer widths, got {type(hidden).__name__}")
    if len(hidden) < minimum_layers:
        raise ValueError(f"hidden must list at least {minimum_layers} layer width(s), got {list(hidden)}")
    for i, w in enumerate(hidden):
        check_int(w, f"hidden[{i}]", minimum=1)
    return [scale_width(w, width_multiplier) for w in hidden]


#: Pipeline-FF's threshold coefficient: a layer of ``D`` units has the threshold ``0.01 * D`` on its mean-of-squares
#: goodness (Sec. 5.1: "the threshold coefficient theta is set to 0.01"; the release multiplies it by the width).
THRESHOLD_COEFFICIENT = 0.01
#: Pipeline-FF's released layer divides its input by ``|x| + 1e-4``.
LENGTH_EPS = 1e-4


def _default_threshold(widths: Sequence[int], goodness: str) -> float:
    if len(set(widths)) != 1:
        raise ValueError(
            f"the default threshold is 0.01 x the layer width, one value for every layer, but the hidden widths "
            f"differ ({list(widths)}); pass threshold=... explicitly"
        )
    width = widths[0]
    theta = THRESHOLD_COEFFICIENT * width
    # The same loss on a sum-of-squares goodness (sum = width x mean).
    return theta if goodness == "mean" else theta * width


@register_model
def hinton_mlp(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (2000, 2000, 2000, 2000),
    negatives: str = "random",
    head: bool = False,
    threshold: float | None = None,
    goodness: str = "mean",
    label_value: float = 1.0,
    label_position: str = "last",
    image_size: int = 32,
    norm: str = "l2",
    eps: float = LENGTH_EPS,
    activation: str = "relu",
    init: str = "torch",
    peer_normalization: float = 0.0,
    peer_momentum: float = 0.9,
    head_input_norm: str | None = None,
    head_zero_init: bool = False,
    head_pre_update: bool = False,
) -> FFNetwork:
    """Hinton's FF MLP as Pipeline-FF trains it (784-2000-2000-2000-2000; here ``in_channels * 1024`` inputs).

    Each layer is an :class:`~ffkit.layers.FFLinear`: the input divided by ``|x| + 1e-4``, linear (PyTorch's default
    init), ReLU; its goodness is the mean of the squared activities. The label is written into the last
    ``num_classes`` input elements (:class:`~ffkit.objectives.LabelOverlay`, ``position="last"``): ``label_value``
    at the label, 0 elsewhere, ``label_value / K`` everywhere for the neutral label. Positives carry the true label,
    negatives a wrong one from the ``negatives`` sampler. Every layer minimises the threshold loss
    ``softplus(theta - g_pos)``, ``softplus(g_neg - theta)`` averaged over the ``2B`` samples of the
    ``[positives; negatives]`` batch (:func:`ffkit.losses.ff_threshold` with ``reduction="mean"``; Pipeline-FF
    Eq. 1), with ``theta = 0.01 x width`` (20 for 2000 units).

    Goodness prediction uses all layers but the first (Hinton 2022, Sec. 3.3; Pipeline-FF Sec. 3):
    ``inference_start=1``, the label with the largest goodness summed over layers ``1..L-1`` wins. ``head=True`` is
    Pipeline-FF's softmax mode: a bias-free linear softmax layer (:class:`~ffkit.layers.ClassifierHead`,
    ``pool="flatten"``) on the ReLU activities of layers ``1..L-1`` of a neutral-label pass, trained on detached
    features (so it never changes what the FF layers learn), and the network predicts with it
    (``head_predicts=True``); AdaptiveNEG then picks the wrong label the head scores highest, as the release does.

    Args:
        num_classes: ``K``.
        in_channels: image channels; the first layer has ``in_channels * 1024`` inputs.
        width_multiplier: scales every hidden width (rounded).
        hidden: hidden-layer widths; at least two layers (prediction skips the first).
        negatives: ``"random"`` (RandomNEG), ``"fixed"`` (FixedNEG: the same wrong label per sample every epoch;
            the training loader must yield ``(x, y, index)``) or ``"adaptive"`` (AdaptiveNEG: the hardest wrong
            label under the current network), via :func:`ffkit.objectives.get_negatives`. Pipeline-FF draws them once
            per chapter: train with :class:`~ffkit.train.ChapterTrainer` for that schedule.
        head: Pipeline-FF's softmax mode (see above).
        threshold: the threshold loss's ``theta``; ``None`` (default): the release's ``0.01 x width`` on the mean
            goodness (``0.01 x width^2`` on the sum: the same loss); all hidden widths must then be equal.
            ``threshold=2.0, goodness="sum"`` starts much faster (78% vs 24% Fashion-MNIST test accuracy after 6
            epochs; the release's setting reaches 81% after 30; see ``docs/systems/hinton.md``).
        goodness: ``"mean"`` (mean of squares, Pipeline-FF's release) or ``"sum"`` (sum of squares, Hinton's paper);
            with the default threshold both give the same loss.
        label_value: the value written at the label's pixel (1.0 in the release, on MNIST standardised with mean
            0.1307 and std 0.3081).
        label_position: ``"last"`` (the release) or ``"first"`` (Hinton's top-left border pixels) ``K`` input elements.
        image_size: the side ``S`` of the input images (32: MNIST resized as for every ffkit model; 28: as stored, the
            releases' 784 inputs). The CLI loads the dataset at this size.
        norm: every layer's :class:`~ffkit.layers.FFLinear` input normalisation, ``"l2"`` (Pipeline-FF's
            release) or ``"rms"`` (Sindy Loewe's reference implementation, loeweX: the ``hinton-mlp-fmnist-loewex``
            recipe).
        eps: added to the length (``"l2"``) or root mean square (``"rms"``): ``1e-4`` in Pipeline-FF's release,
            ``1e-8`` in loeweX.
        activation: ``"relu"`` or ``"relu-full-grad"`` (loeweX).
        init: ``"torch"`` or ``"normal"`` (``N(0, 1/D)`` weights, zero biases: loeweX).
        peer_normalization: weight of every layer's peer-normalisation loss (loeweX: 0.03; 0 turns it off).
        peer_momentum: momentum of its running mean (loeweX: 0.9).
        head_input_norm: the head's ``input_norm`` (loeweX: ``"rms"``).
        head_zero_init: the head's ``zero_init`` (loeweX: ``True``).
        head_pre_update: the head's ``pre_update`` (loeweX: ``True``).

    Shape:
        ``[B, in_channels, S, S] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    widths = _widths(hidden, width_multiplier, minimum_layers=2)
    if goodness not in ("mean", "sum"):
        raise ValueError(f"goodness must be 'mean' or 'sum', got {goodness!r}")
    if threshold is None:
        threshold = _default_threshold(widths, goodness)
    else:
        check_real(threshold, "threshold", low=0.0, low_open=True, what="goodness is a mean or sum of squares")
    check_real(label_value, "label_value", low=0.0, low_open=True)
    if label_position not in ("first", "last"):
        raise ValueError(f"label_position must be 'first' or 'last', got {label_position!r}")
    check_bool(head, "head")
    check_int(image_size, "image_size", minimum=4)
    if (head_input_norm is not None or head_zero_init or head_pre_update) and not head:
        raise ValueError("head_input_norm, head_zero_init and head_pre_update configure the classifier head: pass "
                         "head=True")
    sizes = [in_channels * image_size * image_size, *widths]
    layers = [
        FFLinear(d_in, d_out, goodness=goodness, eps=eps, norm=norm, activation=activation, init=init,
                 peer_normalization=peer_normalization, peer_momentum=peer_momentum)
        for d_in, d_out in zip(sizes[:-1], sizes[1:])
    ]
    objective = PosNegObjective(
        LabelOverlay(num_classes, on_value=label_value, position=label_position),
        get_negatives(negatives, num_classes),
        loss="threshold",
        threshold=float(threshold),
        threshold_reduction="mean",  # the release averages the 2B terms of [positives; negatives]
    )
    classifier = None
    if head:
        read = list(range(1, len(layers)))  # all but the first layer, as for goodness prediction
        classifier = ClassifierHead(sum(widths[i] for i in read), num_classes, read, pool="flatten", bias=False,
                                    input_norm=head_input_norm, zero_init=head_zero_init, pre_update=head_pre_update)
    return FFNetwork(
        layers,
        objective,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=(image_size, image_size),
        head=classifier,
        inference_start=1,
        head_predicts=head,
    )


@register_model
def pon_mlp(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (2000, 2000, 2000, 2000),
    image_size: int = 32,
) -> FFNetwork:
    """Pipeline-FF's Performance-Optimized Network (PON, Sec. 4.4): an MLP whose every layer is trained by its own
    softmax head, with no negative data (:class:`~ffkit.layers.PONLinear`, local cross-entropy via
    :class:`~ffkit.objectives.ClassScoreObjective`). Pipeline-FF Table 4: MNIST 98.38 "using all layers" (98.30 with
    the last layer only); Table 5: CIFAR-10 53.50.

    No PON code has been released; the layer is the release's FF layer (input divided by ``|x| + 1e-4``, linear,
    ReLU) with a linear head, as the paper's Fig. 8 draws it. The network predicts with the sum of every layer's head
    logits ("using all layers"; the paper does not say how the layers are combined).

    Args:
        num_classes: ``K``.
        in_channels: image channels; the first layer has ``in_channels * S * S`` inputs.
        width_multiplier: scales every hidden width (rounded).
        hidden: hidden-layer widths.
        image_size: the side ``S`` of the square input images (32: every ffkit dataset as loaded by default; 28:
            MNIST and Fashion-MNIST as stored).

    Shape:
        ``[B, in_channels, S, S] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    check_int(image_size, "image_size", minimum=1)
    widths = _widths(hidden, width_multiplier, minimum_layers=1)
    sizes = [in_channels * image_size * image_size, *widths]
    layers = [PONLinear(d_in, d_out, num_classes, eps=LENGTH_EPS) for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    return FFNetwork(
        layers, ClassScoreObjective(), num_classes=num_classes, in_channels=in_channels,
        input_size=(image_size, image_size),
    )
