"""Hinton's FF MLP and Pipeline-FF's PON: losses, label overlay, inference range, softmax head, negatives, learning."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

import ffkit
from ffkit.data import teacher_student_images
from ffkit.layers import FFLinear, LayerOutput, PONLinear
from ffkit.models import create_model
from ffkit.objectives import (
    AdaptiveNegative,
    ClassScoreObjective,
    FixedNegative,
    PosNegObjective,
    PreparedBatch,
    RandomNegative,
)


def _manual_ff_pass(net, flat_input):
    """Goodness and activities of every FFLinear layer, by hand (Pipeline-FF's release):
    h = relu(W (x / (|x| + 1e-4)) + b), g = mean h^2."""
    h, goodness, acts = flat_input, [], []
    for layer in net.layers:
        w, b = layer.linear.weight, layer.linear.bias
        h = torch.clamp((h / (h.norm(dim=1, keepdim=True) + 1e-4)) @ w.T + b, min=0)
        acts.append(h)
        goodness.append((h * h).mean(dim=1))
    return goodness, acts


def _overlay(x, k, num_classes, value=1.0):
    """The label on the last ``num_classes`` elements of the flattened image (Pipeline-FF's release)."""
    flat = x.flatten(1).clone()
    label = flat[:, -num_classes:]
    label[:] = 0.0
    if k is None:
        label[:] = value / num_classes
    else:
        label[:, k] = value
    return flat


# -- the builder --------------------------------------------------------------------------------------------------
def test_hinton_mlp_structure():
    net = create_model("hinton_mlp", num_classes=10, in_channels=3, width_multiplier=0.01)
    assert all(isinstance(layer, FFLinear) for layer in net.layers)
    assert [layer.linear.in_features for layer in net.layers] == [3 * 1024, 20, 20, 20]
    assert [layer.linear.out_features for layer in net.layers] == [20] * 4
    assert isinstance(net.objective, PosNegObjective) and net.objective.loss == "threshold"
    assert net.objective.threshold == pytest.approx(0.2)  # 0.01 x the 20-unit width
    assert net.objective.threshold_reduction == "mean"
    assert isinstance(net.objective.negatives, RandomNegative)
    assert net.objective.encoder.num_classes == 10 and net.objective.encoder.position == "last"
    assert all(layer.reduction == "mean" and layer.eps == 1e-4 for layer in net.layers)
    assert net.inference_range.tolist() == [1, 3]
    assert net.head is None and not net.head_predicts


def test_hinton_mlp_parameter_count_with_head():
    # FF layers: (1024 + 1) * 2000 + 3 * (2000 + 1) * 2000 = 14,056,000; the release's bias-free softmax layer on
    # layers 1..3 (0-based): 3 * 2000 * 10 = 60,000.
    net = create_model("hinton_mlp", num_classes=10, in_channels=1, head=True)
    expected = (1024 + 1) * 2000 + 3 * (2000 + 1) * 2000 + 3 * 2000 * 10
    assert expected == 14_116_000
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net.head.linear.bias is None and net.head_predicts


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden": (8,)}, ValueError, "at least 2"),
        ({"hidden": 8}, TypeError, "hidden"),
        ({"hidden": (8, 0)}, ValueError, r"hidden\[1\]"),
        ({"negatives": "nope"}, ValueError, "unknown negatives"),
        ({"threshold": 0.0}, ValueError, "threshold"),
        ({"threshold": "2"}, TypeError, "threshold"),
        ({"hidden": (8, 6)}, ValueError, "pass threshold"),
        ({"goodness": "max"}, ValueError, "goodness"),
        ({"label_position": "middle"}, ValueError, "label_position"),
        ({"head": "yes"}, TypeError, "head"),
        ({"label_value": -1.0}, ValueError, "label_value"),
        ({"width_multiplier": 0}, ValueError, "width_multiplier"),
        ({"num_classes": 1}, ValueError, "num_classes"),
    ],
)
def test_hinton_mlp_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_model("hinton_mlp", **kwargs)


def test_differing_widths_work_with_an_explicit_threshold():
    net = create_model("hinton_mlp", hidden=(8, 6, 4), threshold=3.0)
    assert [layer.linear.out_features for layer in net.layers] == [8, 6, 4]
    assert net.objective.threshold == 3.0


