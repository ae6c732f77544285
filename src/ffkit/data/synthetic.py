"""A synthetic teacher-student classification task (DTG-FF, "Synthetic Benchmarks Overstate Forward-Forward
Scaling", Sec. 3.2): Gaussian inputs labelled by the argmax of a random 3-layer ReLU teacher network.

The task needs no files, is exactly reproducible from a seed, and its class count ``K`` can be swept freely, which
is what the paper uses it for (synthetic ``K``-sweeps). ffkit networks read images ``[B, C, 32, 32]``, so
:func:`teacher_student_images` draws ``dim = C * 32 * 32`` features and reshapes each sample to ``[C, 32, 32]``;
an MLP flattens it back, so for an MLP the two forms are the same data. Channel-wise conv networks can read the
image form too, but Gaussian pixels have no spatial structure for a conv to exploit.

Details the paper does not fix, chosen here and documented:

* Teacher: ``Linear(dim, hidden) -> ReLU -> Linear(hidden, hidden) -> ReLU -> Linear(hidden, K)``, weights
  ``N(0, 2 / fan_in)`` (He init keeps the activations' scale through the ReLUs), hidden biases zero.
* Class balance: the raw argmax of a random ReLU network is dominated by a few classes (the ReLU features have a
  positive mean, so each output has a different offset). The last layer is therefore standardised on a reference
  sample of ``reference_size`` Gaussian inputs drawn from the same seed: each output gets zero mean and unit
  variance there (folded into its weights and bias). The teacher stays an ordinary 3-layer ReLU network, and
  ``labels = argmax(teacher(x))`` exactly.
* ``noise``: label noise, the probability that a label is replaced by a uniformly drawn *different* class.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .._validation import check_int, check_real

__all__ = ["make_teacher", "teacher_student", "teacher_student_images"]

IMAGE_SIZE = 32


def _check_args(num_samples: int, dim: int, num_classes: int, hidden: int, seed: int, noise: float) -> None:
    check_int(num_samples, "num_samples", minimum=1)
    check_int(dim, "dim", minimum=1)
    check_int(num_classes, "num_classes", minimum=2)
    check_int(hidden, "hidden", minimum=1)
    check_int(seed, "seed")
    check_real(noise, "noise", low=0.0, high=1.0, what="a probability")


@torch.no_grad()
def make_teacher(
    dim: int, num_classes: int, hidden: int = 128, *, seed: int = 0, reference_size: int = 8192
) -> nn.Sequential:
    """The random teacher: ``Linear(dim, hidden), ReLU, Linear(hidden, hidden), ReLU, Linear(hidden, K)``.

    Weights are ``N(0, 2 / fan_in)``, hidden biases zero; the output layer is standardised so that each of the
    ``K`` outputs has mean 0 and variance 1 over ``reference_size`` Gaussian inputs drawn from the same seed (which
    keeps the argmax classes roughly balanced). Deterministic for a seed; its parameters do not require gradients.

    Args:
        dim: input size ``D``.
        num_classes: ``K``, the number of outputs.
        hidden: width of both hidden layers.
        seed: seeds the weights and the reference sample.
        reference_size: inputs used to standardise the outputs.

    Shape:
        ``teacher(x [N, D]) -> [N, K]`` logits.
    """
    check_int(dim, "dim", minimum=1)
    check_int(num_classes, "num_classes", minimum=2)
    check_int(hidden, "hidden", minimum=1)
    check_int(reference_size, "reference_size", minimum=2)
    gen = torch.Generator().manual_seed(seed)
    sizes = [dim, hidden, hidden, num_classes]
    linears = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(fan_in, fan_out)
        lin.weight.copy_(torch.randn(fan_out, fan_in, generator=gen) * (2.0 / fan_in) ** 0.5)
        lin.bias.zero_()
        linears.append(lin)
    teacher = nn.Sequential(linears[0], nn.ReLU(), linears[1], nn.ReLU(), linears[2])
    ref = teacher(torch.randn(reference_size, dim, generator=gen))
    mean, std = ref.mean(dim=0), ref.std(dim=0).clamp_min(1e-12)
    last = linears[2]
    last.weight.div_(std[:, None])
    last.bias.copy_(-mean / std)
    teacher.requires_grad_(False)
    return teacher


@overload
def teacher_student(
    num_samples: int, *, dim: int = ..., num_classes: int = ..., hidden: int = ..., seed: int = ...,
    noise: float = ..., return_teacher: Literal[False] = ...,
) -> TensorDataset: ...
@overload
def teacher_student(
    num_samples: int, *, dim: int = ..., num_classes: int = ..., hidden: int = ..., seed: int = ...,
    noise: float = ..., return_teacher: Literal[True],
) -> tuple[TensorDataset, nn.Sequential]: ...
@overload
def teacher_student(
    num_samples: int, *, dim: int = ..., num_classes: int = ..., hidden: int = ..., seed: int = ...,
    noise: float = ..., return_teacher: bool = ...,
) -> TensorDataset | tuple[TensorDataset, nn.Sequential]: ...
@torch.no_grad()
def teacher_student(
    num_samples: int,
    *,
    dim: int = 1024,
    num_classes: int = 10,
    hidden: int = 128,
    seed: int = 0,
    noise: float = 0.0,
    return_teacher: bool = False,
) -> TensorDataset | tuple[TensorDataset, nn.Sequential]:
    """Gaussian inputs labelled by a random 3-layer ReLU teacher (DTG-FF Sec. 3.2).

    ``x ~ N(0, I_dim)``, ``y = argmax teacher(x)`` (:func:`make_teacher` with the same ``seed``), then each label is
    replaced with probability ``noise`` by a uniformly drawn different class. The same arguments always give the
    same data. Samples are i.i.d., so a train/test split of one call (e.g. ``Subset``) shares the teacher.

    Args:
        num_samples: ``N``.
        dim: input size ``D`` (1024 = 32 x 32, so the samples can be reshaped to ``[1, 32, 32]`` images).
        num_classes: ``K``.
        hidden: width of the teacher's two hidden layers.
        seed: seeds the teacher, the inputs and the label noise.
        noise: label-noise probability in ``[0, 1]``.
        return_teacher: also return the teacher (to recompute or inspect the labels).

    Returns:
        ``TensorDataset(x [N, D] float32, y [N] int64)``, and the teacher if ``return_teacher``.
    """
    _check_args(num_samples, dim, num_classes, hidden, seed, noise)
    teacher = make_teacher(dim, num_classes, hidden, seed=seed)
    # A generator separate from the teacher's, so the inputs do not depend on the teacher's reference sample size.
    gen = torch.Generator().manual_seed(seed + 0x5EED)
    x = torch.randn(num_samples, dim, generator=gen)
    y = teacher(x).argmax(dim=1)
    if noise > 0:
        flip = torch.rand(num_samples, generator=gen) < noise
        offset = torch.randint(1, num_classes, (num_samples,), generator=gen)
        y = torch.where(flip, (y + offset) % num_classes, y)
    data = TensorDataset(x, y)
    return (data, teacher) if return_teacher else data


@overload
def teacher_student_images(
    num_samples: int, *, in_channels: int = ..., num_classes: int = ..., hidden: int = ..., seed: int = ...,
    noise: float = ..., return_teacher: Literal[False] = ...,
) -> TensorDataset: ...
@overload
def teacher_student_images(
    num_samples: int, *, in_channels: int = ..., num_classes: int = ..., hidden: int = ..., seed: int = ...,
    noise: float = ..., return_teacher: Literal[True],
) -> tuple[TensorDataset, nn.Sequential]: ...
@overload
def teacher_student_images(
    num_samples: int, *, in_channels: int = ..., num_classes: int = ..., hidden: int = ..., seed: int = ...,
    noise: float = ..., return_teacher: bool = ...,
) -> TensorDataset | tuple[TensorDataset, nn.Sequential]: ...
def teacher_student_images(
    num_samples: int,
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    hidden: int = 128,
    seed: int = 0,
    noise: float = 0.0,
    return_teacher: bool = False,
) -> TensorDataset | tuple[TensorDataset, nn.Sequential]:
    """:func:`teacher_student` with ``dim = in_channels * 32 * 32``, each sample reshaped to ``[C, 32, 32]``.

    This is the form ffkit networks read (``FFNetwork`` expects ``[B, C, H, W]``); the teacher sees the flattened
    image (row-major), exactly what an ffkit MLP sees. A label overlay (:class:`~ffkit.objectives.LabelOverlay`)
    overwrites the first ``K`` of the ``C * 1024`` features; the labels depend on all of them, so this costs a
    label-input network only a small part of the signal.

    Returns:
        ``TensorDataset(x [N, C, 32, 32] float32, y [N] int64)``, and the teacher if ``return_teacher``.
    """
    check_int(in_channels, "in_channels", minimum=1)
    data, teacher = teacher_student(
        num_samples,
        dim=in_channels * IMAGE_SIZE * IMAGE_SIZE,
        num_classes=num_classes,
        hidden=hidden,
        seed=seed,
        noise=noise,
        return_teacher=True,
    )
    x, y = data.tensors
    images = TensorDataset(x.reshape(num_samples, in_channels, IMAGE_SIZE, IMAGE_SIZE), y)
    return (images, teacher) if return_teacher else images
