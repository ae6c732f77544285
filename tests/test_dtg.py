"""DTG-FF: DTGConv's goodness and propagation paths, the VGG builders' read-outs, DTGLinear's margin, and training."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit import goodness, losses
from ffkit.data import LabelOverlay
from ffkit.evaluation import collect_scores, make_report
from ffkit.layers import ClassifierHead, DTGConv, DTGLinear
from ffkit.models import create_model

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
        ({"dropout": "0.1"}, ValueError),
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
                       tau_min=0.5, tau_max=1.5, dropout=0.3)
    assert isinstance(net.objective, ffkit.ClassScoreObjective) and net.objective.label_smoothing == 0.2
    head = net.head
    assert isinstance(head, ClassifierHead)
    assert head.layers == tuple(range(1, 7))  # layers 2..L, 1-based
    assert head.pool == "avg" and isinstance(head.norm, nn.BatchNorm1d) and head.dropout.p == 0.2
    assert head.label_smoothing == 0.2
    assert head.linear.in_features == sum(layer.out_channels for layer in net.layers[1:])
    assert [layer.seed for layer in net.layers] == list(range(7))  # a different projection per layer
    assert all(layer.temperature.tau_min == 0.5 and layer.temperature.tau_max == 1.5 for layer in net.layers)
    assert all(layer.dropout.p == 0.3 for layer in net.layers)
    assert _tiny("dtg_vgg11", head=False).head is None


@pytest.mark.parametrize(
    "kwargs, err",
    [({"label_smoothing": 1.0}, ValueError), ({"head": "yes"}, TypeError), ({"width_multiplier": 0}, ValueError),
     ({"num_classes": 1}, ValueError)],
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
    layer = DTGLinear(2, 2, tau_min=1.0, tau_max=3.0)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        layer.linear.bias.copy_(torch.tensor([0.5, 0.0]))
    return layer


def _hand_goodness(x: list[float]) -> float:
    """RMS-normalise, linear, ReLU, mean of squares -- for the weights of :func:`_hand_linear`."""
    n = math.hypot(*x)
    xh = [v * math.sqrt(2) / n for v in x]
    h = [max(0.0, xh[0] + xh[1] + 0.5), max(0.0, xh[0] - xh[1])]
    return (h[0] ** 2 + h[1] ** 2) / 2


def test_dtglinear_margin_warm_start_by_hand():
    layer = _hand_linear().train()
    batch = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    g = [_hand_goodness([3.0, 4.0]), _hand_goodness([1.0, 0.0])]
    # [3, 4] -> x_hat = sqrt(2) * [0.6, 0.8] -> h = [1.4 sqrt(2) + 0.5, relu(-0.2 sqrt(2)) = 0]
    # [1, 0] -> x_hat = [sqrt(2), 0]         -> h = [sqrt(2) + 0.5, sqrt(2)]
    assert g[0] == pytest.approx((1.4 * math.sqrt(2) + 0.5) ** 2 / 2)
    assert g[1] == pytest.approx(((math.sqrt(2) + 0.5) ** 2 + 2) / 2)
    assert not bool(layer.initialised) and layer.theta.item() == 0.0
    out = layer(batch)
    theta = (g[0] + g[1]) / 2
    assert layer.theta.item() == pytest.approx(theta)
    assert bool(layer.initialised)
    tau = 2.0  # midpoint of (1, 3)
    assert_close(out.goodness, torch.tensor([(g[0] - theta) / tau, (g[1] - theta) / tau]))
    assert_close(out.features, torch.tensor([[1.4 * math.sqrt(2) + 0.5, 0.0], [math.sqrt(2) + 0.5, math.sqrt(2)]]))


def test_dtglinear_is_not_warm_started_again():
    layer = _hand_linear().train()
    layer(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
    theta = layer.theta.item()
    layer(torch.tensor([[0.0, 5.0], [2.0, 7.0]]))  # a later batch with another mean goodness
    assert layer.theta.item() == theta
    # after a state_dict round trip into a fresh layer
    fresh = _hand_linear()
    state = layer.state_dict()
    assert "initialised" in state and "theta" in state
    fresh.load_state_dict(state)
    fresh.train()(torch.tensor([[0.0, 5.0], [2.0, 7.0]]))
    assert fresh.theta.item() == theta and bool(fresh.initialised)


def test_dtglinear_loading_an_unwarmed_state_warms_on_next_batch():
    warmed = _hand_linear().train()
    warmed(torch.tensor([[3.0, 4.0]]))
    warmed.load_state_dict(_hand_linear().state_dict())  # theta 0, not initialised
    assert not bool(warmed.initialised)
    warmed(torch.tensor([[1.0, 0.0]]))
    assert warmed.theta.item() == pytest.approx(_hand_goodness([1.0, 0.0]))


def test_dtglinear_eval_pass_does_not_warm_start():
    layer = _hand_linear().eval()
    out = layer(torch.tensor([[3.0, 4.0]]))
    assert layer.theta.item() == 0.0 and not bool(layer.initialised)
    assert_close(out.goodness, torch.tensor([_hand_goodness([3.0, 4.0]) / 2.0]))


def test_dtglinear_threshold_loss_formula_and_gradients():
    """With threshold 0: L = mean softplus((theta - g_pos) / tau) + mean softplus((g_neg - theta) / tau)."""
    layer = _hand_linear().train()
    pos, neg = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    out = layer(torch.cat([pos, neg]))
    with torch.no_grad():
        layer.theta.fill_(1.0)  # move the margin off its warm start, where its gradient vanishes to first order
    out = layer(torch.cat([pos, neg]))
    g_pos, g_neg = out.goodness[:1], out.goodness[1:]
    loss = losses.ff_threshold(g_pos, g_neg, threshold=0.0)
    gp, gn, tau = _hand_goodness([3.0, 4.0]), _hand_goodness([1.0, 0.0]), 2.0
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert loss.item() == pytest.approx(sp((1.0 - gp) / tau) + sp((gn - 1.0) / tau), rel=1e-5)
    grads = torch.autograd.grad(loss, [layer.theta, layer.temperature.s, layer.linear.weight])
    assert all(g.abs().sum() > 0 for g in grads)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert grads[0].item() == pytest.approx((sig((1.0 - gp) / tau) - sig((gn - 1.0) / tau)) / tau, rel=1e-5)


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
    net = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(30, 20, 10), head=True)
    assert [type(layer) for layer in net.layers] == [DTGLinear] * 3
    assert net.layers[0].linear.in_features == 1024
    obj = net.objective
    assert isinstance(obj, ffkit.PosNegObjective) and obj.loss == "threshold" and obj.threshold == 0.0
    assert isinstance(obj.encoder, LabelOverlay)
    assert net.head.layers == (1, 2) and net.head.pool == "flatten" and net.head.linear.in_features == 30
    single = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(8,), head=True)
    assert single.head.layers == (0,)
    assert create_model("dtg_mlp", hidden=(10, 10)).head is None
    with pytest.raises(ValueError, match="hidden"):
        create_model("dtg_mlp", hidden=())
    with pytest.raises(TypeError, match="hidden"):
        create_model("dtg_mlp", hidden=(10, 2.5))


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
