"""Tests for ffkit.layers: CWConv, ParamFreeResidual, FFLinear, TrifectaConv."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from ffkit import goodness
from ffkit.layers import CWConv, FFLayer, FFLinear, LayerOutput, ParamFreeResidual, TrifectaConv


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _group_stats(h: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-group mean and biased variance of ``h [B, C, H, W]`` by consecutive channel blocks."""
    per = h.shape[1] // groups
    blocks = [h[:, k * per : (k + 1) * per].reshape(h.shape[0], -1) for k in range(groups)]
    means = torch.stack([b.mean(dim=1) for b in blocks], dim=1)
    variances = torch.stack([b.var(dim=1, unbiased=False) for b in blocks], dim=1)
    return means, variances


# -- CWConv --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, out_hw",
    [
        ({}, (8, 8)),
        ({"pool": 2}, (4, 4)),
        ({"stride": 2}, (4, 4)),
        ({"pool": 2, "stride": 2}, (2, 2)),
        ({"kernel_size": 5}, (8, 8)),
        ({"kernel_size": 3, "padding": 0}, (6, 6)),
    ],
)
def test_cwconv_shapes(kwargs, out_hw):
    layer = CWConv(3, 6, num_classes=3, **kwargs)
    out = layer(_x(2, 3, 8, 8))
    assert isinstance(out, LayerOutput)
    assert out.features.shape == (2, 6, *out_hw)
    assert out.scores.shape == (2, 3)
    torch.testing.assert_close(out.goodness, out.scores.mean(1))  # mean goodness (Eq. 5): equal-size groups


def test_cwconv_is_an_fflayer_without_bias():
    layer = CWConv(3, 4, num_classes=2)
    assert isinstance(layer, FFLayer)
    assert layer.conv.bias is None
    assert [name for name, _ in layer.named_parameters()] == ["conv.weight"]
    assert layer.accepts_shortcut is False


@pytest.mark.parametrize("pool, stride", [(1, 1), (2, 1), (1, 2)])
def test_cwconv_scores_are_group_means_of_relu_activity(pool, stride):
    torch.manual_seed(0)
    layer = CWConv(3, 6, num_classes=2, pool=pool, stride=stride, dropout=0.5).eval()
    x = _x(2, 3, 8, 8, seed=1)
    out = layer(x)
    # Independent recomputation from the layer's weight.
    inp = F.avg_pool2d(x, pool) if pool > 1 else x
    h = F.relu(F.conv2d(inp, layer.conv.weight, stride=stride, padding=1))
    assert_close(out.scores, goodness.mean(h, groups=2))
    # ... and by explicit channel blocks 0-2 (class 0) and 3-5 (class 1).
    by_hand = torch.stack([h[:, 0:3].mean(dim=(1, 2, 3)), h[:, 3:6].mean(dim=(1, 2, 3))], dim=1)
    assert_close(out.scores, by_hand)


def test_cwconv_features_are_group_norm_of_activity():
    layer = CWConv(3, 6, num_classes=2).eval()
    x = _x(4, 3, 5, 5, seed=2)
    out = layer(x)
    h = F.relu(F.conv2d(x, layer.conv.weight, padding=1))
    assert_close(out.features, F.group_norm(h, 2))
    # Each class's channel block is normalised on its own: mean ~0, variance ~1.
    means, variances = _group_stats(out.features, 2)
    assert_close(means, torch.zeros(4, 2), atol=1e-5, rtol=0)
    assert_close(variances, torch.ones(4, 2), atol=1e-3, rtol=0)
    # By hand: (h - mean_g) / sqrt(var_g + 1e-5) for the first block of sample 0.
    blk = h[0, 0:3]
    expected = (blk - blk.mean()) / torch.sqrt(blk.var(unbiased=False) + 1e-5)
    assert_close(out.features[0, 0:3], expected)


