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
