"""DeeperForward networks (Sun et al., "DeeperForward: Enhanced Forward-Forward Training for Deeper and Better
Performance", ICLR 2025): CW-Conv layers with mean goodness, GroupNorm between layers, parameter-free residuals,
trained with a local cross-entropy on each layer's class scores.

The architectures are the networks of the paper's experiments as the authors' released code builds them (TinyCNN,
the 14-layer CNN, ResNet17, and the depth-scaling ResNet33 and bottleneck ResNet100): bias-free convs with Kaiming
(fan-out) init, 2x average pooling or stride-2 convs for downsampling, a network input layer-normalised over
``(C, H, W)``; ``tests/reference/test_ref_deeperforward.py`` checks them against a restatement of that code. Widths
are multiplied by ``width_multiplier`` and rounded *up* to a multiple of ``num_classes`` (each class owns ``C / K``
channels; the release instead asserts that they divide), so ResNet100's 70-channel stem becomes 100 channels for
100 classes.

Every builder takes ``num_classes`` (``K``), ``in_channels``, ``width_multiplier`` and ``dropout`` (after every
ReLU; 0.2 is the release's training default).
"""

from __future__ import annotations

from .._validation import check_int
from ..layers import CWConv
from ..network import FFNetwork
from ..objectives import ClassScoreObjective
from ._registry import register_model
from ._widths import scale_width

__all__ = [
    "deeperforward_tinycnn",
    "deeperforward_cnn14",
    "deeperforward_resnet17",
    "deeperforward_resnet33",
    "deeperforward_resnet100",
]


def _check_common(num_classes: int, in_channels: int) -> None:
    for name, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        check_int(v, name, minimum=1)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


def _network(
    layers: list[CWConv], num_classes: int, in_channels: int, shortcuts: dict[int, int] | None = None
) -> FFNetwork:
    # Before SIP has chosen a range, the release predicts with every layer but the first (start_layer = 1).
    return FFNetwork(
        layers,
        ClassScoreObjective(),
        num_classes=num_classes,
        in_channels=in_channels,
        input_norm=True,
        shortcuts=shortcuts,
        inference_start=1,
    )


