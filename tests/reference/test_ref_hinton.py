"""Reference equivalence: ffkit's ``hinton_mlp`` against a plain-torch restatement of Pipeline Forward-Forward's code
(Aktemur et al., "Going Forward-Forward in Distributed Deep Learning", 2024).

The paper's own repository is not public. Its first author's public repository ``egeaktemur/RLFF`` starts (commit
``c01798a``, ``layers.py``, ``networks.py``, ``helper.py``) with the paper's sequential trainer: ``FFNet`` with the
paper's defaults (784-2000-2000-2000-2000, batch 64, Adam lr 0.01, threshold coefficient 0.01, 100 epochs in 100
splits, the softmax layer's lr 0.01 x 0.01, cooldown after epoch 50, AdaptiveNEG / RandomNEG redrawn after each
chapter). The restatement below is written from it, without ffkit code:

* the label: the last ``K`` elements of the flattened image are set to 0, the label's to 1.0 (neutral: 1/K each);
* a layer: ``h = relu((x / (|x| + 1e-4)) W^T + b)`` (``nn.Linear``'s default init); goodness ``mean(h^2)``;
* the loss: ``log(1 + exp(cat[theta - g_pos, g_neg - theta])).mean()`` with ``theta = 0.01 x width``; one Adam
  (lr 0.01) per layer; the next layer reads ``h`` (detached);
* the sequential order: for each chapter, each layer trains over all of the chapter's batches, then the next layer
  reads the trained layer's outputs; after the layers, the bias-free softmax layer (Adam, lr 1e-4, cross-entropy)
  trains over the chapter's batches on ``cat(h_1..h_{L-1})`` of a neutral-label pass;
* goodness prediction: ``sum_{l >= 1} mean(h_l^2)`` per overlaid label; AdaptiveNEG: the best-scoring wrong label of
  the top two (goodness, or the softmax layer's logits when the network has one).

This restatement was checked against the release itself, run outside the repository on the same weights and batches
(float64, 1024 inputs, 40-unit layers, one chapter of three batches followed by the softmax layer): weights after the
chapter within 1.3e-15, softmax layer within 1.4e-17, goodness per label within 4.2e-17.

Checked here in float64 to 1e-6 with fixed negative labels on both sides: every layer's goodness, the features passed
on and the losses; the weights after three steps of :class:`ffkit.LocalTrainer` (Adam, lr 0.01, no weight decay,
constant lr) and after a three-batch chapter of :class:`ffkit.train.ChapterTrainer` (the release's order), with and
without the softmax layer; the goodness prediction and AdaptiveNEG's choice.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import ffkit
from ffkit.models import create_model
from ffkit.train.chapters import ChapterTrainer
from helpers.negatives import TableNegatives

TOL = {"atol": 1e-6, "rtol": 1e-6}
K, B, WIDTH_MULTIPLIER = 10, 6, 0.02  # 40-unit layers
WIDTH = 40




# -- the restatement ---------------------------------------------------------------------------------------------


def ref_overlay(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``[B, D]`` with the label written into the last ``K`` elements (``None``: the neutral label)."""
    x = x.clone()
    x[:, -K:] = 0.0
    if y is None:
        x[:, -K:] = 1.0 / K
    else:
        x[torch.arange(x.shape[0]), x.shape[1] - K + y] = 1.0
    return x


def ref_layer(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.relu((x / (x.norm(2, 1, keepdim=True) + 1e-4)) @ w.T + b)


def ref_loss(w, b, x_pos, x_neg, theta):
    g_pos, g_neg = ref_layer(w, b, x_pos).pow(2).mean(1), ref_layer(w, b, x_neg).pow(2).mean(1)
    loss = torch.log(1 + torch.exp(torch.cat([-g_pos + theta, g_neg - theta]))).mean()
    return loss, g_pos, g_neg


def ref_neutral_features(params, x):
    """``cat(h_1 .. h_{L-1})`` of a neutral-label pass: what the softmax layer reads."""
    h, feats = ref_overlay(x, None), []
    for i, (w, b) in enumerate(params):
        h = ref_layer(w, b, h)
        if i > 0:
            feats.append(h)
    return torch.cat(feats, dim=1)


def ref_goodness_per_label(params, x):
    scores = []
    for k in range(K):
        h, total = ref_overlay(x, torch.full((x.shape[0],), k)), 0.0
        for i, (w, b) in enumerate(params):
            h = ref_layer(w, b, h)
            if i > 0:
                total = total + h.pow(2).mean(1)
        scores.append(total)
    return torch.stack(scores, dim=1)


def ref_hardest_wrong(scores, y):
    top2 = torch.topk(scores, 2, dim=1).indices
    return torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])


