"""The learning rule as an argument: layers take ``goodness=``, objectives take ``loss=`` (names or callables)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import ffkit
from ffkit import goodness, losses
from ffkit.layers import CwCompConv, CWConv, FFLinear, TrifectaConv, TrifectaLinear
from ffkit.train.pipelining.partition import share_mode

K = 4


def _batch(seed: int = 0, b: int = 6, c: int = 3, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, size, size, generator=g), torch.randint(0, K, (b,), generator=g)


def mean_as_callable(h: torch.Tensor, groups: int | None = None) -> torch.Tensor:
    """DeeperForward's mean goodness, but not the registered function object: takes CWConv's unfused path."""
    return goodness.mean(h, groups=groups)


def test_mean_squared_by_hand():
    h = torch.tensor([[1.0, 3.0, 2.0, 4.0]])
    assert_close(goodness.mean_squared(h), torch.tensor([30.0 / 4]))  # (1 + 9 + 4 + 16) / 4
    assert_close(goodness.mean_squared(h, groups=2), torch.tensor([[5.0, 10.0]]))  # (1 + 9) / 2, (4 + 16) / 2


def test_get_goodness_names_and_errors():
    assert goodness.get_goodness("mean_squared") is goodness.mean_squared
    with pytest.raises(ValueError, match="unknown goodness 'cube'"):
        goodness.get_goodness("cube")
    with pytest.raises(TypeError, match="goodness must be a name"):
        goodness.get_goodness(3)
    assert goodness.goodness_name(goodness.mean_squared) == "mean_squared"
    assert goodness.goodness_name(mean_as_callable) == "mean_as_callable"


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_cwconv_unfused_goodness_matches_the_fused_path(dropout):
    """The same goodness through CWConv's plain-autograd path gives the fused path's scores, features and weight
    gradients (dropout included: the same mask, the same 1 / (1 - p) scale on the scores)."""
    x, y = _batch()
    fused = CWConv(3, 8, K, dropout=dropout)
    plain = CWConv(3, 8, K, dropout=dropout, goodness=mean_as_callable)
    plain.load_state_dict(fused.state_dict())
    outs = []
    for layer in (fused, plain):
        torch.manual_seed(1)
        out = layer(x)
        F.cross_entropy(out.scores, y).backward()
        outs.append((out, layer.conv.weight.grad))
    (a, ga), (b, gb) = outs
    assert_close(b.scores, a.scores)
    assert_close(b.features, a.features)
    assert_close(gb, ga)


def test_cwconv_mean_squared_scores_by_hand():
    x, _ = _batch()
    layer = CWConv(3, 8, K, goodness="mean_squared")
    h = F.relu(layer.conv(x))
    expected = (h**2).reshape(6, K, -1).mean(dim=2)
    assert_close(layer(x).scores, expected)
    assert "goodness=mean_squared" in repr(layer)


def test_cwcomp_conv_takes_the_mean_goodness():
    x, _ = _batch()
    layer = CwCompConv(3, 8, K, goodness="mean").eval()
    out = layer(x)
    assert_close(out.scores, out.features.reshape(6, K, -1).mean(dim=2))
    assert "goodness=mean" in repr(layer)
    default = CwCompConv(3, 8, K).eval()
    default.load_state_dict(layer.state_dict())
    o = default(x)
    assert_close(o.scores, (o.features**2).reshape(6, K, -1).mean(dim=2))


@pytest.mark.parametrize("make", [lambda g: TrifectaConv(3, 5, goodness=g), lambda g: TrifectaLinear(3 * 8 * 8, 5,
                                                                                                       goodness=g)])
def test_trifecta_layers_take_a_goodness(make):
    x, _ = _batch()
    layer = make(goodness.mean).eval()
    out = layer(x)
    assert_close(out.goodness, out.features.flatten(1).mean(dim=1))
    assert "goodness=mean" in repr(layer)
    assert "goodness" not in repr(make("mean_squared"))


def test_fflinear_callable_goodness_and_unit_shards():
    x = torch.randn(5, 12)
    layer = FFLinear(12, 6, goodness=goodness.mean)
    out = layer(x)
    assert_close(out.goodness, out.features.mean(dim=1))
    assert not layer.unit_shardable and FFLinear(12, 6).unit_shardable
    assert not FFLinear(12, 6, peer_normalization=0.03).unit_shardable
    with pytest.raises(ValueError, match="callable goodness cannot be split by units"):
        layer.split_units(0, 3)
    assert "goodness=mean" in repr(layer)
    with pytest.raises(ValueError, match="goodness must be 'sum', 'mean' or a callable"):
        FFLinear(12, 6, goodness="max")


def test_a_pipeline_shares_a_custom_goodness_layer_by_samples_not_units():
    def net(g):
        return ffkit.FFNetwork([FFLinear(16 + K, 8, goodness=g), FFLinear(8, 8, goodness=g)],
                               ffkit.PosNegObjective(ffkit.LabelOverlay(K), ffkit.RandomNegative(K), loss="threshold"),
                               num_classes=K, in_channels=1)

    assert share_mode(net("sum"), 1) == "units"
    assert share_mode(net(goodness.mean), 1) == "samples"


@pytest.mark.parametrize("bad, error", [("cube", ValueError), (3, TypeError)])
def test_layers_reject_a_bad_goodness(bad, error):
    for make in (lambda: CWConv(3, 8, K, goodness=bad), lambda: CwCompConv(3, 8, K, goodness=bad),
                 lambda: TrifectaConv(3, 8, goodness=bad), lambda: TrifectaLinear(3, 8, goodness=bad)):
        with pytest.raises(error, match="goodness"):
            make()


def test_posneg_objective_takes_a_loss_callable():
    calls = []

    def hinge(g_pos, g_neg):
        calls.append(g_pos.shape)
        return F.relu(1.0 - (g_pos - g_neg)).mean()

    obj = ffkit.PosNegObjective(ffkit.LabelOverlay(K), ffkit.RandomNegative(K), loss=hinge)
    assert not obj.batch_separable and "loss=" in repr(obj) and "hinge" in repr(obj)
    assert ffkit.PosNegObjective(ffkit.LabelOverlay(K), ffkit.RandomNegative(K), loss=hinge,
                                 batch_separable=True).batch_separable
    out = ffkit.layers.LayerOutput(features=torch.zeros(4, 2), goodness=torch.tensor([3.0, 0.5, 1.0, 2.0]))
    batch = ffkit.objectives.PreparedBatch(inputs=torch.zeros(4, 2), target=torch.zeros(2, dtype=torch.long),
                                           batch_size=2)
    loss, correct = obj.layer_loss(out, batch)
    # pairs (3.0, 1.0) and (0.5, 2.0): relu(1 - 2) = 0, relu(1 + 1.5) = 2.5 -> mean 1.25; one positive wins
    assert_close(loss, torch.tensor(1.25)) and int(correct) == 1 and calls == [torch.Size([2])]
    named = ffkit.PosNegObjective(ffkit.LabelOverlay(K), ffkit.RandomNegative(K), loss="symba", alpha=2.0)
    assert named.batch_separable
    assert_close(named.layer_loss(out, batch)[0], losses.symba(torch.tensor([3.0, 0.5]), torch.tensor([1.0, 2.0]),
                                                                alpha=2.0))
    with pytest.raises(ValueError, match="loss must be 'symba', 'threshold' or a callable"):
        ffkit.PosNegObjective(ffkit.LabelOverlay(K), ffkit.RandomNegative(K), loss=3)


def test_class_score_objective_takes_a_loss_callable():
    def squared_error(scores, target):
        return (scores.softmax(1) - F.one_hot(target, scores.shape[1])).pow(2).sum(1).mean()

    obj = ffkit.ClassScoreObjective(loss=squared_error)
    assert not obj.batch_separable and ffkit.ClassScoreObjective().batch_separable
    scores, target = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    out = ffkit.layers.LayerOutput(features=torch.zeros(2, 2), scores=scores)
    batch = ffkit.objectives.PreparedBatch(inputs=torch.zeros(2, 2), target=target, batch_size=2)
    p = torch.sigmoid(torch.tensor(2.0))  # softmax of [2, 0]: (p, 1 - p); of [0, 0]: (0.5, 0.5)
    expected = ((p - 1) ** 2 + (1 - p) ** 2 + 0.25 + 0.25) / 2
    assert_close(obj.layer_loss(out, batch)[0], expected)
    with pytest.raises(TypeError, match="loss must be None or a callable"):
        ffkit.ClassScoreObjective(loss="ce")


def test_a_cw_network_with_a_custom_goodness_trains_locally():
    """A CW-Conv network whose layers score classes by the mean of squares trains with the local trainer, and no
    gradient crosses a layer boundary (layer 1's input is detached)."""
    torch.manual_seed(0)
    layers = [CWConv(3, 8, K, goodness="mean_squared"), CWConv(8, 8, K, pool=2, goodness="mean_squared")]
    net = ffkit.FFNetwork(layers, ffkit.ClassScoreObjective(), num_classes=K, in_channels=3)
    trainer = ffkit.LocalTrainer(net, lr=0.01, total_steps=21)
    x, y = _batch(b=16)
    first = trainer.train_step(x, y).losses
    for _ in range(19):
        last = trainer.train_step(x, y).losses
    assert bool((last < first).all())
    seen = []
    net.layers[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].requires_grad))
    trainer.train_step(x, y)
    assert seen == [False]
