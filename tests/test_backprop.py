"""BackpropTrainer: BP-DeepSup on FF networks (gradients cross layers) and plain single-head baselines."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit.models import create_model, list_models, model_kind


def test_deepsup_sends_later_losses_into_earlier_layers():
    """Unlike LocalTrainer, layer 0's gradient is the sum of every layer's loss gradient."""
    torch.manual_seed(0)
    net = create_model("deeperforward_tinycnn", num_classes=10, in_channels=1, width_multiplier=0.1, dropout=0.0)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    w0 = net.layers[0].conv.weight
    # reference: autograd of the summed per-layer losses with no detach anywhere
    batch = net.objective.prepare(net, x, y)
    total = sum(net.objective.layer_loss(out, batch)[0] for _, out in net.iter_layers(batch.inputs, detach=False))
    (g_all,) = torch.autograd.grad(total, w0)
    own = net.objective.layer_loss(next(net.iter_layers(batch.inputs))[1], batch)[0]
    (g_own,) = torch.autograd.grad(own, w0)
    assert not torch.allclose(g_all, g_own)  # later layers do contribute under backprop

    trainer = ffkit.BackpropTrainer(net, lr=0.1, optimizer="sgd", weight_decay=0.0, schedule="constant")
    trainer.optimizers[0].param_groups[0]["momentum"] = 0.0
    before = w0.detach().clone()
    res = trainer.train_step(x, y)
    torch.testing.assert_close(w0.detach(), before - 0.1 * g_all)
    assert res.losses.shape == (4,)


def test_single_head_baselines_are_registered_as_backprop():
    assert set(list_models("backprop")) == {"bp_resnet18", "bp_vgg8"}
    assert all(model_kind(n) == "ff" for n in list_models("ff"))
    with pytest.raises(ValueError, match="kind"):
        list_models("magic")


@pytest.mark.parametrize("name", ["bp_resnet18", "bp_vgg8"])
def test_single_head_baseline_trains_and_evaluates(name):
    torch.manual_seed(0)
    kwargs = {"width_multiplier": 0.1} if name == "bp_vgg8" else {}
    net = create_model(name, num_classes=10, in_channels=1, **kwargs)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    net.eval()
    assert net(x).shape == (4, 10) and net.layer_scores(x).shape == (1, 4, 10)
    trainer = ffkit.BackpropTrainer(net, lr=1e-3, schedule="constant")
    logits = net.train()(x)
    expected = F.cross_entropy(logits, y).item()
    res = trainer.train_step(x, y)
    assert res.losses.shape == (1,) and res.losses[0].item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        net.layer_scores(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="0..0"):
        net.set_inference_range(0, 1)


def test_resnet18_parameter_count():
    # torchvision's resnet18 has 11,689,512 parameters with a 7x7x3x64 stem and a 1000-way fc. The CIFAR-style stem
    # is 3x3x1x64 (-9408 + 576) and the fc is 512x10 + 10 (-513000 + 5130): 11,689,512 - 8832 - 507870 = 11,172,810.
    net = create_model("bp_resnet18", num_classes=10, in_channels=1)
    assert sum(p.numel() for p in net.parameters()) == 11_172_810


def test_fit_and_checkpoint_work_for_baselines(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 32, 32, generator=g)
    y = torch.arange(32) % 4
    ds = TensorDataset(x, y)
    net = create_model("bp_vgg8", num_classes=4, in_channels=1, width_multiplier=0.05)
    trainer = ffkit.BackpropTrainer(net, lr=1e-3, total_steps=4)
    hist = trainer.fit(DataLoader(ds, 16, shuffle=True, generator=torch.Generator()), epochs=2,
                       holdout=DataLoader(ds, 16), test=DataLoader(ds, 16), out_dir=tmp_path, log=None)
    assert hist[-1]["test"]["sip_range"] == (0, 0)
    other = create_model("bp_vgg8", num_classes=4, in_channels=1, width_multiplier=0.05)
    t2 = ffkit.BackpropTrainer(other, lr=1e-3, total_steps=4)
    t2.resume(tmp_path / "checkpoint.pt")
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert t2.epoch == 2


# -- single-head backprop, gradient accumulation, activation checkpointing -------------------------------------------


def _tiny(name="deeperforward_tinycnn", **kwargs):
    torch.manual_seed(0)
    if name == "deeperforward_tinycnn":
        kwargs = {"width_multiplier": 0.1, "dropout": 0.0, **kwargs}
    return create_model(name, **kwargs)


def _sgd(net, **kwargs):
    trainer = ffkit.BackpropTrainer(net, lr=0.1, optimizer="sgd", weight_decay=0.0, schedule="constant", **kwargs)
    trainer.optimizers[0].param_groups[0]["momentum"] = 0.0
    return trainer


def _after_step(net, x, y, index=None, seed=1, **kwargs):
    """The network's state (parameters and buffers) and the step's result after one SGD step."""
    trainer = _sgd(net, **kwargs)
    torch.manual_seed(seed)  # same dropout masks and negative labels in every run compared
    res = trainer.train_step(x, y, index)
    return [t.detach().clone() for t in net.state_dict().values()], res


def _assert_same_step(a, b, atol=1e-6):
    (state_a, res_a), (state_b, res_b) = a, b
    for ta, tb in zip(state_a, state_b):
        torch.testing.assert_close(ta, tb, atol=atol, rtol=1e-5)
    torch.testing.assert_close(res_a.losses, res_b.losses, atol=atol, rtol=1e-5)
    assert torch.equal(res_a.correct, res_b.correct) and res_a.batch_size == res_b.batch_size
    assert (res_a.head is None) == (res_b.head is None)
    if res_a.head is not None:
        torch.testing.assert_close(res_a.head[0], res_b.head[0], atol=atol, rtol=1e-5)
        assert torch.equal(res_a.head[1], res_b.head[1])


def test_single_head_backprops_only_the_last_layer_loss():
    net = _tiny()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    w0 = net.layers[0].conv.weight
    batch = net.objective.prepare(net, x, y)
    outs = [out for _, out in net.iter_layers(batch.inputs, detach=False)]
    per_layer = [net.objective.layer_loss(out, batch)[0] for out in outs]
    (g_last,) = torch.autograd.grad(per_layer[-1], w0)
    before = w0.detach().clone()
    res = _sgd(net, deep_supervision=False).train_step(x, y)
    torch.testing.assert_close(w0.detach(), before - 0.1 * g_last)
    # every layer's loss is still reported
    torch.testing.assert_close(res.losses, torch.stack(per_layer).detach())
    assert res.correct.shape == (len(net),)


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_accumulation_matches_the_whole_batch(steps):
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    ref = _after_step(_tiny(), x, y)
    _assert_same_step(ref, _after_step(_tiny(), x, y, accumulation_steps=steps))
    ref = _after_step(_tiny(), x, y, deep_supervision=False)
    _assert_same_step(ref, _after_step(_tiny(), x, y, deep_supervision=False, accumulation_steps=steps))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("pon_mlp", {"hidden": (16, 12)}),
        # fixed negatives depend on the sample's index only, so micro-batches draw the same wrong labels
        ("hinton_mlp", {"hidden": (16, 12), "negatives": "fixed", "head": True, "threshold": 0.1}),
    ],
)
def test_accumulation_matches_on_label_input_and_mlp_networks(name, kwargs):
    x, y, index = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5]), torch.arange(6)
    ref = _after_step(_tiny(name, **kwargs), x, y, index)
    _assert_same_step(ref, _after_step(_tiny(name, **kwargs), x, y, index, accumulation_steps=4))


def test_checkpointing_gives_the_same_step_with_dropout():
    net_kwargs = {"dropout": 0.3}
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    ref = _after_step(_tiny(**net_kwargs), x, y)
    _assert_same_step(ref, _after_step(_tiny(**net_kwargs), x, y, checkpoint=True))
    both = _after_step(_tiny(**net_kwargs), x, y, checkpoint=True, deep_supervision=False)
    _assert_same_step(_after_step(_tiny(**net_kwargs), x, y, deep_supervision=False), both)


@pytest.mark.parametrize(
    "name, kwargs",
    [("trifecta_shallow", {"width_multiplier": 0.05}), ("dtg_vgg8", {"width_multiplier": 0.05})],
)
def test_checkpointing_keeps_batchnorm_statistics_and_heads(name, kwargs):
    """The recomputation must not update BatchNorm running statistics a second time."""
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    ref = _after_step(_tiny(name, **kwargs), x, y)
    _assert_same_step(ref, _after_step(_tiny(name, **kwargs), x, y, checkpoint=True))


def test_iter_layers_checkpoint_returns_layer_outputs_and_saves_memory():
    from ffkit.profiling import SavedTensorMeter

    net = _tiny()
    x = torch.rand(4, 3, 32, 32)
    peaks = {}
    for ckpt in (False, True):
        with SavedTensorMeter(exclude=net.parameters()) as meter:
            outs = [out for _, out in net.iter_layers(x, detach=False, checkpoint=ckpt)]
            total = sum(out.scores.sum() for out in outs)
        assert all(isinstance(out, ffkit.layers.LayerOutput) for out in outs)
        total.backward()
        last_scores = outs[-1].scores.detach()
        del outs, total  # the last layer's features were never used: their graph lives as long as they do
        assert meter.current == 0
        peaks[ckpt] = meter.peak
    assert peaks[True] < peaks[False] / 2
    with torch.no_grad():  # no graph: nothing to checkpoint
        plain = [o.scores for _, o in net.iter_layers(x, checkpoint=True)]
    torch.testing.assert_close(plain[-1], last_scores)
    with pytest.raises(TypeError, match="checkpoint"):
        next(net.iter_layers(x, checkpoint="yes"))


def test_backprop_options_are_validated():
    net = _tiny()
    with pytest.raises(ValueError, match="accumulation_steps"):
        ffkit.BackpropTrainer(net, schedule="constant", accumulation_steps=0)
    with pytest.raises(TypeError, match="accumulation_steps"):
        ffkit.BackpropTrainer(net, schedule="constant", accumulation_steps=2.0)
    with pytest.raises(TypeError, match="deep_supervision"):
        ffkit.BackpropTrainer(net, schedule="constant", deep_supervision="no")
    with pytest.raises(TypeError, match="checkpoint"):
        ffkit.BackpropTrainer(net, schedule="constant", checkpoint=1)
    trainer = ffkit.BackpropTrainer(net, schedule="constant", accumulation_steps=5)
    with pytest.raises(ValueError, match=r"accumulation_steps \(5\) must not exceed the batch size \(4\)"):
        trainer.train_step(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    baseline = create_model("bp_vgg8", num_classes=4, in_channels=1, width_multiplier=0.05)
    with pytest.raises(ValueError, match="checkpoint=True"):
        ffkit.BackpropTrainer(baseline, schedule="constant", checkpoint=True)


def test_single_head_baseline_accepts_accumulation_and_ignores_deep_supervision():
    torch.manual_seed(0)
    net = create_model("bp_vgg8", num_classes=4, in_channels=1, width_multiplier=0.05)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    trainer = ffkit.BackpropTrainer(net, schedule="constant", accumulation_steps=2, deep_supervision=False)
    res = trainer.train_step(x, y)
    assert res.losses.shape == (1,) and res.correct.shape == (1,) and res.batch_size == 4
    assert torch.isfinite(res.losses).all()


# -- hybrid classifier heads (dtg_mlp) ---------------------------------------------------------------------------


def _dtg_mlp(hybrid: bool = True):
    torch.manual_seed(0)
    net = create_model("dtg_mlp", num_classes=10, in_channels=1, hidden=(12, 10, 8), negatives="fixed").double()
    net.head.hybrid = hybrid
    for layer in net.layers:  # margins already warm, so the hand computation and the step see the same ones
        layer.initialised.fill_(True)
    return net


def _dtg_mlp_gradients(net, x, y, index):
    """By hand, in one graph: the gradients on every layer's ``linear.weight`` of the summed FF losses (training
    pass, nothing detached) and of the head's cross-entropy through an undetached neutral-label pass."""
    batch = net.objective.prepare(net, x, y, index)
    ff = sum(net.objective.layer_loss(out, batch)[0] for _, out in net.iter_layers(batch.inputs, detach=False))
    h, feats = ffkit.objectives.LabelOverlay(10)(x, None), []
    for layer in net.layers[:2]:  # the head reads layers 0 and 1
        h = layer(h).features
        feats.append(h)
    ce = F.cross_entropy(net.head.linear(torch.cat(feats, dim=1)), y)
    weights = [layer.linear.weight for layer in net.layers]
    g_ff = torch.autograd.grad(ff, weights, retain_graph=True)
    g_ce = torch.autograd.grad(ce, weights, allow_unused=True)
    return g_ff, g_ce, ce.detach()


