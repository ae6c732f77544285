"""Tests for ffkit.goodness: every formula against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from ffkit import goodness
from ffkit.goodness import DTGTemperature, get_goodness

# Two 2-D samples used throughout, worked out by hand:
#   row 0 = [1, 2, 3, 6]
#     mean                = 12 / 4                 = 3.0
#     groups=2 -> means   = [(1+2)/2, (3+6)/2]     = [1.5, 4.5]
#     squares             = [1, 4, 9, 36], sum     = 50, mean = 12.5
#     groups=2 -> sums    = [1+4, 9+36]            = [5, 45];  means = [2.5, 22.5]
#   row 1 = [0, -2, 4, 2]
#     mean                = 4 / 4                  = 1.0
#     groups=2 -> means   = [(0-2)/2, (4+2)/2]     = [-1.0, 3.0]
#     squares             = [0, 4, 16, 4], sum     = 24, mean = 6.0
#     groups=2 -> sums    = [0+4, 16+4]            = [4, 20];  means = [2.0, 10.0]
#     groups=4 -> each element on its own
H2 = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, -2.0, 4.0, 2.0]])


def _four_d() -> torch.Tensor:
    """[B=2, C=4, H=2, W=2]; sample 1 is twice sample 0.

    Sample 0, channel by channel:
      c0 = [[1, 2], [3, 4]]    sum 10, mean 2.5, sum of squares 1+4+9+16 = 30
      c1 = [[5, 5], [5, 5]]    sum 20, mean 5.0, sum of squares 100
      c2 = [[0, 0], [0, 8]]    sum  8, mean 2.0, sum of squares 64
      c3 = [[-1, 1], [-1, 1]]  sum  0, mean 0.0, sum of squares 4
    groups=2 (consecutive blocks {c0, c1}, {c2, c3}):
      means          = [(10+20)/8, (8+0)/8]  = [3.75, 1.0]
      sums of sq.    = [30+100, 64+4]        = [130, 68]
      means of sq.   = [130/8, 68/8]         = [16.25, 8.5]
    (an interleaved split {c0, c2}, {c1, c3} would give means [2.25, 2.5] instead)
    ungrouped: mean 38/16 = 2.375, sum of squares 198, mean of squares 198/16 = 12.375
    Sample 1 = 2 * sample 0: means double, squares quadruple.
    """
    s0 = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0]],
            [[5.0, 5.0], [5.0, 5.0]],
            [[0.0, 0.0], [0.0, 8.0]],
            [[-1.0, 1.0], [-1.0, 1.0]],
        ]
    )
    return torch.stack([s0, 2 * s0])


# -- mean ----------------------------------------------------------------------------------------------------------


def test_mean_2d_ungrouped():
    assert_close(goodness.mean(H2), torch.tensor([3.0, 1.0]))


def test_mean_2d_grouped():
    assert_close(goodness.mean(H2, groups=2), torch.tensor([[1.5, 4.5], [-1.0, 3.0]]))


def test_mean_groups_equal_to_channels_is_identity():
    assert_close(goodness.mean(H2, groups=4), H2)


def test_mean_groups_one_is_ungrouped_with_group_dim():
    out = goodness.mean(H2, groups=1)
    assert out.shape == (2, 1)
    assert_close(out, torch.tensor([[3.0], [1.0]]))


def test_mean_4d_ungrouped():
    assert_close(goodness.mean(_four_d()), torch.tensor([2.375, 4.75]))


def test_mean_4d_grouped_uses_consecutive_channel_blocks():
    out = goodness.mean(_four_d(), groups=2)
    assert out.shape == (2, 2)
    assert_close(out, torch.tensor([[3.75, 1.0], [7.5, 2.0]]))


def test_mean_4d_one_group_per_channel():
    assert_close(goodness.mean(_four_d(), groups=4), torch.tensor([[2.5, 5.0, 2.0, 0.0], [5.0, 10.0, 4.0, 0.0]]))


def test_mean_non_contiguous_input():
    # Transposing [C, B] -> [B, C] gives a non-contiguous view; results must match the contiguous input.
    h = H2.t().contiguous().t()
    assert not h.is_contiguous()
    assert_close(goodness.mean(h, groups=2), torch.tensor([[1.5, 4.5], [-1.0, 3.0]]))


def test_mean_gradient():
    # d mean / d h_j = 1/4 for every element.
    h = H2.clone().requires_grad_(True)
    goodness.mean(h).sum().backward()
    assert_close(h.grad, torch.full((2, 4), 0.25))


# -- squared -------------------------------------------------------------------------------------------------------


def test_squared_2d_sum():
    assert_close(goodness.squared(H2), torch.tensor([50.0, 24.0]))


def test_squared_2d_mean_reduction():
    assert_close(goodness.squared(H2, reduction="mean"), torch.tensor([12.5, 6.0]))


def test_squared_2d_grouped_sum():
    assert_close(goodness.squared(H2, groups=2), torch.tensor([[5.0, 45.0], [4.0, 20.0]]))


def test_squared_2d_grouped_mean():
    assert_close(goodness.squared(H2, groups=2, reduction="mean"), torch.tensor([[2.5, 22.5], [2.0, 10.0]]))


def test_squared_4d_ungrouped():
    assert_close(goodness.squared(_four_d()), torch.tensor([198.0, 792.0]))
    assert_close(goodness.squared(_four_d(), reduction="mean"), torch.tensor([12.375, 49.5]))


def test_squared_4d_grouped():
    assert_close(goodness.squared(_four_d(), groups=2), torch.tensor([[130.0, 68.0], [520.0, 272.0]]))
    assert_close(goodness.squared(_four_d(), groups=2, reduction="mean"), torch.tensor([[16.25, 8.5], [65.0, 34.0]]))


def test_squared_gradient():
    # d/dh sum h^2 = 2h.
    h = H2.clone().requires_grad_(True)
    goodness.squared(h).sum().backward()
    assert_close(h.grad, 2 * H2)


# -- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [goodness.mean, goodness.squared])
def test_channels_not_divisible_by_groups(fn):
    h = torch.ones(2, 3, 2, 2)
    with pytest.raises(ValueError, match="3 channels"):
        fn(h, groups=2)


@pytest.mark.parametrize("fn", [goodness.mean, goodness.squared])
@pytest.mark.parametrize("groups", [0, -1])
def test_groups_below_one(fn, groups):
    with pytest.raises(ValueError, match="groups"):
        fn(H2, groups=groups)


@pytest.mark.parametrize("fn", [goodness.mean, goodness.squared])
def test_non_int_groups(fn):
    with pytest.raises(TypeError, match="groups"):
        fn(H2, groups=2.0)


@pytest.mark.parametrize("fn", [goodness.mean, goodness.squared])
def test_non_tensor_input(fn):
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn([[1.0, 2.0, 3.0, 6.0]])


@pytest.mark.parametrize("fn", [goodness.mean, goodness.squared])
def test_integer_tensor(fn):
    with pytest.raises(TypeError, match="floating"):
        fn(torch.tensor([[1, 2, 3, 6]]))


@pytest.mark.parametrize("fn", [goodness.mean, goodness.squared])
def test_grouping_needs_a_channel_dim(fn):
    with pytest.raises(ValueError):
        fn(torch.tensor([1.0, 2.0]), groups=1)


@pytest.mark.parametrize("reduction", ["max", "Sum", None])
def test_bad_reduction(reduction):
    with pytest.raises(ValueError, match="reduction"):
        goodness.squared(H2, reduction=reduction)


# -- DTGTemperature ------------------------------------------------------------------------------------------------


def test_dtg_tau_starts_at_midpoint():
    # s = 0 -> sigmoid(0) = 0.5 -> tau = 1 + (3 - 1) * 0.5 = 2.0
    t = DTGTemperature(1.0, 3.0)
    assert_close(t.s.detach(), torch.tensor(0.0))
    assert_close(t.tau.detach(), torch.tensor(2.0))
    # defaults 0.1, 10 -> midpoint 5.05
    assert_close(DTGTemperature().tau.detach(), torch.tensor(5.05))


def test_dtg_divides_by_tau():
    t = DTGTemperature(1.0, 3.0)
    g = torch.tensor([[2.0, 4.0], [-6.0, 1.0]])
    assert_close(t(g), torch.tensor([[1.0, 2.0], [-3.0, 0.5]]))


def test_dtg_only_parameter_is_s():
    t = DTGTemperature(0.5, 4.0)
    params = list(t.named_parameters())
    assert [name for name, _ in params] == ["s"]
    assert params[0][1].shape == ()
    assert params[0][1].requires_grad


def test_dtg_s_gets_hand_computed_gradient():
    # L = sum(g) / tau(s) with sum(g) = 6, tau(0) = 2, dtau/ds = (3 - 1) * sigmoid'(0) = 2 * 0.25 = 0.5
    # dL/ds = -6 / tau^2 * 0.5 = -6 / 4 * 0.5 = -0.75
    t = DTGTemperature(1.0, 3.0)
    t(torch.tensor([2.0, 4.0])).sum().backward()
    assert t.s.grad is not None
    assert_close(t.s.grad, torch.tensor(-0.75))


def test_dtg_s_is_learnable_by_an_optimizer():
    t = DTGTemperature(1.0, 3.0)
    opt = torch.optim.SGD(t.parameters(), lr=1.0)
    t(torch.tensor([2.0, 4.0])).sum().backward()
    opt.step()
    # s <- 0 - 1.0 * (-0.75) = 0.75
    assert_close(t.s.detach(), torch.tensor(0.75))


@pytest.mark.parametrize(
    "s, expected",
    [
        # sigmoid(ln 3) = 3 / (1 + 3) = 0.75 -> tau = 1 + 2 * 0.75 = 2.5
        (math.log(3.0), 2.5),
        # sigmoid(-ln 3) = 1 / (1 + 3) = 0.25 -> tau = 1 + 2 * 0.25 = 1.5
        (-math.log(3.0), 1.5),
        # sigmoid(ln 1) = 0.5 -> 2.0
        (0.0, 2.0),
    ],
)
def test_dtg_tau_at_known_s(s, expected):
    t = DTGTemperature(1.0, 3.0)
    with torch.no_grad():
        t.s.fill_(s)
    assert_close(t.tau.detach(), torch.tensor(expected))
    assert_close(t(torch.tensor([expected])).detach(), torch.tensor([1.0]))


def test_dtg_tau_stays_within_bounds():
    t = DTGTemperature(1.0, 3.0)
    for s in (-50.0, 50.0):
        with torch.no_grad():
            t.s.fill_(s)
        assert 1.0 <= t.tau.item() <= 3.0
    with torch.no_grad():
        t.s.fill_(50.0)
    assert t.tau.item() == pytest.approx(3.0)


@pytest.mark.parametrize("tau_min, tau_max", [(1.0, 1.0), (2.0, 1.0)])
def test_dtg_tau_max_not_above_tau_min(tau_min, tau_max):
    with pytest.raises(ValueError, match="tau_max"):
        DTGTemperature(tau_min, tau_max)


@pytest.mark.parametrize("tau_min", [0.0, -1.0])
def test_dtg_tau_min_not_positive(tau_min):
    with pytest.raises(ValueError, match="tau_min"):
        DTGTemperature(tau_min, 2.0)


def test_dtg_tau_non_number():
    with pytest.raises(TypeError):
        DTGTemperature("0.1", 2.0)


# -- get_goodness --------------------------------------------------------------------------------------------------


def test_get_goodness_by_name():
    assert get_goodness("mean") is goodness.mean
    assert get_goodness("squared") is goodness.squared


def test_get_goodness_passes_callables_through():
    def fn(h):
        return h.sum(dim=1)

    assert get_goodness(fn) is fn


@pytest.mark.parametrize("name", ["sum", "Mean", ""])
def test_get_goodness_unknown(name):
    with pytest.raises(ValueError, match="unknown goodness"):
        get_goodness(name)


@pytest.mark.parametrize("name", [3, None])
def test_get_goodness_neither_name_nor_callable(name):
    with pytest.raises(TypeError, match="goodness must be a name"):
        get_goodness(name)


def test_class_goodness_hand_example():
    """Scores [L=2, N=2, K=3], labels [0, 1]:
    layer 0: sample 0 [1, 2, 3] (y=0): pos 1, neg (2+3)/2 = 2.5; sample 1 [0, 4, 2] (y=1): pos 4, neg (0+2)/2 = 1
             -> pos (1+4)/2 = 2.5, neg (2.5+1)/2 = 1.75
    layer 1: sample 0 [3, 0, 0]: pos 3, neg 0; sample 1 [1, 3, 2]: pos 3, neg 1.5 -> pos 3.0, neg 0.75"""
    scores = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 4.0, 2.0]], [[3.0, 0.0, 0.0], [1.0, 3.0, 2.0]]])
    labels = torch.tensor([0, 1])
    got = goodness.class_goodness(scores, labels)
    assert got.shape == (2, 2)
    assert torch.equal(got, torch.tensor([[2.5, 3.0], [1.75, 0.75]]))
    # one layer's [N, K] gives [2]; the dtype is kept (no host round trip, no cast)
    one = goodness.class_goodness(scores[1].double(), labels)
    assert one.dtype == torch.float64 and torch.equal(one, torch.tensor([3.0, 0.75], dtype=torch.float64))


def test_class_goodness_of_a_single_class_has_no_negative_data():
    got = goodness.class_goodness(torch.tensor([[2.0], [4.0]]), torch.tensor([0, 0]))
    assert got[0].item() == 3.0 and math.isnan(got[1].item())