@pytest.mark.parametrize(
    ("name", "cls"), [("random", RandomNegative), ("fixed", FixedNegative), ("adaptive", AdaptiveNegative)]
)
def test_negatives_by_name(name, cls):
    net = create_model("hinton_mlp", hidden=(8, 8), negatives=name)
    assert type(net.objective.negatives) is cls


# -- the threshold loss on each layer's goodness halves ------------------------------------------------------------
def test_threshold_loss_splits_goodness_into_positive_and_negative_halves():
    net = create_model("hinton_mlp", num_classes=3, hidden=(4, 4), threshold=2.0)
    # [2B] goodness: positives [3, 1], negatives [2.5, 1.5].
    out = LayerOutput(features=torch.zeros(4, 4), goodness=torch.tensor([3.0, 1.0, 2.5, 1.5]))
    batch = PreparedBatch(inputs=torch.zeros(4, 1), target=torch.tensor([0, 1]), batch_size=2)
    loss, correct = net.objective.layer_loss(out, batch)
    # The release: log(1 + exp(cat[2 - [3, 1], [2.5, 1.5] - 2])).mean()
    # = (log(1 + e^-1) + log(1 + e^1) + log(1 + e^0.5) + log(1 + e^-0.5)) / 4
    # = (0.313262 + 1.313262 + 0.974077 + 0.474077) / 4 = 3.074678 / 4 = 0.768670
    assert loss.item() == pytest.approx(0.768670, abs=1e-5)
    assert int(correct) == 1  # 3 > 2.5 but 1 < 1.5


def test_default_threshold_is_a_hundredth_of_the_width():
    # Pipeline-FF: "the threshold coefficient theta is set to 0.01"; the release uses 0.01 x the layer's width on
    # its mean-of-squares goodness: 20 for 2000 units.
    assert create_model("hinton_mlp").objective.threshold == pytest.approx(20.0)
    assert create_model("hinton_mlp", hidden=(6, 6)).objective.threshold == pytest.approx(0.06)
    assert create_model("hinton_mlp", hidden=(8, 8), width_multiplier=0.5).objective.threshold == pytest.approx(0.04)
    # The same loss on a sum-of-squares goodness: sum = width x mean, so the threshold is width x 0.01 x width.
    net = create_model("hinton_mlp", hidden=(6, 6), goodness="sum")
    assert net.objective.threshold == pytest.approx(0.36) and net.layers[0].reduction == "sum"


# -- label overlay in the prepared batch ---------------------------------------------------------------------------
def test_prepared_batch_overlays_true_label_on_positives_and_a_wrong_label_on_negatives():
    net = create_model("hinton_mlp", num_classes=4, hidden=(5, 5), label_value=2.5)
    x, y = torch.rand(3, 1, 32, 32), torch.tensor([0, 3, 2])
    batch = net.objective.prepare(net, x, y)
    assert batch.inputs.shape == (6, 1, 32, 32) and batch.batch_size == 3
    flat = batch.inputs.flatten(1)
    # The release writes the label on the last K pixels of the flattened image.
    assert torch.equal(flat[:3, -4:], 2.5 * F.one_hot(y, 4).float())
    neg_labels = flat[3:, -4:].argmax(dim=1)
    assert torch.equal(flat[3:, -4:], 2.5 * F.one_hot(neg_labels, 4).float())
    assert (neg_labels != y).all()
    # Everything but the label pixels is the image itself, for positives and negatives alike.
    assert torch.equal(flat[:3, :-4], x.flatten(1)[:, :-4])
    assert torch.equal(flat[3:, :-4], x.flatten(1)[:, :-4])
    first = create_model("hinton_mlp", num_classes=4, hidden=(5, 5), label_position="first")
    assert torch.equal(first.objective.prepare(first, x, y).inputs.flatten(1)[:3, :4], F.one_hot(y, 4).float())


# -- prediction with all layers but the first ----------------------------------------------------------------------
def test_inference_sums_goodness_of_layers_one_to_last():
    net = create_model("hinton_mlp", num_classes=3, hidden=(6, 6, 6))
    net.eval()
    x = torch.rand(2, 1, 32, 32)
    expected = torch.zeros(2, 3)
    first = torch.zeros(2, 3)
    for k in range(3):
        g, _ = _manual_ff_pass(net, _overlay(x, k, 3))
        expected[:, k] = g[1] + g[2]
        first[:, k] = g[0]
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected)
        scores = net.layer_scores(x)
        torch.testing.assert_close(scores[0], first)
        assert not torch.allclose(net(x), scores.sum(dim=0))


