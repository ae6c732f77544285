"""The optimised FF step: fused CW-Conv activation, no input gradients, no per-layer host syncs, and options
(fused optimizers, channels-last, bf16 autocast, torch.compile) that leave the results unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ffkit import goodness
from ffkit.layers import dropout_mask
from ffkit.layers.cwconv import relu_dropout_scores
from ffkit.models import create_model
from ffkit.train import LocalTrainer


def _batch(b=8, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g)


def _tiny(name="deeperforward_tinycnn", **kw):
    torch.manual_seed(0)
    return create_model(name, width_multiplier=0.1, **kw)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_relu_dropout_scores_matches_reference(channels_last):
    """scores = s * mean_group(relu(z) * keep) (DeeperForward Eq. 8 after dropout) and its gradient, with and
    without a gradient through the features, against the plain autograd composition with the same mask."""
    torch.manual_seed(0)
    z = torch.randn(4, 20, 5, 5, dtype=torch.double)
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    z.requires_grad_(True)
    keep, p = dropout_mask(z, 0.3)
    scores, h = relu_dropout_scores(z, ~keep, 10, p)
    feats = F.group_norm(h, 10, eps=1e-5 * (1 - p) ** 2)

    z_ref = z.detach().clone().requires_grad_(True)
    h_ref = F.relu(z_ref) * keep / (1 - p)
    scores_ref, feats_ref = goodness.mean(h_ref, groups=10), F.group_norm(h_ref, 10)
    torch.testing.assert_close(scores, scores_ref)
    torch.testing.assert_close(feats, feats_ref)

    w_s, w_f = torch.randn_like(scores), torch.randn_like(feats)
    (g,) = torch.autograd.grad((scores * w_s).sum() + (feats * w_f).sum(), z, retain_graph=True)
    (g_ref,) = torch.autograd.grad((scores_ref * w_s).sum() + (feats_ref * w_f).sum(), z_ref, retain_graph=True)
    torch.testing.assert_close(g, g_ref)
    (g,) = torch.autograd.grad((scores * w_s).sum(), z)  # local training: the scores' gradient only
    (g_ref,) = torch.autograd.grad((scores_ref * w_s).sum(), z_ref)
    torch.testing.assert_close(g, g_ref)


def test_fused_scores_hand_computed():
    """One sample, two groups of one channel, 2x1 pixels, no dropout: scores are the groups' mean ReLU and the
    gradient of scores[0, k] is 1/n where the activity is positive."""
    z = torch.tensor([[[[1.0], [-2.0]], [[3.0], [5.0]]]], requires_grad=True)  # [1, 2, 2, 1]
    scores, h = relu_dropout_scores(z, None, 2)
    torch.testing.assert_close(scores, torch.tensor([[0.5, 4.0]]))
    scores[0, 0].backward()
    torch.testing.assert_close(z.grad, torch.tensor([[[[0.5], [0.0]], [[0.0], [0.0]]]]))


def test_dropout_mask_rate_and_layout():
    torch.manual_seed(0)
    z = torch.empty(64, 10, 32, 32)
    keep, p = dropout_mask(z, 0.2)
    assert keep.dtype == torch.bool and keep.shape == z.shape
    assert p == round(0.2 * 65536) / 65536
    assert abs(1 - keep.float().mean().item() - p) < 3e-3  # 655k draws: std of the rate 5e-4
    assert dropout_mask(z, 0.0) == (None, 0.0)
    odd = torch.empty(3, 5, 7, 1)  # an odd element count uses half of the last 32-bit draw
    assert dropout_mask(odd, 0.5)[0].shape == odd.shape
    cl = z.contiguous(memory_format=torch.channels_last)
    assert dropout_mask(cl, 0.2)[0].is_contiguous(memory_format=torch.channels_last)


def test_ff_step_computes_no_input_gradients():
    """FF's backward is weight gradients only: the step's convolution FLOPs are exactly 2x the forward's (forward +
    weight gradient), where backprop would add the input gradient of every layer but the first."""
    net = _tiny(dropout=0.0)
    x, y = _batch()
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            net.layer_scores(x)
    trainer = LocalTrainer(net, schedule="constant")
    with FlopCounterMode(display=False) as step:
        trainer.train_step(x, y)
    assert step.get_total_flops() == 2 * fwd.get_total_flops()


def _count_syncs(monkeypatch, trainer, x, y):
    calls = []
    for name in ("item", "__bool__", "tolist"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **kw):
            calls.append(_name)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    trainer.network.check_input(x, y)  # the label check is on the host batch, before the step
    monkeypatch.setattr(trainer.network, "check_input", lambda *a, **k: None)
    trainer.train_step(x, y)
    monkeypatch.undo()
    return len(calls)


def test_host_syncs_do_not_grow_with_depth(monkeypatch):
    """No .item()/bool()/tolist() per layer: a 14-layer network synchronises as often per step as a 4-layer one."""
    x, y = _batch()
    shallow = _count_syncs(monkeypatch, LocalTrainer(_tiny(), schedule="constant"), x, y)
    deep = _count_syncs(monkeypatch, LocalTrainer(_tiny("deeperforward_cnn14"), schedule="constant"), x, y)
    assert shallow == deep <= 1


def _weights_after(steps=3, model="deeperforward_tinycnn", **options):
    net = _tiny(model)
    trainer = LocalTrainer(net, schedule="constant", **options)
    x, y = _batch(c=net.in_channels)
    torch.manual_seed(5)  # the dropout masks
    results = [trainer.train_step(x, y) for _ in range(steps)]
    return [p.detach().contiguous() for p in net.parameters()], results


def _assert_same(a, b, atol=5e-4, rtol=1e-3):
    """Adam moves every weight by about lr = 5e-3 per step; a different summation order (channels-last kernels, fused
    optimizer) may shift a weight whose gradient is near zero by a few 1e-5 after Adam's normalisation."""
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=atol, rtol=rtol)


