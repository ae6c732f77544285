"""Reference equivalence: ffkit's ``hinton-mlp-fmnist-loewex`` recipe against a plain-torch restatement of Sindy
Loewe's reference implementation of Hinton's FF (``loeweX/Forward-Forward``: ``config.yaml``, ``src/ff_model.py``,
``src/ff_mnist.py``, ``src/utils.py``), written from it without ffkit code:

* the label: the first ``K`` pixels of the 28x28 image set to the one-hot label (neutral: ``1/K`` each);
* the input and every layer's output are divided by their root mean square plus ``1e-8`` before the next linear
  layer (``N(0, 1/D)`` weights, zero biases); the ReLU passes its gradient everywhere;
* a layer's loss: ``BCEWithLogits(sum(h^2) - D, [1]*B + [0]*B)`` on ``[positives; negatives]``, plus 0.03 x the peer
  normalisation loss ``mean((mean(m) - m)^2)`` of the running mean ``m = 0.9 m + 0.1 mean(h_pos)`` (from 0.5);
* the softmax layer: bias-free, zero weights, on the RMS-normalised activities of layers 2..L of a neutral-label
  pass through the layers as they were before the step, cross-entropy;
* one SGD step (momentum 0.9) on the sum of all losses: lr 1e-3, weight decay 3e-4 for the layers, 1e-2 and 3e-3
  for the softmax layer; per epoch ``t`` of ``E`` the lr is multiplied by ``2 (1 + E - t) / E`` once ``t > E // 2``.

The restatement was checked against loeweX's ``FF_model`` itself, run outside the repository on the same weights and
batches (float64, 40-unit layers, three SGD steps with fixed negative labels; the release's ``labels.float()``, which
computes its BCE against float32 targets and so rounds the loss at 1e-7, taken out): losses, running means and all
weights agreed within 1.5e-14.

Checked here in float64 to 1e-6: every layer's loss (goodness and peer terms), the head's loss, the running means and
all weights after three steps of :class:`ffkit.LocalTrainer`; the cooldown's factors for 20 epochs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import ffkit
from ffkit.models import create_model
from ffkit.recipes import build_trainer, get_recipe
from helpers.negatives import TableNegatives

TOL = {"atol": 1e-6, "rtol": 1e-6}
K, B, WIDTH = 10, 8, 40
RECIPE = get_recipe("hinton-mlp-fmnist-loewex")


# -- the restatement ---------------------------------------------------------------------------------------------


def ref_label(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``[B, 784]`` with the first ``K`` pixels set to the one-hot label (``None``: ``1/K`` each)."""
    x = x.clone()
    x[:, :K] = 1.0 / K if y is None else F.one_hot(y, K).to(x.dtype)
    return x


def ref_rms(z: torch.Tensor) -> torch.Tensor:
    return z / (torch.sqrt(torch.mean(z**2, dim=-1, keepdim=True)) + 1e-8)


def ref_act(z: torch.Tensor) -> torch.Tensor:
    # forward max(z, 0), backward the identity
    return z + (z.clamp(min=0) - z).detach()


def ref_step(layers, head_w, means, x, y, y_neg):
    """loeweX's ``FF_model.forward``: the total loss, the per-layer losses, the head's loss and the new means."""
    z = torch.cat([ref_label(x, y), ref_label(x, y_neg)])
    target = torch.cat([torch.ones(B), torch.zeros(B)])
    z = ref_rms(z)
    total, per_layer, new_means = 0.0, [], []
    for (w, b), m in zip(layers, means):
        z = ref_act(z @ w.T + b)
        m = m.detach() * 0.9 + torch.mean(z[:B], dim=0) * 0.1
        peer = torch.mean((torch.mean(m) - m) ** 2)
        ff = F.binary_cross_entropy_with_logits(torch.sum(z**2, dim=-1) - z.shape[1], target)
        per_layer.append((ff + 0.03 * peer).detach())
        total = total + ff + 0.03 * peer
        new_means.append(m.detach())
        z = ref_rms(z.detach())
    with torch.no_grad():
        z = ref_rms(ref_label(x, None))
        feats = []
        for i, (w, b) in enumerate(layers):
            z = ref_rms(ref_act(z @ w.T + b))
            if i >= 1:
                feats.append(z)
    logits = torch.cat(feats, dim=-1) @ head_w.T
    head_loss = F.cross_entropy(logits - logits.max(dim=-1, keepdim=True)[0], y)
    return total + head_loss, torch.stack(per_layer), head_loss.detach(), new_means