# -- softmax head on a neutral-label pass --------------------------------------------------------------------------
def test_softmax_head_reads_layers_one_to_last_of_a_neutral_label_pass():
    net = create_model("hinton_mlp", num_classes=3, hidden=(6, 6, 6), head=True)
    head = net.head
    assert head.layers == (1, 2) and head.pool == "flatten" and head.linear.in_features == 12
    net.eval()
    x = torch.rand(4, 1, 32, 32)
    _, acts = _manual_ff_pass(net, _overlay(x, None, 3))  # neutral label: 1/3 in every label pixel
    expected = torch.cat([acts[1], acts[2]], dim=1) @ head.linear.weight.T  # the release's layer has no bias
    torch.testing.assert_close(net.head_logits(x), expected)
    layer_scores, logits = net.scores(x)
    assert layer_scores.shape == (3, 4, 3)
    torch.testing.assert_close(logits, expected)
    # Pipeline-FF's softmax mode predicts with the head.
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected)


def test_softmax_head_loss_gives_no_gradient_to_ff_layers():
    net = create_model("hinton_mlp", num_classes=3, hidden=(6, 6, 6), head=True)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    loss = net.head.loss(net.head_logits(x), y)
    layer_params = [p for layer in net.layers for p in layer.parameters()]
    head_params = list(net.head.parameters())
    grads = torch.autograd.grad(loss, layer_params + head_params, allow_unused=True)
    assert all(g is None for g in grads[: len(layer_params)])
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(layer_params) :])


def test_local_step_trains_head_and_gives_each_layer_parameter_one_gradient():
    net = create_model("hinton_mlp", num_classes=3, hidden=(6, 6, 6), head=True)
    trainer = ffkit.LocalTrainer(net, lr=1e-2, schedule="constant")
    calls = {}
    for i, layer in enumerate(net.layers):
        for n, p in layer.named_parameters():
            calls[(i, n)] = 0
            p.register_hook(lambda g, key=(i, n): calls.__setitem__(key, calls[key] + 1))
    head_before = [p.detach().clone() for p in net.head.parameters()]
    res = trainer.train_step(torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 0]))
    assert set(calls.values()) == {1}
    assert res.head is not None and torch.isfinite(res.head[0])
    assert all(not torch.equal(b, p) for b, p in zip(head_before, net.head.parameters()))


# -- every negatives option trains ---------------------------------------------------------------------------------
@pytest.mark.parametrize("negatives", ["random", "fixed", "adaptive"])
def test_every_negatives_option_runs_local_trainer_steps(negatives):
    net = create_model("hinton_mlp", num_classes=4, hidden=(8, 8), negatives=negatives)
    trainer = ffkit.LocalTrainer(net, lr=1e-2, schedule="constant")
    x, y, index = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6)
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        res = trainer.train_step(x, y, index)
        assert res.losses.shape == (2,) and torch.isfinite(res.losses).all()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    y_neg = net.objective.prepare(net, x, y, index).inputs[6:].flatten(1)[:, -4:].argmax(dim=1)
    assert (y_neg != y).all()


def test_fixed_negatives_keep_one_wrong_label_per_index_and_train_from_an_indexed_loader():
    net = create_model("hinton_mlp", num_classes=4, hidden=(8, 8), negatives="fixed")
    x, y, index = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1]), torch.arange(6)

    def negative_labels():
        return net.objective.prepare(net, x, y, index).inputs[6:].flatten(1)[:, -4:].argmax(dim=1)

    first = negative_labels()
    trainer = ffkit.LocalTrainer(net, lr=1e-2, schedule="constant")
    record = trainer.train_epoch(DataLoader(TensorDataset(x, y, index), batch_size=3))
    assert record["train_images"] == 6
    assert torch.equal(negative_labels(), first)


