"""Reference equivalence of ffkit's Trifecta builders with the authors' released code (Dooms et al., "The Trifecta:
Three simple techniques for training deeper Forward-Forward networks").

The reference below restates, in plain torch, what the release's ``main.py`` (``Block``, ``Network``, ``small`` and
``large``) computes, without any ffkit code:

* the input: the images twice (positives, then negatives) with one more channel, the row of the label embedding
  (``num_classes x H*W``) of each sample's label (true, then wrong) reshaped to ``H x W``;
* a block: ``norm(x)`` (``BatchNorm2d(C)``, or ``LayerNorm([C, H, W])`` with affine parameters for the runs without
  BatchNorm) -> 3x3 bias-free conv (padding 1) -> ReLU -> [2x2 max-pool]; goodness = mean of squares of the output;
* losses on the block's goodness ``[pos; neg]``: SymBa ``mean softplus(-alpha * (pos - neg))``, or the threshold loss
  ``mean(cat[softplus(tau - pos), softplus(neg - tau)])`` (the mean over the ``2B`` terms);
* one update: block ``k``'s ``Adam(lr)`` holds block ``k - 1``'s and its own parameters (block 0: the label
  embedding's, when learned). Without OLU every block updates and passes its output on detached; with OLU block ``k``
  updates at iteration ``t`` when ``(k even) XOR (t even)`` (``zero_grad``, ``backward``, ``step``, then its output
  is passed on detached), and the other blocks pass their output on undetached, so the next block's loss also
  reaches them;
* evaluation: BatchNorm in eval mode, the goodness of every label per block; the prediction reads the last block.

This restatement was checked against the release itself (its ``Network`` and ``Block`` run outside the repository
with stand-ins for the Lightning and torchmetrics imports, the same weights, inputs and wrong labels, float64): the
per-block losses and mean positive/negative goodness of 3 iterations, every weight, BatchNorm statistic and the label
embedding after them, and the eval-mode goodness of every label were equal (difference 0) for the small network
with and without OLU, BatchNorm and LayerNorm, SymBa and the threshold loss (tau 2 and 10), learned and fixed label
embeddings, CIFAR-10 (32x32) and MNIST (28x28) inputs.

The optimizer is the release's ``torch.optim.Adam(lr=1e-3)`` (default betas and eps, no weight decay); its learning
rate is constant within a run (the paper's lower rates are later fine-tuning runs).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ffkit
from ffkit.models import create_model
from ffkit.objectives import PreparedBatch
from ffkit.objectives.negatives import NegativeLabels

K = 10
TOL = {"rtol": 0.0, "atol": 1e-6}
LR = 1e-3
# The release's ``small`` and ``large`` networks, widths divided by 8 (ffkit's width_multiplier=0.125).
SHALLOW_8 = ((16, True), (16, False), (32, True), (32, False), (32, False), (64, True))
DEEP_8 = (
    (8, False), (16, True), (16, False), (16, False), (16, False), (32, True),
    (32, False), (32, False), (32, False), (64, True), (64, False), (64, False),
)




# -- the release, restated ------------------------------------------------------------------------------------------


def _ref_block(h, p, norm, training):
    if norm == "batch":
        h = F.batch_norm(h, p["rm"], p["rv"], p["w"], p["b"], training=training, momentum=0.1, eps=1e-5)
    else:
        h = F.layer_norm(h, tuple(h.shape[1:]), p["w"], p["b"], eps=1e-5)
    h = F.relu(F.conv2d(h, p["conv"], padding=1))
    return F.max_pool2d(h, 2) if p["pool"] else h


def _ref_goodness(h):
    return h.pow(2).flatten(1).mean(1)


def _ref_loss(g, loss, alpha, tau):
    pos, neg = g.chunk(2)
    if loss == "symba":
        return F.softplus(-alpha * (pos - neg)).mean()
    return torch.cat([F.softplus(tau - pos), F.softplus(neg - tau)]).mean()


def _ref_input(x, labels, emb):
    side = x.shape[-1]
    return torch.cat([x, emb[labels].view(-1, 1, side, side)], dim=1)


def _ref_optimizers(blocks, emb, learned):
    own = [[p["w"], p["b"], p["conv"]] for p in blocks]
    for params in own:
        for t in params:
            t.requires_grad_(True)
    emb.requires_grad_(learned)
    first = [emb] if learned else []
    return [torch.optim.Adam((own[k - 1] if k > 0 else first) + own[k], lr=LR) for k in range(len(blocks))]


def _ref_step(blocks, emb, opts, x, y, y_neg, it, *, norm, olu, loss, alpha, tau):
    """One release iteration: per block ``(goodness [2B], loss, features passed on)``."""
    h = _ref_input(torch.cat([x, x]), torch.cat([y, y_neg]), emb)
    record = []
    for k, p in enumerate(blocks):
        out = _ref_block(h, p, norm, True)
        g = _ref_goodness(out)
        lo = _ref_loss(g, loss, alpha, tau)
        if not olu or (k % 2 == 0) != (it % 2 == 0):
            opts[k].zero_grad()
            lo.backward()
            opts[k].step()
            h = out.detach()
        else:
            h = out
        record.append((g.detach().clone(), lo.detach().clone(), h.detach().clone()))
    return record


@torch.no_grad()
def _ref_label_goodness(blocks, emb, x, norm):
    """``[L, B, K]``: each block's eval-mode goodness of ``x`` with each label."""
    per_label = []
    for k in range(K):
        h = _ref_input(x, torch.full((x.shape[0],), k, dtype=torch.long), emb)
        gs = []
        for p in blocks:
            h = _ref_block(h, p, norm, False)
            gs.append(_ref_goodness(h))
        per_label.append(torch.stack(gs))
    return torch.stack(per_label, dim=2)


