"""The Trifecta networks (Dooms et al., "The Trifecta: Three simple techniques for training deeper Forward-Forward
networks"): SymBa loss, BatchNorm of each layer's input, Overlapping Local Updates, label as an extra input channel.

The conv architectures are those of the authors' released code (its ``small`` and ``large`` networks):

* shallow CNN (6 layers, 2.8M parameters): 128 (max-pool) - 128 - 256 (max-pool) - 256 - 256 - 512 (max-pool);
* deep CNN (12 layers, 8.5M): 64 - 128 (mp) - 128 - 128 - 128 - 256 (mp) - 256 - 256 - 256 - 512 (mp) - 512 - 512;
* FCN ("6 x 2048"): six fully-connected layers of 2048 units. The release has no FCN; ffkit builds it from the
  paper's size with the conv blocks' design (norm of the input, bias-free linear map, ReLU).

Every conv block is :class:`~ffkit.layers.TrifectaConv` (``BN(input) -> 3x3 bias-free conv -> ReLU -> [2x2
max-pool]``), every FC block :class:`~ffkit.layers.TrifectaLinear`. The label ``y`` is encoded by
:class:`~ffkit.objectives.LabelChannel` as a 32x32 plane appended to the image, so the first layer sees
``in_channels + 1`` channels; it is a learned embedding by default (the release's default, trained with OLU), or a
fixed random one with ``learned_label=False`` (the paper's runs without OLU). Layers are trained on positives (true
label) and negatives (a uniformly drawn wrong label) with SymBa, or, for the paper's ablation, the threshold loss
in the release's form (the mean over the ``[positives; negatives]`` batch). ``norm="layer"`` replaces each
BatchNorm by the release's LayerNorm over the input's ``(C, H, W)`` (its runs without BatchNorm). OLU is a trainer
option: ``LocalTrainer(net, overlap=True)``.

Prediction (``forward``): the label whose goodness in the *last* layer is largest, as the release's default
evaluation and the paper's Tables 1-2; the paper's Table 3 also reports the mean of the last three layers
(``EvalReport.last3``).

Widths are multiplied by ``width_multiplier`` and rounded to the nearest integer (at least 1).
"""

from __future__ import annotations

from .._validation import check_bool, check_int, check_real
from ..layers import FFLayer, TrifectaConv, TrifectaLinear
from ..layers.trifecta import NORMS
from ..network import FFNetwork
from ..objectives import LabelChannel, PosNegObjective, get_negatives
from ._registry import register_model
from ._widths import scale_width

__all__ = ["trifecta_shallow", "trifecta_deep", "trifecta_fcn"]

# (channels, max-pool after the block) as in the authors' released code.
_SHALLOW = ((128, True), (128, False), (256, True), (256, False), (256, False), (512, True))
_DEEP = (
    (64, False), (128, True), (128, False), (128, False), (128, False), (256, True),
    (256, False), (256, False), (256, False), (512, True), (512, False), (512, False),
)
_FCN = (2048,) * 6
# Images are always 32x32 in ffkit (MNIST-style data is resized; the release keeps MNIST at 28x28), so the label
# plane is 32x32 too.
def _network(
    layers: list[FFLayer],
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    learned_label: bool,
    loss: str,
    alpha: float,
    threshold: float,
    negatives: str,
) -> FFNetwork:
    objective = PosNegObjective(
        LabelChannel(num_classes, image_size, image_size, learned=learned_label),
        get_negatives(negatives, num_classes),
        loss=loss,
        alpha=float(alpha),
        threshold=float(threshold),
        threshold_reduction="mean",  # the release: cat([softplus(tau - pos), softplus(neg - tau)]).mean()
    )
    # The release predicts with the last layer alone (its evaluation's default ensemble is slice(-1, None)).
    return FFNetwork(
        layers, objective, num_classes=num_classes, in_channels=in_channels, input_size=(image_size, image_size),
        inference_start=len(layers) - 1,
    )


def _check_common(
    num_classes: int, in_channels: int, learned_label: bool, loss: str, alpha: float, threshold: float, norm: str,
    image_size: int, min_size: int = 1,
) -> None:
    check_int(num_classes, "num_classes", minimum=2)
    check_int(in_channels, "in_channels", minimum=1)
    check_int(image_size, "image_size", minimum=min_size)
    check_bool(learned_label, "learned_label")
    if loss not in ("symba", "threshold"):
        raise ValueError(f"loss must be 'symba' or 'threshold', got {loss!r}")
    check_real(alpha, "alpha", low=0, low_open=True)
    check_real(threshold, "threshold")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _conv_stack(
    spec: tuple[tuple[int, bool], ...], in_channels: int, width_multiplier: float, norm: str, image_size: int
) -> list[FFLayer]:
    layers: list[FFLayer] = []
    prev, size = in_channels + 1, image_size  # + the label channel
    for channels, pool in spec:
        c = scale_width(channels, width_multiplier)
        layers.append(TrifectaConv(prev, c, 3, maxpool=pool, norm=norm, input_size=(size, size)))
        prev, size = c, size // 2 if pool else size
    return layers