def test_fixed_negatives_without_indices_explain_the_cli_limit():
    net = create_model("hinton_mlp", num_classes=4, hidden=(8, 8), negatives="fixed")
    trainer = ffkit.LocalTrainer(net, lr=1e-2, schedule="constant")
    with pytest.raises(ValueError, match=r"\(x, y, index\)") as info:
        trainer.train_step(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    assert "ffkit train" in str(info.value)


def test_adaptive_negatives_take_the_best_scoring_wrong_label():
    net = create_model("hinton_mlp", num_classes=4, hidden=(8, 8, 8), negatives="adaptive")
    x, y = torch.rand(5, 1, 32, 32), torch.tensor([0, 1, 2, 3, 0])
    y_neg = net.objective.prepare(net, x, y).inputs[5:].flatten(1)[:, -4:].argmax(dim=1)
    net.eval()
    expected = torch.zeros(5, 4)
    for k in range(4):
        g, _ = _manual_ff_pass(net, _overlay(x, k, 4))
        expected[:, k] = g[1] + g[2]
    expected[torch.arange(5), y] = float("-inf")
    assert torch.equal(y_neg, expected.argmax(dim=1))


def test_adaptive_negatives_of_the_softmax_mode_are_the_heads_best_wrong_label():
    """The release's AdaptiveNEG with a softmax layer takes the top-2 of the classifier's logits on the neutral-label
    pass: the best one that is not the true label."""
    torch.manual_seed(0)
    net = create_model("hinton_mlp", num_classes=4, hidden=(8, 8, 8), negatives="adaptive", head=True)
    x, y = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    y_neg = net.objective.prepare(net, x, y).inputs[6:].flatten(1)[:, -4:].argmax(dim=1)
    _, acts = _manual_ff_pass(net, _overlay(x, None, 4))
    logits = torch.cat([acts[1], acts[2]], dim=1) @ net.head.linear.weight.T
    top2 = logits.topk(2, dim=1).indices
    assert torch.equal(y_neg, torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0]))


# -- PON -----------------------------------------------------------------------------------------------------------
def test_pon_linear_scores_are_its_head_of_h_by_hand():
    layer = PONLinear(8, 5, 3, eps=1e-4)
    x = torch.randn(4, 2, 2, 2)
    flat = x.flatten(1)
    h = torch.clamp((flat / (flat.norm(dim=1, keepdim=True) + 1e-4)) @ layer.linear.weight.T + layer.linear.bias, 0)
    scores = h @ layer.head.weight.T + layer.head.bias
    out = layer(x)
    torch.testing.assert_close(out.features, h)
    torch.testing.assert_close(out.scores, scores)
    assert out.goodness is None
    # The layer's cross-entropy reaches the layer's own weights through h: that is how PON trains a layer.
    loss = F.cross_entropy(out.scores, torch.tensor([0, 1, 2, 0]))
    grads = torch.autograd.grad(loss, [layer.linear.weight, layer.head.weight])
    assert all(g.abs().sum() > 0 for g in grads)


def test_pon_linear_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="expects 8 input features"):
        PONLinear(8, 5, 3)(torch.randn(2, 9))
    with pytest.raises(ValueError, match="num_classes"):
        PONLinear(8, 5, 1)


def test_pon_mlp_structure_prediction_and_parameter_count():
    net = create_model("pon_mlp", num_classes=3, in_channels=1, hidden=(6, 4))
    assert isinstance(net.objective, ClassScoreObjective)
    assert all(isinstance(layer, PONLinear) and layer.eps == 1e-4 for layer in net.layers)
    # (1024 + 1) * 6 + (6 + 1) * 3 + (6 + 1) * 4 + (4 + 1) * 3 = 6150 + 21 + 28 + 15 = 6214
    assert sum(p.numel() for p in net.parameters()) == 6214
    net.eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        first = net.layers[0](x)
        second = net.layers[1](first.features)
        torch.testing.assert_close(net(x), first.scores + second.scores)


# -- learning the synthetic teacher-student task -------------------------------------------------------------------


