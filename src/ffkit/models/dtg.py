"""DTG-FF networks (Chen, "Synthetic Benchmarks Overstate Forward-Forward Scaling: Real-Data Limits of Layer-Local
Training", 2026, arXiv:2606.06539): dynamic temperature goodness, decoupled normalisation, multi-layer fusion.

* :func:`dtg_vgg8`, :func:`dtg_vgg11` -- VGG stacks of :class:`~ffkit.layers.DTGConv` layers, each trained with a
  local cross-entropy on its temperature-scaled, randomly projected goodness (:class:`~ffkit.ClassScoreObjective`).
  Two read-outs (ANCHORS.md, DTG-FF): the *logit-sum* of every layer's class scores (``FFNetwork.forward``, the
  evaluation's "all layers" accuracy) and the *classifier path* (``head=True``): global average pool of each of
  layers 2..L (1-based), concatenated, BatchNorm1d, dropout 0.2, linear, label smoothing, trained on detached
  features (:class:`~ffkit.layers.ClassifierHead`; reported as the evaluation's "head" accuracy).
* :func:`dtg_mlp` -- the DTG MLP: :class:`~ffkit.layers.DTGLinear` layers (scalar goodness, learnable margin
  warm-started from the first batch, learnable temperature), label overlaid on the input, positive/negative training
  with the threshold loss at 0, optionally with a hybrid softmax classifier head.

The VGG layouts come from :mod:`ffkit.models._vgg`, shared with the single-head BP baseline ``bp_vgg8``, and widths are
scaled the same way (``max(1, round(c * width_multiplier))``), so DTG-FF and BP compare on the same architecture.
Published (CIFAR-10): concat 91.33, logit-sum 91.79, BP-DeepSup 93.73, VGG11 84.36.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._validation import check_positive_int
from ..data import LabelOverlay, get_negatives
from ..layers import ClassifierHead, DTGConv, DTGLinear
from ..layers.dtg import TAU_MAX, TAU_MIN
from ..network import FFNetwork
from ..objectives import ClassScoreObjective, PosNegObjective
from ._registry import register_model
from ._vgg import VGG8_CHANNELS, VGG8_POOL_AFTER, VGG11_CHANNELS, VGG11_POOL_AFTER
from ._widths import scale_width

__all__ = ["dtg_vgg8", "dtg_vgg11", "dtg_mlp"]

#: Images are 32x32 in ffkit (MNIST-style data is resized), so the MLP's first layer has ``in_channels * 1024`` inputs.
IMAGE_PIXELS = 32 * 32
#: DTG-FF's classifier path (ANCHORS.md): dropout 0.2 before its linear layer.
HEAD_DROPOUT = 0.2


def _check_common(num_classes: int, in_channels: int, head: object) -> None:
    check_positive_int(num_classes, "num_classes", minimum=2)
    check_positive_int(in_channels, "in_channels")
    if not isinstance(head, bool):
        raise TypeError(f"head must be a bool, got {type(head).__name__}")


def _check_smoothing(label_smoothing: object) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"label_smoothing must be a number, got {type(label_smoothing).__name__}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return float(label_smoothing)


def _dtg_vgg(
    channels: Sequence[int],
    pool_after: Sequence[int],
    *,
    num_classes: int,
    in_channels: int,
    width_multiplier: float,
    head: bool,
    tau_min: float,
    tau_max: float,
    dropout: float,
    label_smoothing: float,
    grid: int,
) -> FFNetwork:
    _check_common(num_classes, in_channels, head)
    label_smoothing = _check_smoothing(label_smoothing)
    widths = [scale_width(c, width_multiplier) for c in channels]
    layers, prev = [], in_channels
    for i, w in enumerate(widths):
        # Each layer gets its own projection seed, so no two layers read their goodness through the same matrix.
        layers.append(DTGConv(prev, w, num_classes, pool=i in pool_after, grid=grid, tau_min=tau_min,
                              tau_max=tau_max, dropout=dropout, seed=i))
        prev = w
    classifier = None
    if head:
        read = list(range(1, len(layers)))  # layers 2..L (1-based)
        classifier = ClassifierHead(sum(widths[i] for i in read), num_classes, read, pool="avg", batchnorm=True,
                                    dropout=HEAD_DROPOUT, label_smoothing=label_smoothing)
    return FFNetwork(layers, ClassScoreObjective(label_smoothing), num_classes=num_classes, in_channels=in_channels,
                     head=classifier)


_VGG_DOC = """

    Each layer is a :class:`~ffkit.layers.DTGConv` (bias-free 3x3 conv, ReLU; goodness path: ``h**2`` pooled to a
    ``grid x grid`` map, fixed random projection, divided by the layer's learnable temperature, local cross-entropy;
    propagation path: LayerNorm over channels at each location, dropout, 2x2 average pooling after the layers named
    in the layout). ``forward`` returns the logit-sum of every layer's class scores (one pass); with ``head=True`` a
    :class:`~ffkit.layers.ClassifierHead` (GAP of layers 2..L, concatenated, BatchNorm1d, dropout 0.2, linear)
    reads the same pass's detached features.

    Args:
        num_classes: ``K``.
        in_channels: image channels.
        width_multiplier: scales every conv width (rounded, at least 1), as for ``bp_vgg8``.
        head: add the classifier path.
        tau_min: lower bound of every layer's learnable temperature.
        tau_max: upper bound of every layer's learnable temperature.
        dropout: dropout on the propagation path (DTG-FF: 0.1).
        label_smoothing: label smoothing of the layers' local cross-entropy and of the head's (DTG-FF: 0.1 for the
            head; ffkit uses one value for both).
        grid: side of each layer's pooled goodness grid.

    Shape:
        ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """


@register_model
def dtg_vgg8(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    head: bool = True,
    tau_min: float = TAU_MIN,
    tau_max: float = TAU_MAX,
    dropout: float = 0.1,
    label_smoothing: float = 0.1,
    grid: int = 2,
) -> FFNetwork:
    return _dtg_vgg(VGG8_CHANNELS, VGG8_POOL_AFTER, num_classes=num_classes, in_channels=in_channels,
                    width_multiplier=width_multiplier, head=head, tau_min=tau_min, tau_max=tau_max, dropout=dropout,
                    label_smoothing=label_smoothing, grid=grid)


dtg_vgg8.__doc__ = (
    "DTG-FF VGG8: 7 DTGConv layers 128-256-256-512-512-512-512, 2x average pooling after layers 1, 3, 4, 5 "
    "(1-based). Paper, CIFAR-10: concat head 91.33, logit-sum 91.79; CIFAR-100 67.28; F-MNIST 94.67." + _VGG_DOC
)


@register_model
def dtg_vgg11(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    head: bool = True,
    tau_min: float = TAU_MIN,
    tau_max: float = TAU_MAX,
    dropout: float = 0.1,
    label_smoothing: float = 0.1,
    grid: int = 2,
) -> FFNetwork:
    return _dtg_vgg(VGG11_CHANNELS, VGG11_POOL_AFTER, num_classes=num_classes, in_channels=in_channels,
                    width_multiplier=width_multiplier, head=head, tau_min=tau_min, tau_max=tau_max, dropout=dropout,
                    label_smoothing=label_smoothing, grid=grid)


dtg_vgg11.__doc__ = (
    "DTG-FF VGG11: the 8 conv layers of VGG11 (config A) 64-128-256-256-512-512-512-512 as DTGConv layers, 2x "
    "average pooling after layers 1, 2, 4, 6, 8 (1-based). Paper (ablation), CIFAR-10: 84.36." + _VGG_DOC
)


@register_model
def dtg_mlp(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = (1000, 1000, 1000),
    head: bool = False,
    negatives: str = "random",
    tau_min: float = TAU_MIN,
    tau_max: float = TAU_MAX,
) -> FFNetwork:
    """The DTG MLP: :class:`~ffkit.layers.DTGLinear` layers trained on positive/negative data.

    The label is overlaid on the first ``num_classes`` input pixels (:class:`~ffkit.data.LabelOverlay`); negatives
    carry a wrong label from the ``negatives`` sampler. Each layer's goodness is ``(g - theta) / tau`` (mean squared
    activity minus a learnable margin warm-started from the first batch, over a learnable temperature) and it
    minimises the threshold loss at 0: ``softplus((theta - g_pos) / tau) + softplus((g_neg - theta) / tau)``.
    Prediction: the label whose goodness, summed over all layers, is largest (one pass per label).

    ``hidden`` defaults to three layers of 1000 units, the width and depth of the FF re-implementation in
    ANCHORS.md (the DTG MLP's own sizes are not given there). ``head=True`` adds the hybrid classifier head: a
    linear softmax layer (:class:`~ffkit.layers.ClassifierHead`, ``pool="flatten"``) on the activities of layers
    2..L (all but the first, as Hinton's softmax head and the DTG conv head read; the only layer when there is one)
    of a neutral-label pass, trained on detached features.

    Args:
        num_classes: ``K``.
        in_channels: image channels; the first layer has ``in_channels * 1024`` inputs.
        width_multiplier: scales every hidden width (rounded, at least 1).
        hidden: hidden-layer widths (at least one).
        head: add the hybrid classifier head.
        negatives: ``"random"``, ``"fixed"`` or ``"adaptive"`` (:func:`ffkit.data.get_negatives`).
        tau_min: lower bound of every layer's learnable temperature.
        tau_max: upper bound of every layer's learnable temperature.

    Shape:
        ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels, head)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of layer widths, got {type(hidden).__name__}")
    if len(hidden) == 0:
        raise ValueError("hidden must list at least one layer width")
    for i, w in enumerate(hidden):
        check_positive_int(w, f"hidden[{i}]")
    widths = [scale_width(w, width_multiplier) for w in hidden]
    sizes = [in_channels * IMAGE_PIXELS, *widths]
    layers = [DTGLinear(d_in, d_out, tau_min=tau_min, tau_max=tau_max) for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    objective = PosNegObjective(
        LabelOverlay(num_classes), get_negatives(negatives, num_classes), loss="threshold", threshold=0.0
    )
    classifier = None
    if head:
        read = list(range(1, len(layers))) or [0]
        classifier = ClassifierHead(sum(widths[i] for i in read), num_classes, read, pool="flatten")
    return FFNetwork(layers, objective, num_classes=num_classes, in_channels=in_channels, input_size=(32, 32),
                     head=classifier)
