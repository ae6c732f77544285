"""Reference equivalence: ffkit's DTG-FF builders against plain-torch restatements.

**VGG8** (``dtg_vgg8``; Chen, "Synthetic Benchmarks Overstate Forward-Forward Scaling", 2026). No code of the VGG
networks is released, so the restatement is written from the paper's description, with ffkit's documented choices
where it is silent (marked "ffkit:"). Per layer: ``h = ReLU(conv3x3(x))`` (ffkit: bias-free); goodness path
``v = avgpool(h**2 -> 2x2)`` flattened channel-major (ffkit: the grid), class scores ``v @ P / tau`` with ``P`` a fixed
random projection (ffkit: ``N(0, 1/D)`` from a generator seeded by the layer index) and ``tau = tau_min + (tau_max -
tau_min) * sigmoid(s)``, local cross-entropy (no label smoothing: the paper states it for the classifier path
only); propagation path LayerNorm over channels at each location (no affine), dropout (0 here), 2x2 average pooling
after layers 1, 3, 4, 5 (1-based), detached. Classifier path: GAP of layers 2..7, concatenated, BatchNorm1d (batch
statistics), dropout (0 here), linear, cross-entropy with label smoothing 0.1, on detached features. Every layer and
the classifier have their own AdamW.

**MLP** (``dtg_mlp``). The released DTG MLP (``StevenChen16/DTG-FF``, ``FF_DTG_Model``) cannot be trained as written
(its loss is NaN at every step and its goodness is the same for every sample of a batch), so ffkit's MLP layers are
ffkit's own (``DTGLinear``, restated here from its documentation), and the classifier is the release's: a linear
layer on the concatenated activities of every layer but the last of a neutral-label pass, whose cross-entropy is
added to the layers' gradients (hybrid: the pass is not detached), and which is the network's prediction. The
layers' FF losses are local.

Checked in float64 to 1e-6: per-layer scores or goodness, temperatures, features passed on, losses, the head's
logits and loss, then every weight (and the BatchNorm statistics) after three steps of :class:`ffkit.LocalTrainer`.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch.testing import assert_close

import ffkit
from ffkit.models import create_model
from ffkit.objectives.negatives import NegativeLabels

TOL = {"atol": 1e-6, "rtol": 1e-6}
K = 10
TAU_MIN, TAU_MAX = 0.1, 2.0
LR, WEIGHT_DECAY = 1e-2, 5e-4




# -- VGG8: the restatement ---------------------------------------------------------------------------------------

VGG8_WIDTHS = (128, 256, 256, 512, 512, 512, 512)
VGG8_POOL_AFTER = (0, 2, 3, 4)  # 0-based: after layers 1, 3, 4, 5
WIDTH_MULT = 1 / 16  # widths 8-16-16-32-32-32-32


def ref_projection(dim: int, seed: int) -> torch.Tensor:
    """ffkit's documented fixed readout: ``N(0, 1/dim)`` entries from a generator seeded by the layer index."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(dim, K, generator=gen, dtype=torch.float32) / math.sqrt(dim)).double()


