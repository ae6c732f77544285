"""DTG-FF networks: dynamic temperature goodness, decoupled normalisation, multi-layer fusion.

* :func:`dtg_vgg8`, :func:`dtg_vgg11` -- the VGG networks of Chen, "Synthetic Benchmarks Overstate Forward-Forward
  Scaling: Real-Data Limits of Layer-Local Training" (2026, arXiv:2606.06539): stacks of
  :class:`~ffkit.layers.DTGConv` layers, each trained with a local cross-entropy on its temperature-scaled, randomly
  projected goodness (:class:`~ffkit.ClassScoreObjective`). Two read-outs: the *logit-sum* of every layer's class
  scores (``FFNetwork.forward``, the evaluation's "all layers" accuracy) and the *classifier path* (``head=True``):
  global average pool of each of layers 2..L (1-based), concatenated, BatchNorm1d, dropout 0.2, linear, label
  smoothing 0.1, trained on detached features (:class:`~ffkit.layers.ClassifierHead`; the evaluation's "head"
  accuracy). No code of these networks is released: they are built from the paper's description, and what it does
  not state is ffkit's choice, named where it is made. Published (CIFAR-10): concat 91.33, logit-sum 91.79.
* :func:`dtg_mlp` -- a DTG MLP on positive/negative data. The authors' released DTG code (``StevenChen16/DTG-FF``,
  an MLP for "Dynamic Temperature Goodness for Enhanced Forward-Forward Learning", 2025) fixes its widths (4 layers
  of 2048 units), its classifier (a linear layer on the concatenated features of every layer but the last, of a
  neutral-label pass, whose cross-entropy is added to the FF losses and is the network's prediction) and its
  temperature bounds (0.1, 2.0); those ffkit follows. Its layers are ffkit's own (:class:`~ffkit.layers.DTGLinear`),
  because the released layer cannot be trained as written (see that class).

The VGG layouts come from :mod:`ffkit.models._vgg`, shared with the single-head BP baseline ``bp_vgg8``, and widths are
scaled the same way (``max(1, round(c * width_multiplier))``), so DTG-FF and BP compare on the same architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .._validation import check_bool, check_int, check_real
from ..layers import ClassifierHead, DTGConv, DTGLinear
from ..layers.dtg import TAU_MAX, TAU_MIN
from ..network import FFNetwork
from ..objectives import ClassScoreObjective, LabelOverlay, PosNegObjective, get_negatives
from ._registry import register_model
from ._vgg import VGG8_CHANNELS, VGG8_POOL_AFTER, VGG11_CHANNELS, VGG11_POOL_AFTER
from ._widths import scale_width

__all__ = ["dtg_vgg8", "dtg_vgg11", "dtg_mlp"]

#: Images are 32x32 in ffkit (MNIST-style data is resized), so the MLP's first layer has ``in_channels * 1024`` inputs.
#: DTG-FF's classifier path (Chen 2026): dropout 0.2 before its linear layer, label smoothing 0.1.
HEAD_DROPOUT = 0.2
HEAD_LABEL_SMOOTHING = 0.1
#: The released DTG MLP's configuration (``FF_DTG_Config``): 4 layers of 2048 units.
MLP_HIDDEN = (2048, 2048, 2048, 2048)


def _check_common(num_classes: int, in_channels: int, head: object) -> None:
    check_int(num_classes, "num_classes", minimum=2)
    check_int(in_channels, "in_channels", minimum=1)
    check_bool(head, "head")


def _check_fraction(value: object, name: str) -> float:
    return check_real(value, name, low=0.0, high=1.0, high_open=True)


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
    layer_label_smoothing: float,
    head_dropout: float,
    grid: int,
) -> FFNetwork:
    _check_common(num_classes, in_channels, head)
    label_smoothing = _check_fraction(label_smoothing, "label_smoothing")
    layer_label_smoothing = _check_fraction(layer_label_smoothing, "layer_label_smoothing")
    head_dropout = _check_fraction(head_dropout, "head_dropout")
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
                                    dropout=head_dropout, label_smoothing=label_smoothing)
    return FFNetwork(layers, ClassScoreObjective(layer_label_smoothing), num_classes=num_classes,
                     in_channels=in_channels, head=classifier)


_VGG_DOC = """

    Each layer is a :class:`~ffkit.layers.DTGConv` (bias-free 3x3 conv, ReLU; goodness path: ``h**2`` pooled to a
    ``grid x grid`` map, fixed random projection, divided by the layer's learnable temperature, local cross-entropy;
    propagation path: LayerNorm over channels at each location, dropout, 2x2 average pooling after the layers named
    in the layout). ``forward`` returns the logit-sum of every layer's class scores (one pass); with ``head=True`` a
    :class:`~ffkit.layers.ClassifierHead` (GAP of layers 2..L, concatenated, BatchNorm1d, dropout 0.2, linear, label
    smoothing 0.1) reads the same pass's detached features.

    The paper states label smoothing for the classifier path only, so the layers' local cross-entropy has none by
    default (``layer_label_smoothing``). The goodness grid, the temperature bounds, the projection's scale and the
    bias-free conv are not stated in the paper (and no code of the VGG networks is released): they are ffkit's.

    Args:
        num_classes: ``K``.
        in_channels: image channels.
        width_multiplier: scales every conv width (rounded, at least 1), as for ``bp_vgg8``.
        head: add the classifier path.
        tau_min: lower bound of every layer's learnable temperature.
        tau_max: upper bound of every layer's learnable temperature.
        dropout: dropout on the propagation path (DTG-FF: 0.1).
        label_smoothing: label smoothing of the classifier path's cross-entropy (DTG-FF: 0.1).
        layer_label_smoothing: label smoothing of each layer's local cross-entropy (none stated: 0).
        head_dropout: dropout before the classifier path's linear layer (DTG-FF: 0.2).
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
    label_smoothing: float = HEAD_LABEL_SMOOTHING,
    layer_label_smoothing: float = 0.0,
    head_dropout: float = HEAD_DROPOUT,
    grid: int = 2,
) -> FFNetwork:
    return _dtg_vgg(VGG8_CHANNELS, VGG8_POOL_AFTER, num_classes=num_classes, in_channels=in_channels,
                    width_multiplier=width_multiplier, head=head, tau_min=tau_min, tau_max=tau_max, dropout=dropout,
                    label_smoothing=label_smoothing, layer_label_smoothing=layer_label_smoothing,
                    head_dropout=head_dropout, grid=grid)


