"""A dataset that lives on the training device: the stored 8-bit images, converted, resized, augmented and normalised
a whole batch at a time where the network runs (no DataLoader workers, no host-to-device copy per batch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .._validation import check_int
from .datasets import AUGMENTATIONS

__all__ = ["DeviceDataset", "stored_images"]


def stored_images(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored 8-bit images and labels of a torchvision dataset (or of nested ``Subset``\\ s of one), before any
    transform.

    Returns:
        ``(images [N, C, H, W] uint8, labels [N] int64)``, in the dataset's order.

    Raises:
        TypeError: the dataset is not (a ``Subset`` of) a torchvision MNIST, Fashion-MNIST, CIFAR-10/100 or SVHN.
    """
    if isinstance(dataset, Subset):
        images, labels = stored_images(dataset.dataset)
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return images[index], labels[index]
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if data is None or targets is None:
        raise TypeError(f"dataset must be a torchvision MNIST, FashionMNIST, CIFAR10, CIFAR100 or SVHN (or a Subset of "
                        f"one) holding .data and .targets, got {type(dataset).__name__}")
    images = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    if images.dtype != torch.uint8:
        raise TypeError(f"{type(dataset).__name__}.data must hold 8-bit images, got {images.dtype}")
    if images.dim() == 3:  # MNIST-style [N, H, W]
        images = images.unsqueeze(1)
    elif images.dim() == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # CIFAR's [N, H, W, C]
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    if len(labels) != len(images):
        raise ValueError(f"{type(dataset).__name__} has {len(images)} images but {len(labels)} labels")
    return images.contiguous(), labels


class DeviceDataset(Dataset):
    """A whole dataset held on ``device`` as 8-bit images, turned into float batches there.

    ``DataLoader(DeviceDataset(...), batch_size=B, shuffle=True, generator=g, collate_fn=DeviceDataset.collate)``
    draws the same batches in the same order as a DataLoader over the torchvision dataset with the same sampler and
    generator (the sampler runs on the host and hands over indices; ``__getitems__`` builds the batch on the device).
    Each batch is made as :func:`~ffkit.data.load_dataset`'s transform makes a sample: ``x / 255``, then a bilinear
    resize to ``size`` (antialiased, on the float image), then the augmentation, then the per-channel normalisation
    (Cutout, in ``"dtg"``, erases after it, as the torchvision pipeline does).

    Augmentations draw from the device's default generator (``torch.rand(..., device=device)``), one draw per batch,
    so a checkpoint's random state resumes them; they follow the torchvision transforms' distributions, not their
    random streams:

    * ``"crop-rotate"``: ``RandomCrop(size, padding=4)`` (zero fill), then ``RandomRotation(15)`` (nearest
      neighbour, zero fill) — The Trifecta's training transform;
    * ``"crop-flip"``: the crop, then ``RandomHorizontalFlip()``;
    * ``"dtg"``: the crop and flip, ``ColorJitter(0.4, 0.4, 0.4)`` for 3-channel images (brightness, contrast and
      saturation in a random order per image), then Cutout (one ``size/4`` square set to 0 after normalisation).

    Args:
        images: ``[N, C, H, W]`` uint8 (e.g. from :func:`stored_images`); moved to ``device``.
        labels: ``[N]`` integer labels.
        device: where the data lives and batches are made.
        size: side of the square images yielded (``None``: as stored).
        mean: per-channel mean subtracted last (``None``: values stay in ``[0, 1]``).
        std: per-channel divisor, given with ``mean``.
        augment: ``None`` or one of :data:`~ffkit.data.AUGMENTATIONS` (every augmentation of the DataLoader path).
        with_index: also yield each sample's index, ``(x, y, index)``.

    Shape:
        a batch of indices ``[B]`` -> ``(x [B, C, size, size] float32, y [B] int64[, index [B]])`` on ``device``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: str | None = None,
        with_index: bool = False,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise TypeError(f"images must be a uint8 tensor [N, C, H, W], got {got}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or len(labels) != len(images) or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be [N] integers with N = {len(images)} images, got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        if augment is not None and augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be None or one of {AUGMENTATIONS}, got {augment!r}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together (or both left None)")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        channels = images.shape[1]
        self.size = check_int(size, "size", minimum=1) if size is not None else images.shape[-1]
        self.mean = self.std = None
        if mean is not None and std is not None:
            if len(mean) != channels or len(std) != channels:
                raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and "
                                 f"{len(std)}")
            self.mean = torch.tensor([float(m) for m in mean], device=self.device).view(1, channels, 1, 1)
            self.std = torch.tensor([float(s) for s in std], device=self.device).view(1, channels, 1, 1)
        self.augment = augment
        self.with_index = bool(with_index)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, y, *rest = self.__getitems__([i])
        return (x[0], int(y[0]), i) if self.with_index else (x[0], int(y[0]))

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        on_device = index.to(self.device, non_blocking=True)
        x = self.images[on_device].float().mul_(1.0 / 255)  # as torchvision's ToDtype(float32, scale=True)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        if self.augment is not None:
            x = random_crop(x, padding=4)
            if self.augment == "crop-rotate":
                x = random_rotation(x, degrees=15.0)
            else:
                x = random_hflip(x)
                if self.augment == "dtg" and x.shape[1] == 3:
                    x = color_jitter(x, 0.4, 0.4, 0.4)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        if self.augment == "dtg":
            x = cutout(x, self.size // 4)
        batch = (x, self.labels[on_device])
        return (*batch, index) if self.with_index else batch

    @staticmethod
    def collate(batch: Any) -> Any:
        """The ``collate_fn`` for loaders over a :class:`DeviceDataset`: the batch is already made."""
        return batch

    @classmethod
    def from_dataset(cls, dataset: Dataset, **kwargs: Any) -> DeviceDataset:
        """The stored images and labels of a torchvision dataset (or a ``Subset``), with ``kwargs`` as the
        constructor's."""
        images, labels = stored_images(dataset)
        return cls(images, labels, **kwargs)


