"""Tests for the positive/negative objective's label encoders (LabelOverlay, LabelChannel) and negative-label
samplers (ffkit.objectives)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from ffkit.layers import FFLinear
from ffkit.network import FFNetwork
from ffkit.objectives import (
    AdaptiveNegative,
    FixedNegative,
    LabelChannel,
    LabelOverlay,
    NegativeLabels,
    PosNegObjective,
    RandomNegative,
    get_negatives,
)


@pytest.mark.parametrize("name", ["LabelOverlay", "LabelChannel", "NegativeLabels", "RandomNegative",
                                  "FixedNegative", "AdaptiveNegative", "get_negatives"])
def test_old_ffkit_data_names_still_work_with_a_warning(name):
    import ffkit.objectives

    with pytest.warns(DeprecationWarning, match=f"ffkit.data.{name} moved to ffkit.objectives.{name}"):
        assert getattr(ffkit.data, name) is getattr(ffkit.objectives, name)
    with pytest.raises(AttributeError, match="has no attribute 'LabelPlane'"):
        ffkit.data.LabelPlane  # noqa: B018

# -- LabelOverlay --------------------------------------------------------------------------------------------------


def _image() -> torch.Tensor:
    """[2, 1, 4, 4]: sample 0 holds 0..15, sample 1 holds 16..31 (row-major)."""
    return torch.arange(32.0).reshape(2, 1, 4, 4)


def test_overlay_one_hot_by_hand():
    # K = 3, y = [2, 0]: the first 3 pixels (row 0, cols 0..2) become the one-hot label.
    #   sample 0 row 0: [0, 1, 2, 3]     -> [0, 0, 1, 3]
    #   sample 1 row 0: [16, 17, 18, 19] -> [1, 0, 0, 19]
    x = _image()
    out = LabelOverlay(3)(x, torch.tensor([2, 0]))
    assert out.shape == (2, 1, 4, 4)
    assert_close(out[0, 0, 0], torch.tensor([0.0, 0.0, 1.0, 3.0]))
    assert_close(out[1, 0, 0], torch.tensor([1.0, 0.0, 0.0, 19.0]))
    # every other pixel is unchanged
    assert_close(out[:, :, 1:], x[:, :, 1:])


def test_overlay_label_spans_rows():
    # K = 6 on a 4x4 image: the label covers row 0 and the first two pixels of row 1.
    x = _image()
    out = LabelOverlay(6)(x, torch.tensor([5, 1]))
    assert_close(out[0, 0, 0], torch.tensor([0.0, 0.0, 0.0, 0.0]))
    assert_close(out[0, 0, 1], torch.tensor([0.0, 1.0, 6.0, 7.0]))
    assert_close(out[1, 0, 0], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert_close(out[1, 0, 1], torch.tensor([0.0, 0.0, 22.0, 23.0]))
    assert_close(out[:, :, 2:], x[:, :, 2:])


def test_overlay_neutral_label():
    # y = None -> every label pixel = 1 / K = 0.25
    x = _image()
    out = LabelOverlay(4)(x, None)
    assert_close(out[:, 0, 0], torch.full((2, 4), 0.25))
    assert_close(out[:, :, 1:], x[:, :, 1:])


def test_overlay_on_value():
    x = _image()
    out = LabelOverlay(4, on_value=2.0)(x, torch.tensor([1, 3]))
    assert_close(out[:, 0, 0], torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]))
    neutral = LabelOverlay(4, on_value=2.0)(x, None)
    assert_close(neutral[:, 0, 0], torch.full((2, 4), 0.5))


def test_overlay_does_not_modify_input():
    x = _image()
    before = x.clone()
    LabelOverlay(3)(x, torch.tensor([2, 0]))
    LabelOverlay(3)(x, None)
    assert_close(x, before, rtol=0, atol=0)


def test_overlay_flat_inputs():
    x = torch.full((2, 5), 9.0)
    out = LabelOverlay(3)(x, torch.tensor([1, 2]))
    assert_close(out, torch.tensor([[0.0, 1.0, 0.0, 9.0, 9.0], [0.0, 0.0, 1.0, 9.0, 9.0]]))


@pytest.mark.parametrize("y", [torch.tensor([3, 0]), torch.tensor([-1, 0])])
def test_overlay_labels_out_of_range(y):
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        LabelOverlay(3)(_image(), y)


def test_overlay_float_labels():
    with pytest.raises(TypeError):
        LabelOverlay(3)(_image(), torch.tensor([1.0, 0.0]))


def test_overlay_too_few_pixels():
    with pytest.raises(ValueError, match="fewer than num_classes"):
        LabelOverlay(10)(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))


@pytest.mark.parametrize(("k", "error"), [(1, ValueError), (0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_overlay_bad_num_classes(k, error):
    with pytest.raises(error, match="num_classes must be an int"):
        LabelOverlay(k)


# -- LabelChannel --------------------------------------------------------------------------------------------------


def test_label_channel_appends_matrix_row():
    enc = LabelChannel(3, 2, 2, seed=0)
    x = torch.arange(8.0).reshape(2, 1, 2, 2)
    y = torch.tensor([2, 0])
    out = enc(x, y)
    assert out.shape == (2, 2, 2, 2)
    assert_close(out[:, :1], x)
    assert_close(out[0, 1], enc.matrix[2].reshape(2, 2))
    assert_close(out[1, 1], enc.matrix[0].reshape(2, 2))


def test_label_channel_multichannel_input():
    enc = LabelChannel(4, 3, 5)
    x = torch.randn(2, 3, 3, 5)
    out = enc(x, torch.tensor([1, 3]))
    assert out.shape == (2, 4, 3, 5)
    assert_close(out[:, :3], x)
    assert_close(out[1, 3], enc.matrix[3].reshape(3, 5))


def test_label_channel_neutral_is_mean_row():
    enc = LabelChannel(3, 2, 2)
    out = enc(torch.zeros(2, 1, 2, 2), None)
    expected = ((enc.matrix[0] + enc.matrix[1] + enc.matrix[2]) / 3).reshape(2, 2)
    assert_close(out[0, 1], expected)
    assert_close(out[1, 1], expected)


def test_label_channel_fixed_matrix_is_buffer():
    enc = LabelChannel(3, 2, 2)
    assert list(enc.parameters()) == []
    assert "matrix" in dict(enc.named_buffers())
    assert "matrix" in enc.state_dict()
    assert enc.matrix.shape == (3, 4)
    assert not enc.matrix.requires_grad


def test_label_channel_reproducible_from_seed():
    a, b, c = LabelChannel(3, 4, 4, seed=7), LabelChannel(3, 4, 4, seed=7), LabelChannel(3, 4, 4, seed=8)
    assert_close(a.matrix, b.matrix, rtol=0, atol=0)
    assert not torch.equal(a.matrix, c.matrix)
    # independent of the global RNG state
    torch.manual_seed(123)
    assert_close(LabelChannel(3, 4, 4, seed=7).matrix, a.matrix, rtol=0, atol=0)


def test_label_channel_learned_matrix_gets_gradient():
    enc = LabelChannel(3, 2, 2, learned=True)
    assert isinstance(enc.matrix, nn.Parameter)
    assert [name for name, _ in enc.named_parameters()] == ["matrix"]
    out = enc(torch.zeros(2, 1, 2, 2), torch.tensor([2, 0]))
    out[:, 1].sum().backward()
    # Rows 0 and 2 were used once each; row 1 not at all.
    expected = torch.tensor([[1.0] * 4, [0.0] * 4, [1.0] * 4])
    assert_close(enc.matrix.grad, expected)


def test_label_channel_learned_and_fixed_start_equal():
    assert_close(LabelChannel(3, 2, 2, learned=True, seed=3).matrix.detach(), LabelChannel(3, 2, 2, seed=3).matrix)


@pytest.mark.parametrize("shape", [(2, 1, 3, 2), (2, 1, 2, 3), (2, 4)])
def test_label_channel_wrong_spatial_size(shape):
    with pytest.raises(ValueError):
        LabelChannel(3, 2, 2)(torch.zeros(shape), torch.tensor([0, 1]))


def test_label_channel_labels_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        LabelChannel(3, 2, 2)(torch.zeros(2, 1, 2, 2), torch.tensor([0, 3]))


# -- RandomNegative ------------------------------------------------------------------------------------------------


def test_random_negative_never_true_label():
    torch.manual_seed(0)
    y = torch.arange(5).repeat(400)  # 2000 samples, every class
    neg = RandomNegative(5)
    for _ in range(5):
        out = neg(y)
        assert out.shape == y.shape
        assert out.dtype == y.dtype
        assert not (out == y).any()
        assert ((out >= 0) & (out < 5)).all()


def test_random_negative_reproducible_with_generator():
    y = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(1))
    a = RandomNegative(4, generator=torch.Generator().manual_seed(3))(y)
    b = RandomNegative(4, generator=torch.Generator().manual_seed(3))(y)
    assert torch.equal(a, b)
    # a sampler keeps drawing: a second call is a fresh draw
    neg = RandomNegative(4, generator=torch.Generator().manual_seed(3))
    first, second = neg(y), neg(y)
    assert torch.equal(first, a)
    assert not torch.equal(first, second)


def test_random_negative_covers_all_wrong_labels():
    y = torch.zeros(600, dtype=torch.long)
    out = RandomNegative(5, generator=torch.Generator().manual_seed(0))(y)
    assert set(out.tolist()) == {1, 2, 3, 4}
    # roughly uniform: each of the 4 wrong labels gets 150 expected; allow a wide margin
    counts = torch.bincount(out, minlength=5)
    assert counts[0] == 0
    assert (counts[1:] > 90).all()


def test_random_negative_two_classes_is_the_other_label():
    y = torch.tensor([0, 1, 1, 0])
    assert torch.equal(RandomNegative(2)(y), torch.tensor([1, 0, 0, 1]))


def test_random_negative_bad_labels():
    with pytest.raises(ValueError):
        RandomNegative(3)(torch.tensor([0, 3]))


# -- FixedNegative -------------------------------------------------------------------------------------------------


def test_fixed_negative_same_label_for_same_index():
    neg = FixedNegative(10)
    y = torch.arange(10).repeat(10)
    index = torch.arange(100)
    a, b = neg(y, index=index), neg(y, index=index)
    assert torch.equal(a, b)
    # a sample's label does not depend on which batch it is in or its position
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(neg(y[perm], index=index[perm]), a[perm])
    assert torch.equal(neg(y[7:8], index=index[7:8]), a[7:8])
    # and a fresh sampler with the same seed agrees (survives resuming)
    assert torch.equal(FixedNegative(10)(y, index=index), a)


def test_fixed_negative_never_true_label_and_varies():
    y = torch.arange(7).repeat(100)
    out = FixedNegative(7)(y, index=torch.arange(700))
    assert not (out == y).any()
    assert ((out >= 0) & (out < 7)).all()
    # over many indices every wrong label shows up
    assert set(out[y == 0].tolist()) == {1, 2, 3, 4, 5, 6}


def test_fixed_negative_needs_index():
    with pytest.raises(ValueError, match="index"):
        FixedNegative(3)(torch.tensor([0, 1]))


# -- AdaptiveNegative ----------------------------------------------------------------------------------------------


class _StubNetwork:
    """Minimal stand-in: fixed class scores, a training flag, and a record of the mode it was scored in."""

    def __init__(self, scores: torch.Tensor, training: bool = True) -> None:
        self.scores = scores
        self.training = training
        self.scored_in_training_mode: bool | None = None
        self.seen_x: torch.Tensor | None = None

    def train(self, mode: bool = True) -> _StubNetwork:
        self.training = mode
        return self

    def eval(self) -> _StubNetwork:
        return self.train(False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # AdaptiveNegative scores with the network's own prediction, net(x)
        return self.class_scores(x)

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        self.scored_in_training_mode = self.training
        self.seen_x = x
        return self.scores


# K = 4, three samples. y = [0, 2, 3].
#   sample 0: scores [9, 1, 5, 2] -> true label 0 scores highest; best wrong label is 2
#   sample 1: scores [3, 7, 8, 0] -> true label 2 highest; best wrong label is 1
#   sample 2: scores [1, 6, 2, 4] -> true label 3 not highest; best wrong label is 1
STUB_SCORES = torch.tensor([[9.0, 1.0, 5.0, 2.0], [3.0, 7.0, 8.0, 0.0], [1.0, 6.0, 2.0, 4.0]])
STUB_Y = torch.tensor([0, 2, 3])


@pytest.mark.parametrize("training", [True, False])
def test_adaptive_negative_picks_best_wrong_label(training):
    net = _StubNetwork(STUB_SCORES, training=training)
    x = torch.zeros(3, 1, 2, 2)
    out = AdaptiveNegative(4)(STUB_Y, x=x, network=net)
    assert torch.equal(out, torch.tensor([2, 1, 1]))
    assert net.seen_x is x
    # scored in eval mode, then the caller's mode is restored
    assert net.scored_in_training_mode is False
    assert net.training is training


def test_adaptive_negative_restores_mode_on_error():
    class Failing(_StubNetwork):
        def class_scores(self, x):
            raise RuntimeError("boom")

    net = Failing(STUB_SCORES, training=True)
    with pytest.raises(RuntimeError, match="boom"):
        AdaptiveNegative(4)(STUB_Y, x=torch.zeros(3, 1), network=net)
    assert net.training is True


def test_adaptive_negative_does_not_track_gradients():
    scores = STUB_SCORES.clone().requires_grad_(True)

    class Grad(_StubNetwork):
        def class_scores(self, x):
            self.grad_enabled = torch.is_grad_enabled()
            return self.scores * 1.0

    net = Grad(scores)
    out = AdaptiveNegative(4)(STUB_Y, x=torch.zeros(3, 1), network=net)
    assert net.grad_enabled is False
    assert not out.requires_grad
    assert torch.equal(out, torch.tensor([2, 1, 1]))


def test_adaptive_negative_sampling_never_true_label():
    # One sample whose true label has by far the highest score: sampling must still never return it.
    scores = torch.tensor([[50.0, 1.0, 0.5]]).repeat(200, 1)
    y = torch.zeros(200, dtype=torch.long)
    neg = AdaptiveNegative(3, sample=True, generator=torch.Generator().manual_seed(0))
    out = neg(y, x=torch.zeros(200, 1), network=_StubNetwork(scores))
    assert not (out == 0).any()
    assert set(out.tolist()) == {1, 2}


def test_adaptive_negative_needs_x_and_network():
    net = _StubNetwork(STUB_SCORES)
    with pytest.raises(ValueError, match="network"):
        AdaptiveNegative(4)(STUB_Y, x=torch.zeros(3, 1))
    with pytest.raises(ValueError):
        AdaptiveNegative(4)(STUB_Y, network=net)


def test_adaptive_negative_with_real_network():
    torch.manual_seed(0)
    k = 3
    net = FFNetwork(
        [FFLinear(16, 8), FFLinear(8, 8)],
        PosNegObjective(LabelOverlay(k), RandomNegative(k)),
        num_classes=k,
        in_channels=1,
    )
    x = torch.rand(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    net.train()
    out = AdaptiveNegative(k)(y, x=x, network=net)
    assert net.training is True
    with torch.no_grad():
        scores = net.eval().class_scores(x)
    scores[torch.arange(5), y] = float("-inf")
    assert torch.equal(out, scores.argmax(dim=1))
    assert not (out == y).any()


# -- get_negatives -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, cls", [("random", RandomNegative), ("fixed", FixedNegative), ("adaptive", AdaptiveNegative)]
)
def test_get_negatives(name, cls):
    neg = get_negatives(name, 5)
    assert type(neg) is cls
    assert isinstance(neg, NegativeLabels)
    assert neg.num_classes == 5


def test_get_negatives_unknown():
    with pytest.raises(ValueError, match="unknown negatives"):
        get_negatives("hard", 5)


@pytest.mark.parametrize("cls", [RandomNegative, FixedNegative, AdaptiveNegative])
def test_negatives_need_two_classes(cls):
    with pytest.raises(ValueError):
        cls(1)
