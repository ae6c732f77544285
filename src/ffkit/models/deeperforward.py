"""DeeperForward networks (Sun et al., "DeeperForward: Enhanced Forward-Forward Training for Deeper and Better
Performance", ICLR 2025): CW-Conv layers with mean goodness, GroupNorm between layers, parameter-free residuals,
trained with a local cross-entropy on each layer's class scores.

The architectures follow the authors' released code (see ``ANCHORS.md``): bias-free 3x3 convs (5x5 for TinyCNN's first
two) with Kaiming init, 2x average pooling for downsampling, network input layer-normalised over ``(C, H, W)``.
Widths are multiplied by ``width_multiplier`` and rounded up to a multiple of ``num_classes`` (each class owns
``C / K`` channels). ResNet33 and the bottleneck ResNet100 are the paper's depth-scaling networks.
"""

from __future__ import annotations

from .._validation import check_positive_int
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
        check_positive_int(v, name)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


def _network(layers: list[CWConv], num_classes: int, in_channels: int, shortcuts=None) -> FFNetwork:
    return FFNetwork(
        layers,
        ClassScoreObjective(),
        num_classes=num_classes,
        in_channels=in_channels,
        input_norm=True,
        shortcuts=shortcuts,
    )


@register_model
def deeperforward_tinycnn(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward TinyCNN: 4 CW-Conv layers, 100 (5x5) - 200 (5x5) - 400 (3x3) - 400 (3x3), with 2x average
    pooling before the 2nd and 3rd layers. Paper: CIFAR-10 79.49, MNIST 99.50, F-MNIST 91.83 (150 epochs).

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
    """DeeperForward VGG-like CNN with 14 CW-Conv layers in five blocks: [70, 70], [140 x3], [280 x3], [560 x3],
    [560 x3], with 2x average pooling before the first conv of blocks 2-5. Paper: CIFAR-10 81.76, F-MNIST 92.44.

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


def _plain_resnet(
    layers_per_stage: int, num_classes: int, in_channels: int, width_multiplier: float, dropout: float
) -> FFNetwork:
    """DeeperForward's plain (non-bottleneck) CW-Conv ResNet: a stem and four stages of ``layers_per_stage`` 3x3
    layers at ``w, 2w, 4w, 8w`` channels (``w`` = 100 scaled).

    Within a stage (layers ``j = 0 .. n-1``), every odd layer ``j`` takes the features of the layer two back: added
    for ``j < n - 1`` (equal widths; average-pooled after the stride-2 opening of stages 2-4), concatenated for the
    stage's last layer, which doubles the width to the next stage's ``2w``. ResNet17 is ``n = 4``, ResNet33 ``n = 8``.
    """
    _check_common(num_classes, in_channels)
    if layers_per_stage < 2 or layers_per_stage % 2:
        raise ValueError(f"layers_per_stage must be an even number >= 2, got {layers_per_stage}")
    # Stage widths double exactly, so that each concatenation (width w + w) equals the next stage's width.
    base = scale_width(100, width_multiplier, multiple_of=num_classes)
    widths = [base, 2 * base, 4 * base, 8 * base]
    layers: list[CWConv] = [CWConv(in_channels, widths[0], num_classes, dropout=dropout)]
    out_ch = [widths[0]]
    shortcuts = {}
    last = layers_per_stage - 1
    for s, w in enumerate(widths):
        for j in range(layers_per_stage):
            i = len(layers)  # 0-based index of the layer being built
            prev = out_ch[-1]
            stride = 2 if (s > 0 and j == 0) else 1
            if j % 2 == 1 and j < last:  # identity add from two layers back
                shortcuts[i] = i - 2
                layers.append(CWConv(prev, w, num_classes, stride=stride, dropout=dropout, shortcut_channels=w))
                out_ch.append(w)
            elif j == last:  # concatenate the features from two layers back: width doubles
                shortcuts[i] = i - 2
                sc = out_ch[i - 2]
                layers.append(CWConv(prev, w + sc, num_classes, dropout=dropout, shortcut_channels=sc))
                out_ch.append(w + sc)
            else:
                layers.append(CWConv(prev, w, num_classes, stride=stride, dropout=dropout))
                out_ch.append(w)
    return _network(layers, num_classes, in_channels, shortcuts)


@register_model
def deeperforward_resnet17(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward ResNet17 (ResNet18-like): a 100-channel stem (layer 1) and four stages of four CW-Conv layers
    at 100 / 200 / 400 / 800 channels. Stages 2-4 open with a stride-2 conv (0-based layers 5, 9, 13, as in
    ANCHORS.md; identity adds into 0-based layers 2, 6, 10, 14 and concatenations into 4, 8, 12, 16). Each
    stage's second layer adds the features from two layers earlier (identity shortcut, average-pooled after a size
    change); each stage's fourth layer concatenates them, doubling its width (its conv produces ``C`` channels, the
    shortcut adds ``C``). Paper: CIFAR-10 86.22, MNIST 99.63, F-MNIST 93.13.

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    return _plain_resnet(4, num_classes, in_channels, width_multiplier, dropout)


@register_model
def deeperforward_resnet33(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward ResNet33 (the paper's depth-scaling experiment): a 100-channel stem and four stages of eight
    CW-Conv layers at 100 / 200 / 400 / 800 channels, ResNet17's wiring with twice the layers per stage. Stages 2-4
    open with a stride-2 conv (0-based layers 9, 17, 25). In each stage the 2nd, 4th and 6th layers add the
    features from two layers back and the 8th concatenates them, doubling the width (0-based adds into 2, 4, 6, 10,
    12, 14, ...; concatenations into 8, 16, 24, 32). Paper: CIFAR-10 85.43.

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    return _plain_resnet(8, num_classes, in_channels, width_multiplier, dropout)


#: ResNet101's blocks per stage.
RESNET100_BLOCKS = (3, 4, 23, 3)


@register_model
def deeperforward_resnet100(
    *, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0, dropout: float = 0.2
) -> FFNetwork:
    """DeeperForward ResNet100 (bottleneck; the paper's depth-scaling experiment): a 3x3 stem with 100 channels and
    ResNet101's ``[3, 4, 23, 3]`` bottleneck blocks in four stages of output width 100 / 200 / 400 / 800: 1 + 33 x 3
    = 100 CW-Conv layers. Paper: CIFAR-10 83.06.

    Each block is three CW-Conv layers, 1x1 reduce -> 3x3 -> 1x1 expand. The shortcut from the block's input (the
    previous layer's features) goes into the block's third layer: added when the widths match (every block but the
    first of stages 2-4), concatenated otherwise (the first block of stages 2-4, whose input has half the stage's
    width, so its expand conv produces the other half). Stages 2-4 downsample in their first block's 3x3 conv
    (stride 2, as torchvision's ResNet v1.5), and the shortcut is average-pooled to match.

    The paper does not give the inner width; ffkit uses ResNet's ratio, a quarter of the stage width rounded up to a
    multiple of ``num_classes`` (every CW-Conv width must be): 30 / 50 / 100 / 200 for 10 classes, 100 / 100 / 100 /
    200 for 100 classes.

    Shape: ``[B, in_channels, 32, 32] -> [B, num_classes]``.
    """
    _check_common(num_classes, in_channels)
    base = scale_width(100, width_multiplier, multiple_of=num_classes)
    widths = [base, 2 * base, 4 * base, 8 * base]
    layers: list[CWConv] = [CWConv(in_channels, base, num_classes, dropout=dropout)]
    shortcuts = {}
    prev = base
    for s, (w, blocks) in enumerate(zip(widths, RESNET100_BLOCKS)):
        inner = scale_width(w, 0.25, multiple_of=num_classes)
        for b in range(blocks):
            source = len(layers) - 1  # the block's input is the previous layer's output
            stride = 2 if (s > 0 and b == 0) else 1
            layers.append(CWConv(prev, inner, num_classes, kernel_size=1, dropout=dropout))
            layers.append(CWConv(inner, inner, num_classes, kernel_size=3, stride=stride, dropout=dropout))
            shortcuts[len(layers)] = source
            layers.append(CWConv(inner, w, num_classes, kernel_size=1, dropout=dropout, shortcut_channels=prev))
            prev = w
    return _network(layers, num_classes, in_channels, shortcuts)
