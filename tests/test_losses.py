"""Tests for ffkit.losses: each loss against a value computed by hand with math.log / math.exp."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from ffkit import losses
from ffkit.losses import ff_threshold, get_loss, local_ce, symba

LN2 = math.log(2.0)  # softplus(0) = ln(1 + e^0) = ln 2 ~ 0.693147


def softplus(v: float) -> float:
    """ln(1 + e^v), by hand."""
    return math.log(1.0 + math.exp(v))


def _t(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


# -- ff_threshold --------------------------------------------------------------------------------------------------


def test_softplus_helper_sanity():
    # Not a test of ffkit: pins the hand-written helper the other tests rely on.
    assert softplus(0.0) == pytest.approx(0.6931471805599453)
    assert softplus(-1.0) == pytest.approx(0.31326168751822286)


def test_ff_threshold_at_threshold_is_two_ln2():
    # g_pos = g_neg = theta: softplus(0) + softplus(0) = 2 ln 2 ~ 1.386294
    g = torch.tensor([2.0, 2.0, 2.0])
    assert_close(ff_threshold(g, g.clone(), threshold=2.0), _t(2 * LN2))


def test_ff_threshold_hand_value():
    # theta = 2, g_pos = [2, 3], g_neg = [2, 0]
    # positive part: mean(softplus(2-2), softplus(2-3)) = (ln 2 + ln(1+e^-1)) / 2 = (0.693147 + 0.313262) / 2 = 0.503204
    # negative part: mean(softplus(2-2), softplus(0-2)) = (ln 2 + ln(1+e^-2)) / 2 = (0.693147 + 0.126928) / 2 = 0.410038
    # total ~ 0.913242
    expected = (LN2 + math.log(1 + math.exp(-1))) / 2 + (LN2 + math.log(1 + math.exp(-2))) / 2
    assert expected == pytest.approx(0.913242, abs=1e-6)
    out = ff_threshold(torch.tensor([2.0, 3.0]), torch.tensor([2.0, 0.0]), threshold=2.0)
    assert out.shape == ()
    assert_close(out, _t(expected))


def test_ff_threshold_means_each_part_separately():
    # Threshold 0.5, one sample: softplus(0.5 - 1.5) + softplus(-0.5 - 0.5) = 2 * ln(1 + e^-1)
    out = ff_threshold(torch.tensor([1.5]), torch.tensor([-0.5]), threshold=0.5)
    assert_close(out, _t(2 * math.log(1 + math.exp(-1))))


def test_ff_threshold_integer_threshold_and_gradient_signs():
    g_pos = torch.tensor([1.0, 4.0], requires_grad=True)
    g_neg = torch.tensor([1.0, 0.0], requires_grad=True)
    loss = ff_threshold(g_pos, g_neg, threshold=1)
    # softplus(0) / 2 + softplus(-3) / 2 + softplus(0) / 2 + softplus(-1) / 2
    expected = (LN2 + softplus(-3.0)) / 2 + (LN2 + softplus(-1.0)) / 2
    assert_close(loss, _t(expected))
    loss.backward()
    # d/dg_pos softplus(theta - g_pos) / B = -sigmoid(theta - g_pos) / B; d/dg_neg = +sigmoid(g_neg - theta) / B
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    assert_close(g_pos.grad, torch.tensor([-sig(0.0) / 2, -sig(-3.0) / 2]))
    assert_close(g_neg.grad, torch.tensor([sig(0.0) / 2, sig(-1.0) / 2]))


def test_ff_threshold_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        ff_threshold(torch.zeros(3), torch.zeros(4), threshold=1.0)


@pytest.mark.parametrize("threshold", ["2", None, True, torch.tensor(2.0)])
def test_ff_threshold_threshold_must_be_a_number(threshold):
    with pytest.raises(TypeError, match="threshold"):
        ff_threshold(torch.zeros(2), torch.zeros(2), threshold=threshold)


def test_ff_threshold_non_tensor_and_integer_inputs():
    with pytest.raises(TypeError):
        ff_threshold([1.0, 2.0], torch.zeros(2), threshold=1.0)
    with pytest.raises(TypeError):
        ff_threshold(torch.zeros(2), torch.zeros(2, dtype=torch.long), threshold=1.0)


# -- symba ---------------------------------------------------------------------------------------------------------


def test_symba_hand_value_default_alpha():
    # alpha = 4 (default), g_pos = [1, 0.5], g_neg = [0.5, 0.5]
    # softplus(4 * (0.5 - 1)) = softplus(-2) = ln(1 + e^-2) ~ 0.126928
    # softplus(4 * (0.5 - 0.5)) = softplus(0) = ln 2     ~ 0.693147
    # mean ~ 0.410038
    expected = (math.log(1 + math.exp(-2)) + LN2) / 2
    assert expected == pytest.approx(0.410038, abs=1e-6)
    out = symba(torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.5]))
    assert out.shape == ()
    assert_close(out, _t(expected))


def test_symba_alpha_scales_the_margin():
    # alpha = 2, g_neg - g_pos = [1, -3] -> mean(softplus(2), softplus(-6)) = (ln(1+e^2) + ln(1+e^-6)) / 2
    expected = (math.log(1 + math.exp(2)) + math.log(1 + math.exp(-6))) / 2
    out = symba(torch.tensor([0.0, 4.0]), torch.tensor([1.0, 1.0]), alpha=2.0)
    assert_close(out, _t(expected))


def test_symba_depends_only_on_the_difference():
    a = symba(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0]), alpha=1.5)
    b = symba(torch.tensor([11.0, -8.0]), torch.tensor([10.0, -7.0]), alpha=1.5)
    # both have g_neg - g_pos = [-1, 1]: mean(softplus(-1.5), softplus(1.5)) = (ln(1+e^-1.5) + ln(1+e^1.5)) / 2
    expected = _t((softplus(-1.5) + softplus(1.5)) / 2)
    assert_close(a, expected)
    assert_close(b, expected)


def test_symba_gradient_pushes_pos_up_and_neg_down():
    g_pos = torch.tensor([0.0], requires_grad=True)
    g_neg = torch.tensor([0.0], requires_grad=True)
    symba(g_pos, g_neg, alpha=4.0).backward()
    # d/dg_pos softplus(4 (g_neg - g_pos)) = -4 sigmoid(0) = -2
    assert_close(g_pos.grad, torch.tensor([-2.0]))
    assert_close(g_neg.grad, torch.tensor([2.0]))


def test_symba_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        symba(torch.zeros(2, 1), torch.zeros(2))


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_symba_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError, match="alpha"):
        symba(torch.zeros(2), torch.zeros(2), alpha=alpha)


# -- local_ce ------------------------------------------------------------------------------------------------------

SCORES = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
TARGET = torch.tensor([2, 1])


def _neg_log_probs(row: list[float]) -> list[float]:
    """-log softmax(row)_k for every k, by hand: logsumexp(row) - row_k."""
    lse = math.log(sum(math.exp(v) for v in row))
    return [lse - v for v in row]


def test_local_ce_hand_value():
    # row 0: logsumexp(1, 2, 3) = 3 + ln(1 + e^-1 + e^-2) = 3.407606; -log p_2 = 0.407606
    # row 1: uniform over 3 classes -> -log p_1 = ln 3 = 1.098612
    # mean = (0.407606 + 1.098612) / 2 = 0.753109
    expected = (3 + math.log(1 + math.exp(-1) + math.exp(-2)) - 3 + math.log(3.0)) / 2
    assert expected == pytest.approx(0.753109, abs=1e-6)
    out = local_ce(SCORES, TARGET)
    assert out.shape == ()
    assert_close(out, _t(expected))


def test_local_ce_label_smoothing_by_hand():
    # With K classes and smoothing eps: loss_i = (1 - eps) * (-log p_{y_i}) + eps * mean_k(-log p_k)
    # row 0: -log p = [2.407606, 1.407606, 0.407606], mean 1.407606
    #        loss = 0.9 * 0.407606 + 0.1 * 1.407606 = 0.507606
    # row 1: every -log p_k = ln 3 -> loss = ln 3 = 1.098612
    # mean = 0.803109
    eps = 0.1
    per_sample = []
    for row, y in zip(SCORES.tolist(), TARGET.tolist()):
        nlp = _neg_log_probs(row)
        per_sample.append((1 - eps) * nlp[y] + eps * sum(nlp) / len(nlp))
    expected = sum(per_sample) / len(per_sample)
    assert expected == pytest.approx(0.803109, abs=1e-6)
    assert_close(local_ce(SCORES, TARGET, label_smoothing=eps), _t(expected))


def test_local_ce_gradient_is_softmax_minus_onehot():
    # d/ds (-log softmax(s)_y) = softmax(s) - onehot(y); mean over B=2 halves it.
    s = SCORES.clone().requires_grad_(True)
    local_ce(s, TARGET).backward()
    z = math.exp(1) + math.exp(2) + math.exp(3)
    expected = torch.tensor(
        [
            [math.exp(1) / z / 2, math.exp(2) / z / 2, (math.exp(3) / z - 1) / 2],
            [1 / 6, (1 / 3 - 1) / 2, 1 / 6],
        ]
    )
    assert_close(s.grad, expected)


@pytest.mark.parametrize("bad", [torch.tensor([3, 0]), torch.tensor([-1, 0])])
def test_local_ce_labels_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        local_ce(SCORES, bad)


def test_local_ce_float_labels():
    with pytest.raises(TypeError, match="integer"):
        local_ce(SCORES, torch.tensor([2.0, 1.0]))


def test_local_ce_bool_labels():
    with pytest.raises(TypeError):
        local_ce(SCORES, torch.tensor([True, False]))


def test_local_ce_label_count_mismatch():
    with pytest.raises(ValueError, match="3 entries"):
        local_ce(SCORES, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("shape", [(3,), (2, 3, 1)])
def test_local_ce_scores_must_be_2d(shape):
    with pytest.raises(ValueError):
        local_ce(torch.zeros(shape), torch.tensor([0, 1]))


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5])
def test_local_ce_bad_label_smoothing(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        local_ce(SCORES, TARGET, label_smoothing=eps)


# -- get_loss ------------------------------------------------------------------------------------------------------


def test_get_loss_by_name():
    assert get_loss("symba") is symba
    assert get_loss("threshold") is ff_threshold
    assert get_loss("ff_threshold") is losses.ff_threshold


def test_get_loss_passes_callables_through():
    def my_loss(g_pos, g_neg):
        return (g_neg - g_pos).mean()

    assert get_loss(my_loss) is my_loss


@pytest.mark.parametrize("name", ["ce", "SymBa", "", None])
def test_get_loss_unknown(name):
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss(name)