def test_cwconv_dropout_only_in_training():
    torch.manual_seed(0)
    layer = CWConv(3, 4, num_classes=2, dropout=0.5)
    x = _x(2, 3, 6, 6, seed=3)
    h = F.relu(F.conv2d(x, layer.conv.weight, padding=1))
    train_scores = layer.train()(x).scores
    assert not torch.allclose(train_scores, goodness.mean(h, groups=2))
    assert_close(layer.eval()(x).scores, goodness.mean(h, groups=2))


def test_cwconv_gradient_reaches_conv_weight():
    layer = CWConv(3, 4, num_classes=2)
    out = layer(_x(2, 3, 6, 6))
    out.scores.sum().backward()
    assert layer.conv.weight.grad is not None
    assert layer.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("out_channels, num_classes", [(5, 2), (10, 3), (3, 10)])
def test_cwconv_out_channels_not_multiple_of_classes(out_channels, num_classes):
    with pytest.raises(ValueError, match="multiple"):
        CWConv(3, out_channels, num_classes=num_classes)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"kernel_size": 0},
        {"stride": 0},
        {"pool": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
    ],
)
def test_cwconv_bad_arguments(kwargs):
    args = {"in_channels": 3, "out_channels": 4, "num_classes": 2, **kwargs}
    with pytest.raises(ValueError):
        CWConv(**args)


def test_cwconv_missing_shortcut():
    layer = CWConv(4, 4, num_classes=2, shortcut_channels=4)
    assert layer.accepts_shortcut is True
    with pytest.raises(ValueError, match="received no shortcut"):
        layer(_x(1, 4, 4, 4))


def test_cwconv_unexpected_shortcut():
    layer = CWConv(4, 4, num_classes=2)
    with pytest.raises(ValueError, match="built without shortcut_channels"):
        layer(_x(1, 4, 4, 4), _x(1, 4, 4, 4))


def _one_by_one(out_channels: int, weights: list[float], **kwargs) -> CWConv:
    layer = CWConv(1, out_channels, num_classes=2, kernel_size=1, **kwargs).eval()
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor(weights).view(-1, 1, 1, 1))
    return layer


# By hand (Eq. 8-9, then Eq. 11): input [1, 3] (1 channel, 1x2 positions), 1x1 conv weights +1 and -1, 2 classes of one
# channel each: h = [[1, 3], [0, 0]] -> scores [2, 0]; GroupNorm: channel 0 (mean 2, variance 1) -> [-1, 1] /
# sqrt(1 + 1e-5), channel 1 (constant 0) -> [0, 0]. The shortcut is joined to these features only.
_X = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
_GN = torch.tensor([[-1.0, 1.0], [0.0, 0.0]]) / torch.tensor([[(1 + 1e-5) ** 0.5], [1.0]])
_SC = torch.tensor([[5.0, 6.0], [7.0, 8.0]]).view(1, 2, 1, 2)


def test_cwconv_adds_shortcut_to_normalised_features_by_hand():
    layer = _one_by_one(2, [1.0, -1.0], shortcut_channels=2)
    out = layer(_X, _SC)
    assert_close(out.scores, torch.tensor([[2.0, 0.0]]))
    assert_close(out.features, (_GN + _SC[0, :, 0]).view(1, 2, 1, 2))


def test_cwconv_concatenates_shortcut_after_features_by_hand():
    # out 4 = conv 2 + shortcut 2: the scores come from the conv's 2 channels, the shortcut is appended unchanged
    layer = _one_by_one(4, [1.0, -1.0], shortcut_channels=2)
    assert layer.conv.out_channels == 2
    out = layer(_X, _SC)
    assert_close(out.scores, torch.tensor([[2.0, 0.0]]))
    assert_close(out.features, torch.cat([_GN.view(1, 2, 1, 2), _SC], dim=1))


@pytest.mark.parametrize("shortcut_channels, out_channels", [(4, 4), (2, 6)])
def test_cwconv_shortcut_never_reaches_scores(shortcut_channels, out_channels):
    layer = CWConv(3, out_channels, num_classes=2, shortcut_channels=shortcut_channels).eval()
    x = _x(2, 3, 4, 4, seed=4)
    a = layer(x, _x(2, shortcut_channels, 4, 4, seed=5))
    b = layer(x, 100 * _x(2, shortcut_channels, 4, 4, seed=6))
    assert_close(a.scores, b.scores)
    h = F.relu(F.conv2d(x, layer.conv.weight, padding=1))
    assert_close(a.scores, goodness.mean(h, groups=2))


