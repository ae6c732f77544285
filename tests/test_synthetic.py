"""The synthetic teacher-student task (DTG-FF Sec. 3.2): shapes, determinism, balance, labels = teacher argmax."""

import pytest
import torch
from torch.utils.data import TensorDataset

from ffkit.data import make_teacher, teacher_student, teacher_student_images


def test_shapes_and_dtypes():
    data = teacher_student(50, dim=20, num_classes=5, hidden=8)
    assert isinstance(data, TensorDataset)
    x, y = data.tensors
    assert x.shape == (50, 20) and x.dtype == torch.float32
    assert y.shape == (50,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < 5
    assert len(data) == 50
    assert data[3][0].shape == (20,)


def test_image_form_is_the_flat_data_reshaped():
    flat = teacher_student(30, dim=3 * 1024, num_classes=10, hidden=16, seed=4)
    images = teacher_student_images(30, in_channels=3, num_classes=10, hidden=16, seed=4)
    xi, yi = images.tensors
    assert xi.shape == (30, 3, 32, 32)
    assert torch.equal(xi.reshape(30, -1), flat.tensors[0])
    assert torch.equal(yi, flat.tensors[1])


def test_deterministic_for_a_seed_and_different_across_seeds():
    a = teacher_student(40, dim=16, num_classes=4, hidden=8, seed=7)
    b = teacher_student(40, dim=16, num_classes=4, hidden=8, seed=7)
    c = teacher_student(40, dim=16, num_classes=4, hidden=8, seed=8)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[0], c.tensors[0])
    ta, tc = make_teacher(16, 4, 8, seed=7), make_teacher(16, 4, 8, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(ta.parameters(), tc.parameters()))


def test_labels_are_the_teacher_argmax_recomputed_by_hand():
    data, teacher = teacher_student(200, dim=12, num_classes=6, hidden=10, seed=3, return_teacher=True)
    x, y = data.tensors
    w1, b1 = teacher[0].weight, teacher[0].bias
    w2, b2 = teacher[2].weight, teacher[2].bias
    w3, b3 = teacher[4].weight, teacher[4].bias
    assert w1.shape == (10, 12) and w2.shape == (10, 10) and w3.shape == (6, 10)
    h1 = torch.clamp(x @ w1.T + b1, min=0)
    h2 = torch.clamp(h1 @ w2.T + b2, min=0)
    logits = h2 @ w3.T + b3
    assert torch.equal(logits.argmax(dim=1), y)
    # The teacher is a fixed function: no trainable parameters.
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_outputs_are_standardised_on_its_reference_sample():
    teacher = make_teacher(8, 3, 16, seed=1, reference_size=4096)
    gen = torch.Generator().manual_seed(1)
    # The reference sample is drawn after the three weight matrices from the same generator.
    for shape in ((16, 8), (16, 16), (3, 16)):
        torch.randn(*shape, generator=gen)
    ref = teacher(torch.randn(4096, 8, generator=gen))
    torch.testing.assert_close(ref.mean(dim=0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(ref.std(dim=0), torch.ones(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_classes_are_roughly_balanced(num_classes):
    y = teacher_student(20_000, dim=1024, num_classes=num_classes, hidden=128).tensors[1]
    freq = torch.bincount(y, minlength=num_classes).double() / len(y)
    # Every class occurs, and none is more than twice (or less than a third of) its uniform share.
    assert freq.min() > 1 / (3 * num_classes)
    assert freq.max() < 2 / num_classes


def test_label_noise_flips_the_requested_fraction_to_other_classes():
    clean, teacher = teacher_student(10_000, dim=16, num_classes=5, hidden=8, seed=2, return_teacher=True)
    noisy = teacher_student(10_000, dim=16, num_classes=5, hidden=8, seed=2, noise=0.3)
    assert torch.equal(clean.tensors[0], noisy.tensors[0])
    flipped = (clean.tensors[1] != noisy.tensors[1]).double().mean().item()
    assert abs(flipped - 0.3) < 0.02  # binomial std is 0.005
    all_flipped = teacher_student(1000, dim=16, num_classes=5, hidden=8, seed=2, noise=1.0)
    assert (all_flipped.tensors[1] != teacher(all_flipped.tensors[0]).argmax(dim=1)).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"num_samples": 5, "num_classes": 1}, ValueError, "num_classes"),
        ({"num_samples": 5, "dim": 2.5}, TypeError, "dim"),
        ({"num_samples": 5, "noise": 1.5}, ValueError, "noise"),
        ({"num_samples": 5, "seed": "a"}, TypeError, "seed"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    n = kwargs.pop("num_samples")
    with pytest.raises(error, match=match):
        teacher_student(n, **kwargs)