# -- ffkit side and the weight mapping ----------------------------------------------------------------------------


def _data(n_batches: int = 3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_batches * B, 1, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (n_batches * B,), generator=g)
    y_neg = (y + torch.randint(1, K, y.shape, generator=g)) % K
    return x, y, y_neg


def _model(head: bool = False):
    torch.manual_seed(0)
    net = create_model("hinton_mlp", num_classes=K, in_channels=1, width_multiplier=WIDTH_MULTIPLIER, head=head)
    assert [layer.linear.out_features for layer in net.layers] == [WIDTH] * 4
    return net


def _ref_params(net):
    """The restatement's weights: a copy of every ffkit layer's ``(W, b)``, and the softmax layer's ``W``."""
    layers = [(layer.linear.weight.detach().clone().requires_grad_(), layer.linear.bias.detach().clone()
               .requires_grad_()) for layer in net.layers]
    head = net.head.linear.weight.detach().clone().requires_grad_() if net.head is not None else None
    return layers, head


def _assert_same_weights(net, layers, head):
    for layer, (w, b) in zip(net.layers, layers):
        assert_close(layer.linear.weight, w.detach(), **TOL)
        assert_close(layer.linear.bias, b.detach(), **TOL)
    if head is not None:
        assert_close(net.head.linear.weight, head.detach(), **TOL)


# -- the tests ----------------------------------------------------------------------------------------------------


def test_goodness_features_and_losses_of_every_layer():
    net = _model()
    x, y, y_neg = _data(1)
    net.objective.negatives = TableNegatives(y_neg, K)
    batch = net.objective.prepare(net, x, y, torch.arange(B))
    params, _ = _ref_params(net)
    theta = 0.01 * WIDTH
    assert net.objective.threshold == pytest.approx(theta)

    h_pos, h_neg = ref_overlay(x.flatten(1), y), ref_overlay(x.flatten(1), y_neg)
    assert_close(batch.inputs.flatten(1), torch.cat([h_pos, h_neg]), atol=0, rtol=0)
    for (i, out), (w, b) in zip(net.iter_layers(batch.inputs), params):
        loss, g_pos, g_neg = ref_loss(w, b, h_pos, h_neg, theta)
        assert_close(out.goodness, torch.cat([g_pos, g_neg]), **TOL, msg=f"goodness of layer {i}")
        ffkit_loss, _ = net.objective.layer_loss(out, batch)
        assert_close(ffkit_loss, loss, **TOL, msg=f"loss of layer {i}")
        h_pos, h_neg = ref_layer(w, b, h_pos), ref_layer(w, b, h_neg)
        assert_close(out.features, torch.cat([h_pos, h_neg]), **TOL, msg=f"features of layer {i}")


def test_goodness_prediction_uses_layers_two_to_last():
    net = _model()
    x, _, _ = _data(1)
    params, _ = _ref_params(net)
    net.eval()
    with torch.no_grad():
        assert_close(net(x), ref_goodness_per_label(params, x.flatten(1)), **TOL)


