"""DTG-FF: DTGConv's goodness and propagation paths, the VGG builders' read-outs, DTGLinear's margin, and training."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit import goodness, losses
from ffkit.evaluation import collect_scores, make_report
from ffkit.layers import ClassifierHead, DTGConv, DTGLinear
from ffkit.layers.dtg import inverse_softplus
from ffkit.models import create_model
from ffkit.objectives import LabelOverlay

# ---------------------------------------------------------------------------------------------------------------
# DTGConv: goodness path


def _hand_layer(**kwargs) -> DTGConv:
    """1x1 conv, one input channel, two output channels with weights 2 and -1: h0 = relu(2x), h1 = relu(-x)."""
    layer = DTGConv(1, 2, 3, kernel_size=1, grid=2, tau_min=1.0, tau_max=3.0, dropout=0.0, **kwargs)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
    return layer


X_HAND = torch.tensor([[1.0, -1.0, 2.0, 0.0], [-2.0, 3.0, 1.0, 1.0]]).view(1, 1, 2, 4)


def test_goodness_path_by_hand():
    layer = _hand_layer()
    out = layer(X_HAND)
    # h0 = relu(2x) = [[2, 0, 4, 0], [0, 6, 2, 2]] -> h0^2 = [[4, 0, 16, 0], [0, 36, 4, 4]]
    # h1 = relu(-x) = [[0, 1, 0, 0], [2, 0, 0, 0]] -> h1^2 = [[0, 1, 0, 0], [4, 0, 0, 0]]
    # a 2x2 grid on a 2x4 map averages 1x2 blocks, channel-major: v = [2, 8, 18, 4, 0.5, 0, 2, 0]
    v = [2.0, 8.0, 18.0, 4.0, 0.5, 0.0, 2.0, 0.0]
    P = layer.projection.tolist()  # [8, 3]
    tau = (1.0 + 3.0) / 2  # s = 0 at init: tau is the midpoint of its bounds
    expected = [sum(v[i] * P[i][k] for i in range(8)) / tau for k in range(3)]
    assert_close(out.scores, torch.tensor([expected]))
    assert_close(layer.goodness_vector(F.relu(layer.conv(X_HAND))), torch.tensor([v]))
    # goodness [B]: mean of h^2 over (C, H, W) = (4 + 16 + 36 + 4 + 4 + 1 + 4) / 16
    assert_close(out.goodness, torch.tensor([69.0 / 16]))


def test_grid_one_is_per_channel_mean_of_squares():
    torch.manual_seed(0)
    layer = DTGConv(3, 4, 5, grid=1, dropout=0.0)
    x = torch.randn(2, 3, 6, 6)
    h = F.relu(layer.conv(x))
    assert_close(layer.goodness_vector(h), goodness.squared(h, groups=4, reduction="mean"))


def test_goodness_path_has_no_dropout_and_no_normalisation():
    """Scores depend on the raw activity magnitude and are identical in train (dropout on) and eval mode."""
    torch.manual_seed(0)
    layer = DTGConv(3, 8, 4, dropout=0.5)
    x = torch.randn(2, 3, 8, 8)
    layer.train()
    s_train = layer(x).scores
    layer.eval()
    s_eval = layer(x).scores
    assert_close(s_train, s_eval)
    # doubling the conv weights quadruples h^2 and hence the scores (LayerNorm would have removed the scale)
    with torch.no_grad():
        layer.conv.weight.mul_(2.0)
    assert_close(layer(x).scores, 4 * s_eval)


def test_projection_is_a_fixed_seeded_buffer():
    layer = DTGConv(4, 8, 10, grid=2, seed=3)
    names = dict(layer.named_parameters())
    assert set(names) == {"conv.weight", "temperature.s"}  # bias-free conv, no LayerNorm affine, P not a parameter
    assert "projection" in dict(layer.named_buffers())
    assert "projection" in layer.state_dict()
    assert layer.projection.shape == (8 * 2 * 2, 10)
    assert not layer.projection.requires_grad
    torch.manual_seed(123)  # the global RNG does not enter the projection
    again = DTGConv(4, 8, 10, grid=2, seed=3)
    assert torch.equal(again.projection, layer.projection)
    assert torch.equal(DTGConv.make_projection(32, 10, 3), layer.projection)
    assert not torch.equal(DTGConv(4, 8, 10, grid=2, seed=4).projection, layer.projection)


def test_projection_scale_is_one_over_sqrt_dim():
    P = DTGConv.make_projection(2048, 10, 0)
    assert abs(P.std().item() * math.sqrt(2048) - 1.0) < 0.03
    assert abs(P.mean().item()) < 0.01


def test_projection_is_not_trained():
    torch.manual_seed(0)
    net = create_model("dtg_vgg8", num_classes=10, in_channels=1, width_multiplier=0.1)
    before = [layer.projection.clone() for layer in net.layers]
    w_before = net.layers[0].conv.weight.detach().clone()
    ffkit.LocalTrainer(net, lr=1e-2, optimizer="adamw", total_steps=2).train_step(
        torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    )
    assert all(torch.equal(b, layer.projection) for b, layer in zip(before, net.layers))
    assert not torch.equal(w_before, net.layers[0].conv.weight)


def test_temperature_gets_hand_computed_gradient_from_layer_loss():
    layer = _hand_layer()
    y = torch.tensor([1])
    out = layer(X_HAND)
    loss = losses.local_ce(out.scores, y)
    (g_s,) = torch.autograd.grad(loss, layer.temperature.s)
    # scores = z / tau with z = v @ P; dL/dscores = softmax - onehot; dscores/dtau = -z / tau^2;
    # dtau/ds = (tau_max - tau_min) * sigmoid(0) * (1 - sigmoid(0)) = 2 / 4
    tau = 2.0
    z = (out.scores * tau).detach()
    dl_dscores = torch.softmax(z / tau, dim=1) - F.one_hot(y, 3).float()
    expected = (dl_dscores * (-z / tau**2)).sum() * (2.0 / 4)
    assert g_s.abs() > 0
    assert_close(g_s, expected)


# ---------------------------------------------------------------------------------------------------------------
# DTGConv: propagation path


def test_features_are_layernorm_over_channels_at_each_location():
    torch.manual_seed(0)
    layer = DTGConv(3, 16, 4, dropout=0.1).eval()
    f = layer(torch.randn(2, 3, 5, 7)).features
    assert f.shape == (2, 16, 5, 7)
    assert_close(f.mean(dim=1), torch.zeros(2, 5, 7), atol=1e-5, rtol=0)
    assert_close(f.var(dim=1, unbiased=False), torch.ones(2, 5, 7), atol=1e-3, rtol=0)


def test_features_by_hand():
    """At each location the two channels (a, b) normalise to (-1, 1) or (1, -1), and (0, 0) where both are 0."""
    layer = _hand_layer().eval()
    f = layer(X_HAND).features
    h0 = torch.tensor([[2.0, 0, 4, 0], [0, 6, 2, 2]])
    h1 = torch.tensor([[0.0, 1, 0, 0], [2, 0, 0, 0]])
    sign = torch.sign(h0 - h1)
    eps = 1e-5  # LayerNorm's epsilon: x / sqrt(x^2 + eps) for a two-channel deviation of +-x
    d = (h0 - h1).abs() / 2
    mag = d / torch.sqrt(d**2 + eps)
    assert_close(f[0, 0], sign * mag)
    assert_close(f[0, 1], -sign * mag)


def test_dropout_only_on_propagation_in_training():
    torch.manual_seed(0)
    layer = DTGConv(3, 32, 4, dropout=0.5)
    x = torch.randn(2, 3, 6, 6)
    f_eval = layer.eval()(x).features
    f_train = layer.train()(x).features
    kept = f_train != 0
    assert 0 < kept.float().mean() < 1
    assert_close(f_train[kept], 2 * f_eval[kept])  # inverted dropout scaling 1 / (1 - p)


def test_pool_halves_height_and_width_after_normalisation():
    torch.manual_seed(0)
    pooled = DTGConv(3, 8, 4, pool=True, dropout=0.0)
    plain = DTGConv(3, 8, 4, pool=False, dropout=0.0)
    plain.load_state_dict(pooled.state_dict())
    x = torch.randn(2, 3, 8, 12)
    a, b = pooled(x), plain(x)
    assert a.features.shape == (2, 8, 4, 6)
    assert_close(a.features, F.avg_pool2d(b.features, 2))
    assert_close(a.scores, b.scores)  # the goodness path reads h before pooling


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"out_channels": 0}, ValueError),
        ({"grid": 0}, ValueError),
        ({"dropout": 1.0}, ValueError),
        ({"dropout": "0.1"}, TypeError),
        ({"pool": 2}, TypeError),
        ({"seed": -1}, ValueError),
        ({"tau_min": 2.0, "tau_max": 1.0}, ValueError),
        ({"tau_min": 0.0}, ValueError),
    ],
)
def test_dtgconv_bad_arguments(kwargs, err):
    args = {"in_channels": 3, "out_channels": 8, "num_classes": 4, **kwargs}
    with pytest.raises(err, match=next(iter(kwargs))):
        DTGConv(**args)


# ---------------------------------------------------------------------------------------------------------------
# VGG builders


def _tiny(name: str, **kwargs) -> ffkit.FFNetwork:
    return create_model(name, num_classes=10, in_channels=1, width_multiplier=0.1, **kwargs)


def _data(n: int = 4):
    return torch.rand(n, 1, 32, 32), torch.arange(n) % 10


def test_vgg8_matches_bp_vgg8_layout():
    """Same conv widths and the same downsampling positions as the BP baseline (architecture-matched)."""
    net = create_model("dtg_vgg8", num_classes=10, in_channels=3, width_multiplier=0.3)
    bp = create_model("bp_vgg8", num_classes=10, in_channels=3, width_multiplier=0.3)
    bp_convs = [m for m in bp.body if isinstance(m, nn.Conv2d)]
    assert [layer.out_channels for layer in net.layers] == [c.out_channels for c in bp_convs]
    assert [layer.conv.weight.shape for layer in net.layers] == [c.weight.shape for c in bp_convs]
    sizes, h = [], torch.rand(1, 3, 32, 32)
    net.eval()
    for _, out in net.iter_layers(h):
        sizes.append(out.features.shape[-1])
    assert sizes == [16, 16, 8, 4, 2, 2, 2]  # 2x pooling after layers 1, 3, 4, 5 (1-based)


def test_vgg11_layout():
    net = create_model("dtg_vgg11", num_classes=10, in_channels=3)
    assert [layer.out_channels for layer in net.layers] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert [layer.pool for layer in net.layers] == [True, True, False, True, False, True, False, True]


def test_builder_wiring():
    net = create_model("dtg_vgg8", num_classes=10, in_channels=1, width_multiplier=0.1, label_smoothing=0.2,
                       layer_label_smoothing=0.05, head_dropout=0.3, tau_min=0.5, tau_max=1.5, dropout=0.3)
    assert isinstance(net.objective, ffkit.ClassScoreObjective) and net.objective.label_smoothing == 0.05
    head = net.head
    assert isinstance(head, ClassifierHead) and not head.hybrid and not net.head_predicts
    assert head.layers == tuple(range(1, 7))  # layers 2..L, 1-based
    assert head.pool == "avg" and isinstance(head.norm, nn.BatchNorm1d) and head.dropout.p == 0.3
    assert head.label_smoothing == 0.2
    # defaults (Chen 2026): the classifier path has dropout 0.2 and label smoothing 0.1, the layers' CE none
    plain = create_model("dtg_vgg8", num_classes=10, in_channels=1, width_multiplier=0.1)
    assert plain.objective.label_smoothing == 0.0
    assert plain.head.label_smoothing == 0.1 and plain.head.dropout.p == 0.2
    assert isinstance(create_model("dtg_vgg8", width_multiplier=0.1, head_dropout=0.0).head.dropout, nn.Identity)
    assert head.linear.in_features == sum(layer.out_channels for layer in net.layers[1:])
    assert [layer.seed for layer in net.layers] == list(range(7))  # a different projection per layer
    assert all(layer.temperature.tau_min == 0.5 and layer.temperature.tau_max == 1.5 for layer in net.layers)
    assert all(layer.dropout.p == 0.3 for layer in net.layers)
    assert _tiny("dtg_vgg11", head=False).head is None


@pytest.mark.parametrize(
    "kwargs, err",
    [({"label_smoothing": 1.0}, ValueError), ({"head": "yes"}, TypeError), ({"width_multiplier": 0}, ValueError),
     ({"num_classes": 1}, ValueError), ({"layer_label_smoothing": -0.1}, ValueError),
     ({"head_dropout": "0.2"}, TypeError)],
)
def test_vgg_builder_bad_arguments(kwargs, err):
    with pytest.raises(err, match=next(iter(kwargs))):
        create_model("dtg_vgg8", **kwargs)


def test_logit_sum_inference_is_sum_of_layer_scores():
    torch.manual_seed(0)
    net = _tiny("dtg_vgg8").eval()
    x, y = _data(6)
    # every layer by hand, each on the previous layer's propagated features
    h, total = x, torch.zeros(6, 10)
    for layer in net.layers:
        out = layer(h)
        total = total + out.scores
        h = out.features
    assert_close(net(x), total)
    assert_close(net.layer_scores(x).sum(dim=0), total)
    # the evaluation's "all layers" read-out is that same logit-sum
    collected = collect_scores(net, [(x, y)])
    report = make_report(collected.layers, collected.labels)
    assert report.all_layers == pytest.approx((total.argmax(dim=1) == y).float().mean().item())


def test_head_reads_detached_features_of_layers_1_to_last():
    torch.manual_seed(0)
    net = _tiny("dtg_vgg8")
    net.train()
    x, y = _data()
    _, logits = net.scores(x)
    net.head.loss(logits, y).backward()
    assert all(p.grad is None for layer in net.layers for p in layer.parameters())
    assert all(p.grad is not None for p in net.head.parameters())
    # layer 0's features are not read: the head's input width is that of layers 1..L-1 only
    net.eval()
    feats = {i: out.features for i, out in net.iter_layers(x)}
    pooled = net.head.pooled([feats[i] for i in range(1, 7)])
    assert pooled.shape == (4, net.head.linear.in_features)
    assert_close(net.head_logits(x), net.head([feats[i] for i in range(1, 7)]))


@pytest.mark.parametrize("name", ["dtg_vgg8", "dtg_vgg11"])
def test_local_training_steps(name):
    torch.manual_seed(0)
    net = _tiny(name)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, optimizer="adamw", total_steps=3)
    x, y = _data()
    for _ in range(3):
        res = trainer.train_step(x, y)
        assert res.losses.shape == (len(net),) and torch.isfinite(res.losses).all()
        assert res.head is not None and torch.isfinite(res.head[0])
    assert all(layer.temperature.s.item() != 0.0 for layer in net.layers)  # every temperature is learned


def test_cli_style_evaluation_reports_head_accuracy():
    torch.manual_seed(0)
    net = _tiny("dtg_vgg8")
    x, y = _data(8)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, optimizer="adamw", total_steps=2)
    trainer.train_epoch(loader)
    collected = collect_scores(net, loader)
    report = make_report(collected.layers, collected.labels, head_scores=collected.head)
    assert report.head is not None and 0.0 <= report.head <= 1.0
    net.eval()
    with torch.no_grad():
        head_acc = (net.head_logits(x).argmax(dim=1) == y).float().mean().item()
        sum_acc = (net(x).argmax(dim=1) == y).float().mean().item()
    assert report.head == pytest.approx(head_acc)
    assert report.all_layers == pytest.approx(sum_acc)
    assert report.to_dict()["head"] == report.head
    assert trainer.evaluate(loader).head == pytest.approx(head_acc)


def test_bp_deepsup_puts_gradients_on_several_layers_in_one_backward():
    """BackpropTrainer (BP-DeepSup) sends every later loss into layer 0; LocalTrainer gives it only its own."""
    torch.manual_seed(0)
    net = _tiny("dtg_vgg8", dropout=0.0)
    x, y = _data()
    w0 = net.layers[0].conv.weight
    batch = net.objective.prepare(net, x, y)
    own = net.objective.layer_loss(next(net.iter_layers(batch.inputs))[1], batch)[0]
    (g_own,) = torch.autograd.grad(own, w0)
    state = {k: v.clone() for k, v in net.state_dict().items()}

    bp = ffkit.BackpropTrainer(net, lr=1e-3, optimizer="adamw", total_steps=1)
    backward_calls = []
    w0.register_hook(lambda g: backward_calls.append(1))
    res = bp.train_step(x, y)
    assert len(backward_calls) == 1  # one backward pass reached layer 0 once, with the summed gradient
    assert torch.isfinite(res.losses).all() and res.head is not None
    assert all(layer.conv.weight.grad is not None and layer.conv.weight.grad.abs().sum() > 0 for layer in net.layers)
    assert not torch.allclose(w0.grad, g_own)  # later layers' (and the head's) losses reached layer 0

    net.load_state_dict(state)
    local = ffkit.LocalTrainer(net, lr=1e-3, optimizer="adamw", total_steps=1)
    local.train_step(x, y)
    assert_close(w0.grad, g_own)  # strictly local: only layer 0's own loss


# ---------------------------------------------------------------------------------------------------------------
# DTGLinear


def _hand_linear() -> DTGLinear:
    """Float64, so the hand values below are checked to 1e-6 and tighter."""
    layer = DTGLinear(2, 2, tau_min=1.0, tau_max=3.0).double()
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        layer.linear.bias.copy_(torch.tensor([0.5, 0.0]))
    return layer


def _x(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _hand_goodness(x: list[float]) -> float:
    """RMS-normalise, linear, ReLU, mean of squares -- for the weights of :func:`_hand_linear`."""
    n = math.hypot(*x) + 1e-8  # the layer's eps
    xh = [v * math.sqrt(2) / n for v in x]
    h = [max(0.0, xh[0] + xh[1] + 0.5), max(0.0, xh[0] - xh[1])]
    return (h[0] ** 2 + h[1] ** 2) / 2


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


HAND = {"rel": 1e-12, "abs": 1e-12}  # float64 against math: agreement to rounding


def test_dtglinear_margin_warm_start_by_hand():
    layer = _hand_linear().train()
    batch = _x([[3.0, 4.0], [1.0, 0.0]])
    g = [_hand_goodness([3.0, 4.0]), _hand_goodness([1.0, 0.0])]
    # [3, 4] -> x_hat = sqrt(2) * [0.6, 0.8] -> h = [1.4 sqrt(2) + 0.5, relu(-0.2 sqrt(2)) = 0]
    # [1, 0] -> x_hat = [sqrt(2), 0]         -> h = [sqrt(2) + 0.5, sqrt(2)]
    assert g[0] == pytest.approx((1.4 * math.sqrt(2) + 0.5) ** 2 / 2)
    assert g[1] == pytest.approx(((math.sqrt(2) + 0.5) ** 2 + 2) / 2)
    # before the warm start: theta = 0, margin softplus(0) = ln 2 (the release's threshold at its init)
    assert not bool(layer.initialised) and layer.theta.item() == 0.0
    assert layer.margin.item() == pytest.approx(math.log(2), **HAND)
    out = layer(batch)
    m = (g[0] + g[1]) / 2  # the batch's mean goodness = 2.97...
    # theta = softplus^-1(m) = log(exp(m) - 1), so the margin softplus(theta) is the batch's mean goodness
    assert layer.theta.item() == pytest.approx(math.log(math.exp(m) - 1), **HAND)
    assert layer.margin.item() == pytest.approx(m, **HAND)
    assert bool(layer.initialised)
    tau = 2.0  # midpoint of (1, 3)
    assert_close(out.goodness, _x([[(g[0] - m) / tau, (g[1] - m) / tau]])[0], atol=1e-12, rtol=0)
    assert_close(out.features, _x([[1.4 * math.sqrt(2) + 0.5, 0.0], [math.sqrt(2) + 0.5, math.sqrt(2)]]))


def test_dtglinear_warm_start_on_dead_units_uses_the_floor():
    """A batch whose every unit is dead has mean goodness 0, where softplus^-1 is -inf: the margin is set to 1e-6."""
    layer = _hand_linear().train()
    with torch.no_grad():
        layer.linear.weight.zero_()
        layer.linear.bias.fill_(-1.0)
    out = layer(_x([[3.0, 4.0], [1.0, 0.0]]))
    assert torch.isfinite(layer.theta) and torch.isfinite(out.goodness).all()
    assert layer.theta.item() == pytest.approx(math.log(math.expm1(1e-6)), **HAND)  # ~ ln(1e-6) = -13.8
    assert layer.margin.item() == pytest.approx(1e-6, rel=1e-9)


@pytest.mark.parametrize("m", [1e-6, 1e-3, 1.0, 20.0, 100.0])
def test_inverse_softplus_round_trips(m):
    t = inverse_softplus(torch.tensor(m, dtype=torch.float64))
    assert F.softplus(t).item() == pytest.approx(m, rel=1e-12)
    if m < 30:  # where exp(m) is exact enough in float64 for the naive form to be a reference
        assert t.item() == pytest.approx(math.log(math.expm1(m)), rel=1e-12)
    # float32, as a layer trains: still the mean it was given, to float32 rounding
    t32 = inverse_softplus(torch.tensor(m, dtype=torch.float32))
    assert F.softplus(t32).item() == pytest.approx(m, rel=1e-5)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(m=st.floats(min_value=1e-6, max_value=1e4, allow_nan=False, allow_infinity=False))
def test_inverse_softplus_round_trips_anywhere(m):
    t = inverse_softplus(torch.tensor(m, dtype=torch.float64))
    assert math.isfinite(t.item())
    assert F.softplus(t).item() == pytest.approx(m, rel=1e-12)


def test_inverse_softplus_floor():
    t = inverse_softplus(torch.tensor([0.0, -3.0, 2e-6], dtype=torch.float64))
    assert_close(F.softplus(t), torch.tensor([1e-6, 1e-6, 2e-6], dtype=torch.float64), atol=0, rtol=1e-12)
    assert_close(F.softplus(inverse_softplus(torch.tensor([0.0]), floor=0.5)), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="floor"):
        inverse_softplus(torch.tensor([1.0]), floor=0.0)


def test_dtglinear_is_not_warm_started_again():
    layer = _hand_linear().train()
    layer(_x([[3.0, 4.0], [1.0, 0.0]]))
    theta = layer.theta.item()
    layer(_x([[0.0, 5.0], [2.0, 7.0]]))  # a later batch with another mean goodness
    assert layer.theta.item() == theta
    # after a state_dict round trip into a fresh layer
    fresh = _hand_linear()
    state = layer.state_dict()
    assert "initialised" in state and "theta" in state
    fresh.load_state_dict(state)
    fresh.train()(_x([[0.0, 5.0], [2.0, 7.0]]))
    assert fresh.theta.item() == theta and bool(fresh.initialised)
    assert fresh.margin.item() == pytest.approx((_hand_goodness([3.0, 4.0]) + _hand_goodness([1.0, 0.0])) / 2, **HAND)


def test_dtglinear_loading_an_unwarmed_state_warms_on_next_batch():
    warmed = _hand_linear().train()
    warmed(_x([[3.0, 4.0]]))
    warmed.load_state_dict(_hand_linear().state_dict())  # theta 0, not initialised
    assert not bool(warmed.initialised) and warmed.theta.item() == 0.0
    warmed(_x([[1.0, 0.0]]))
    assert warmed.margin.item() == pytest.approx(_hand_goodness([1.0, 0.0]), **HAND)


def test_dtglinear_eval_pass_does_not_warm_start():
    layer = _hand_linear().eval()
    out = layer(_x([[3.0, 4.0]]))
    assert layer.theta.item() == 0.0 and not bool(layer.initialised)
    # the margin is still softplus(0) = ln 2; tau = 2
    assert out.goodness.item() == pytest.approx((_hand_goodness([3.0, 4.0]) - math.log(2)) / 2.0, **HAND)


def test_dtglinear_threshold_loss_formula_and_gradients():
    """With threshold 0: L = mean softplus((m - g_pos) / tau) + mean softplus((g_neg - m) / tau), m = softplus(theta);
    dL/dtheta = dL/dm * sigmoid(theta)."""
    layer = _hand_linear().train()
    pos, neg = _x([[3.0, 4.0]]), _x([[1.0, 0.0]])
    layer(torch.cat([pos, neg]))
    theta = 0.5  # move the margin off its warm start, where its gradient vanishes to first order
    with torch.no_grad():
        layer.theta.fill_(theta)
    out = layer(torch.cat([pos, neg]))
    g_pos, g_neg = out.goodness[:1], out.goodness[1:]
    loss = losses.ff_threshold(g_pos, g_neg, threshold=0.0)
    gp, gn, tau, m = _hand_goodness([3.0, 4.0]), _hand_goodness([1.0, 0.0]), 2.0, _softplus(theta)
    assert loss.item() == pytest.approx(_softplus((m - gp) / tau) + _softplus((gn - m) / tau), **HAND)
    grads = torch.autograd.grad(loss, [layer.theta, layer.temperature.s, layer.linear.weight])
    assert all(g.abs().sum() > 0 for g in grads)
    dl_dm = (_sigmoid((m - gp) / tau) - _sigmoid((gn - m) / tau)) / tau
    assert grads[0].item() == pytest.approx(dl_dm * _sigmoid(theta), **HAND)
    assert _sigmoid(theta) == pytest.approx(0.6224593312, rel=1e-9)  # the chain factor is not 1 here


def test_dtglinear_rms_normalisation_is_scale_invariant_and_flattens():
    torch.manual_seed(0)
    layer = DTGLinear(12, 5).eval()
    x = torch.rand(3, 3, 2, 2)
    assert_close(layer(x).goodness, layer(7.5 * x).goodness)
    assert layer(x).features.shape == (3, 5)
    with pytest.raises(ValueError, match="12 input features"):
        layer(torch.rand(3, 10))
    assert {n for n, _ in layer.named_parameters()} == {"linear.weight", "linear.bias", "theta", "temperature.s"}


# ---------------------------------------------------------------------------------------------------------------
# DTG MLP


def test_dtg_mlp_wiring():
    net = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(30, 20, 10))
    assert [type(layer) for layer in net.layers] == [DTGLinear] * 3
    assert net.layers[0].linear.in_features == 1024
    obj = net.objective
    assert isinstance(obj, ffkit.PosNegObjective) and obj.loss == "threshold" and obj.threshold == 0.0
    assert isinstance(obj.encoder, LabelOverlay)
    # the released FF_DTG_Model's classifier: every layer but the last, concatenated, linear, hybrid, predicts
    head = net.head
    assert head.layers == (0, 1) and head.pool == "flatten" and head.linear.in_features == 30 + 20
    assert head.hybrid and net.head_predicts and head.label_smoothing == 0.0
    assert isinstance(head.norm, nn.Identity) and isinstance(head.dropout, nn.Identity)
    assert torch.equal(head.linear.bias, torch.zeros(10))
    single = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(8,))
    assert single.head.layers == (0,)
    plain = create_model("dtg_mlp", hidden=(10, 10), head=False)
    assert plain.head is None and not plain.head_predicts
    # the release's FF_DTG_Config: 4 layers of 2048 units; its temperature bounds (0.1, 2.0)
    default = create_model("dtg_mlp", num_classes=10, in_channels=1)
    assert [layer.linear.out_features for layer in default.layers] == [2048] * 4
    assert all((layer.temperature.tau_min, layer.temperature.tau_max) == (0.1, 2.0) for layer in default.layers)
    with pytest.raises(ValueError, match="hidden"):
        create_model("dtg_mlp", hidden=())
    with pytest.raises(TypeError, match="hidden"):
        create_model("dtg_mlp", hidden=(10, 2.5))


def test_dtg_mlp_head_kaiming_normal_init():
    torch.manual_seed(0)
    w = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(400, 400, 8)).head.linear.weight
    # kaiming_normal_ (fan_in, gain sqrt(2)): std sqrt(2 / 800); PyTorch's default Linear init has std 1 / sqrt(2400)
    assert abs(w.std().item() / math.sqrt(2 / 800) - 1) < 0.05


def test_dtg_mlp_predicts_with_its_head():
    torch.manual_seed(0)
    net = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(16, 12, 8)).eval()
    x = torch.rand(5, 1, 32, 32)
    neutral = LabelOverlay(10)(x, None)  # every label pixel 1 / K
    h0 = net.layers[0](neutral).features
    h1 = net.layers[1](h0).features
    expected = net.head.linear(torch.cat([h0, h1], dim=1))
    assert_close(net(x), expected)
    assert_close(net.head_logits(x), expected)


def test_hybrid_head_gradient_reaches_the_layers_it_reads():
    """One LocalTrainer step: each layer's gradient is its own FF loss's (local) plus, for the layers the hybrid head
    passes through, the head cross-entropy's through the undetached neutral-label pass; the last layer gets none."""
    torch.manual_seed(0)
    net = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(12, 10, 8), negatives="fixed")
    x, y = _data(6)
    index = torch.arange(6)
    for layer in net.layers:  # warm the margins first, so the trainer's step and the hand computation see the same
        layer.initialised.fill_(True)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    batch = net.objective.prepare(net, x, y, index)
    expected = []
    h = batch.inputs
    for layer in net.layers:  # local FF gradients
        out = layer(h)
        loss = net.objective.layer_loss(out, batch)[0]
        expected.append(list(torch.autograd.grad(loss, [layer.linear.weight, layer.linear.bias])))
        h = out.features.detach()
    feats, h = [], LabelOverlay(10)(x, None)
    for layer in net.layers[:2]:  # the head's pass, not detached
        h = layer(h).features
        feats.append(h)
    ce = F.cross_entropy(net.head.linear(torch.cat(feats, dim=1)), y)
    params = [p for layer in net.layers for p in (layer.linear.weight, layer.linear.bias)]
    ce_grads = torch.autograd.grad(ce, params, allow_unused=True)
    assert ce_grads[4] is None and ce_grads[5] is None  # the last layer is not read
    for i in range(2):
        expected[i] = [expected[i][0] + ce_grads[2 * i], expected[i][1] + ce_grads[2 * i + 1]]
    net.load_state_dict(state)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, optimizer="adamw", schedule="constant", fused_optimizer=False)
    res = trainer.train_step(x, y, index)
    assert_close(res.head[0], ce.detach())
    for i, layer in enumerate(net.layers):
        assert_close(layer.linear.weight.grad, expected[i][0])
        assert_close(layer.linear.bias.grad, expected[i][1])
    assert ce_grads[0].abs().sum() > 0 and ce_grads[2].abs().sum() > 0


