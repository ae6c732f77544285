"""The Trifecta (Dooms et al.) as ffkit parts: TrifectaLinear, the LayerNorm option, the shallow / deep / FCN
builders, their parameter counts against the paper and the release, training with and without OLU, the learned label
channel, the threshold-loss ablation, and prediction by the last layer's goodness of each label. (Numerical
equivalence with the release: tests/reference/test_ref_trifecta.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit import losses
from ffkit.evaluation import make_report
from ffkit.layers import TrifectaConv, TrifectaLinear
from ffkit.models import create_model, list_models
from ffkit.objectives import FixedNegative, LabelChannel, RandomNegative
from ffkit.recipes import RECIPES, build_model, build_trainer

BUILDERS = ["trifecta_shallow", "trifecta_deep", "trifecta_fcn"]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- TrifectaLinear ------------------------------------------------------------------------------------------------


def test_trifecta_linear_shapes_and_structure():
    layer = TrifectaLinear(2 * 4 * 4, 5)
    out = layer(torch.rand(3, 2, 4, 4))  # images are flattened
    assert out.features.shape == (3, 5)
    assert out.goodness.shape == (3,)
    assert out.scores is None
    assert isinstance(layer.norm, nn.BatchNorm1d) and layer.norm.num_features == 32  # normalises the input
    assert layer.linear.bias is None
    assert n_params(layer) == 32 * 5 + 2 * 32


def test_trifecta_linear_is_bn_linear_relu_with_mean_square_goodness():
    # A fresh BatchNorm in training mode normalises with the batch statistics (weight 1, bias 0).
    torch.manual_seed(3)
    layer = TrifectaLinear(6, 4).train()
    x = 2 * torch.randn(5, 6) + 1
    out = layer(x)
    xn = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    h = F.relu(xn @ layer.linear.weight.T)
    assert_close(out.features, h)
    assert_close(out.goodness, (h**2).sum(1) / 4)


def test_trifecta_linear_goodness_hand_value():
    # Eval mode with fresh running stats: BN divides by sqrt(1 + eps) only; weight set by hand.
    layer = TrifectaLinear(2, 2).eval()
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]))
    x = torch.tensor([[3.0, 1.0], [1.0, 2.0]]) * math.sqrt(1 + 1e-5)
    out = layer(x)
    # sample 0: h = relu([3, 2]) -> (9 + 4) / 2 = 6.5; sample 1: h = relu([1, -1]) = [1, 0] -> 0.5
    assert_close(out.features, torch.tensor([[3.0, 2.0], [1.0, 0.0]]))
    assert_close(out.goodness, torch.tensor([6.5, 0.5]))


def test_trifecta_linear_errors():
    with pytest.raises(ValueError, match="12 input features"):
        TrifectaLinear(12, 3)(torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match="in_features"):
        TrifectaLinear(0, 3)
    with pytest.raises(TypeError, match="out_features"):
        TrifectaLinear(3, 2.0)


# -- the LayerNorm option (the release's runs without BatchNorm) -----------------------------------------------------


def test_trifecta_conv_layer_norm_is_per_sample_over_chw_with_affine():
    torch.manual_seed(4)
    layer = TrifectaConv(2, 3, norm="layer", input_size=(4, 4), maxpool=True)
    with torch.no_grad():
        layer.norm.weight.copy_(1 + 0.1 * torch.randn(2, 4, 4))
        layer.norm.bias.copy_(0.1 * torch.randn(2, 4, 4))
    x = 3 * torch.randn(5, 2, 4, 4) + 1
    # by hand: each sample standardised over all of its C*H*W = 32 values (biased variance), then scaled and
    # shifted element-wise
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    var = ((x - mu) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    xn = (x - mu) / torch.sqrt(var + 1e-5) * layer.norm.weight + layer.norm.bias
    h = F.max_pool2d(F.relu(F.conv2d(xn, layer.conv.weight, padding=1)), 2)
    out = layer(x)
    assert_close(out.features, h)
    assert_close(out.goodness, h.square().mean(dim=(1, 2, 3)))
    assert_close(layer.eval()(x).features, h)  # no running statistics: the same in eval mode
    assert n_params(layer) == 2 * 2 * 16 + 3 * 2 * 9


def test_layer_norm_option_errors():
    with pytest.raises(ValueError, match="input_size"):
        TrifectaConv(2, 3, norm="layer")
    with pytest.raises(ValueError, match="norm must be one of"):
        TrifectaConv(2, 3, norm="instance")
    with pytest.raises(ValueError, match="norm must be one of"):
        TrifectaLinear(2, 3, norm=None)
    with pytest.raises(ValueError, match="32x32"):
        create_model("trifecta_shallow", norm="layer", width_multiplier=0.05)(torch.rand(2, 3, 28, 28))


def test_trifecta_linear_layer_norm_trains_on_a_batch_of_one():
    layer = TrifectaLinear(6, 4, norm="layer").train()
    out = layer(torch.rand(1, 6))  # no batch statistic, so one sample is fine (BatchNorm1d would refuse)
    assert out.features.shape == (1, 4)


# -- architectures and parameter counts ----------------------------------------------------------------------------


def test_builders_are_registered_ff_models():
    assert set(BUILDERS) <= set(list_models("ff"))


@pytest.mark.parametrize(
    "name, paper",
    [
        # The paper's counts for the CNNs (CIFAR, 3 channels) and the FCN (MNIST / F-MNIST, 1 channel).
        ("trifecta_shallow", 2.8e6),
        ("trifecta_deep", 8.5e6),
        ("trifecta_fcn", 25.1e6),
    ],
)
def test_parameter_counts_match_the_paper_within_one_percent(name, paper):
    in_channels = 1 if name == "trifecta_fcn" else 3
    net = create_model(name, in_channels=in_channels, learned_label=False)
    assert abs(n_params(net) - paper) / paper < 0.01


def test_exact_parameter_counts_in_channels_3():
    # Hand derivations (in_channels=3: the first block sees 3 + 1 label channels; bias-free 3x3 convs; BatchNorm of
    # each block's input has 2 parameters per input channel; the learned label matrix adds 10 x 32*32 = 10,240):
    # shallow conv: 9*(4*128 + 128*128 + 128*256 + 256*256 + 256*256 + 256*512) = 9*311,808 = 2,806,272
    #         BN:   2*(4 + 128 + 128 + 256 + 256 + 256) = 2,056                               -> 2,808,328
    # deep conv:    9*(4*64 + 64*128 + 3*128*128 + 128*256 + 3*256*256 + 256*512 + 2*512*512)
    #             = 9*(256 + 8,192 + 49,152 + 32,768 + 196,608 + 131,072 + 524,288) = 9*942,336 = 8,481,024
    #         BN:   2*(4 + 64 + 4*128 + 4*256 + 2*512) = 2*2,628 = 5,256                     -> 8,486,280
    # FCN:          (3 + 1)*32*32 = 4096 inputs: 4096*2048 + 5*2048*2048 = 8,388,608 + 20,971,520 = 29,360,128
    #         BN1d: 2*(4096 + 5*2048) = 28,672                                               -> 29,388,800
    # The release's Network (CIFAR-10, 32x32), instantiated outside the repository, has 2,818,568 (small) and
    # 8,496,520 (large) parameters with its label embedding: 2,808,328 + 10,240 and 8,486,280 + 10,240.
    assert n_params(create_model("trifecta_shallow", learned_label=False)) == 2_808_328
    assert n_params(create_model("trifecta_deep", learned_label=False)) == 8_486_280
    assert n_params(create_model("trifecta_fcn", learned_label=False)) == 29_388_800
    assert n_params(create_model("trifecta_shallow")) == 2_808_328 + 10_240
    assert n_params(create_model("trifecta_deep")) == 8_486_280 + 10_240


def test_layer_norm_parameter_counts_match_the_release():
    # norm="layer": LayerNorm([C, H, W]) with a weight and a bias per element of each block's input.
    # shallow, in_channels=3: inputs 4x32x32, 128x16x16, 128x16x16, 256x8x8, 256x8x8, 256x8x8
    #   2*(4,096 + 32,768 + 32,768 + 16,384 + 16,384 + 16,384) = 2*118,784 = 237,568; conv 2,806,272; label 10,240
    #   -> 3,054,080, the release's Network(bn=False) count for CIFAR-10 (instantiated outside the repository).
    net = create_model("trifecta_shallow", norm="layer")
    assert all(isinstance(layer.norm, nn.LayerNorm) for layer in net.layers)
    assert [tuple(layer.norm.normalized_shape) for layer in net.layers][:3] == [(4, 32, 32), (128, 16, 16),
                                                                               (128, 16, 16)]
    assert n_params(net) == 3_054_080
    # deep: the release's Network(model='large', bn=False) for CIFAR-10 has 9,056,512
    assert n_params(create_model("trifecta_deep", norm="layer")) == 9_056_512
    fcn = create_model("trifecta_fcn", in_channels=1, norm="layer", width_multiplier=0.01)
    assert isinstance(fcn.layers[0].norm, nn.LayerNorm) and fcn.layers[0].norm.normalized_shape == (2048,)


def test_fcn_is_six_by_2048_on_mnist():
    # "6 x 2048": with in_channels=1 the input is (1 + 1)*32*32 = 2048 features, so each of the six layers holds a
    # 2048 x 2048 weight: 6*2048*2048 = 25,165,824 weights (+ 6*2*2048 = 24,576 BatchNorm1d parameters).
    net = create_model("trifecta_fcn", in_channels=1, learned_label=False)
    assert len(net) == 6
    assert all(isinstance(layer, TrifectaLinear) for layer in net.layers)
    assert [tuple(layer.linear.weight.shape) for layer in net.layers] == [(2048, 2048)] * 6
    assert sum(layer.linear.weight.numel() for layer in net.layers) == 25_165_824
    assert n_params(net) == 25_165_824 + 24_576


def test_conv_init_is_pytorch_default_kaiming_uniform():
    # The release keeps nn.Conv2d's default init: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    torch.manual_seed(0)
    net = create_model("trifecta_shallow", in_channels=3)
    for layer in net.layers:
        w = layer.conv.weight
        bound = 1 / math.sqrt(w.shape[1] * 9)
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.99 * bound  # uniform over the whole range (not a normal or a narrower uniform)
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound


@pytest.mark.parametrize(
    "name, widths, pools",
    [
        ("trifecta_shallow", [128, 128, 256, 256, 256, 512], [0, 2, 5]),
        ("trifecta_deep", [64, 128, 128, 128, 128, 256, 256, 256, 256, 512, 512, 512], [1, 5, 9]),
    ],
)
def test_conv_architectures(name, widths, pools):
    net = create_model(name, in_channels=3)
    assert all(isinstance(layer, TrifectaConv) for layer in net.layers)
    assert [layer.conv.out_channels for layer in net.layers] == widths
    assert [i for i, layer in enumerate(net.layers) if layer.maxpool] == pools
    assert net.layers[0].conv.in_channels == 4  # image channels + the label channel
    assert all(layer.conv.kernel_size == (3, 3) and layer.conv.bias is None for layer in net.layers)
    # three 2x2 max-pools: 32 -> 4
    net.eval()
    h = net.objective.encoder(torch.rand(1, 3, 32, 32), torch.tensor([0]))
    for _, out in net.iter_layers(h):
        h = out.features
    assert h.shape == (1, 512, 4, 4)


def test_width_multiplier_rounds_to_nearest_at_least_one():
    net = create_model("trifecta_shallow", width_multiplier=0.1)
    # 12.8 -> 13, 25.6 -> 26, 51.2 -> 51
    assert [layer.conv.out_channels for layer in net.layers] == [13, 13, 26, 26, 26, 51]
    net = create_model("trifecta_fcn", in_channels=1, width_multiplier=0.1)
    assert [layer.linear.out_features for layer in net.layers] == [205] * 6  # round(204.8)
    assert net.layers[0].linear.in_features == 2048  # the input is not scaled
    net = create_model("trifecta_deep", width_multiplier=1e-4)
    assert [layer.conv.out_channels for layer in net.layers] == [1] * 12


def test_objective_configuration():
    net = create_model("trifecta_shallow", num_classes=7, in_channels=1, loss="threshold", alpha=3.0, threshold=1.5)
    obj = net.objective
    assert isinstance(obj, ffkit.PosNegObjective)
    assert isinstance(obj.encoder, LabelChannel)
    assert (obj.encoder.num_classes, obj.encoder.height, obj.encoder.width) == (7, 32, 32)
    assert obj.encoder.learned and "matrix" in dict(obj.encoder.named_parameters())  # learned by default
    assert isinstance(obj.negatives, RandomNegative) and obj.negatives.num_classes == 7
    assert (obj.loss, obj.alpha, obj.threshold, obj.threshold_reduction) == ("threshold", 3.0, 1.5, "mean")
    assert net.input_size == (32, 32)
    assert all(isinstance(layer.norm, nn.BatchNorm2d) for layer in net.layers)
    fixed = create_model("trifecta_shallow", learned_label=False, width_multiplier=0.05)
    assert not fixed.objective.encoder.learned and "matrix" in dict(fixed.objective.encoder.named_buffers())
    net = create_model("trifecta_fcn", negatives="fixed")
    assert isinstance(net.objective.negatives, FixedNegative)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"loss": "hinge"}, ValueError, "loss must be 'symba' or 'threshold'"),
        ({"negatives": "hardest"}, ValueError, "unknown negatives"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"in_channels": 0}, ValueError, "in_channels"),
        ({"width_multiplier": 0}, ValueError, "width_multiplier"),
        ({"learned_label": "yes"}, TypeError, "learned_label"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"threshold": "2"}, TypeError, "threshold"),
        ({"norm": "group"}, ValueError, "norm must be one of"),
    ],
)
@pytest.mark.parametrize("name", BUILDERS)
def test_bad_arguments(name, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        create_model(name, **{"width_multiplier": 0.05, **kwargs})


def test_input_must_be_32x32():
    net = create_model("trifecta_shallow", in_channels=1, width_multiplier=0.05)
    with pytest.raises(ValueError, match="32x32"):
        net(torch.rand(2, 1, 28, 28))


def test_shallow_recipe_schedule_is_1e3_then_1e4_for_the_last_50_epochs():
    # The paper: the shallow network trains 150 epochs at 1e-3, then the last 50 of 200 at 1e-4.
    recipe = RECIPES["trifecta-shallow-cifar10"]
    assert (recipe.epochs, recipe.lr, recipe.schedule, recipe.milestones) == (200, 1e-3, "piecewise", ((150, 0.1),))
    net = build_model(recipe, num_classes=10, in_channels=3, width_multiplier=0.05)
    trainer = build_trainer(recipe, net, steps_per_epoch=3)
    factor = trainer.schedulers[0].lr_lambdas[0]
    assert [factor(s) for s in (0, 449, 450, 599)] == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert trainer.overlap and recipe.normalize == "standard" and recipe.augment == "crop-rotate"
    assert recipe.batch_size == 512 and recipe.weight_decay == 0.0 and recipe.optimizer == "adam"
    assert net.objective.encoder.learned
    assert RECIPES["trifecta-deep-cifar10"].milestones == ((200, 0.5), (400, 0.1))


@pytest.mark.parametrize("tau", [2, 10])
def test_threshold_ablation_recipes_are_the_no_bn_no_olu_rows(tau):
    recipe = RECIPES[f"trifecta-shallow-cifar10-threshold{tau}"]
    assert (recipe.epochs, recipe.overlap) == (100, False)
    net = build_model(recipe, num_classes=10, in_channels=3, width_multiplier=0.05)
    assert all(isinstance(layer.norm, nn.LayerNorm) for layer in net.layers)
    assert not net.objective.encoder.learned
    obj = net.objective
    assert (obj.loss, obj.threshold, obj.threshold_reduction) == ("threshold", tau, "mean")
    assert not build_trainer(recipe, net, steps_per_epoch=2).overlap


def test_trifecta_recipes_build():
    names = [n for n in RECIPES if n.startswith("trifecta")]
    assert names
    for n in names:
        r = RECIPES[n]
        net = create_model(r.model, **{**r.model_kwargs, "width_multiplier": 0.05})
        assert net.model_name == r.model


# -- training ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [True, False], ids=["olu", "no-olu"])
@pytest.mark.parametrize("name", BUILDERS)
def test_a_few_local_steps_train_every_parameter(name, overlap):
    torch.manual_seed(0)
    net = create_model(name, in_channels=1, width_multiplier=0.1)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, weight_decay=0.0, schedule="constant", overlap=overlap)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(3):  # under OLU, layers of both parities update within two steps
        res = trainer.train_step(x, y)
        assert res.losses.shape == (len(net),) and torch.isfinite(res.losses).all()
    unchanged = [n for n, p in net.named_parameters() if torch.equal(before[n], p)]
    assert unchanged == []
    net.eval()
    assert torch.isfinite(net.layer_scores(x)).all()


@pytest.mark.parametrize("overlap", [True, False], ids=["olu", "no-olu"])
def test_learned_label_channel_is_a_parameter_that_trains(overlap):
    torch.manual_seed(0)
    fixed = create_model("trifecta_shallow", in_channels=1, width_multiplier=0.1, learned_label=False)
    net = create_model("trifecta_shallow", in_channels=1, width_multiplier=0.1, learned_label=True)
    enc = net.objective.encoder
    assert isinstance(enc.matrix, nn.Parameter) and enc.matrix.shape == (10, 32 * 32)
    assert n_params(net) == n_params(fixed) + 10 * 1024
    trainer = ffkit.LocalTrainer(net, lr=1e-2, weight_decay=0.0, schedule="constant", overlap=overlap)
    before = enc.matrix.detach().clone()
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    trainer.train_step(x, y)
    # Only layer 0's optimizer steps the label channel (as the release's block 0): at step 0 under OLU layer 1
    # updates with layer 0, and the label channel keeps its values.
    assert torch.equal(enc.matrix.detach(), before) == overlap
    if overlap:
        trainer.train_step(x, y)  # step 1: layer 0 updates, with the label channel
    changed = (enc.matrix.detach() != before).any(dim=1)
    assert changed[[0, 1, 2, 3]].all()  # rows of labels used as positives (and maybe negatives) moved


def test_olu_parity_restarts_every_epoch_as_the_release():
    # The release's OLU parity is Lightning's batch_idx, which restarts at 0 every epoch; ffkit's fit and
    # train_epoch use the batch's index in its epoch, a bare train_step the trainer's step count.
    torch.manual_seed(0)
    net = create_model("trifecta_shallow", in_channels=1, width_multiplier=0.05)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, weight_decay=0.0, schedule="constant", overlap=True)
    calls: list[int] = []
    original = trainer.updates_at
    trainer.updates_at = lambda step: calls.append(step) or original(step)
    data = TensorDataset(torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5]))
    trainer.fit(DataLoader(data, batch_size=2), epochs=2, log=None)  # 3 batches per epoch (odd, like the release's)
    assert calls == [0, 1, 2, 0, 1, 2]
    assert trainer.step_count == 6
    trainer.train_step(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    assert calls[-1] == 6


def test_threshold_loss_mean_over_the_pos_neg_batch_hand_value():
    # The release: cat([softplus(tau - pos), softplus(neg - tau)]).mean(). With tau = 2, pos = [2, 3], neg = [2, 0]:
    # softplus(0) = ln 2, softplus(-1) = ln(1 + e^-1), softplus(0) = ln 2, softplus(-2) = ln(1 + e^-2)
    # -> (2 ln 2 + ln(1 + e^-1) + ln(1 + e^-2)) / 4, half of ffkit's default "sum" of the two means.
    g_pos, g_neg = torch.tensor([2.0, 3.0]), torch.tensor([2.0, 0.0])
    expected = (2 * math.log(2) + math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 4
    assert_close(losses.ff_threshold(g_pos, g_neg, threshold=2.0, reduction="mean"), torch.tensor(expected))
    assert_close(losses.ff_threshold(g_pos, g_neg, threshold=2.0), torch.tensor(2 * expected))
    with pytest.raises(ValueError, match="reduction"):
        losses.ff_threshold(g_pos, g_neg, threshold=2.0, reduction="none")
    with pytest.raises(ValueError, match="threshold_reduction"):
        ffkit.PosNegObjective(LabelChannel(3, 4, 4), RandomNegative(3), loss="threshold", threshold_reduction="max")


def test_threshold_loss_is_the_release_form_with_the_given_threshold():
    torch.manual_seed(0)
    net = create_model("trifecta_deep", in_channels=1, width_multiplier=0.1, loss="threshold", threshold=1.5)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    batch = net.objective.prepare(net, x, y)
    assert batch.inputs.shape == (8, 2, 32, 32)  # positives then negatives, image + label channel
    for _, out in net.iter_layers(batch.inputs, end=2):
        g = out.goodness
        loss, correct = net.objective.layer_loss(out, batch)
        by_hand = torch.cat([F.softplus(1.5 - g[:4]), F.softplus(g[4:] - 1.5)]).mean()
        assert_close(loss, by_hand)
        assert_close(loss, losses.ff_threshold(g[:4], g[4:], threshold=1.5, reduction="mean"))
        assert not torch.isclose(loss, losses.ff_threshold(g[:4], g[4:], threshold=2.0, reduction="mean"))
        assert not torch.isclose(loss, losses.symba(g[:4], g[4:], alpha=4.0))
        assert correct == (g[:4] > g[4:]).sum()


def test_symba_loss_uses_the_given_alpha():
    torch.manual_seed(0)
    net = create_model("trifecta_fcn", in_channels=1, width_multiplier=0.1, alpha=2.5)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    batch = net.objective.prepare(net, x, y)
    _, out = next(net.iter_layers(batch.inputs))
    g = out.goodness
    assert_close(net.objective.layer_loss(out, batch)[0], losses.symba(g[:4], g[4:], alpha=2.5))
    # SymBa by hand: mean softplus(alpha * (g_neg - g_pos))
    assert_close(net.objective.layer_loss(out, batch)[0], F.softplus(2.5 * (g[4:] - g[:4])).mean())


# -- evaluation: goodness of every label ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["trifecta_shallow", "trifecta_fcn"])
def test_layer_scores_are_goodness_of_each_label(name):
    torch.manual_seed(0)
    net = create_model(name, in_channels=3, width_multiplier=0.1, num_classes=5)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, schedule="constant")
    x = torch.rand(3, 3, 32, 32)
    trainer.train_step(x, torch.tensor([0, 1, 2]))  # so BatchNorm's running statistics are not the initial ones
    net.eval()
    scores = net.layer_scores(x)
    assert scores.shape == (len(net), 3, 5)
    # entry [l, b, k] by hand: x_b with the label plane of k appended, through layers 0..l (here l = 2)
    li, b, k = 2, 1, 3
    xk = net.objective.encoder(x[b : b + 1], torch.tensor([k]))
    assert_close(xk[0, :3], x[b])
    assert_close(xk[0, 3], net.objective.encoder.matrix[k].reshape(32, 32))
    h = xk
    with torch.no_grad():
        for i in range(li + 1):
            h = net.layers[i](h).features
    assert_close(scores[li, b, k], h.square().mean())
    # forward reads the last layer alone (the release's evaluation and the paper's Tables 1-2); the predicted label
    # is the one with the largest goodness there
    assert net.inference_range.tolist() == [len(net) - 1, len(net) - 1]
    assert_close(net(x), scores[-1])


def test_last3_reads_the_mean_of_the_last_three_layers():
    # (make_report's last3 on hand-made scores is covered in test_evaluation.py.) Here: on a deep network's real
    # scores, last3 is the accuracy of the paper's "mean of the last three layers" read-out.
    torch.manual_seed(0)
    net = create_model("trifecta_deep", in_channels=1, width_multiplier=0.1, num_classes=4)
    net.eval()
    x, y = torch.rand(8, 1, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    scores = net.layer_scores(x)
    rep = make_report(scores, y)
    assert len(rep.per_layer) == 12
    assert rep.last3 == pytest.approx((scores[9:].mean(0).argmax(1) == y).float().mean().item())