@register_model
def deeperforward_tinycnn(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward TinyCNN (the authors' ``tinycnn.py``): 4 CW-Conv layers, 100 (5x5, padding 2) - 200 (5x5,
    padding 2) - 400 (3x3, padding 1) - 400 (3x3, padding 1), with 2x average pooling before the 2nd and 3rd layers.
    Paper: CIFAR-10 79.49, MNIST 99.50, F-MNIST 91.83 (Sun et al., ICLR 2025, Table 1).

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    w = [scale_width(c, width_multiplier, multiple_of=num_classes) for c in (100, 200, 400, 400)]
    layers = [
        CWConv(in_channels, w[0], num_classes, kernel_size=5, dropout=dropout),
        CWConv(w[0], w[1], num_classes, kernel_size=5, pool=2, dropout=dropout),
        CWConv(w[1], w[2], num_classes, kernel_size=3, pool=2, dropout=dropout),
        CWConv(w[2], w[3], num_classes, kernel_size=3, dropout=dropout),
    ]
    return _network(layers, num_classes, in_channels)


@register_model
def deeperforward_cnn14(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward's VGG-like CNN (the authors' ``vgg.py``) with 14 3x3 CW-Conv layers (padding 1) in five blocks:
    [70, 70], [140 x3], [280 x3], [560 x3], [560 x3], with 2x average pooling before the first conv of blocks 2-5.
    Paper: CIFAR-10 81.76, MNIST 99.65, F-MNIST 92.44 (Sun et al., ICLR 2025, Table 1).

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    blocks = [[70, 70], [140] * 3, [280] * 3, [560] * 3, [560] * 3]
    layers, prev = [], in_channels
    for b, block in enumerate(blocks):
        for j, c in enumerate(block):
            c = scale_width(c, width_multiplier, multiple_of=num_classes)
            layers.append(CWConv(prev, c, num_classes, pool=2 if (b > 0 and j == 0) else 1, dropout=dropout))
            prev = c
    return _network(layers, num_classes, in_channels)


def _stage_widths(base: int, width_multiplier: float, num_classes: int) -> list[int]:
    """Four stage widths ``w, 2w, 4w, 8w`` with ``w`` = ``base`` scaled and rounded up to a multiple of the class
    count; they double exactly, as the release's do, so a concatenation ``w + w`` is the next stage's width."""
    w = scale_width(base, width_multiplier, multiple_of=num_classes)
    return [w, 2 * w, 4 * w, 8 * w]


@register_model
def deeperforward_resnet17(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward ResNet17 (ResNet18-like): a 3x3 stem to 100 channels (layer 0) and four stages of four 3x3 CW-Conv
    layers at 100 / 200 / 400 / 800 channels (the authors' ``resnet.py``). Paper: CIFAR-10 86.22, MNIST 99.63,
    F-MNIST 93.13 (Sun et al., ICLR 2025, Table 1).

    Stages 2-4 open with a stride-2 conv (0-based layers 5, 9, 13). Shortcuts come from the output two layers back
    (after its own shortcut was joined): layers 2, 6, 10, 14 add it; layers 4, 8, 12, 16 make ``w`` channels with
    their conv and concatenate the ``w`` of layer ``i - 2``, which doubles the width to the next stage's (layer 16:
    1600 channels). A shortcut read across a stride-2 layer is average-pooled by 2. Widths are
    ``100 * width_multiplier`` rounded up to a multiple of ``num_classes``, then doubled per stage.

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    widths = _stage_widths(100, width_multiplier, num_classes)
    layers: list[CWConv] = [CWConv(in_channels, widths[0], num_classes, dropout=dropout)]
    out_ch = [widths[0]]
    shortcuts: dict[int, int] = {}
    for s, w in enumerate(widths):
        for j in range(4):
            i = len(layers)
            prev = out_ch[-1]
            if j == 1:  # add the output of layer i - 2
                shortcuts[i] = i - 2
                layers.append(CWConv(prev, w, num_classes, dropout=dropout, shortcut_channels=w))
            elif j == 3:  # concatenate it: the conv makes w, the output is w + w
                shortcuts[i] = i - 2
                sc = out_ch[i - 2]
                layers.append(CWConv(prev, w + sc, num_classes, dropout=dropout, shortcut_channels=sc))
            else:
                layers.append(CWConv(prev, w, num_classes, stride=2 if (s > 0 and j == 0) else 1, dropout=dropout))
            out_ch.append(layers[-1].out_channels)
    return _network(layers, num_classes, in_channels, shortcuts)


#: ResNet34's basic blocks per stage (ResNet33 = stem + 2 * 16 layers).
RESNET33_BLOCKS = (3, 4, 6, 3)


@register_model
def deeperforward_resnet33(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward ResNet33 (the paper's depth-scaling network; the authors' ``resnet34.py``): a 3x3 stem to 100
    channels and ResNet34's ``[3, 4, 6, 3]`` basic blocks of two 3x3 CW-Conv layers at 100 / 200 / 400 / 800 channels:
    1 + 2 x 16 = 33 layers. Paper: CIFAR-10 85.43 (Sun et al., ICLR 2025, depth scaling).

    The first conv of a stage's first block has stride 2 (stages 2-4). A block's second layer takes the block's input
    (the output two layers back) as its shortcut: added when the widths match, else (the first block of stages 2-4)
    its conv makes ``out - in`` channels and the average-pooled input is concatenated after them. Widths are
    ``100 * width_multiplier`` rounded up to a multiple of ``num_classes``, then doubled per stage.

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    widths = _stage_widths(100, width_multiplier, num_classes)
    layers: list[CWConv] = [CWConv(in_channels, widths[0], num_classes, dropout=dropout)]
    shortcuts: dict[int, int] = {}
    prev = widths[0]
    for s, (w, blocks) in enumerate(zip(widths, RESNET33_BLOCKS)):
        for b in range(blocks):
            source = len(layers) - 1  # the block's input is the previous layer's output
            layers.append(CWConv(prev, w, num_classes, stride=2 if (s > 0 and b == 0) else 1, dropout=dropout))
            shortcuts[len(layers)] = source
            layers.append(CWConv(w, w, num_classes, dropout=dropout, shortcut_channels=prev))
            prev = w
    return _network(layers, num_classes, in_channels, shortcuts)


#: ResNet101's bottleneck blocks per stage (ResNet100 = stem + 3 * 33 layers).
RESNET100_BLOCKS = (3, 4, 23, 3)


@register_model
def deeperforward_resnet100(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward ResNet100 (bottleneck; the paper's depth-scaling network; the authors' ``resnet101.py``): a 3x3
    stem to 70 channels and ResNet101's ``[3, 4, 23, 3]`` bottleneck blocks with inner widths 70 / 140 / 280 / 560
    and outputs four times the inner width: 1 + 3 x 33 = 100 CW-Conv layers. Paper: CIFAR-10 83.06 (Sun et al.,
    ICLR 2025, depth scaling).

    A block is 1x1 (in -> inner), 3x3 (inner -> inner; stride 2 in the first block of stages 2-4), 1x1 (inner ->
    4 inner). The block's input goes into its third layer as the shortcut: added when the widths match, else (every
    stage's first block) the third conv makes ``4 inner - in`` channels and the average-pooled input is concatenated
    after them. Widths are ``70 * width_multiplier`` rounded up to a multiple of ``num_classes``, then doubled per
    stage (so 100 / 200 / 400 / 800 inner for 100 classes, where the release's 70 would not divide into classes).

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    inner_widths = _stage_widths(70, width_multiplier, num_classes)
    layers: list[CWConv] = [CWConv(in_channels, inner_widths[0], num_classes, dropout=dropout)]
    shortcuts: dict[int, int] = {}
    prev = inner_widths[0]
    for s, (inner, blocks) in enumerate(zip(inner_widths, RESNET100_BLOCKS)):
        out = 4 * inner
        for b in range(blocks):
            source = len(layers) - 1  # the block's input is the previous layer's output
            stride = 2 if (s > 0 and b == 0) else 1
            layers.append(CWConv(prev, inner, num_classes, kernel_size=1, dropout=dropout))
            layers.append(CWConv(inner, inner, num_classes, kernel_size=3, stride=stride, dropout=dropout))
            shortcuts[len(layers)] = source
            layers.append(CWConv(inner, out, num_classes, kernel_size=1, dropout=dropout, shortcut_channels=prev))
            prev = out
    return _network(layers, num_classes, in_channels, shortcuts)