# -- ffkit <-> reference ---------------------------------------------------------------------------------------------


def _to_reference(net, spec, norm):
    """The reference's parameters, copied from the ffkit network (weights, norm parameters and statistics)."""
    blocks = []
    for layer, (_, pool) in zip(net.layers, spec):
        p = {"pool": pool, "conv": layer.conv.weight.detach().clone(), "w": layer.norm.weight.detach().clone(),
             "b": layer.norm.bias.detach().clone()}
        if norm == "batch":
            p["rm"], p["rv"] = layer.norm.running_mean.clone(), layer.norm.running_var.clone()
        blocks.append(p)
    return blocks, net.objective.encoder.matrix.detach().clone()


class _GivenNegatives(NegativeLabels):
    """The wrong labels of each step, given in advance, so both sides train on the same negatives."""

    def __init__(self, labels):
        super().__init__(K)
        self.labels = list(labels)

    def __call__(self, y, *, x=None, network=None, index=None):
        return self.labels.pop(0)


def _assert_same_state(net, blocks, emb, norm):
    for layer, p in zip(net.layers, blocks):
        torch.testing.assert_close(layer.conv.weight, p["conv"], **TOL)
        torch.testing.assert_close(layer.norm.weight, p["w"], **TOL)
        torch.testing.assert_close(layer.norm.bias, p["b"], **TOL)
        if norm == "batch":
            torch.testing.assert_close(layer.norm.running_mean, p["rm"], **TOL)
            torch.testing.assert_close(layer.norm.running_var, p["rv"], **TOL)
    torch.testing.assert_close(net.objective.encoder.matrix, emb, **TOL)