@pytest.mark.parametrize("checkpoint", [False, True])
def test_hybrid_head_loss_reaches_the_layers_under_backprop(checkpoint):
    """A hybrid head on a neutral-label pass adds its cross-entropy's gradient to the layers it passes through, as
    under LocalTrainer; its loss is the one reported."""
    x, y, index = torch.rand(6, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 5]), torch.arange(6)
    net = _dtg_mlp()
    g_ff, g_ce, ce = _dtg_mlp_gradients(net, x, y, index)
    assert g_ce[2] is None  # the last layer is not read
    assert g_ce[0].abs().max() > 1e-3 * g_ff[0].abs().max()  # the head's share is not lost in the tolerance
    trainer = ffkit.BackpropTrainer(net, lr=1e-3, schedule="constant", checkpoint=checkpoint)
    res = trainer.train_step(x, y, index)
    torch.testing.assert_close(res.head[0], ce)
    for i, layer in enumerate(net.layers):
        expected = g_ff[i] + g_ce[i] if g_ce[i] is not None else g_ff[i]
        torch.testing.assert_close(layer.linear.weight.grad, expected, atol=1e-12, rtol=1e-9)
    assert not torch.allclose(net.layers[0].linear.weight.grad, g_ff[0], atol=1e-12, rtol=1e-9)


def test_non_hybrid_head_on_its_own_pass_trains_the_head_only_under_backprop():
    x, y, index = torch.rand(6, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 5]), torch.arange(6)
    net = _dtg_mlp(hybrid=False)
    g_ff, _, ce = _dtg_mlp_gradients(net, x, y, index)
    res = ffkit.BackpropTrainer(net, lr=1e-3, schedule="constant").train_step(x, y, index)
    torch.testing.assert_close(res.head[0], ce)
    for i, layer in enumerate(net.layers):
        torch.testing.assert_close(layer.linear.weight.grad, g_ff[i], atol=1e-12, rtol=1e-9)
    assert net.head.linear.weight.grad is not None and net.head.linear.weight.grad.abs().sum() > 0