def test_cwconv_with_added_shortcut():
    layer = CWConv(3, 4, num_classes=2, shortcut_channels=4).eval()
    assert layer.conv.out_channels == 4
    x, sc = _x(2, 3, 4, 4, seed=4), _x(2, 4, 8, 8, seed=5)  # shortcut at twice the size -> average-pooled
    out = layer(x, sc)
    h = F.relu(F.conv2d(x, layer.conv.weight, padding=1))
    assert_close(out.scores, goodness.mean(h, groups=2))
    assert_close(out.features, F.group_norm(h, 2) + F.avg_pool2d(sc, 2))


def test_cwconv_with_concatenated_shortcut():
    # out 6, shortcut 2, 2 classes -> conv makes 6 - 2 = 4 channels (2 per class); output [GN(h), shortcut]
    layer = CWConv(3, 6, num_classes=2, shortcut_channels=2).eval()
    assert layer.conv.out_channels == 4
    x, sc = _x(2, 3, 4, 4, seed=6), _x(2, 2, 8, 8, seed=7)
    out = layer(x, sc)
    h = F.relu(F.conv2d(x, layer.conv.weight, padding=1))
    assert out.features.shape == (2, 6, 4, 4)
    assert_close(out.scores, goodness.mean(h, groups=2))
    assert_close(out.features, torch.cat([F.group_norm(h, 2), F.avg_pool2d(sc, 2)], dim=1))


def test_cwconv_shortcut_join_with_dropout_and_detached_features():
    """The fused no-grad feature path (features detached by the engine) joins the shortcut as the plain path does."""
    layer = CWConv(3, 6, num_classes=2, shortcut_channels=2, dropout=0.3)
    x, sc = _x(2, 3, 4, 4, seed=8), _x(2, 2, 4, 4, seed=9)
    torch.manual_seed(3)
    plain = layer(x, sc)
    layer.features_detached = True
    torch.manual_seed(3)
    fast = layer(x, sc)
    layer.features_detached = False
    assert not fast.features.requires_grad
    assert_close(fast.scores, plain.scores)
    assert_close(fast.features, plain.features.detach())
    assert_close(fast.features[:, 4:], sc)


# -- ParamFreeResidual ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c_r, c", [(4, 4), (2, 4), (2, 6)])
def test_residual_has_no_parameters(c_r, c):
    r = ParamFreeResidual(c_r, c, groups=2)
    assert list(r.parameters()) == []
    assert list(r.buffers()) == []


def test_residual_add_mode_by_hand():
    r = ParamFreeResidual(2, 2)
    assert r.mode == "add"
    assert r.conv_channels == 2
    z = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, -1.0], [5.0, 0.5]]]])
    s = torch.tensor([[[[10.0, 20.0], [30.0, 40.0]], [[1.0, 1.0], [-5.0, 0.5]]]])
    expected = torch.tensor([[[[11.0, 22.0], [33.0, 44.0]], [[1.0, 0.0], [0.0, 1.0]]]])
    assert_close(r(z, s), expected)


def test_residual_concat_mode_channel_counts():
    r = ParamFreeResidual(2, 6, groups=2)
    assert r.mode == "concat"
    assert r.conv_channels == 4


def test_residual_concat_appends_shortcut_by_hand():
    # groups = 2, C = 6, C_r = 2 -> conv channels 4; features hold constants 1, 2, 3, 4, the shortcut 10, 20:
    # the output is plain [features, shortcut] = [1, 2, 3, 4, 10, 20] (the release's torch.cat([x, shortcut], 1))
    r = ParamFreeResidual(2, 6, groups=2)
    z = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1).expand(2, 4, 2, 3).clone()
    s = torch.tensor([10.0, 20.0]).view(1, 2, 1, 1).expand(2, 2, 2, 3).clone()
    out = r(z, s)
    assert out.shape == (2, 6, 2, 3)
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0]).view(1, 6, 1, 1).expand(2, 6, 2, 3)
    assert_close(out, expected)