dtg_vgg8.__doc__ = (
    "DTG-FF VGG8: 7 DTGConv layers 128-256-256-512-512-512-512, 2x average pooling after layers 1, 3, 4, 5 "
    "(1-based). Chen (2026), CIFAR-10: concat head 91.33, logit-sum 91.79; CIFAR-100 67.28; F-MNIST 94.67." + _VGG_DOC
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
    label_smoothing: float = HEAD_LABEL_SMOOTHING,
    layer_label_smoothing: float = 0.0,
    head_dropout: float = HEAD_DROPOUT,
    grid: int = 2,
) -> FFNetwork:
    return _dtg_vgg(VGG11_CHANNELS, VGG11_POOL_AFTER, num_classes=num_classes, in_channels=in_channels,
                    width_multiplier=width_multiplier, head=head, tau_min=tau_min, tau_max=tau_max, dropout=dropout,
                    label_smoothing=label_smoothing, layer_label_smoothing=layer_label_smoothing,
                    head_dropout=head_dropout, grid=grid)


dtg_vgg11.__doc__ = (
    "DTG-FF VGG11: the 8 conv layers of VGG11 (config A) 64-128-256-256-512-512-512-512 as DTGConv layers, 2x "
    "average pooling after layers 1, 2, 4, 6, 8 (1-based). Chen (2026, ablation), CIFAR-10: 84.36." + _VGG_DOC
)