# -- batched augmentations: one random draw per batch on the batch's device ---------------------------------------


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """``RandomCrop(size, padding)`` per image of ``x [B, C, H, W]``: zero-pad each side by ``padding``, then cut an
    ``H x W`` window at a uniform offset in ``[0, 2 * padding]`` per axis."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    return crop_at(padded, top, left, h, w)


def crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The ``h x w`` window of each image of ``x [B, C, H', W']`` starting at ``(top[b], left[b])``."""
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [B, h, 1]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, w]
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()  # [B, C, h, w]


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    """``RandomHorizontalFlip()``: each image of ``x [B, C, H, W]`` mirrored with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_rotation(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """``RandomRotation(degrees)``: each image of ``x [B, C, H, W]`` rotated about its centre by an angle uniform in
    ``[-degrees, degrees]`` (counter-clockwise for positive angles), nearest-neighbour, zero fill outside."""
    angle = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * degrees
    return rotate(x, angle)


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``x [B, C, H, W]`` by ``angle [B]`` degrees counter-clockwise about its centre, as
    ``torchvision.transforms.v2.functional.rotate`` (nearest neighbour, zero fill)."""
    b, _, h, w = x.shape
    theta = torch.deg2rad(angle.to(torch.float32))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # The output pixel at normalised (u, v) samples the input at R(-angle) (u, v); y points down, so a
    # counter-clockwise turn on screen is clockwise in (u, v) with v downwards. Aspect ratios other than 1 scale
    # the off-diagonal terms.
    matrix = torch.zeros(b, 2, 3, device=x.device)
    matrix[:, 0, 0] = cos
    matrix[:, 0, 1] = -sin * h / w
    matrix[:, 1, 0] = sin * w / h
    matrix[:, 1, 1] = cos
    grid = F.affine_grid(matrix, [b, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="nearest", padding_mode="zeros", align_corners=False)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma ``[B, 1, H, W]`` of RGB images, as torchvision's ``rgb_to_grayscale``."""
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """``ColorJitter(brightness, contrast, saturation)`` on RGB images ``x [B, 3, H, W]`` in ``[0, 1]``: each factor
    uniform in ``[1 - v, 1 + v]`` per image, the three adjustments applied in a random order per image."""
    b, dev = x.shape[0], x.device
    spread = torch.tensor([brightness, contrast, saturation], device=dev)[:, None]
    factors = 1 + (torch.rand(3, b, device=dev) * 2 - 1) * spread
    order = torch.rand(b, 3, device=dev).argsort(dim=1)  # a uniform permutation of the three per image
    return jitter(x, factors, order)


def jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation adjustments of RGB images ``x [B, 3, H, W]`` with ``factors [3, B]`` (in
    that order), image ``b`` taking them in the order ``order[b]`` (a permutation of 0, 1, 2), each as torchvision's
    ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` (a blend clamped to ``[0, 1]``)."""
    for position in range(3):
        for op in range(3):
            chosen = (order[:, position] == op)[:, None, None, None]
            f = factors[op][:, None, None, None]
            if op == 0:
                adjusted = x * f
            elif op == 1:
                adjusted = f * x + (1 - f) * _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
            else:
                adjusted = f * x + (1 - f) * _grayscale(x)
            x = torch.where(chosen, adjusted.clamp(0, 1), x)
    return x


def cutout(x: torch.Tensor, side: int) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) as ``RandomErasing(p=1, scale=(1/16, 1/16), ratio=(1, 1), value=0)`` on
    square images: one ``side x side`` square per image of ``x [B, C, H, W]``, at a uniform position inside the
    image, set to 0."""
    b, _, h, w = x.shape
    top = torch.randint(0, h - side + 1, (b,), device=x.device)
    left = torch.randint(0, w - side + 1, (b,), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    inside_r = (rows >= top[:, None]) & (rows < top[:, None] + side)  # [B, H]
    inside_c = (cols >= left[:, None]) & (cols < left[:, None] + side)  # [B, W]
    box = (inside_r[:, :, None] & inside_c[:, None, :])[:, None]  # [B, 1, H, W]
    return x.masked_fill(box, 0.0)