def test_residual_concat_single_group_appends():
    r = ParamFreeResidual(1, 3)
    z = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    s = torch.tensor([7.0]).view(1, 1, 1, 1)
    assert_close(r(z, s), torch.tensor([1.0, 2.0, 7.0]).view(1, 3, 1, 1))


def test_residual_shortcut_is_average_pooled_by_hand():
    # shortcut [[1, 2], [3, 5]] -> average 11 / 4 = 2.75; z = 0.25 -> 3.0
    r = ParamFreeResidual(1, 1)
    z = torch.tensor([[[[0.25]]]])
    s = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    assert_close(r(z, s), torch.tensor([[[[3.0]]]]))


def test_residual_shortcut_pooling_in_concat_mode():
    # 4x4 shortcut into a 2x2 block: every 2x2 window averaged.
    r = ParamFreeResidual(1, 2)
    z = torch.zeros(1, 1, 2, 2)
    s = torch.arange(16.0).view(1, 1, 4, 4)
    # windows: [0,1,4,5] -> 2.5, [2,3,6,7] -> 4.5, [8,9,12,13] -> 10.5, [10,11,14,15] -> 12.5
    out = r(z, s)
    assert_close(out[0, 1], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert_close(out[0, 0], torch.zeros(2, 2))


def test_residual_shortcut_channels_exceed_out_channels():
    with pytest.raises(ValueError, match="must not exceed"):
        ParamFreeResidual(8, 4)


def test_residual_channels_not_multiple_of_groups():
    with pytest.raises(ValueError, match="multiple"):
        ParamFreeResidual(3, 6, groups=2)


def test_residual_wrong_shortcut_channels():
    r = ParamFreeResidual(2, 4)
    with pytest.raises(ValueError, match="shortcut has 3 channels, expected 2"):
        r(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


def test_residual_wrong_feature_channels():
    r = ParamFreeResidual(2, 4)
    with pytest.raises(ValueError, match="features have 4 channels, expected 2"):
        r(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, 2))


@pytest.mark.parametrize("shortcut_hw", [(3, 3), (4, 2), (6, 4)])
def test_residual_non_integer_spatial_ratio(shortcut_hw):
    r = ParamFreeResidual(1, 1)
    with pytest.raises(ValueError, match="integer multiple"):
        r(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, *shortcut_hw))


# -- FFLinear ------------------------------------------------------------------------------------------------------


def test_fflinear_length_normalisation_invariance():
    layer = FFLinear(6, 5)
    x = _x(3, 6, seed=8)
    a, b = layer(x), layer(7 * x)
    assert_close(a.features, b.features)
    assert_close(a.goodness, b.goodness)


def test_fflinear_hand_values():
    # W = I, b = 0: x = [3, 4] -> x / |x| = [0.6, 0.8] -> ReLU -> goodness 0.36 + 0.64 = 1.0
    #               x = [3, -4] -> [0.6, -0.8] -> ReLU [0.6, 0] -> goodness 0.36
    layer = FFLinear(2, 2)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.eye(2))
        layer.linear.bias.zero_()
    out = layer(torch.tensor([[3.0, 4.0], [3.0, -4.0]]))
    assert_close(out.features, torch.tensor([[0.6, 0.8], [0.6, 0.0]]))
    assert_close(out.goodness, torch.tensor([1.0, 0.36]))
    assert out.scores is None


def test_fflinear_goodness_is_sum_of_squares_of_features():
    layer = FFLinear(6, 5)
    out = layer(_x(4, 6, seed=9))
    assert_close(out.goodness, (out.features**2).sum(dim=1))
    mean_layer = FFLinear(6, 5, goodness="mean")
    mean_layer.load_state_dict(layer.state_dict())
    assert_close(mean_layer(_x(4, 6, seed=9)).goodness, (out.features**2).mean(dim=1))