@register_model
def dtg_mlp(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    hidden: Sequence[int] = MLP_HIDDEN,
    head: bool = True,
    negatives: str = "random",
    tau_min: float = TAU_MIN,
    tau_max: float = TAU_MAX,
    image_size: int = 32,
) -> FFNetwork:
    """A DTG MLP: :class:`~ffkit.layers.DTGLinear` layers trained on positive/negative data, with the released
    DTG MLP's hybrid classifier.

    The label is overlaid on the first ``num_classes`` input pixels (:class:`~ffkit.objectives.LabelOverlay`); negatives
    carry a wrong label from the ``negatives`` sampler. Each layer's goodness is ``(g - m) / tau`` (mean squared
    activity minus a learnable margin ``m = softplus(theta)`` warm-started to the first batch's mean goodness, over a
    learnable temperature) and it minimises the threshold loss at 0,
    ``softplus((m - g_pos) / tau) + softplus((g_neg - m) / tau)``.

    The classifier (``head=True``, as in the release, where it is part of the model) follows the released
    ``FF_DTG_Model``: a linear layer (Kaiming-normal weights, zero bias, no label smoothing) on the concatenated
    activities of every layer but the last, of a neutral-label pass (every label pixel ``1 / K``). It is *hybrid*:
    its cross-entropy reaches the layers it reads (the release adds it to the FF losses before one backward pass),
    and it is the network's prediction (``forward`` returns its logits; the release predicts with nothing else). The
    layers' own FF losses stay local under :class:`~ffkit.LocalTrainer` (the release back-propagates them through
    the whole stack too). Without a head the prediction is the label whose goodness, summed over all layers, is
    largest (one pass per label).

    ``hidden`` defaults to the release's 4 layers of 2048 units; its temperature bounds (0.1, 2.0) are
    ``tau_min``/``tau_max``'s defaults. A one-layer MLP's classifier reads that layer.

    Args:
        num_classes: ``K``.
        in_channels: image channels; the first layer has ``in_channels * S * S`` inputs.
        width_multiplier: scales every hidden width (rounded, at least 1).
        hidden: hidden-layer widths (at least one).
        head: add the hybrid classifier (and predict with it).
        negatives: ``"random"``, ``"fixed"`` or ``"adaptive"`` (:func:`ffkit.objectives.get_negatives`).
        tau_min: lower bound of every layer's learnable temperature.
        tau_max: upper bound of every layer's learnable temperature.
        image_size: the side ``S`` of the square input images (32: every ffkit dataset as loaded by default; 28:
            MNIST and Fashion-MNIST as stored).

    Shape:
        ``[B, in_channels, S, S] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels, head)
    check_int(image_size, "image_size", minimum=1)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of layer widths, got {type(hidden).__name__}")
    if len(hidden) == 0:
        raise ValueError("hidden must list at least one layer width")
    for i, w in enumerate(hidden):
        check_int(w, f"hidden[{i}]", minimum=1)
    widths = [scale_width(w, width_multiplier) for w in hidden]
    sizes = [in_channels * image_size * image_size, *widths]
    layers = [DTGLinear(d_in, d_out, tau_min=tau_min, tau_max=tau_max) for d_in, d_out in zip(sizes[:-1], sizes[1:])]
    objective = PosNegObjective(
        LabelOverlay(num_classes), get_negatives(negatives, num_classes), loss="threshold", threshold=0.0
    )
    classifier = None
    if head:
        read = list(range(len(layers) - 1)) or [0]  # every layer but the last
        classifier = ClassifierHead(sum(widths[i] for i in read), num_classes, read, pool="flatten", hybrid=True)
        # the release initialises every nn.Linear of the model, its classifier included, this way
        nn.init.kaiming_normal_(classifier.linear.weight)
        nn.init.zeros_(classifier.linear.bias)
    return FFNetwork(layers, objective, num_classes=num_classes, in_channels=in_channels,
                     input_size=(image_size, image_size), head=classifier, head_predicts=head)