def ref_cooldown(epoch: int, epochs: int) -> float:
    return 2 * (1 + epochs - epoch) / epochs if epoch > epochs // 2 else 1.0


# -- ffkit side ---------------------------------------------------------------------------------------------------


def _model():
    torch.manual_seed(0)
    kwargs = {**RECIPE.model_kwargs, "hidden": (WIDTH,) * 3, "threshold": float(WIDTH)}
    return create_model(RECIPE.model, num_classes=K, in_channels=1, **kwargs)


def test_the_recipe_is_the_release_configuration():
    r = RECIPE
    assert (r.batch_size, r.lr, r.weight_decay, r.optimizer, r.head_lr, r.head_weight_decay) == (
        100, 1e-3, 3e-4, "sgd", 1e-2, 3e-3)
    assert (r.schedule, r.schedule_interval, r.final_lr, r.epochs, r.drop_last, r.normalize) == (
        "linear-cooldown", "epoch", 0.0, 100, True, None)
    net = create_model(r.model, **r.model_kwargs)
    assert net.input_size == (28, 28)
    assert [(m.linear.in_features, m.linear.out_features) for m in net.layers] == [(784, 1000), (1000, 1000),
                                                                                  (1000, 1000)]
    assert net.objective.threshold == 1000.0 and net.head.layers == (1, 2) and net.head_predicts
    # FF_model._init_weights: N(0, 1/D) weights (std 1/sqrt(1000) = 0.0316), zero biases, zero softmax weights
    w = net.layers[1].linear.weight
    assert abs(w.std().item() - 1000**-0.5) < 1e-3 and abs(w.mean().item()) < 1e-3
    assert not net.layers[1].linear.bias.any() and not net.head.linear.weight.any()


def test_three_sgd_steps_match_the_release():
    net = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3 * B, 1, 28, 28, generator=g)
    y = torch.randint(0, K, (3 * B,), generator=g)
    y_neg = (y + torch.randint(1, K, y.shape, generator=g)) % K
    net.objective.negatives = TableNegatives(y_neg, K)
    layers = [(m.linear.weight.detach().clone().requires_grad_(), m.linear.bias.detach().clone().requires_grad_())
              for m in net.layers]
    head_w = net.head.linear.weight.detach().clone().requires_grad_()
    means = [torch.full((WIDTH,), 0.5) for _ in layers]
    opt = torch.optim.SGD([
        {"params": [p for wb in layers for p in wb], "lr": 1e-3, "weight_decay": 3e-4, "momentum": 0.9},
        {"params": [head_w], "lr": 1e-2, "weight_decay": 3e-3, "momentum": 0.9},
    ])
    trainer = build_trainer(RECIPE, net, steps_per_epoch=3, fused_optimizer=False)
    assert isinstance(trainer, ffkit.LocalTrainer)
    for s in range(3):
        sl = slice(s * B, (s + 1) * B)
        res = trainer.train_step(x[sl], y[sl], torch.arange(s * B, (s + 1) * B))
        opt.zero_grad()
        total, per_layer, head_loss, means = ref_step(layers, head_w, means, x[sl].flatten(1), y[sl], y_neg[sl])
        total.backward()
        opt.step()
        assert_close(res.losses.double(), per_layer, **TOL)  # recorded in float32
        assert_close(res.head[0].double(), head_loss, **TOL)
    for m, (w, b), mean in zip(net.layers, layers, means):
        assert_close(m.linear.weight, w.detach(), **TOL)
        assert_close(m.linear.bias, b.detach(), **TOL)
        assert_close(m.peer_mean, mean, **TOL)
    assert_close(net.head.linear.weight, head_w.detach(), **TOL)


@pytest.mark.parametrize("epochs", [20, 7])
def test_the_cooldown_is_the_releases(epochs):
    recipe = dataclasses.replace(RECIPE, epochs=epochs)
    trainer = build_trainer(recipe, _model(), steps_per_epoch=2)
    for sched in trainer.schedulers:  # the layers' and the head's: LambdaLR, one factor per step
        factors = [sched.lr_lambdas[0](step) for step in range(0, 2 * epochs, 2)]
        assert factors == pytest.approx([ref_cooldown(t, epochs) for t in range(epochs)], abs=1e-12)
        assert sched.lr_lambdas[0](1) == sched.lr_lambdas[0](0)  # constant within an epoch
