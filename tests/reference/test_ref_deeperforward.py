"""Reference equivalence of ffkit's DeeperForward builders with the authors' released code (Sun et al., ICLR 2025).

The reference below restates, in plain torch, what the release's ``model/cwconv.py``, ``tinycnn.py``, ``vgg.py``
(CNN14), ``resnet.py`` (ResNet17), ``resnet34.py`` (ResNet33) and ``resnet101.py`` (ResNet100) compute, without any
ffkit code:

* a layer: ``x.detach()`` -> [2x average pool] -> bias-free conv -> ReLU -> ``h``; class scores = mean of each of the
  ``K`` contiguous channel blocks of ``h``; features = ``group_norm(h, K)`` (no affine, eps 1e-5); loss =
  cross-entropy of the scores; the layer's optimizer steps after its own backward;
* the ResNets, after a layer's scores and features: ``features += shortcut`` or ``cat([features, shortcut], 1)``
  (the release's ``shortcut_flag``); then, where ``input_shortcut_flag`` is set, the shortcut for later layers is
  taken from that combined output, average-pooled by 2 where ``downsample_flag`` is set;
* the network input is ``layer_norm(x, x.shape[1:])``.

The layer tables (``_tinycnn`` ... ``_resnet100``) restate the release's constructors in its own terms (channels,
kernel, stride, pooling and the three flags per layer). This restatement was checked against the release itself, run
outside the repository with the same weights and batches: every per-layer score, combined feature and loss, and the
weights after 3 optimizer steps of the release's own ``update``, were equal (difference 0 in float64) for TinyCNN,
CNN14, and ResNet17, ResNet33 and ResNet100 at planes 10/20/40/80 and at their full widths.

Optimizers are the release's: TinyCNN ``AdamW(lr)`` with the default weight decay 0.01 (``tinycnn.py`` passes none),
CNN14 ``Adam(lr)`` (``vgg.py``), the ResNets ``AdamW(lr, weight_decay=5e-4)`` (``main.py``'s default); lr 0.08. The
release steps its cosine schedule once per epoch, so the lr is constant over these steps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ffkit
from ffkit.models import create_model

K = 10
NO, ADD, CAT = "none", "add", "cat"
TOL = {"rtol": 0.0, "atol": 1e-6}




# -- the release, restated ------------------------------------------------------------------------------------------


def _layer(cin, conv_out, k, *, stride=1, pool=False, join=NO, take=False, take_pooled=False):
    """One release layer: conv ``cin -> conv_out`` (k x k, padding k // 2), and its three shortcut flags."""
    return {"cin": cin, "out": conv_out, "k": k, "stride": stride, "pool": pool, "join": join, "take": take,
            "take_pooled": take_pooled}


def _tinycnn(cin):
    return [_layer(cin, 100, 5), _layer(100, 200, 5, pool=True), _layer(200, 400, 3, pool=True), _layer(400, 400, 3)]


def _cnn14(cin):
    blocks = [[70] * 2, [140] * 3, [280] * 3, [560] * 3, [560] * 3]
    table, prev = [], cin
    for b, block in enumerate(blocks):
        for j, c in enumerate(block):
            table.append(_layer(prev, c, 3, pool=b > 0 and j == 0))
            prev = c
    return table


def _resnet17(cin, planes):
    # resnet.py: input_shortcut_flag [T] + [F, T, F, T] x 4 (last set F); shortcut_flag [NO] + [NO, ADD, NO, CAT] x 4;
    # downsample_flag [F] + [F, F, F, T] x 4. Stage s > 0 opens with CWConv(planes[s], planes[s], stride 2).
    table = [_layer(cin, planes[0], 3, take=True)]
    for s, p in enumerate(planes):
        table += [
            _layer(p, p, 3, stride=2 if s > 0 else 1),
            _layer(p, p, 3, join=ADD, take=True),
            _layer(p, p, 3),
            _layer(p, p, 3, join=CAT, take=True, take_pooled=True),
        ]
    table[-1]["take"] = False
    return table


def _resnet33(cin, planes, blocks=(3, 4, 6, 3)):
    # resnet34.py make_layers: CWConv(in, out, stride) then CWConv(out, out or out - in) joined with the block input.
    table = [_layer(cin, planes[0], 3, take=True)]
    c_in = planes[0]
    for s, (p, n) in enumerate(zip(planes, blocks)):
        for b in range(n):
            table.append(_layer(c_in, p, 3, stride=2 if s > 0 and b == 0 else 1))
            table.append(_layer(p, p, 3, join=ADD, take=True) if c_in == p else
                         _layer(p, p - c_in, 3, join=CAT, take=True))
            c_in = p
        table[-1]["take_pooled"] = True  # downsample_flag[-1] = True after every stage
    table[-1]["take"] = False
    return table


def _resnet100(cin, planes, blocks=(3, 4, 23, 3)):
    # resnet101.py make_layers: 1x1 in -> p, 3x3 p -> p (stride), 1x1 p -> 4p (or 4p - in) joined with the block input.
    table = [_layer(cin, planes[0], 3, take=True)]
    c_in = planes[0]
    for s, (p, n) in enumerate(zip(planes, blocks)):
        for b in range(n):
            table.append(_layer(c_in, p, 1))
            table.append(_layer(p, p, 3, stride=2 if s > 0 and b == 0 else 1))
            table.append(_layer(p, 4 * p, 1, join=ADD, take=True) if c_in == 4 * p else
                         _layer(p, 4 * p - c_in, 1, join=CAT, take=True))
            c_in = 4 * p
        table[-1]["take_pooled"] = s < 3
    table[-1]["take"] = False
    return table


def _reference(weights, table, x, y, optimizers=None):
    """The release's forward (and, with ``optimizers``, its ``update`` on one batch).

    Returns one ``(scores [B, K], features passed on [B, C, H, W], loss)`` per layer.
    """
    h = F.layer_norm(x, x.shape[1:])
    shortcut = None
    out = []
    for i, (w, t) in enumerate(zip(weights, table)):
        inp = h.detach()
        if t["pool"]:
            inp = F.avg_pool2d(inp, 2, stride=2)
        if optimizers is not None:
            optimizers[i].zero_grad()
        a = F.relu(F.conv2d(inp, w, stride=t["stride"], padding=t["k"] // 2))
        scores = a.reshape(a.shape[0], K, -1).mean(dim=2)
        feats = F.group_norm(a, K)
        loss = F.cross_entropy(scores, y)
        if optimizers is not None:
            loss.backward()
            optimizers[i].step()
        feats = feats.detach()
        if t["join"] == ADD:
            feats = feats + shortcut
        elif t["join"] == CAT:
            feats = torch.cat([feats, shortcut], dim=1)
        if t["take"]:
            shortcut = F.avg_pool2d(feats, 2, stride=2) if t["take_pooled"] else feats
        out.append((scores.detach(), feats, loss.detach()))
        h = feats
    return out


# -- the mapping between the two --------------------------------------------------------------------------------


def _conv_weights(net):
    """ffkit layer ``i`` is release layer ``i`` (a release ``Sequential(AvgPool2d, CWConv)`` is one ffkit CWConv with
    ``pool=2``); each holds one bias-free conv weight."""
    return [layer.conv.weight for layer in net.layers]


def _check_structure(net, table):
    assert len(net) == len(table)
    for i, (layer, t) in enumerate(zip(net.layers, table)):
        assert tuple(layer.conv.weight.shape) == (t["out"], t["cin"], t["k"], t["k"]), i
        assert layer.conv.bias is None
        assert layer.conv.stride == (t["stride"],) * 2 and layer.conv.padding == (t["k"] // 2,) * 2, i
        assert layer.pool == (2 if t["pool"] else 1), i
        mode = layer.combine.mode if layer.combine is not None else NO
        assert {NO: NO, "add": ADD, "concat": CAT}[mode] == t["join"], i


CASES = {
    # name: (release table at the ffkit width, ffkit width_multiplier, optimizer, weight decay)
    "tinycnn": (lambda c: _tinycnn(c), 1.0, "adamw", 0.01),
    "cnn14": (lambda c: _cnn14(c), 1.0, "adam", 0.0),
    "resnet17": (lambda c: _resnet17(c, (10, 20, 40, 80)), 0.1, "adamw", 5e-4),
    "resnet33": (lambda c: _resnet33(c, (10, 20, 40, 80)), 0.1, "adamw", 5e-4),
    # 70 * 0.1 = 7 channels, rounded up to the class count: the release run with planes (10, 20, 40, 80)
    "resnet100": (lambda c: _resnet100(c, (10, 20, 40, 80)), 0.1, "adamw", 5e-4),
}
FULL = {
    "tinycnn": lambda c: _tinycnn(c),
    "cnn14": lambda c: _cnn14(c),
    "resnet17": lambda c: _resnet17(c, (100, 200, 400, 800)),
    "resnet33": lambda c: _resnet33(c, (100, 200, 400, 800)),
    "resnet100": lambda c: _resnet100(c, (70, 140, 280, 560)),
}


def _build(name, width_multiplier, in_channels=3):
    torch.manual_seed(0)
    return create_model(f"deeperforward_{name}", num_classes=K, in_channels=in_channels,
                        width_multiplier=width_multiplier, dropout=0.0).double()


@pytest.mark.parametrize("name", list(FULL))
def test_full_width_structure_is_the_release(name):
    """At the published widths every conv's shape, stride, padding, pooling and shortcut join is the release's."""
    net = create_model(f"deeperforward_{name}", num_classes=K, in_channels=1)
    _check_structure(net, FULL[name](1))


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_release(name):
    """Per-layer class scores, features passed on (after the shortcut join) and losses, in one forward pass."""
    table_of, wm, _, _ = CASES[name]
    net = _build(name, wm)
    table = table_of(3)
    _check_structure(net, table)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, K, (4,))
    ref = _reference([w.detach().clone() for w in _conv_weights(net)], table, x, y)
    net.eval()
    with torch.no_grad():
        outs = list(net.iter_layers(x))
    assert len(outs) == len(ref)
    for (i, out), (scores, feats, loss) in zip(outs, ref):
        torch.testing.assert_close(out.scores, scores, **TOL, msg=lambda m, i=i: f"layer {i} scores: {m}")
        torch.testing.assert_close(out.features, feats, **TOL, msg=lambda m, i=i: f"layer {i} features: {m}")
        ours, _ = net.objective.layer_loss(out, net.objective.prepare(net, x, y))
        torch.testing.assert_close(ours, loss, **TOL)
    # The release's prediction sums the scores of a layer range (before SIP: start_layer = 1 to the last).
    torch.testing.assert_close(net.layer_scores(x)[1:].sum(0), sum(r[0] for r in ref[1:]), **TOL)


@pytest.mark.parametrize("name", ["tinycnn", "cnn14", "resnet17", "resnet33", "resnet100"])
def test_three_local_steps_match_release(name):
    """Losses of every layer at every step and the weights after 3 steps, with the release's optimizers."""
    table_of, wm, optimizer, weight_decay = CASES[name]
    net = _build(name, wm)
    table = table_of(3)
    weights = [w.detach().clone().requires_grad_(True) for w in _conv_weights(net)]
    if optimizer == "adam":
        opts = [torch.optim.Adam([w], lr=0.08) for w in weights]
    elif name == "tinycnn":
        opts = [torch.optim.AdamW([w], lr=0.08) for w in weights]  # AdamW's default weight decay, 0.01
        assert opts[0].defaults["weight_decay"] == weight_decay
    else:
        opts = [torch.optim.AdamW([w], lr=0.08, weight_decay=weight_decay) for w in weights]
    trainer = ffkit.LocalTrainer(net, lr=0.08, optimizer=optimizer, weight_decay=weight_decay, schedule="constant",
                                 fused_optimizer=False, device="cpu")
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, K, (4,), generator=gen)
        ref = _reference(weights, table, x, y, optimizers=opts)
        res = trainer.train_step(x, y)
        ref_losses = torch.stack([r[2] for r in ref])
        torch.testing.assert_close(res.losses.double(), ref_losses, **TOL, msg=lambda m, s=step: f"step {s}: {m}")
    for i, (ours, theirs) in enumerate(zip(_conv_weights(net), weights)):
        torch.testing.assert_close(ours.detach(), theirs.detach(), **TOL, msg=lambda m, i=i: f"layer {i} weight: {m}")
    assert any(not torch.equal(a, b) for a, b in zip(_conv_weights(_build(name, wm)), weights))  # they did move
