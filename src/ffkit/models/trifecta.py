"""The Trifecta networks (Dooms et al., "The Trifecta: Three simple techniques for training deeper Forward-Forward
networks"): SymBa loss, BatchNorm of each layer's input, Overlapping Local Updates, label as an extra input channel.

The architectures follow the authors' released code (see ``ANCHORS.md``):

* shallow CNN (6 layers, 2.8M parameters): 128 (max-pool) - 128 - 256 (max-pool) - 256 - 256 - 512 (max-pool);
* deep CNN (12 layers, 8.5M): 64 - 128 (mp) - 128 - 128 - 128 - 256 (mp) - 256 - 256 - 256 - 512 (mp) - 512 - 512;
* FCN ("6 x 2048", 25.1M): six fully-connected layers of 2048 units.

Every conv block is :class:`~ffkit.layers.TrifectaConv` (``BN(input) -> 3x3 bias-free conv -> ReLU -> [2x2
max-pool]``), every FC block :class:`~ffkit.layers.TrifectaLinear`. The label ``y`` is encoded by
:class:`~ffkit.data.LabelChannel` as a 32x32 plane appended to the image, so the first layer sees
``in_channels + 1`` channels; with ``learned_label=True`` that plane is a learned embedding (the paper learns it
when training with OLU). Layers are trained on positives (true label) and negatives (a wrong label from
``negatives``) with SymBa (or, for the paper's ablation, Hinton's threshold loss). OLU is a trainer option:
``LocalTrainer(net, overlap=True)``. Prediction: the label with the largest goodness, summed over layers; the paper
reports the mean of the last three layers (``EvalReport.last3``).

Widths are multiplied by ``width_multiplier`` and rounded to the nearest integer (at least 1).
"""

from __future__ import annotations

from .._validation import check_positive, check_positive_int
from ..data import LabelChannel, get_negatives
from ..layers import FFLayer, TrifectaConv, TrifectaLinear
from ..network import FFNetwork
from ..objectives import PosNegObjective
from ._registry import register_model
from ._widths import scale_width

__all__ = ["trifecta_shallow", "trifecta_deep", "trifecta_fcn"]

# (channels, max-pool after the block) as in the authors' code.
_SHALLOW = ((128, True), (128, False), (256, True), (256, False), (256, False), (512, True))
_DEEP = (
    (64, False), (128, True), (128, False), (128, False), (128, False), (256, True),
    (256, False), (256, False), (256, False), (512, True), (512, False), (512, False),
)
_FCN = (2048,) * 6
# Images are always 32x32 in ffkit (MNIST-style data is resized), so the label plane is 32x32 too.
_SIZE = 32


def _network(
    layers: list[FFLayer],
    *,
    num_classes: int,
    in_channels: int,
    learned_label: bool,
    loss: str,
    alpha: float,
    threshold: float,
    negatives: str,
) -> FFNetwork:
    objective = PosNegObjective(
        LabelChannel(num_classes, _SIZE, _SIZE, learned=learned_label),
        get_negatives(negatives, num_classes),
        loss=loss,
        alpha=float(alpha),
        threshold=float(threshold),
    )
    return FFNetwork(
        layers, objective, num_classes=num_classes, in_channels=in_channels, input_size=(_SIZE, _SIZE)
    )


def _check_common(
    num_classes: int, in_channels: int, learned_label: bool, loss: str, alpha: float, threshold: float
) -> None:
    check_positive_int(num_classes, "num_classes", minimum=2)
    check_positive_int(in_channels, "in_channels")
    if not isinstance(learned_label, bool):
        raise TypeError(f"learned_label must be a bool, got {type(learned_label).__name__}")
    if loss not in ("symba", "threshold"):
        raise ValueError(f"loss must be 'symba' or 'threshold', got {loss!r}")
    check_positive(alpha, "alpha")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")


