"""Single-head backprop baselines for the papers' BP rows: a CIFAR-style ResNet18 and a VGG8.

Train them with :class:`~ffkit.train.BackpropTrainer` (``ffkit train --model bp_resnet18`` does so). They share
ffkit's data, recipes and evaluation: :class:`SingleHeadNetwork` gives a plain classifier the evaluation interface
of an :class:`~ffkit.FFNetwork` with one "layer", its output.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .._validation import check_image_input, check_int
from ._registry import register_model
from ._vgg import VGG8_CHANNELS, VGG8_POOL_AFTER
from ._widths import scale_width

__all__ = ["SingleHeadNetwork", "bp_resnet18", "bp_vgg8"]


class SingleHeadNetwork(nn.Module):
    """A classifier ``body: [B, C, H, W] -> [B, K]`` with the evaluation interface of an FFNetwork.

    ``layer_scores(x)`` is ``body(x)`` as a single layer ``[1, B, K]``, so per-layer, SIP and all-layer read-outs
    all equal the model's accuracy.
    """

    head = None

    def __init__(self, body: nn.Module, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.body = body
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.register_buffer("inference_range", torch.tensor([0, 0]))
        self.model_name: str | None = None
        self.model_kwargs: dict = {}

    def __len__(self) -> int:
        return 1

    def check_input(self, x: object, y: object | None = None) -> None:
        param = next(self.parameters(), None)
        dtype = param.dtype if param is not None else None
        check_image_input(x, self.in_channels, None, self.num_classes, y, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)  # as FFNetwork's forward does: a clear error instead of one from inside the body
        return self.body(x)

    def layer_scores(self, x: torch.Tensor, end: int | None = None) -> torch.Tensor:
        self.check_input(x)
        return self.body(x).unsqueeze(0)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.layer_scores(x), None

    def set_inference_range(self, start: int, end: int) -> None:
        if (start, end) != (0, 0):
            raise ValueError(f"a single-head model has one output; inference range must be 0..0, got {start}..{end}")


def _check(num_classes: int, in_channels: int) -> None:
    check_int(num_classes, "num_classes", minimum=2)
    check_int(in_channels, "in_channels", minimum=1)


@register_model(kind="backprop")
def bp_resnet18(*, num_classes: int = 10, in_channels: int = 3) -> SingleHeadNetwork:
    """torchvision's ResNet18 adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool), trained end to end.
    DeeperForward's BP row: CIFAR-10 94.03 (with augmentation), MNIST 99.58, F-MNIST 93.78."""
    _check(num_classes, in_channels)
    body = torchvision.models.resnet18(num_classes=num_classes)
    body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    body.maxpool = nn.Identity()
    return SingleHeadNetwork(body, num_classes=num_classes, in_channels=in_channels)


@register_model(kind="backprop")
def bp_vgg8(*, num_classes: int = 10, in_channels: int = 3, width_multiplier: float = 1.0) -> SingleHeadNetwork:
    """VGG8 with the DTG-FF layout (7 convs 128-256-256-512-512-512-512, 2x average pooling after layers 1, 3, 4, 5),
    BatchNorm and ReLU after each conv, global average pooling and one linear classifier. DTG-FF's BP row: CIFAR-10
    94.80."""
    _check(num_classes, in_channels)
    layers: list[nn.Module] = []
    prev = in_channels
    for i, c in enumerate(VGG8_CHANNELS):
        c = scale_width(c, width_multiplier)
        layers += [nn.Conv2d(prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        if i in VGG8_POOL_AFTER:
            layers.append(nn.AvgPool2d(2))
        prev = c
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes))
    return SingleHeadNetwork(body, num_classes=num_classes, in_channels=in_channels)