def test_fused_optimizer_and_channels_last_match_plain_path():
    plain, res_plain = _weights_after(fused_optimizer=False, channels_last=False)
    fast, res_fast = _weights_after(fused_optimizer=True, channels_last=True)
    _assert_same(plain, fast)
    torch.testing.assert_close(res_plain[-1].losses, res_fast[-1].losses, atol=1e-5, rtol=1e-4)


def test_fused_optimizer_on_a_label_input_network():
    plain, _ = _weights_after(model="pon_mlp", fused_optimizer=False)
    fast, _ = _weights_after(model="pon_mlp", fused_optimizer=True)
    _assert_same(plain, fast)


def test_bf16_autocast_keeps_float32_state_and_tracks_fp32_losses():
    plain, res_plain = _weights_after(steps=2)
    amp, res_amp = _weights_after(steps=2, amp=True)
    assert all(p.dtype == torch.float32 for p in amp)
    assert res_amp[-1].losses.dtype == torch.float32
    torch.testing.assert_close(res_amp[0].losses, res_plain[0].losses, atol=0.05, rtol=0.02)


def test_compile_option_matches_eager():
    """``compile`` goes through torch.compile (AOTAutograd traces forward and backward); the aot_eager backend runs
    the traced graphs with eager kernels, so the weights must match the eager step."""
    eager, _ = _weights_after(steps=2)
    compiled, _ = _weights_after(steps=2, compile="aot_eager")
    _assert_same(eager, compiled)


def test_compile_with_inductor_trains():
    """The default backend generates code (needs a C++ compiler on CPU). Without dropout the compiled step must match
    the eager one up to kernel rounding."""
    eager, _ = _weights_after(steps=1, model="pon_mlp")
    compiled, res = _weights_after(steps=1, model="pon_mlp", compile=True)
    _assert_same(eager, compiled)
    assert torch.isfinite(res[0].losses).all()


def test_bad_compile_argument():
    with pytest.raises(TypeError, match="compile"):
        LocalTrainer(_tiny(), schedule="constant", compile=3)