def test_fflinear_flattens_images():
    layer = FFLinear(16, 3)
    x = _x(2, 1, 4, 4, seed=10)
    out = layer(x)
    assert out.features.shape == (2, 3)
    assert out.goodness.shape == (2,)
    flat = x.reshape(2, 16)
    expected = F.relu(F.linear(flat / flat.norm(dim=1, keepdim=True), layer.linear.weight, layer.linear.bias))
    assert_close(out.features, expected)


def test_fflinear_zero_input_is_finite():
    out = FFLinear(4, 3)(torch.zeros(2, 4))
    assert torch.isfinite(out.features).all()
    assert torch.isfinite(out.goodness).all()


def test_fflinear_wrong_input_size():
    with pytest.raises(ValueError, match="16 input features"):
        FFLinear(16, 3)(torch.zeros(2, 1, 3, 3))


@pytest.mark.parametrize("kwargs", [{"in_features": 0}, {"out_features": 0}, {"goodness": "max"}])
def test_fflinear_bad_arguments(kwargs):
    args = {"in_features": 4, "out_features": 3, **kwargs}
    with pytest.raises(ValueError):
        FFLinear(**args)


# -- TrifectaConv --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("maxpool, out_hw", [(False, (8, 8)), (True, (4, 4))])
def test_trifecta_shapes(maxpool, out_hw):
    layer = TrifectaConv(3, 5, maxpool=maxpool)
    out = layer(_x(2, 3, 8, 8))
    assert out.features.shape == (2, 5, *out_hw)
    assert out.goodness.shape == (2,)
    assert out.scores is None


def test_trifecta_structure():
    layer = TrifectaConv(3, 5)
    assert isinstance(layer.norm, nn.BatchNorm2d)
    assert layer.norm.num_features == 3  # normalises the input, before the conv
    assert layer.conv.bias is None


@pytest.mark.parametrize("maxpool", [False, True])
def test_trifecta_is_bn_conv_relu_maxpool(maxpool):
    # In training mode a fresh BatchNorm normalises with the batch statistics (weight 1, bias 0).
    layer = TrifectaConv(3, 4, maxpool=maxpool).train()
    x = 3 * _x(4, 3, 6, 6, seed=11) + 1
    out = layer(x)
    mu = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    xn = (x - mu) / torch.sqrt(var + 1e-5)
    h = F.relu(F.conv2d(xn, layer.conv.weight, padding=1))
    if maxpool:
        h = F.max_pool2d(h, 2)
    assert_close(out.features, h)


def test_trifecta_eval_mode_uses_running_stats():
    # Fresh running stats (mean 0, var 1): BN divides by sqrt(1 + 1e-5) only.
    layer = TrifectaConv(2, 2).eval()
    x = _x(2, 2, 4, 4, seed=12)
    h = F.relu(F.conv2d(x / math.sqrt(1 + 1e-5), layer.conv.weight, padding=1))
    assert_close(layer(x).features, h)


@pytest.mark.parametrize("maxpool", [False, True])
def test_trifecta_goodness_is_mean_of_squares(maxpool):
    layer = TrifectaConv(3, 4, maxpool=maxpool)
    out = layer(_x(3, 3, 6, 6, seed=13))
    assert_close(out.goodness, out.features.square().mean(dim=(1, 2, 3)))


def test_trifecta_bad_arguments():
    with pytest.raises(ValueError):
        TrifectaConv(0, 4)


# -- FFLinear's loeweX options -------------------------------------------------------------------------------------


def test_fflinear_rms_norm_by_hand():
    layer = FFLinear(4, 1, norm="rms", eps=0.0)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        layer.linear.bias.zero_()
    # x = [3, 4, 0, 0]: RMS = sqrt((9 + 16) / 4) = 2.5, so the first input becomes 3 / 2.5 = 1.2
    out = layer(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))
    assert_close(out.features, torch.tensor([[1.2]]))
    assert_close(out.goodness, torch.tensor([1.44]))
    l2 = FFLinear(4, 1, eps=0.0)  # the L2 form: 3 / 5
    l2.load_state_dict(layer.state_dict())
    assert_close(l2(torch.tensor([[3.0, 4.0, 0.0, 0.0]])).features, torch.tensor([[0.6]]))