@pytest.mark.parametrize("head", [False, True])
def test_three_local_steps(head):
    """LocalTrainer's order: on each batch every layer takes the release's step on the previous layer's output (as
    it was before this batch's steps); then the softmax layer takes its step on a neutral-label pass through the
    updated layers."""
    net = _model(head)
    x, y, y_neg = _data(3)
    net.objective.negatives = TableNegatives(y_neg, K)
    trainer = ffkit.LocalTrainer(net, optimizer="adam", lr=0.01, weight_decay=0, schedule="constant",
                                 fused_optimizer=False, **({"head_lr": 1e-4} if head else {}))
    layers, head_w = _ref_params(net)
    opts = [torch.optim.Adam([w, b], lr=0.01) for w, b in layers]
    head_opt = torch.optim.Adam([head_w], lr=1e-4) if head else None
    theta = 0.01 * WIDTH
    for s in range(3):
        sl = slice(s * B, (s + 1) * B)
        res = trainer.train_step(x[sl], y[sl], torch.arange(s * B, (s + 1) * B))
        h_pos, h_neg = ref_overlay(x[sl].flatten(1), y[sl]), ref_overlay(x[sl].flatten(1), y_neg[sl])
        ref_losses = []
        for (w, b), opt in zip(layers, opts):
            opt.zero_grad()
            loss, _, _ = ref_loss(w, b, h_pos, h_neg, theta)
            loss.backward()
            ref_losses.append(loss.detach())
            with torch.no_grad():
                h_pos, h_neg = ref_layer(w, b, h_pos), ref_layer(w, b, h_neg)
        for opt in opts:
            opt.step()
        # StepResult records losses in float32 (its logging dtype): compared to 1e-6 relative.
        assert_close(res.losses.double(), torch.stack(ref_losses), **TOL)
        if head:
            with torch.no_grad():
                z = ref_neutral_features(layers, x[sl].flatten(1))
            head_opt.zero_grad()
            head_loss = F.cross_entropy(z @ head_w.T, y[sl])
            head_loss.backward()
            head_opt.step()
            assert_close(res.head[0].double(), head_loss.detach(), **TOL)
    _assert_same_weights(net, layers, head_w)


@pytest.mark.parametrize("head", [False, True])
def test_a_three_batch_chapter_in_the_releases_order(head):
    """The release's sequential ``train_net`` for one chapter: each layer takes three steps over the chapter's
    batches, the next layer reads its trained outputs, then the softmax layer trains over the same batches."""
    net = _model(head)
    x, y, y_neg = _data(3)
    net.objective.negatives = TableNegatives(y_neg, K)
    trainer = ChapterTrainer(net, chapter_batches=3, optimizer="adam", lr=0.01, weight_decay=0, schedule="constant",
                             fused_optimizer=False, **({"head_lr": 1e-4} if head else {}))
    batches = [(x[s * B:(s + 1) * B], y[s * B:(s + 1) * B], torch.arange(s * B, (s + 1) * B)) for s in range(3)]
    record = trainer.train_epoch(batches)
    layers, head_w = _ref_params(_model(head))
    theta = 0.01 * WIDTH
    x_pos, x_neg = ref_overlay(x.flatten(1), y), ref_overlay(x.flatten(1), y_neg)
    losses = []
    for w, b in layers:
        opt = torch.optim.Adam([w, b], lr=0.01)
        total = 0.0
        for s in range(3):
            sl = slice(s * B, (s + 1) * B)
            opt.zero_grad()
            loss, _, _ = ref_loss(w, b, x_pos[sl], x_neg[sl], theta)
            loss.backward()
            opt.step()
            total += loss.item() * B
        losses.append(total / (3 * B))
        with torch.no_grad():
            x_pos, x_neg = ref_layer(w, b, x_pos), ref_layer(w, b, x_neg)
    if head:
        with torch.no_grad():
            z = ref_neutral_features(layers, x.flatten(1))
        opt = torch.optim.Adam([head_w], lr=1e-4)
        for s in range(3):
            sl = slice(s * B, (s + 1) * B)
            opt.zero_grad()
            F.cross_entropy(z[sl] @ head_w.T, y[sl]).backward()
            opt.step()
    _assert_same_weights(net, layers, head_w)
    assert_close(torch.tensor(record["train_loss"]), torch.tensor(losses), **TOL)


@pytest.mark.parametrize("head", [False, True])
def test_adaptive_negatives_are_the_best_scoring_wrong_label(head):
    """AdaptiveNEG: the top-2 rule on the goodness per label, or on the softmax layer's logits of the neutral-label
    pass when the network has one."""
    torch.manual_seed(0)
    net = create_model("hinton_mlp", num_classes=K, width_multiplier=WIDTH_MULTIPLIER, negatives="adaptive",
                       head=head)
    x, y, _ = _data(1)
    layers, head_w = _ref_params(net)
    y_neg = net.objective.prepare(net, x, y).inputs[B:].flatten(1)[:, -K:].argmax(dim=1)
    with torch.no_grad():
        flat = x.flatten(1)
        scores = ref_neutral_features(layers, flat) @ head_w.T if head else ref_goodness_per_label(layers, flat)
    assert torch.equal(y_neg, ref_hardest_wrong(scores, y))