def test_dropout_module_rate_scale_and_eval():
    from ffkit.layers import Dropout

    torch.manual_seed(0)
    d = Dropout(0.25)
    x = torch.ones(200_000)
    out = d(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.75) < 5e-3
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / (1 - round(0.25 * 65536) / 65536)))
    assert abs(out.mean().item() - 1.0) < 1e-2  # inverted dropout keeps the mean
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError, match="p must be"):
        Dropout(1.0)


def test_detached_features_skip_autograd_and_flag_is_reset():
    """Under local training a layer's features are built without autograd (nothing of that work can be reached by
    its loss); under end-to-end backprop they keep their graph; a direct call afterwards is unaffected."""
    net = _tiny()
    x, _ = _batch()
    local = [out.features.requires_grad for _, out in net.iter_layers(x)]
    e2e = [out.features.requires_grad for _, out in net.iter_layers(x, detach=False)]
    assert local == [False] * len(net) and e2e == [True] * len(net)
    assert not any(layer.features_detached for layer in net.layers)
    assert net.layers[0](x).features.requires_grad


def test_ff_holds_one_layer_of_activations_at_a_time():
    """FF's peak of saved activations is the largest single layer's, far below backprop's sum over layers."""
    from ffkit.profiling import SavedTensorMeter
    from ffkit.train import BackpropTrainer

    x, y = _batch()
    net = _tiny()  # TinyCNN: no shortcuts, so layer i's input is layer i - 1's features
    with torch.no_grad():
        inputs = [F.layer_norm(x, x.shape[1:])] + [out.features for _, out in net.iter_layers(x)][:-1]
    per_layer = []
    for layer, h in zip(net.layers, inputs):  # each layer's saved tensors, measured alone
        with SavedTensorMeter(exclude=net.parameters()) as m:
            out = layer(h)
            out.scores.sum().backward()
        per_layer.append(m.peak)
    net.zero_grad(set_to_none=True)
    ff = LocalTrainer(net, schedule="constant")
    ff.train_step(x, y)
    with SavedTensorMeter(exclude=net.parameters()) as m_ff:
        ff.train_step(x, y)
    bp_net = _tiny()
    bp = BackpropTrainer(bp_net, schedule="constant")
    with SavedTensorMeter(exclude=bp_net.parameters()) as m_bp:
        bp.train_step(x, y)
    assert m_ff.peak < 0.5 * m_bp.peak
    # within a norm's statistics and the loss's [B, K] scores of the largest layer measured alone
    assert 0.99 * max(per_layer) <= m_ff.peak <= max(per_layer) + 4096


def _plain_relu_dropout_scores(z, drop, groups, p=0.0):
    """The textbook composition: plain autograd through ReLU, the mask and the group mean."""
    h = F.relu(z) if drop is None else F.relu(z) * ~drop
    return goodness.mean(h, groups=groups) / (1.0 - p), h