def test_relu_full_grad_passes_the_gradient_where_relu_stops_it():
    from ffkit.layers import relu_full_grad

    z = torch.tensor([-2.0, 0.5, 3.0], requires_grad=True)
    h = relu_full_grad(z)
    assert torch.equal(h, torch.tensor([0.0, 0.5, 3.0]))
    (h * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(z.grad, torch.tensor([1.0, 2.0, 3.0]))  # F.relu would give 0 for the first


def test_peer_normalization_loss_by_hand():
    from ffkit.layers import peer_normalization_loss

    # m = [0.5, 0.5]; positives' mean activity [1, 3] -> m' = 0.9 * 0.5 + 0.1 * [1, 3] = [0.55, 0.75];
    # mean(m') = 0.65 -> loss = mean([0.1^2, 0.1^2]) = 0.01
    act = torch.tensor([[0.0, 2.0], [2.0, 4.0]], requires_grad=True)
    loss, m = peer_normalization_loss(act, torch.full((2,), 0.5), 0.9)
    assert_close(m, torch.tensor([0.55, 0.75]))
    assert_close(loss, torch.tensor(0.01))
    loss.backward()
    # d loss / d m'_j = (2 / D) (m'_j - mean m') = [-0.1, 0.1]; d m'_j / d act_bj = 0.1 / B = 0.05
    assert_close(act.grad, torch.tensor([[-0.005, 0.005], [-0.005, 0.005]]))


def test_fflinear_peer_normalization_regularizer_uses_positives_and_moves_its_mean():
    from ffkit.objectives import PreparedBatch

    layer = FFLinear(3, 2, peer_normalization=0.5, peer_momentum=0.9)
    assert torch.equal(layer.peer_mean, torch.full((2,), 0.5)) and layer.batch_coupled
    feats = torch.tensor([[1.0, 3.0], [100.0, 100.0]])  # row 1 is a negative: not counted
    batch = PreparedBatch(inputs=torch.zeros(2, 3), target=torch.zeros(1, dtype=torch.long), batch_size=1)
    reg = layer.regularizer(LayerOutput(features=feats), batch)
    # m' = [0.45 + 0.1, 0.45 + 0.3] = [0.55, 0.75] -> loss 0.01, weighted 0.5 -> 0.005
    assert_close(reg, torch.tensor(0.005))
    assert_close(layer.peer_mean, torch.tensor([0.55, 0.75]))
    layer.eval()
    layer.regularizer(LayerOutput(features=feats), batch)
    assert_close(layer.peer_mean, torch.tensor([0.55, 0.75]))  # only training moves it
    assert FFLinear(3, 2).regularizer(LayerOutput(features=feats), batch) is None
    assert "peer_mean" in layer.state_dict() and "peer_mean" not in FFLinear(3, 2).state_dict()
    with pytest.raises(ValueError, match="cannot be split by units"):
        layer.split_units(0, 1)


def test_fflinear_normal_init_and_option_errors():
    torch.manual_seed(0)
    layer = FFLinear(400, 900, init="normal")
    assert abs(layer.linear.weight.std().item() - 1 / 30) < 5e-4 and not layer.linear.bias.any()
    for kwargs, match in (({"norm": "batch"}, "norm must be one of"), ({"activation": "gelu"}, "activation must be"),
                          ({"init": "xavier"}, "init must be one of"),
                          ({"peer_normalization": -1.0}, "peer_normalization must be a number >= 0"),
                          ({"peer_momentum": 1.0}, r"peer_momentum must be a number in \[0, 1\)")):
        with pytest.raises(ValueError, match=match):
            FFLinear(3, 2, **kwargs)
    with pytest.raises(TypeError, match="peer_normalization must be a number"):
        FFLinear(3, 2, peer_normalization="0.03")