@register_model
def trifecta_shallow(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    learned_label: bool = True,
    loss: str = "symba",
    alpha: float = 4.0,
    threshold: float = 2.0,
    negatives: str = "random",
    norm: str = "batch",
    image_size: int = 32,
) -> FFNetwork:
    """The Trifecta's shallow CNN (the release's ``small``): 6 conv blocks, 128 (mp) - 128 - 256 (mp) - 256 - 256 -
    512 (mp); 2.8M parameters.

    Paper (200 epochs, last layer): MNIST 99.53, F-MNIST 91.38, SVHN 94.25, CIFAR-10 80.01, CIFAR-100 35.79.

    Args:
        num_classes: ``K``.
        in_channels: image channels (the first block gets one more: the label channel).
        width_multiplier: scales every block's width (rounded, at least 1).
        learned_label: learn the label channel's embedding (the release's default; the paper learns it with OLU and
            keeps it random without).
        loss: ``"symba"`` (the paper) or ``"threshold"`` (its ablation; the mean over the ``[pos; neg]`` batch).
        alpha: SymBa's scale (4 in the paper).
        threshold: the threshold loss's ``theta`` (the ablation's ``tau``: 2 or 10).
        negatives: negative-label sampler by name (``"random"``: a uniformly drawn wrong label, as the paper).
        norm: ``"batch"`` (BatchNorm of each block's input, the paper) or ``"layer"`` (the release's LayerNorm over
            ``(C, H, W)``, its runs without BatchNorm).
        image_size: the side ``S`` of the square input images (32: every ffkit dataset as loaded by default; 28:
            MNIST and Fashion-MNIST as stored). The label channel is ``S x S``.

    Shape: ``[B, in_channels, S, S] -> [B, num_classes]`` (the goodness of each label in the last layer).
    """
    pools = sum(pool for _, pool in _SHALLOW)  # each max-pool halves the side
    _check_common(num_classes, in_channels, learned_label, loss, alpha, threshold, norm, image_size, 2**pools)
    return _network(
        _conv_stack(_SHALLOW, in_channels, width_multiplier, norm, image_size),
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, learned_label=learned_label,
        loss=loss, alpha=alpha, threshold=threshold, negatives=negatives,
    )


@register_model
def trifecta_deep(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    learned_label: bool = True,
    loss: str = "symba",
    alpha: float = 4.0,
    threshold: float = 2.0,
    negatives: str = "random",
    norm: str = "batch",
    image_size: int = 32,
) -> FFNetwork:
    """The Trifecta's deep CNN (the release's ``large``): 12 conv blocks, 64 - 128 (mp) - 128 x3 - 256 (mp) -
    256 x3 - 512 (mp) - 512 x2; 8.5M parameters.

    Paper (500 epochs, last layer): MNIST 99.58, F-MNIST 91.44, SVHN 94.31, CIFAR-10 83.51 (83.72 with the mean of
    the last three layers), CIFAR-100 35.26. Arguments as :func:`trifecta_shallow`.

    Shape: ``[B, in_channels, S, S] -> [B, num_classes]`` (the goodness of each label in the last layer).
    """
    pools = sum(pool for _, pool in _DEEP)  # each max-pool halves the side
    _check_common(num_classes, in_channels, learned_label, loss, alpha, threshold, norm, image_size, 2**pools)
    return _network(
        _conv_stack(_DEEP, in_channels, width_multiplier, norm, image_size),
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, learned_label=learned_label,
        loss=loss, alpha=alpha, threshold=threshold, negatives=negatives,
    )


@register_model
def trifecta_fcn(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    learned_label: bool = True,
    loss: str = "symba",
    alpha: float = 4.0,
    threshold: float = 2.0,
    negatives: str = "random",
    norm: str = "batch",
    image_size: int = 32,
) -> FFNetwork:
    """The Trifecta's fully-connected network "6 x 2048": six :class:`~ffkit.layers.TrifectaLinear` layers of 2048
    units on the flattened ``(in_channels + 1) x S x S`` input (image plus label channel; ``S = image_size``).

    The paper gives only the size; the authors' released code has no FCN, so the block (norm of the input,
    bias-free linear map, ReLU, mean-of-squares goodness) follows the conv blocks. For MNIST/F-MNIST
    (``in_channels=1``) the input has 2048 features and each of the six weights is 2048 x 2048. Arguments as
    :func:`trifecta_shallow`.

    Shape: ``[B, in_channels, S, S] -> [B, num_classes]`` (the goodness of each label in the last layer).
    """
    _check_common(num_classes, in_channels, learned_label, loss, alpha, threshold, norm, image_size)
    layers: list[FFLayer] = []
    prev = (in_channels + 1) * image_size * image_size
    for width in _FCN:
        d = scale_width(width, width_multiplier)
        layers.append(TrifectaLinear(prev, d, norm=norm))
        prev = d
    return _network(
        layers,
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, learned_label=learned_label,
        loss=loss, alpha=alpha, threshold=threshold, negatives=negatives,
    )