CASES = {
    # the paper's TFF: SymBa, BatchNorm, OLU, learned label embedding
    "symba-bn-olu-learned": ("trifecta_shallow", SHALLOW_8, "symba", "batch", True, True, 2.0),
    "symba-bn-olu-fixed": ("trifecta_shallow", SHALLOW_8, "symba", "batch", True, False, 2.0),
    # the threshold-loss ablation rows: no BatchNorm (LayerNorm), no OLU, fixed random label
    "threshold2-ln": ("trifecta_shallow", SHALLOW_8, "threshold", "layer", False, False, 2.0),
    "threshold10-ln": ("trifecta_shallow", SHALLOW_8, "threshold", "layer", False, False, 10.0),
    "symba-bn-no-olu": ("trifecta_shallow", SHALLOW_8, "symba", "batch", False, True, 2.0),
    "deep-symba-bn-olu": ("trifecta_deep", DEEP_8, "symba", "batch", True, True, 2.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_and_prediction_match_the_release(case):
    name, spec, loss, norm, olu, learned, tau = CASES[case]
    alpha, steps, b = 4.0, 3, 4
    torch.manual_seed(1)
    net = create_model(name, in_channels=3, width_multiplier=0.125, loss=loss, threshold=tau, norm=norm,
                       learned_label=learned).double()
    assert [layer.conv.out_channels for layer in net.layers] == [c for c, _ in spec]
    with torch.no_grad():  # away from the fresh init, so a swapped norm weight and bias would show
        for layer in net.layers:
            layer.norm.weight.add_(0.1 * torch.randn_like(layer.norm.weight))
            layer.norm.bias.add_(0.1 * torch.randn_like(layer.norm.bias))
    x = torch.randn(b, 3, 32, 32)
    y = torch.tensor([0, 3, 9, 5])
    negatives = [torch.tensor([7, 4, 2, 9]), torch.tensor([1, 8, 0, 6]), torch.tensor([9, 0, 8, 1])]
    assert all((n != y).all() for n in negatives)
    net.objective.negatives = _GivenNegatives(negatives)

    blocks, emb = _to_reference(net, spec, norm)
    emb0, conv0 = emb.clone(), [p["conv"].clone() for p in blocks]
    opts = _ref_optimizers(blocks, emb, learned)
    trainer = ffkit.LocalTrainer(net, lr=LR, optimizer="adam", weight_decay=0.0, schedule="constant",
                                 overlap=olu, fused_optimizer=False)

    batch = PreparedBatch(inputs=x, target=y, batch_size=b)  # what layer_loss reads: the split at b
    seen = []
    hooks = [layer.register_forward_hook(lambda m, a, out: seen.append(out)) for layer in net.layers]
    for it in range(steps):
        seen.clear()
        res = trainer.train_step(x, y)
        ref = _ref_step(blocks, emb, opts, x, y, negatives[it], it, norm=norm, olu=olu, loss=loss, alpha=alpha,
                        tau=tau)
        assert len(seen) == len(ref) == len(net)
        for k, (out, (g, lo, h)) in enumerate(zip(seen, ref)):
            torch.testing.assert_close(out.goodness.detach(), g, **TOL)  # positives then negatives
            torch.testing.assert_close(out.features.detach(), h, **TOL)  # what the next block receives
            # the layer's loss in float64 through ffkit's objective, and as the trainer recorded it (float32)
            torch.testing.assert_close(net.objective.layer_loss(out, batch)[0].detach(), lo, **TOL)
            torch.testing.assert_close(res.losses[k], lo.float(), **TOL)
    for hook in hooks:
        hook.remove()
    _assert_same_state(net, blocks, emb, norm)
    assert all(not torch.equal(layer.conv.weight, w) for layer, w in zip(net.layers, conv0))  # every block trained
    # the label embedding moved only if it is learned (block 0's loss; under OLU at odd steps only)
    assert torch.equal(net.objective.encoder.matrix, emb0) != learned

    net.eval()
    ref_scores = _ref_label_goodness(blocks, emb, x, norm)
    scores = net.layer_scores(x)
    torch.testing.assert_close(scores, ref_scores, **TOL)
    # the release's prediction: the goodness of each label in the last block
    torch.testing.assert_close(net(x), ref_scores[-1], **TOL)
    assert torch.equal(net(x).argmax(1), ref_scores[-1].argmax(1))


def test_olu_label_embedding_is_stepped_by_block_0_only():
    # Release: block 1's Adam holds blocks 0 and 1, not the embedding, so at step 0 (block 1 updates through block 0)
    # the embedding stays put although block 1's loss reaches it; at step 1 block 0 updates it.
    torch.manual_seed(2)
    net = create_model("trifecta_shallow", in_channels=1, width_multiplier=0.125).double()
    trainer = ffkit.LocalTrainer(net, lr=LR, weight_decay=0.0, schedule="constant", overlap=True,
                                 fused_optimizer=False)
    matrix = net.objective.encoder.matrix
    opt_params = [{id(p) for g in opt.param_groups for p in g["params"]} for opt in trainer.optimizers]
    assert id(matrix) in opt_params[0]
    assert all(id(matrix) not in s for s in opt_params[1:])
    own = [{id(p) for p in layer.parameters()} for layer in net.layers]
    assert opt_params[0] == own[0] | {id(matrix)}
    assert all(opt_params[k] == own[k - 1] | own[k] for k in range(1, len(net)))
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    before = matrix.detach().clone()
    trainer.train_step(x, y)
    assert matrix.grad is not None and matrix.grad.abs().sum() > 0  # reached by block 1's loss ...
    assert torch.equal(matrix.detach(), before)  # ... but not stepped
    trainer.train_step(x, y)
    assert not torch.equal(matrix.detach(), before)
