"""CwComp (Papachristodoulou et al., AAAI 2024) as ffkit parts: the CwCompConv layer's goodness against hand-computed
values, its shapes and structure, the cwcomp_cnn builder, its recipes, and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from ffkit import ClassScoreObjective, CwCompConv
from ffkit.models import create_model
from ffkit.objectives import PreparedBatch
from ffkit.recipes import get_recipe

# -- the layer -----------------------------------------------------------------------------------------------------


def hand_layer() -> CwCompConv:
    """1 input channel, 4 output channels = 2 classes x 2 channels, 1x1 kernel with weights 1, 2, -1, 3, no bias."""
    layer = CwCompConv(1, 4, num_classes=2, kernel_size=1)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 3.0]).view(4, 1, 1, 1))
        layer.conv.bias.zero_()
    return layer


def test_goodness_hand_value_eval_mode():
    # One 1x2 image [1, 2]. ReLU(w x): channel 0 -> [1, 2], 1 -> [2, 4], 2 -> [0, 0], 3 -> [3, 6]. Fresh BatchNorm in
    # eval mode divides by sqrt(1 + 1e-4). Class 0 owns channels 0-1: (1 + 4 + 4 + 16) / 4 = 6.25; class 1 owns
    # channels 2-3: (0 + 0 + 9 + 36) / 4 = 11.25; both divided by 1 + 1e-4.
    layer = hand_layer().eval()
    out = layer(torch.tensor([[[[1.0, 2.0]]]]))
    assert_close(out.scores, torch.tensor([[6.25, 11.25]]) / 1.0001)
    assert_close(out.goodness, torch.tensor([8.75]) / 1.0001)
    assert_close(out.features[0, :, 0, :], torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.0, 0.0], [3.0, 6.0]]) / 1.0001**0.5)
    # The layer loss (CwC with cross-entropy): -log softmax(s)[0] = log(1 + exp(s1 - s0)) = log(1 + exp(5 / 1.0001)).
    batch = PreparedBatch(inputs=torch.zeros(1), target=torch.tensor([0]), batch_size=1)
    loss, correct = ClassScoreObjective().layer_loss(out, batch)
    assert_close(loss, torch.tensor(math.log1p(math.exp(5 / 1.0001))))
    assert int(correct) == 0


def test_goodness_hand_value_with_maxpool():
    # 2x2 image [[1, -2], [3, 0]] with maxpool: channel c is max over ReLU(w_c x) = w_c * 3 for w_c > 0, max(-x) = 2
    # for w = -1. Channels: 3, 6, 2, 9 -> class 0: (9 + 36) / 2 = 22.5, class 1: (4 + 81) / 2 = 42.5.
    layer = CwCompConv(1, 4, num_classes=2, kernel_size=1, maxpool=True).eval()
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 3.0]).view(4, 1, 1, 1))
        layer.conv.bias.zero_()
    out = layer(torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]]))
    assert out.features.shape == (1, 4, 1, 1)
    assert_close(out.scores, torch.tensor([[22.5, 42.5]]) / 1.0001)


def test_training_mode_scores_average_to_the_normalised_variance():
    # In training mode the BatchNorm output of channel c has mean 0 and (biased) variance var_c / (var_c + eps)
    # over the batch and positions, so the batch mean of class k's score is the mean of that over k's channels.
    torch.manual_seed(0)
    layer = CwCompConv(3, 20, num_classes=5).train()
    x = torch.randn(8, 3, 6, 6)
    out = layer(x)
    h = F.relu(layer.conv(x))
    var = h.var(dim=(0, 2, 3), unbiased=False)
    expected = (var / (var + 1e-4)).view(5, 4).mean(dim=1)
    assert_close(out.scores.mean(dim=0), expected)
    assert int(layer.norm.num_batches_tracked) == 1


def test_order_is_conv_relu_pool_batchnorm():
    torch.manual_seed(1)
    layer = CwCompConv(2, 6, num_classes=3, groups=1, maxpool=True).train()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 2.0)
        layer.norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(4, 2, 8, 8)
    h = F.max_pool2d(F.relu(F.conv2d(x, layer.conv.weight, layer.conv.bias, padding=1)), 2)
    mu, var = h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    f = (h - mu) / torch.sqrt(var + 1e-4) * layer.norm.weight.view(1, -1, 1, 1) + layer.norm.bias.view(1, -1, 1, 1)
    out = layer(x)
    assert_close(out.features, f)
    assert_close(out.scores, f.pow(2).view(4, 3, -1).mean(dim=2))


def test_structure_and_shapes():
    layer = CwCompConv(20, 80, num_classes=10, groups=10, maxpool=True)
    assert layer.conv.groups == 10 and layer.conv.bias is not None and layer.conv.padding == (1, 1)
    assert layer.norm.eps == 1e-4 and layer.norm.momentum == 0.1 and layer.norm.affine
    out = layer(torch.rand(3, 20, 32, 32))
    assert out.features.shape == (3, 80, 16, 16)
    assert out.scores.shape == (3, 10) and out.goodness.shape == (3,)
    assert sum(p.numel() for p in layer.parameters()) == 80 * 2 * 9 + 80 + 2 * 80


def test_grouped_conv_keeps_class_blocks_apart():
    # With groups = K, class k's output block reads only input block k: changing input block 0 moves class 0 only.
    torch.manual_seed(2)
    layer = CwCompConv(6, 12, num_classes=3, groups=3).eval()
    x = torch.rand(2, 6, 5, 5)
    x2 = x.clone()
    x2[:, :2] += torch.rand(2, 2, 5, 5)
    d = (layer(x2).scores - layer(x).scores).abs()
    assert (d[:, 0] > 0).all() and (d[:, 1:] == 0).all()


def test_input_normalisation():
    torch.manual_seed(3)
    plain = CwCompConv(3, 6, num_classes=3).eval()
    normed = CwCompConv(3, 6, num_classes=3, input_mean=(0.1, 0.2, 0.3), input_std=(0.5, 0.25, 2.0)).eval()
    normed.load_state_dict(plain.state_dict())  # the input statistics are not part of the state dict
    x = torch.rand(2, 3, 4, 4)
    xn = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert_close(normed(x).features, plain(xn).features)
    assert "input_mean" not in normed.state_dict()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"out_channels": 7}, ValueError, "multiple of num_classes"),
        ({"groups": 4}, ValueError, "groups"),
        ({"in_channels": 0}, ValueError, "in_channels"),
        ({"num_classes": 2.0}, TypeError, "num_classes"),
        ({"maxpool": 1}, TypeError, "maxpool"),
        ({"bn_eps": 0.0}, ValueError, "bn_eps"),
        ({"input_mean": (0.5, 0.5)}, ValueError, "together"),
        ({"input_mean": (0.5,), "input_std": (0.5,)}, ValueError, "one value per input channel"),
        ({"input_mean": "ab", "input_std": "cd"}, TypeError, "input_mean"),
        ({"input_mean": (0.1, 0.1), "input_std": (0.5, 0.0)}, ValueError, "positive"),
    ],
)
def test_layer_bad_arguments(kwargs, error, match):
    args = {"in_channels": 2, "out_channels": 6, "num_classes": 3, **kwargs}
    with pytest.raises(error, match=match):
        CwCompConv(args.pop("in_channels"), args.pop("out_channels"), args.pop("num_classes"), **args)


def test_layer_bad_input():
    layer = CwCompConv(2, 6, num_classes=3, maxpool=True)
    with pytest.raises(ValueError, match=r"expects input \[B, 2, H, W\]"):
        layer(torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expects input"):
        layer(torch.rand(4, 2, 8))
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer.train()(torch.rand(1, 2, 2, 2))  # one sample, pooled to 1x1


# -- the network -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 28])
def test_cwcomp_cnn_shapes(size):
    net = create_model("cwcomp_cnn", num_classes=10, in_channels=1).eval()
    x = torch.rand(2, 1, size, size)
    shapes = [tuple(out.features.shape) for _, out in net.iter_layers(x)]
    s, q = size // 2, size // 4
    assert shapes == [(2, 20, size, size), (2, 80, s, s), (2, 240, s, s), (2, 480, q, q)]
    assert net(x).shape == (2, 10)
    # Prediction reads the last layer alone, as the release's goodness predictor.
    assert_close(net(x), net.layer_scores(x)[-1])


def test_cwcomp_cnn_structure():
    net = create_model("cwcomp_cnn", num_classes=10, in_channels=3)
    assert [layer.conv.groups for layer in net.layers] == [1, 10, 1, 10]
    assert [layer.maxpool for layer in net.layers] == [False, True, False, True]
    assert [layer.conv.out_channels for layer in net.layers] == [20, 80, 240, 480]
    assert_close(net.layers[0].input_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert all(layer.input_mean is None for layer in net.layers[1:])
    assert net.inference_range.tolist() == [3, 3]
    ffcnn = create_model("cwcomp_cnn", num_classes=10, in_channels=1, grouped=False)
    assert [layer.conv.groups for layer in ffcnn.layers] == [1, 1, 1, 1]
    assert_close(ffcnn.layers[0].input_std.flatten(), torch.tensor([0.5]))


def test_cwcomp_cnn_width_rounds_up_to_class_multiples():
    net = create_model("cwcomp_cnn", num_classes=10, in_channels=1, width_multiplier=0.05)
    assert [layer.conv.out_channels for layer in net.layers] == [10, 10, 20, 30]
    net = create_model("cwcomp_cnn", num_classes=7, in_channels=1, channels=(14, 28))
    assert [layer.conv.out_channels for layer in net.layers] == [14, 28] and net.layers[1].conv.groups == 7


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channels": ()}, ValueError, "at least one"),
        ({"channels": 20}, TypeError, "channels"),
        ({"channels": (20, 0)}, ValueError, r"channels\[1\]"),
        ({"grouped": "yes"}, TypeError, "grouped"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"in_channels": 2}, ValueError, "input_mean and input_std"),
        ({"width_multiplier": -1.0}, ValueError, "width_multiplier"),
        ({"image_size": 3}, ValueError, "image_size"),
        ({"image_size": 28.0}, TypeError, "image_size"),
    ],
)
def test_cwcomp_cnn_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        create_model("cwcomp_cnn", **kwargs)


def test_recipes_carry_the_release_settings():
    # main_train.py / configure.py defaults, and Datasets.py's normalisation per dataset
    for name, dataset, mean in (("cwcomp-cnn-mnist", "mnist", (0.1307,)),
                                ("cwcomp-cnn-fmnist", "fashion-mnist", (0.5,)),
                                ("cwcomp-cnn-cifar10", "cifar10", (0.485, 0.456, 0.406))):
        r = get_recipe(name)
        assert (r.model, r.dataset, r.epochs, r.batch_size, r.lr) == ("cwcomp_cnn", dataset, 20, 128, 0.01)
        assert (r.optimizer, r.weight_decay, r.schedule, r.augment) == ("adam", 0.0, "constant", None)
        assert r.model_kwargs["input_mean"] == mean
        # the release feeds (Fashion-)MNIST at the stored 28x28; CIFAR-10 is 32x32
        assert r.model_kwargs.get("image_size") == (None if dataset == "cifar10" else 28)


def test_image_size_fixes_the_input_the_network_takes():
    net = create_model("cwcomp_cnn", num_classes=10, in_channels=1, image_size=28)
    assert net.input_size == (28, 28) and net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="28x28"):
        net(torch.rand(2, 1, 32, 32))
    assert create_model("cwcomp_cnn", num_classes=10, in_channels=1).input_size is None


def test_softmax_head_reads_the_last_layer_and_predicts():
    net = create_model("cwcomp_cnn", num_classes=10, in_channels=1, image_size=28, head=True)
    assert net.head is not None and net.head.layers == (3,) and net.head_predicts
    assert net.head.linear.in_features == 480 * 7 * 7  # the last layer's flattened [480, 7, 7]
    x = torch.rand(2, 1, 28, 28)
    feats = {i: out.features for i, out in net.eval().iter_layers(x)}
    assert_close(net(x), net.head_logits(x, feats))
    with pytest.raises(ValueError, match="image_size"):
        create_model("cwcomp_cnn", num_classes=10, in_channels=1, head=True)
    with pytest.raises(TypeError, match="head"):
        create_model("cwcomp_cnn", num_classes=10, in_channels=1, image_size=28, head=1)