def _conv_stack(spec: tuple[tuple[int, bool], ...], in_channels: int, width_multiplier: float) -> list[FFLayer]:
    layers: list[FFLayer] = []
    prev = in_channels + 1  # the label channel
    for channels, pool in spec:
        c = scale_width(channels, width_multiplier)
        layers.append(TrifectaConv(prev, c, 3, maxpool=pool))
        prev = c
    return layers


@register_model
def trifecta_shallow(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    learned_label: bool = False,
    loss: str = "symba",
    alpha: float = 4.0,
    threshold: float = 2.0,
    negatives: str = "random",
) -> FFNetwork:
    """The Trifecta's shallow CNN: 6 conv blocks, 128 (mp) - 128 - 256 (mp) - 256 - 256 - 512 (mp); 2.8M parameters.

    Paper (200 epochs): MNIST 99.53, F-MNIST 91.38, SVHN 94.25, CIFAR-10 80.01, CIFAR-100 35.79.

    Args:
        num_classes: ``K``.
        in_channels: image channels (the first block gets one more: the label channel).
        width_multiplier: scales every block's width (rounded, at least 1).
        learned_label: learn the label channel's embedding (the paper does with OLU).
        loss: ``"symba"`` (the paper) or ``"threshold"`` (its ablation).
        alpha: SymBa's scale (4 in the paper).
        threshold: the threshold loss's ``theta``.
        negatives: negative-label sampler by name (``"random"``: a uniformly drawn wrong label, as the paper).

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]`` (goodness of each label, summed over layers).
    """
    _check_common(num_classes, in_channels, learned_label, loss, alpha, threshold)
    return _network(
        _conv_stack(_SHALLOW, in_channels, width_multiplier),
        num_classes=num_classes, in_channels=in_channels, learned_label=learned_label, loss=loss, alpha=alpha,
        threshold=threshold, negatives=negatives,
    )


@register_model
def trifecta_deep(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    learned_label: bool = False,
    loss: str = "symba",
    alpha: float = 4.0,
    threshold: float = 2.0,
    negatives: str = "random",
) -> FFNetwork:
    """The Trifecta's deep CNN: 12 conv blocks, 64 - 128 (mp) - 128 x3 - 256 (mp) - 256 x3 - 512 (mp) - 512 x2;
    8.5M parameters.

    Paper (500 epochs): MNIST 99.58, F-MNIST 91.44, SVHN 94.31, CIFAR-10 83.51 (83.72 with the mean of the last
    three layers), CIFAR-100 35.26. Arguments as :func:`trifecta_shallow`.

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels, learned_label, loss, alpha, threshold)
    return _network(
        _conv_stack(_DEEP, in_channels, width_multiplier),
        num_classes=num_classes, in_channels=in_channels, learned_label=learned_label, loss=loss, alpha=alpha,
        threshold=threshold, negatives=negatives,
    )


@register_model
def trifecta_fcn(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    learned_label: bool = False,
    loss: str = "symba",
    alpha: float = 4.0,
    threshold: float = 2.0,
    negatives: str = "random",
) -> FFNetwork:
    """The Trifecta's fully-connected network "6 x 2048": six :class:`~ffkit.layers.TrifectaLinear` layers of 2048
    units on the flattened ``(in_channels + 1) x 32 x 32`` input (image plus label channel). For MNIST/F-MNIST
    (``in_channels=1``) the input has 2048 features, giving the paper's 25.1M parameters. Arguments as
    :func:`trifecta_shallow`.

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels, learned_label, loss, alpha, threshold)
    layers: list[FFLayer] = []
    prev = (in_channels + 1) * _SIZE * _SIZE
    for width in _FCN:
        d = scale_width(width, width_multiplier)
        layers.append(TrifectaLinear(prev, d))
        prev = d
    return _network(
        layers,
        num_classes=num_classes, in_channels=in_channels, learned_label=learned_label, loss=loss, alpha=alpha,
        threshold=threshold, negatives=negatives,
    )
