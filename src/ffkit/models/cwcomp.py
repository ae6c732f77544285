"""CwComp networks (Papachristodoulou et al., "Convolutional Channel-wise Competitive Learning for the Forward-Forward
Algorithm", AAAI 2024): a 4-layer CNN of :class:`~ffkit.layers.CwCompConv` layers with channel-wise competitive (CwC)
class scores, trained with a local cross-entropy on each layer's scores; no negative data, no label in the input.

The architecture follows the authors' released code (``CW_Comp`` with ``CFSE=True``, ``loss_criterion='CwC_CE'``):

* channels 20 - 80 - 240 - 480, 3x3 convs with bias, stride 1, padding 1;
* the CFSE block: even layers (0, 2) are standard convs, odd layers (1, 3) grouped convs with ``groups = K`` followed
  by 2x2 max-pooling;
* each layer is ``conv -> ReLU -> [max-pool] -> BatchNorm (eps 1e-4)``; class ``k``'s score is the mean of squares of
  its block of the BatchNorm output, and the layer minimises the cross-entropy of those scores;
* prediction: the class whose block of the *last* layer has the largest mean square (the default inference range is
  the last layer alone);
* images normalised per channel (``input_mean``, ``input_std``; by the first layer, since ffkit's datasets yield
  ``[0, 1]`` pixels).

Widths are multiplied by ``width_multiplier`` and rounded up to a multiple of ``num_classes`` (each class owns
``C / K`` channels of every layer).
"""

from __future__ import annotations

from collections.abc import Sequence

from .._validation import check_bool, check_int
from ..layers import ClassifierHead, CwCompConv
from ..network import FFNetwork
from ..objectives import ClassScoreObjective
from ._registry import register_model
from ._widths import scale_width

__all__ = ["cwcomp_cnn"]

# Per-channel (mean, std) the authors' data pipeline normalises each dataset with. CIFAR-100 gets the CIFAR-10
# (ImageNet) statistics too: the released code never passes the dataset name that would select its CIFAR-100 values.
# The recipes pass these values as model_kwargs.
_INPUT_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.5,), (0.5,)),
    "cifar10": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar100": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_CHANNELS = (20, 80, 240, 480)


@register_model
def cwcomp_cnn(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width_multiplier: float = 1.0,
    channels: Sequence[int] = _CHANNELS,
    grouped: bool = True,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    image_size: int | None = None,
    head: bool = False,
) -> FFNetwork:
    """CwComp's CFSE CNN: 20 - 80 (grouped, max-pool) - 240 - 480 (grouped, max-pool); 280,560 parameters for
    ``in_channels=1``. Paper (20 epochs): test error MNIST 0.58, F-MNIST 7.69, CIFAR-10 21.89.

    Args:
        num_classes: ``K``.
        in_channels: image channels.
        width_multiplier: scales every layer's width (rounded up to a multiple of ``num_classes``).
        channels: the layers' widths before scaling (the authors' ``channels_list``).
        grouped: odd layers use grouped convs with ``groups = num_classes`` (the CFSE network); ``False`` gives the
            paper's FF-CNN ablation with standard convs everywhere.
        input_mean: per-channel mean subtracted from the images. ``None``: the authors' CIFAR-10 values
            ``(0.485, 0.456, 0.406)`` for 3 channels, their Fashion-MNIST value ``(0.5,)`` for 1 channel (MNIST:
            ``(0.1307,)``; the ``cwcomp-cnn-*`` recipes pass each dataset's values).
        input_std: per-channel divisor, given with ``input_mean`` (``None``: ``(0.229, 0.224, 0.225)``, ``(0.5,)``;
            MNIST ``(0.3081,)``).
        image_size: the side of the square images the network is fed (``None``: any size, and the CLI loads
            ffkit's 32x32 datasets). The authors feed MNIST and Fashion-MNIST at their stored 28x28, so the
            ``cwcomp-cnn-mnist`` and ``cwcomp-cnn-fmnist`` recipes pass 28.

    Shape: ``[B, in_channels, H, W] -> [B, num_classes]`` (the last layer's class scores), ``H = W = image_size``
    when it is given.
    """
    check_int(num_classes, "num_classes", minimum=2)
    check_int(in_channels, "in_channels", minimum=1)
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
        raise TypeError(f"channels must be a sequence of layer widths, got {type(channels).__name__}")
    if len(channels) == 0:
        raise ValueError("channels must list at least one layer width")
    for i, c in enumerate(channels):
        check_int(c, f"channels[{i}]", minimum=1)
    check_bool(grouped, "grouped")
    pools = len(channels) // 2  # the odd layers max-pool, each halving the side
    if image_size is not None:  # the last pooling needs at least 1x1 left
        check_int(image_size, "image_size", minimum=2**pools)
    check_bool(head, "head")
    if head and image_size is None:
        raise ValueError("head=True flattens the last layer's output, whose size depends on the image: give image_size")
    if input_mean is None and input_std is None:
        if in_channels not in (1, 3):
            raise ValueError(f"give input_mean and input_std for in_channels={in_channels} (defaults exist for 1 or 3)")
        input_mean, input_std = _INPUT_STATS["cifar10" if in_channels == 3 else "fashion-mnist"]
    layers = []
    prev = in_channels
    for i, c in enumerate(channels):
        width = scale_width(c, width_multiplier, multiple_of=num_classes)
        odd = i % 2 == 1
        layers.append(CwCompConv(
            prev, width, num_classes, 3, groups=num_classes if (odd and grouped) else 1, maxpool=odd,
            input_mean=input_mean if i == 0 else None, input_std=input_std if i == 0 else None,
        ))
        prev = width
    classifier = None
    if head and image_size is not None:
        side = image_size // 2**pools
        classifier = ClassifierHead(prev * side * side, num_classes, [len(layers) - 1], pool="flatten")
    return FFNetwork(
        layers, ClassScoreObjective(), num_classes=num_classes, in_channels=in_channels,
        input_size=(image_size, image_size) if image_size is not None else None, inference_start=len(layers) - 1,
        head=classifier, head_predicts=classifier is not None,
    )