def ref_vgg_layer(p: dict, x: torch.Tensor, pool: bool) -> dict:
    """One DTG conv layer: class scores ``[B, K]``, temperature, features passed on ``[B, C, H', W']``."""
    h = F.relu(F.conv2d(x, p["conv"], padding=1))
    sq = h * h
    v = F.avg_pool2d(sq, kernel_size=(sq.shape[2] // 2, sq.shape[3] // 2)).flatten(1)  # 2x2 grid, channel-major
    tau = TAU_MIN + (TAU_MAX - TAU_MIN) * torch.sigmoid(p["s"])
    scores = (v @ p["P"]) / tau
    mu = h.mean(dim=1, keepdim=True)
    var = h.var(dim=1, unbiased=False, keepdim=True)
    f = (h - mu) / torch.sqrt(var + 1e-5)  # LayerNorm over the channels at each location, no affine
    if pool:
        f = F.avg_pool2d(f, 2)
    return {"scores": scores, "tau": tau, "features": f}


def ref_vgg_head(hp: dict, feats: list[torch.Tensor]) -> torch.Tensor:
    """Classifier path on layers 2..7: GAP, concatenate, BatchNorm1d with batch statistics (updates the running
    statistics in place, momentum 0.1, eps 1e-5), linear."""
    z = torch.cat([f.mean(dim=(2, 3)) for f in feats[1:]], dim=1)
    z = F.batch_norm(z, hp["running_mean"], hp["running_var"], hp["bn_weight"], hp["bn_bias"], training=True,
                     momentum=0.1, eps=1e-5)
    return z @ hp["weight"].T + hp["bias"]


def ref_vgg_step(layers: list[dict], hp: dict, opts: list, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One step: each layer on the previous layer's detached features, its loss, then the head; then every AdamW."""
    outs, losses, feats = [], [], []
    h = x
    for i, p in enumerate(layers):
        out = ref_vgg_layer(p, h, pool=i in VGG8_POOL_AFTER)
        loss = F.cross_entropy(out["scores"], y)
        opts[i].zero_grad()
        loss.backward()
        outs.append({k: v.detach() for k, v in out.items()})
        losses.append(loss.detach())
        h = out["features"].detach()
        feats.append(h)
    logits = ref_vgg_head(hp, feats)
    head_loss = F.cross_entropy(logits, y, label_smoothing=0.1)
    opts[-1].zero_grad()
    head_loss.backward()
    for opt in opts:
        opt.step()
    return {"outs": outs, "losses": torch.stack(losses), "logits": logits.detach(), "head_loss": head_loss.detach()}


def vgg_params_from(net) -> tuple[list[dict], dict]:
    """The weight mapping: ffkit's state into the restatement's tensors (copies)."""
    layers = []
    for layer in net.layers:
        layers.append({
            "conv": layer.conv.weight.detach().clone().requires_grad_(),
            "s": layer.temperature.s.detach().clone().requires_grad_(),
            "P": ref_projection(layer.conv.weight.shape[0] * 4, layer.seed),
        })
    head = net.head
    hp = {
        "bn_weight": head.norm.weight.detach().clone().requires_grad_(),
        "bn_bias": head.norm.bias.detach().clone().requires_grad_(),
        "running_mean": head.norm.running_mean.clone(),
        "running_var": head.norm.running_var.clone(),
        "weight": head.linear.weight.detach().clone().requires_grad_(),
        "bias": head.linear.bias.detach().clone().requires_grad_(),
    }
    return layers, hp


def _vgg_net():
    torch.manual_seed(0)
    net = create_model("dtg_vgg8", num_classes=K, in_channels=3, width_multiplier=WIDTH_MULT, dropout=0.0,
                       head_dropout=0.0).double()
    with torch.no_grad():  # temperatures off their midpoint, and a non-trivial BatchNorm affine
        for layer in net.layers:
            layer.temperature.s.uniform_(-2.0, 2.0)
        net.head.norm.weight.uniform_(0.5, 1.5)
        net.head.norm.bias.uniform_(-0.5, 0.5)
    return net


def test_vgg8_widths_and_projection_are_the_restated_ones():
    net = _vgg_net()
    assert [layer.conv.weight.shape[0] for layer in net.layers] == [round(c * WIDTH_MULT) for c in VGG8_WIDTHS]
    assert [layer.pool for layer in net.layers] == [i in VGG8_POOL_AFTER for i in range(7)]
    for layer in net.layers:
        assert_close(layer.projection, ref_projection(layer.projection.shape[0], layer.seed), atol=0, rtol=0)


def test_vgg8_forward_matches_restatement():
    net = _vgg_net()
    layers, hp = vgg_params_from(net)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 7, 3])
    net.train()
    h, feats = x, []
    for i, p in enumerate(layers):
        ref = ref_vgg_layer(p, h, pool=i in VGG8_POOL_AFTER)
        out = net.layers[i](h)
        assert_close(out.scores, ref["scores"], **TOL)
        assert_close(net.layers[i].temperature.tau, ref["tau"], **TOL)
        assert_close(out.features, ref["features"], **TOL)
        loss, _ = net.objective.layer_loss(out, net.objective.prepare(net, x, y))
        assert_close(loss, F.cross_entropy(ref["scores"], y), **TOL)
        h = ref["features"]
        feats.append(h)
    # logit-sum read-out: the network's forward (eval: BatchNorm1d of the head is not involved)
    assert_close(net.eval()(x), sum(ref_vgg_layer(p, f, i in VGG8_POOL_AFTER)["scores"]
                                    for i, (p, f) in enumerate(zip(layers, [x, *feats[:-1]]))), **TOL)
    net.train()
    ref_logits = ref_vgg_head(copy.deepcopy(hp), feats)
    assert_close(net.head([feats[i] for i in net.head.layers]), ref_logits, **TOL)


def test_vgg8_three_adamw_steps_match_restatement():
    net = _vgg_net()
    layers, hp = vgg_params_from(net)
    opts = [torch.optim.AdamW([p["conv"], p["s"]], lr=LR, weight_decay=WEIGHT_DECAY) for p in layers]
    opts.append(torch.optim.AdamW([hp["bn_weight"], hp["bn_bias"], hp["weight"], hp["bias"]], lr=LR,
                                  weight_decay=WEIGHT_DECAY))
    trainer = ffkit.LocalTrainer(net, lr=LR, optimizer="adamw", weight_decay=WEIGHT_DECAY, schedule="constant",
                                 fused_optimizer=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, K, (4,), generator=gen)
        ref = ref_vgg_step(layers, hp, opts, x, y)
        res = trainer.train_step(x, y)
        assert_close(res.losses.double(), ref["losses"], **TOL)  # the trainer records float32 losses
        assert res.head is not None
        assert_close(res.head[0], ref["head_loss"], **TOL)
    for layer, p in zip(net.layers, layers):
        assert_close(layer.conv.weight, p["conv"], **TOL)
        assert_close(layer.temperature.s, p["s"], **TOL)
    head = net.head
    assert_close(head.norm.weight, hp["bn_weight"], **TOL)
    assert_close(head.norm.bias, hp["bn_bias"], **TOL)
    assert_close(head.norm.running_mean, hp["running_mean"], **TOL)
    assert_close(head.norm.running_var, hp["running_var"], **TOL)
    assert_close(head.linear.weight, hp["weight"], **TOL)
    assert_close(head.linear.bias, hp["bias"], **TOL)
    # the moved weights really moved (the comparison is not between two untouched copies)
    assert not torch.allclose(net.layers[0].conv.weight, _vgg_net().layers[0].conv.weight)


# -- MLP: the restatement ----------------------------------------------------------------------------------------

MLP_HIDDEN = (12, 10, 8)


class GivenNegatives(NegativeLabels):
    """Negative labels fixed by the test: ``(y + 1 + step) % K``, so the restatement sees the same ones."""

    def __init__(self) -> None:
        super().__init__(K)
        self.step = 0

    def __call__(self, y, *, x=None, network=None, index=None):
        return (y + 1 + self.step) % K


def ref_overlay(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Hinton's overlay on the first ``K`` pixels of the flattened image; ``y=None``: the neutral label ``1 / K``."""
    flat = x.reshape(x.shape[0], -1).clone()
    flat[:, :K] = 0.0 if y is not None else 1.0 / K
    if y is not None:
        flat[torch.arange(x.shape[0]), y] = 1.0
    return flat


def ref_mlp_layer(p: dict, x: torch.Tensor) -> dict:
    """ffkit's DTG MLP layer: unit-RMS input, linear, ReLU, ``G = (mean h**2 - m) / tau`` with the margin
    ``m = softplus(theta)`` (the released threshold's form, ``softplus(t)``). On its first training batch the raw
    ``theta`` is set (without gradient) to ``softplus^-1`` of the batch's mean ``mean h**2`` (at least 1e-6), so
    ``m`` starts at that mean."""
    d = x.shape[1]
    xh = x * (math.sqrt(d) / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + 1e-8))
    h = F.relu(xh @ p["W"].T + p["b"])
    g = (h * h).mean(dim=1)
    if not p["warm"]:
        with torch.no_grad():
            # log(exp(m) - 1), written with expm1: exact in float64 for the O(1) means of this test
            p["theta"].copy_(torch.log(torch.expm1(g.mean().clamp_min(1e-6))))
        p["warm"] = True
    tau = TAU_MIN + (TAU_MAX - TAU_MIN) * torch.sigmoid(p["s"])
    margin = F.softplus(p["theta"])
    return {"features": h, "goodness": (g - margin) / tau, "tau": tau, "margin": margin, "mean_goodness": g.mean()}


def ref_mlp_head(layers: list[dict], hp: dict, x: torch.Tensor) -> torch.Tensor:
    """The released classifier: a neutral-label pass through every layer but the last, *not detached*, the layers'
    activities concatenated, linear."""
    h, feats = ref_overlay(x, None), []
    for p in layers[:-1]:
        h = ref_mlp_layer(p, h)["features"]
        feats.append(h)
    return torch.cat(feats, dim=1) @ hp["W"].T + hp["b"]


def ref_mlp_step(layers: list[dict], hp: dict, opts: list, x: torch.Tensor, y: torch.Tensor,
                 y_neg: torch.Tensor) -> dict:
    """One step: each layer's threshold loss (at 0) on [positives; negatives], local; then the head's cross-entropy
    back-propagated through the layers it reads; then every AdamW."""
    for opt in opts:
        opt.zero_grad()
    h = torch.cat([ref_overlay(x, y), ref_overlay(x, y_neg)])
    b = x.shape[0]
    outs, losses = [], []
    for p in layers:
        out = ref_mlp_layer(p, h)
        g_pos, g_neg = out["goodness"][:b], out["goodness"][b:]
        loss = F.softplus(-g_pos).mean() + F.softplus(g_neg).mean()
        loss.backward()
        outs.append({k: v.detach() for k, v in out.items()})
        losses.append(loss.detach())
        h = out["features"].detach()
    logits = ref_mlp_head(layers, hp, x)
    head_loss = F.cross_entropy(logits, y)
    head_loss.backward()  # adds to the FF gradients of the layers it passed through
    for opt in opts:
        opt.step()
    return {"outs": outs, "losses": torch.stack(losses), "logits": logits.detach(), "head_loss": head_loss.detach()}


def mlp_params_from(net) -> tuple[list[dict], dict]:
    layers = [{
        "W": layer.linear.weight.detach().clone().requires_grad_(),
        "b": layer.linear.bias.detach().clone().requires_grad_(),
        "theta": layer.theta.detach().clone().requires_grad_(),
        "s": layer.temperature.s.detach().clone().requires_grad_(),
        "warm": bool(layer.initialised),
    } for layer in net.layers]
    hp = {"W": net.head.linear.weight.detach().clone().requires_grad_(),
          "b": net.head.linear.bias.detach().clone().requires_grad_()}
    return layers, hp


def _mlp_net():
    torch.manual_seed(0)
    net = create_model("dtg_mlp", num_classes=K, in_channels=1, hidden=MLP_HIDDEN).double()
    net.objective.negatives = GivenNegatives()
    with torch.no_grad():
        for layer in net.layers:
            layer.temperature.s.uniform_(-2.0, 2.0)
    return net


def test_mlp_forward_and_head_match_restatement():
    net = _mlp_net()
    layers, hp = mlp_params_from(net)
    x, y = torch.rand(6, 1, 32, 32), torch.tensor([1, 2, 9, 0, 4, 4])
    net.train()
    batch = net.objective.prepare(net, x, y)
    h = torch.cat([ref_overlay(x, y), ref_overlay(x, (y + 1) % K)])
    assert_close(batch.inputs.flatten(1), h, atol=0, rtol=0)
    for layer, p in zip(net.layers, layers):
        ref = ref_mlp_layer(p, h)
        out = layer(h.view(-1, 1, 32, 32) if layer is net.layers[0] else h)
        assert_close(layer.theta, p["theta"], **TOL)  # the warm start, through the inverse softplus
        assert_close(layer.margin, ref["margin"], **TOL)
        assert_close(layer.margin, ref["mean_goodness"], **TOL)  # the margin starts at the batch's mean goodness
        assert_close(out.goodness, ref["goodness"], **TOL)
        assert_close(layer.temperature.tau, ref["tau"], **TOL)
        assert_close(out.features, ref["features"], **TOL)
        loss, _ = net.objective.layer_loss(out, batch)
        assert_close(loss, F.softplus(-ref["goodness"][:6]).mean() + F.softplus(ref["goodness"][6:]).mean(), **TOL)
        h = ref["features"]
    net.eval()
    assert_close(net(x), ref_mlp_head(layers, hp, x), **TOL)  # the head is the prediction


def test_mlp_three_adamw_steps_with_hybrid_head_match_restatement():
    net = _mlp_net()
    layers, hp = mlp_params_from(net)
    opts = [torch.optim.AdamW([p["W"], p["b"], p["theta"], p["s"]], lr=LR, weight_decay=WEIGHT_DECAY)
            for p in layers]
    opts.append(torch.optim.AdamW([hp["W"], hp["b"]], lr=LR, weight_decay=WEIGHT_DECAY))
    trainer = ffkit.LocalTrainer(net, lr=LR, optimizer="adamw", weight_decay=WEIGHT_DECAY, schedule="constant",
                                 fused_optimizer=False)
    gen = torch.Generator().manual_seed(2)
    for step in range(3):
        net.objective.negatives.step = step
        x, y = torch.rand(6, 1, 32, 32, generator=gen), torch.randint(0, K, (6,), generator=gen)
        ref = ref_mlp_step(layers, hp, opts, x, y, (y + 1 + step) % K)
        res = trainer.train_step(x, y)
        assert_close(res.losses.double(), ref["losses"], **TOL)  # the trainer records float32 losses
        assert res.head is not None
        assert_close(res.head[0], ref["head_loss"], **TOL)
    for layer, p in zip(net.layers, layers):
        assert_close(layer.linear.weight, p["W"], **TOL)
        assert_close(layer.linear.bias, p["b"], **TOL)
        assert_close(layer.theta, p["theta"], **TOL)
        assert_close(layer.temperature.s, p["s"], **TOL)
    assert_close(net.head.linear.weight, hp["W"], **TOL)
    assert_close(net.head.linear.bias, hp["b"], **TOL)
    net.eval()
    x = torch.rand(5, 1, 32, 32, generator=gen)
    with torch.no_grad():
        assert_close(net(x), ref_mlp_head(layers, hp, x), **TOL)


def test_mlp_restatement_without_the_head_gradient_differs():
    """The hybrid head matters: dropping its gradient from the layers (a detached head) changes layer 1's weights
    after one step by far more than the tolerance, so the test above would catch a non-hybrid head."""
    net = _mlp_net()
    layers, hp = mlp_params_from(net)
    detached_net = _mlp_net()
    detached_net.head.hybrid = False
    trainer = ffkit.LocalTrainer(detached_net, lr=LR, optimizer="adamw", weight_decay=WEIGHT_DECAY,
                                 schedule="constant", fused_optimizer=False)
    opts = [torch.optim.AdamW([p["W"], p["b"], p["theta"], p["s"]], lr=LR, weight_decay=WEIGHT_DECAY)
            for p in layers]
    opts.append(torch.optim.AdamW([hp["W"], hp["b"]], lr=LR, weight_decay=WEIGHT_DECAY))
    x, y = torch.rand(6, 1, 32, 32), torch.randint(0, K, (6,))
    ref_mlp_step(layers, hp, opts, x, y, (y + 1) % K)
    trainer.train_step(x, y)
    assert (detached_net.layers[0].linear.weight - layers[0]["W"]).abs().max() > 1e-4
    assert_close(detached_net.layers[2].linear.weight, layers[2]["W"], **TOL)  # the last layer is not read either way