def _fit_and_score(net, epochs=5):
    data = teacher_student_images(3000, num_classes=4, seed=0)
    train, test = Subset(data, range(2500)), data.tensors
    trainer = ffkit.LocalTrainer(net, lr=0.01, schedule="constant", weight_decay=0.0)
    loader = DataLoader(train, batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        trainer.train_epoch(loader)
    net.eval()
    with torch.no_grad():
        x, y = test[0][2500:], test[1][2500:]
        return (net(x).argmax(dim=1) == y).double().mean().item()


def test_tiny_hinton_mlp_learns_the_teacher_student_task():
    # Gaussian inputs reach about 4 in absolute value, so the label is written with that value to stand out. The
    # release's threshold (0.01 x 64 on the mean-of-squares goodness) settles every goodness at the threshold on this
    # small task (loss log 2, test accuracy 0.11 after 5 epochs), so the test uses the documented alternative
    # threshold 2 on the sum of squares (0.49 on the same budget).
    net = create_model("hinton_mlp", num_classes=4, hidden=(64, 64), label_value=4.0, threshold=2.0, goodness="sum")
    accuracy = _fit_and_score(net)
    print(f"hinton_mlp teacher-student accuracy {accuracy:.3f}")
    assert accuracy > 0.35  # chance is 0.25; 500 test samples: binomial std ~0.02


def test_tiny_pon_mlp_learns_the_teacher_student_task():
    net = create_model("pon_mlp", num_classes=4, hidden=(64, 64))
    accuracy = _fit_and_score(net)
    print(f"pon_mlp teacher-student accuracy {accuracy:.3f}")
    assert accuracy > 0.35


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ffl_linear_unit_shards_sum_to_the_layer(reduction):
    """split_units: the shards' features are the layer's units and their goodness values sum to the layer's; making
    a shard leaves the random stream alone; push_units writes a shard back."""
    torch.manual_seed(0)
    layer = FFLinear(12, 10, goodness=reduction)
    x = torch.randn(5, 12)
    state = torch.get_rng_state()
    a, b = layer.split_units(0, 4), layer.split_units(4, 10)
    assert torch.equal(torch.get_rng_state(), state)
    whole, pa, pb = layer(x), a(x), b(x)
    torch.testing.assert_close(torch.cat([pa.features, pb.features], dim=1), whole.features)
    torch.testing.assert_close(pa.goodness + pb.goodness, whole.goodness)
    with torch.no_grad():
        b.linear.weight.add_(1.0)
    b.push_units(layer, 4)
    assert torch.equal(layer.linear.weight[4:], b.linear.weight)
    assert torch.equal(layer.linear.weight[:4], a.linear.weight)
    with pytest.raises(ValueError, match="units"):
        layer.split_units(3, 11)


# -- loeweX's parts ------------------------------------------------------------------------------------------------


def test_head_input_norm_zero_init_and_pre_update():
    from ffkit.layers import ClassifierHead

    head = ClassifierHead(4, 3, [0, 1], pool="flatten", bias=False, input_norm="rms", zero_init=True)
    assert not head.linear.weight.any()
    with torch.no_grad():
        head.linear.weight.copy_(torch.eye(3, 4))
    # layer 0: [3, 4] (RMS sqrt(12.5)); layer 1: [0, 2] (RMS sqrt(2)): normalised [0.8485, 1.1314, 0, 1.4142]
    logits = head([torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])])
    r = 12.5**0.5
    assert torch.allclose(logits, torch.tensor([[3 / r, 4 / r, 0.0]]), atol=1e-6)
    with pytest.raises(ValueError, match="input_norm must be None or 'rms'"):
        ClassifierHead(4, 3, [0], input_norm="l2")
    with pytest.raises(TypeError, match="pre_update must be a bool"):
        ClassifierHead(4, 3, [0], pre_update=1)
    with pytest.raises(ValueError, match="configure the classifier head: pass head=True"):
        create_model("hinton_mlp", head_zero_init=True)


def test_network_layer_loss_adds_the_layers_regularizer():
    net = create_model("hinton_mlp", hidden=(8, 8), threshold=1.0, goodness="sum", peer_normalization=0.5)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    batch = net.objective.prepare(net, x, y)
    out = net.layers[0](batch.inputs)
    base, _ = net.objective.layer_loss(out, batch)
    mean_before = net.layers[0].peer_mean.clone()
    total, _ = net.layer_loss(0, out, batch)
    expected, _ = ffkit.layers.peer_normalization_loss(out.features[:4], mean_before, 0.9)
    assert torch.allclose(total, base + 0.5 * expected)


def test_head_weight_decay_and_peer_layers_are_not_shared_by_pipeline_stages():
    from ffkit.train.pipelining.partition import shareable_layers

    net = create_model("hinton_mlp", hidden=(8, 8), threshold=1.0, head=True)
    trainer = ffkit.LocalTrainer(net, optimizer="sgd", lr=0.1, weight_decay=0.01, head_weight_decay=0.5,
                                 schedule="constant")
    assert trainer.optimizers[-1].param_groups[0]["weight_decay"] == 0.5
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.01
    assert shareable_layers(net) == [True, True]
    peer = create_model("hinton_mlp", hidden=(8, 8), threshold=1.0, peer_normalization=0.03)
    assert shareable_layers(peer) == [False, False]