@pytest.mark.parametrize("model", ["deeperforward_tinycnn", "deeperforward_resnet17", "dtg_vgg8"])
def test_optimised_step_matches_plain_path(monkeypatch, model):
    """Three steps of the default (optimised) LocalTrainer against the plain path: autograd through every op, the
    features built with autograd, the reference optimizer loop. Same seed, same dropout masks, same weights."""
    from contextlib import nullcontext

    from ffkit.layers import FFLayer

    fast, res_fast = _weights_after(model=model)
    monkeypatch.setattr("ffkit.layers.cwconv.relu_dropout_scores", _plain_relu_dropout_scores)
    monkeypatch.setattr(FFLayer, "propagation", lambda self: nullcontext())
    plain, res_plain = _weights_after(model=model, fused_optimizer=False)
    _assert_same(plain, fast)
    for a, b in zip(res_plain, res_fast):
        torch.testing.assert_close(a.losses, b.losses, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model", ["deeperforward_tinycnn", "hinton_mlp", "dtg_vgg8"])
def test_each_layer_runs_once_per_step(model):
    net = _tiny(model)
    calls = [0] * len(net)
    for i, layer in enumerate(net.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x, y = _batch(c=net.in_channels)
    trainer = LocalTrainer(net, schedule="constant")
    head_pass = net.head is not None and not net.objective.head_uses_training_pass
    trainer.train_step(x, y)
    # a label-input network's softmax head needs its own neutral-label pass over the layers it reads
    expected = [1 + (head_pass and i <= max(net.head.layers)) for i in range(len(net))]
    assert calls == expected


def test_bf16_autocast_trains_a_classifier_head():
    # the head reads the layers' bf16 features: it runs under the same autocast, its loss in float32
    net = create_model("cwcomp_cnn", num_classes=10, in_channels=1, channels=(10, 20), image_size=8, head=True)
    trainer = LocalTrainer(net, schedule="constant", amp=True)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    before = net.head.linear.weight.detach().clone()
    res = trainer.train_step(x, y)
    assert res.head is not None
    assert res.head[0].dtype == torch.float32 and torch.isfinite(res.head[0])
    assert not torch.equal(net.head.linear.weight, before) and net.head.linear.weight.dtype == torch.float32


@pytest.mark.parametrize("options", [{"channels_last": True}, {"amp": True}])
def test_evaluation_runs_as_the_trainer_trains(options, monkeypatch):
    import ffkit.train.base as base

    net = _tiny("deeperforward_tinycnn").eval()
    x, y = _batch(c=net.in_channels)
    plain = base.collect_scores(net, [(x, y)]).layers
    seen = {}
    real = base.collect_scores

    def spy(*a, **kw):
        seen.update({k: kw.get(k) for k in ("channels_last", "amp")})
        return real(*a, **kw)

    monkeypatch.setattr(base, "collect_scores", spy)
    trainer = LocalTrainer(net, total_steps=1, **options)
    report = trainer.evaluate([(x, y)])
    assert seen == {"channels_last": options.get("channels_last", False), "amp": options.get("amp", False)}
    fast = real(net, [(x, y)], **options).layers
    assert fast.dtype == torch.float32 and 0.0 <= report.all_layers <= 1.0
    if options.get("amp"):  # bf16 has 8 bits of mantissa
        torch.testing.assert_close(fast, plain, atol=0.05, rtol=0.05)
    else:  # the same arithmetic in another memory layout
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [(4, 6, 8, 8), (3, 5, 7, 9), (2, 1, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool2x2_equals_torch_values_and_gradients(shape, dtype):
    from ffkit.layers import max_pool2x2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(dtype)
    x[0, 0, :2, :2] = 1.0  # a tied window: both pick the first maximum in scan order
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya, yb = F.max_pool2d(a, 2), max_pool2x2(b)
    assert torch.equal(ya, yb) and yb.is_contiguous()
    grad = torch.randn(ya.shape, generator=g).to(dtype)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(a.grad, b.grad)
    with torch.no_grad():
        assert torch.equal(max_pool2x2(x), F.max_pool2d(x, 2))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(max_pool2x2(cl), F.max_pool2d(cl, 2))


def test_trainers_evaluate_with_their_test_time_augmentation():
    from ffkit.evaluation import collect_scores, make_report
    from ffkit.train import ChapterTrainer

    net = _tiny("deeperforward_tinycnn").eval()
    x, y = _batch(c=net.in_channels)
    trainer = LocalTrainer(net, total_steps=1, tta="flip")
    got = trainer.evaluate([(x, y)])
    both = (collect_scores(net, [(x, y)]).layers + collect_scores(net, [(x.flip(-1), y)]).layers) / 2
    want = make_report(both, y, None)
    assert got.per_layer == pytest.approx(want.per_layer) and got.all_layers == pytest.approx(want.all_layers)
    # the mean goodness is continuous: it tells the averaged scores from either view's alone
    assert got.goodness_pos == pytest.approx(want.goodness_pos, rel=1e-5)
    plain = make_report(collect_scores(net, [(x, y)]).layers, y, None)
    assert got.goodness_pos != pytest.approx(plain.goodness_pos, rel=1e-5)
    assert LocalTrainer(net, total_steps=1).tta is None
    # the engines around a LocalTrainer evaluate as it does
    assert ChapterTrainer(net, chapter_batches=1, total_steps=1, tta="flip").tta == "flip"
    with pytest.raises(ValueError, match="tta must be None or one of"):
        LocalTrainer(net, total_steps=1, tta="flips")
