"""Reference equivalence: ffkit's ``cwcomp_cnn`` against a plain-torch restatement of the authors' released CwComp
(Papachristodoulou et al., AAAI 2024; ``CW_Comp`` with ``CFSE=True``, ``loss_criterion='CwC_CE'``).

The restatement is written from the release's facts, not from ffkit: per layer ``conv (bias, padding 1, groups K on
odd layers) -> ReLU -> [2x2 max-pool on odd layers] -> BatchNorm (eps 1e-4, momentum 0.1, batch statistics)``;
class ``k``'s goodness is the mean of squares of its ``C / K`` channel block of the BatchNorm output; the layer loss
is the cross-entropy of the ``[B, K]`` goodness against the label; each layer has its own Adam (lr 0.01, no weight
decay) over its conv weight and bias and its BatchNorm weight and bias; the next layer receives the BatchNorm output
of the same (pre-update) forward, detached. Images are normalised per channel first.

Checked in float64 to 1e-6: every layer's class scores, features and loss, then the weights, the BatchNorm running
statistics and the Adam state after three steps of :class:`ffkit.LocalTrainer`.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import ffkit
from ffkit.models import create_model

TOL = {"atol": 1e-6, "rtol": 1e-6}


# -- the restatement ---------------------------------------------------------------------------------------------


def ref_layer(p: dict, x: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One released ``Conv_Layer`` forward in training mode: ``(BatchNorm output [B, C, H, W], goodness [B, K])``.

    Updates ``p["running_mean"]`` / ``p["running_var"]`` in place, as ``nn.BatchNorm2d`` in training mode does.
    """
    z = F.conv2d(x, p["weight"], p["bias"], stride=1, padding=1, groups=p["groups"])
    h = F.relu(z)
    if p["maxpool"]:
        h = F.max_pool2d(h, kernel_size=2, stride=2)
    f = F.batch_norm(h, p["running_mean"], p["running_var"], p["bn_weight"], p["bn_bias"], training=True,
                     momentum=0.1, eps=1e-4)
    blocks = torch.split(f, f.shape[1] // num_classes, dim=1)
    g = torch.cat([b.pow(2).mean(dim=(1, 2, 3)).unsqueeze(-1) for b in blocks], dim=1)
    return f, g


def ref_step(params: list[dict], opts: list[torch.optim.Optimizer], x: torch.Tensor, y: torch.Tensor,
             mean: torch.Tensor, std: torch.Tensor, num_classes: int):
    """One released training step (every layer inside its training window): per-layer forward, loss, Adam step."""
    h = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    feats, scores, losses = [], [], []
    for p, opt in zip(params, opts):
        f, g = ref_layer(p, h, num_classes)
        loss = F.cross_entropy(g, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        feats.append(f.detach())
        scores.append(g.detach())
        losses.append(loss.detach())
        h = f.detach()
    return feats, scores, losses


def trainable(p: dict) -> list[torch.Tensor]:
    return [p["weight"], p["bias"], p["bn_weight"], p["bn_bias"]]


# -- weight mapping --------------------------------------------------------------------------------------------------


def params_from_ffkit(net: ffkit.FFNetwork) -> list[dict]:
    """Copy each ffkit layer's weights and BatchNorm state into the restatement's plain tensors."""
    out = []
    for layer in net.layers:
        out.append({
            "weight": layer.conv.weight.detach().clone().requires_grad_(),
            "bias": layer.conv.bias.detach().clone().requires_grad_(),
            "bn_weight": layer.norm.weight.detach().clone().requires_grad_(),
            "bn_bias": layer.norm.bias.detach().clone().requires_grad_(),
            "running_mean": layer.norm.running_mean.clone(),
            "running_var": layer.norm.running_var.clone(),
            "groups": layer.conv.groups,
            "maxpool": layer.maxpool,
        })
    return out


CASES = {
    # CIFAR-10: 3 channels at 32x32, the released widths and normalisation.
    "cifar10-32px": dict(in_channels=3, size=32, kwargs={}, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    # MNIST at the authors' 28x28 (the layers are size-agnostic), half width, the released MNIST normalisation.
    "mnist-28px": dict(in_channels=1, size=28, kwargs={"width_multiplier": 0.5, "input_mean": (0.1307,),
                                                         "input_std": (0.3081,)}, mean=(0.1307,), std=(0.3081,)),
    # The FF-CNN ablation: no grouped convs.
    "ffcnn-fmnist-32px": dict(in_channels=1, size=32, kwargs={"width_multiplier": 0.5, "grouped": False},
                              mean=(0.5,), std=(0.5,)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cwcomp_matches_the_release_restatement(case):
    c = CASES[case]
    k, b = 10, 6
    torch.manual_seed(1)
    net = create_model("cwcomp_cnn", num_classes=k, in_channels=c["in_channels"], **c["kwargs"]).double()
    params = params_from_ffkit(net)
    mean, std = torch.tensor(c["mean"]), torch.tensor(c["std"])
    xs = [torch.rand(b, c["in_channels"], c["size"], c["size"]) for _ in range(3)]
    ys = [torch.randint(0, k, (b,)) for _ in range(3)]

    # Forward of the first batch, on copies (a training-mode forward moves the BatchNorm statistics).
    probe_net, probe_params = copy.deepcopy(net).train(), copy.deepcopy(params)
    h = (xs[0] - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    batch = probe_net.objective.prepare(probe_net, xs[0], ys[0])
    for (i, out), p in zip(probe_net.iter_layers(batch.inputs), probe_params):
        f, g = ref_layer(p, h, k)
        assert_close(out.scores, g, **TOL, msg=f"layer {i} class scores")
        assert_close(out.goodness, g.mean(dim=1), **TOL, msg=f"layer {i} goodness")
        assert_close(out.features, f, **TOL, msg=f"layer {i} features")
        loss, _ = probe_net.objective.layer_loss(out, batch)
        assert_close(loss, F.cross_entropy(g, ys[0]), **TOL, msg=f"layer {i} loss")
        h = f.detach()

    # Three local steps with the release's optimizer: Adam lr 0.01, default betas, no weight decay, constant lr.
    trainer = ffkit.LocalTrainer(net, lr=0.01, optimizer="adam", weight_decay=0.0, schedule="constant",
                                 fused_optimizer=False)
    opts = [torch.optim.Adam(trainable(p), lr=0.01) for p in params]
    for step, (x, y) in enumerate(zip(xs, ys)):
        _, _, ref_losses = ref_step(params, opts, x, y, mean, std, k)
        res = trainer.train_step(x, y)
        # The trainer records its losses in float32 (the float64 loss itself is compared above).
        assert_close(res.losses.double(), torch.stack(ref_losses), **TOL, msg=f"step {step} layer losses")

    for i, (layer, p, opt) in enumerate(zip(net.layers, params, opts)):
        assert_close(layer.conv.weight, p["weight"], **TOL, msg=f"layer {i} conv weight")
        assert_close(layer.conv.bias, p["bias"], **TOL, msg=f"layer {i} conv bias")
        assert_close(layer.norm.weight, p["bn_weight"], **TOL, msg=f"layer {i} BatchNorm weight")
        assert_close(layer.norm.bias, p["bn_bias"], **TOL, msg=f"layer {i} BatchNorm bias")
        assert_close(layer.norm.running_mean, p["running_mean"], **TOL, msg=f"layer {i} running mean")
        assert_close(layer.norm.running_var, p["running_var"], **TOL, msg=f"layer {i} running var")
        assert int(layer.norm.num_batches_tracked) == 3
        # The same Adam moments: the ffkit optimizer holds exactly these four tensors, in this order.
        ours = trainer.optimizers[i].state
        for q_ours, q_ref in zip([layer.conv.weight, layer.conv.bias, layer.norm.weight, layer.norm.bias],
                                 trainable(p)):
            assert_close(ours[q_ours]["exp_avg"], opt.state[q_ref]["exp_avg"], **TOL)
            assert_close(ours[q_ours]["exp_avg_sq"], opt.state[q_ref]["exp_avg_sq"], **TOL)
        assert len(trainer.optimizers[i].param_groups[0]["params"]) == 4

    # The release predicts with the last layer's goodness alone (argmax of its class blocks' mean squares,
    # BatchNorm in eval mode); ffkit's forward reads the same layer.
    net.eval()
    x = xs[0]
    h = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    for p in params:
        z = F.relu(F.conv2d(h, p["weight"], p["bias"], padding=1, groups=p["groups"]))
        z = F.max_pool2d(z, 2, 2) if p["maxpool"] else z
        h = F.batch_norm(z, p["running_mean"], p["running_var"], p["bn_weight"], p["bn_bias"], training=False,
                         eps=1e-4)
    last = h.reshape(b, k, -1).pow(2).mean(dim=2)
    with torch.no_grad():
        assert_close(net(x), last, **TOL)