def test_hybrid_head_needs_a_neutral_pass_and_no_overlap():
    net = _tiny("dtg_vgg8")
    net.head.hybrid = True  # a head on the training pass of a class-score network
    with pytest.raises(ValueError, match="hybrid"):
        ffkit.LocalTrainer(net, lr=1e-3, schedule="constant")
    mlp = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(8, 8))
    with pytest.raises(ValueError, match="hybrid"):
        ffkit.LocalTrainer(mlp, lr=1e-3, schedule="constant", overlap=True)
    with pytest.raises(TypeError, match="hybrid"):
        ClassifierHead(8, 10, [0], hybrid=1)


@pytest.mark.parametrize("head", [False, True])
def test_dtg_mlp_local_training_steps(head):
    torch.manual_seed(0)
    net = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(16, 16), head=head)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, optimizer="adamw", total_steps=3)
    x, y = _data()
    thetas = None
    for step in range(3):
        res = trainer.train_step(x, y)
        assert torch.isfinite(res.losses).all()
        assert (res.head is not None) == head
        if step == 0:
            thetas = [layer.theta.item() for layer in net.layers]
            assert all(bool(layer.initialised) for layer in net.layers)
    # after the warm start only the optimizer moves theta (AdamW: at most ~lr per step)
    assert all(abs(layer.theta.item() - t) < 3e-3 for layer, t in zip(net.layers, thetas))
    net.eval()
    assert net(x).shape == (4, 10)


@pytest.mark.parametrize("size", [8, 7])
def test_goodness_vector_equals_adaptive_pooling_of_squares(size):
    """Equal cells take the reshape path, unequal ones adaptive pooling; both are DTG's pooled h**2 grid."""
    layer = DTGConv(3, 4, 10, grid=2)
    h = torch.rand(2, 4, size, size, dtype=torch.double)
    assert_close(layer.goodness_vector(h), F.adaptive_avg_pool2d(h.square(), 2).flatten(1))


def test_projection_does_not_depend_on_the_default_dtype():
    """A layer built under float64 reads its goodness through the same matrix as one built in float32."""
    single = DTGConv.make_projection(32, 10, 3)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        double = DTGConv.make_projection(32, 10, 3)
        layer = DTGConv(4, 8, 10, grid=2, seed=3)
    finally:
        torch.set_default_dtype(before)
    assert double.dtype == torch.float64 and layer.projection.dtype == torch.float64
    assert torch.equal(double.float(), single) and torch.equal(layer.projection.float(), single)
