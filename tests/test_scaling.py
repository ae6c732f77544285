"""DeeperForward's depth-scaling networks: ResNet33 (plain) and ResNet100 (bottleneck)."""

import math

import pytest
import torch

import ffkit
from ffkit.models import create_model
from ffkit.models.deeperforward import RESNET100_BLOCKS


def resnet33_params(in_channels: int, base: int) -> int:
    """Hand derivation. Bias-free 3x3 convs; stages at w, 2w, 4w, 8w (w = base). Each stage's first layer reads
    the previous stage's output, whose width (2 * w_prev after the concatenation, or w from the stem) equals the
    stage width; every layer's conv maps w -> w, except that the concatenating last layer's conv produces only w of
    its 2w output channels. So each of the 8 layers of a stage costs 9 w^2:

        params = 9 * (C_in * w + 8 * (w^2 + (2w)^2 + (4w)^2 + (8w)^2)) = 9 * (C_in * w + 680 w^2)
    """
    return 9 * (in_channels * base + 8 * (base**2 + (2 * base) ** 2 + (4 * base) ** 2 + (8 * base) ** 2))


def resnet100_params(in_channels: int, base: int, num_classes: int) -> int:
    """Hand derivation. Stem 9 * C_in * w. Stage s has width W_s = w * 2^s, inner width
    n_s = ceil(W_s / (4 K)) * K, B_s blocks ([3, 4, 23, 3]) of 1x1 reduce (W_in * n), 3x3 (9 n^2), 1x1 expand
    (n * C_conv). The first block of stage s reads W_in = W_{s-1} (the stem's w for s = 0); its expand conv produces
    C_conv = W_s when the shortcut is added (W_in = W_s) and W_s - W_in when it is concatenated. The other blocks
    read W_s and add: 2 W_s n + 9 n^2 each.
    """
    total = 9 * in_channels * base
    w_in = base
    for s, blocks in enumerate(RESNET100_BLOCKS):
        w = base * 2**s
        n = math.ceil(w / (4 * num_classes)) * num_classes
        c_conv = w if w_in == w else w - w_in
        total += w_in * n + 9 * n * n + n * c_conv
        total += (blocks - 1) * (2 * w * n + 9 * n * n)
        w_in = w
    return total


def test_hand_formulas_evaluate_to_the_expected_numbers():
    # 9 * (100 + 680 * 100^2) = 61,200,900
    assert resnet33_params(1, 100) == 61_200_900
    # stem 900; stage 1 (n=30): 3 * (100*30 + 9*900 + 30*100) = 42,300;
    # stage 2 (n=50): (100*50 + 22,500 + 50*100) + 3 * (2*200*50 + 22,500) = 32,500 + 127,500 = 160,000;
    # stage 3 (n=100): (200*100 + 90,000 + 100*200) + 22 * (2*400*100 + 90,000) = 130,000 + 3,740,000;
    # stage 4 (n=200): (400*200 + 360,000 + 200*400) + 2 * (2*800*200 + 360,000) = 520,000 + 1,360,000.
    assert resnet100_params(1, 100, 10) == 900 + 42_300 + 160_000 + 3_870_000 + 1_880_000 == 5_953_200


@pytest.mark.parametrize(("num_classes", "in_channels"), [(10, 1), (100, 3)])
def test_parameter_counts_match_hand_derivation(num_classes, in_channels):
    base = 100  # 100 is a multiple of both class counts
    net33 = create_model("deeperforward_resnet33", num_classes=num_classes, in_channels=in_channels)
    assert sum(p.numel() for p in net33.parameters()) == resnet33_params(in_channels, base)
    net100 = create_model("deeperforward_resnet100", num_classes=num_classes, in_channels=in_channels)
    assert sum(p.numel() for p in net100.parameters()) == resnet100_params(in_channels, base, num_classes)


def test_scaled_parameter_counts_match_hand_derivation():
    # width 0.1 with 10 classes: w = 10, ResNet100 inner widths ceil([10, 20, 40, 80] / 40) * 10 = 10, 10, 10, 20.
    net33 = create_model("deeperforward_resnet33", num_classes=10, in_channels=3, width_multiplier=0.1)
    assert sum(p.numel() for p in net33.parameters()) == resnet33_params(3, 10)
    net100 = create_model("deeperforward_resnet100", num_classes=10, in_channels=3, width_multiplier=0.1)
    assert sum(p.numel() for p in net100.parameters()) == resnet100_params(3, 10, 10)


def test_layer_counts():
    assert len(create_model("deeperforward_resnet33", width_multiplier=0.1)) == 33
    assert len(create_model("deeperforward_resnet100", width_multiplier=0.1)) == 1 + 3 * sum(RESNET100_BLOCKS) == 100


def test_resnet33_wiring():
    net = create_model("deeperforward_resnet33", num_classes=10, in_channels=1)
    # Every second layer takes the layer two back: 2 <- 0, 4 <- 2, ..., 32 <- 30.
    assert net.shortcuts == {i: i - 2 for i in range(2, 33, 2)}
    modes = {i: net.layers[i].residual.mode for i in net.shortcuts}
    assert [i for i, m in modes.items() if m == "concat"] == [8, 16, 24, 32]
    assert all(m == "add" for i, m in modes.items() if i not in (8, 16, 24, 32))
    assert [i for i, layer in enumerate(net.layers) if layer.conv.stride == (2, 2)] == [9, 17, 25]
    outs = [layer.out_channels for layer in net.layers]
    assert outs[:9] == [100] * 8 + [200]
    assert outs[9:17] == [200] * 7 + [400]
    assert outs[25:] == [800] * 7 + [1600]
    # The concatenating layers' convs produce half their output; the shortcut brings the other half.
    assert [net.layers[i].conv.out_channels for i in (8, 16, 24, 32)] == [100, 200, 400, 800]


def test_resnet100_wiring():
    net = create_model("deeperforward_resnet100", num_classes=10, in_channels=1)
    # Block g (0..32) is layers 3g+1, 3g+2, 3g+3; its input is layer 3g's output, which goes into layer 3g+3.
    assert net.shortcuts == {3 * g + 3: 3 * g for g in range(33)}
    assert [layer.conv.kernel_size for layer in net.layers[1:7]] == [(1, 1), (3, 3), (1, 1)] * 2
    first_blocks = [sum(RESNET100_BLOCKS[:s]) for s in (1, 2, 3)]  # global block index of stages 2-4's first block
    assert first_blocks == [3, 7, 30]
    concat = [3 * g + 3 for g in first_blocks]
    modes = {i: net.layers[i].residual.mode for i in net.shortcuts}
    assert [i for i, m in modes.items() if m == "concat"] == concat == [12, 24, 93]
    assert [i for i, layer in enumerate(net.layers) if layer.conv.stride == (2, 2)] == [3 * g + 2 for g in first_blocks]
    # Inner widths: a quarter of the stage width rounded up to a multiple of 10.
    inner = {net.layers[3 * g + 1].out_channels for g in range(3)}, {net.layers[3 * g + 1].out_channels for g in (3,)}
    assert inner == ({30}, {50})
    assert net.layers[3 * 30 + 1].out_channels == 200 and net.layers[-1].out_channels == 800


def test_resnet100_feature_sizes():
    net = create_model("deeperforward_resnet100", num_classes=10, in_channels=1, width_multiplier=0.1)
    net.eval()
    shapes = {}
    with torch.no_grad():
        for i, out in net.iter_layers(torch.rand(1, 1, 32, 32)):
            shapes[i] = tuple(out.features.shape[1:])
    # Stage ends: layers 9, 21, 90, 99 (after 3, 4, 23, 3 blocks).
    assert [shapes[i] for i in (0, 9, 21, 90, 99)] == [(10, 32, 32), (10, 32, 32), (20, 16, 16), (40, 8, 8), (80, 4, 4)]


@pytest.mark.parametrize("name", ["deeperforward_resnet33", "deeperforward_resnet100"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_widths_are_multiples_of_num_classes(name, num_classes):
    for wm in (1.0, 0.15):
        net = create_model(name, num_classes=num_classes, in_channels=3, width_multiplier=wm)
        for layer in net.layers:
            assert layer.out_channels % num_classes == 0
            assert layer.conv.out_channels % num_classes == 0  # concatenation keeps class blocks aligned too


def test_resnet100_cifar100_inner_widths():
    net = create_model("deeperforward_resnet100", num_classes=100, in_channels=3)
    inner = [net.layers[3 * g + 1].out_channels for g in (0, 3, 7, 30)]
    assert inner == [100, 100, 100, 200]


@pytest.mark.parametrize(("name", "in_channels"), [("deeperforward_resnet33", 3), ("deeperforward_resnet100", 1)])
def test_one_local_step(name, in_channels):
    net = create_model(name, num_classes=10, in_channels=in_channels, width_multiplier=0.1, dropout=0.1)
    trainer = ffkit.LocalTrainer(net, lr=1e-3, total_steps=1)
    calls = {}
    for i, layer in enumerate(net.layers):
        for n, p in layer.named_parameters():
            calls[(i, n)] = 0
            p.register_hook(lambda g, key=(i, n): calls.__setitem__(key, calls[key] + 1))
    before = [p.detach().clone() for p in net.parameters()]
    res = trainer.train_step(torch.rand(2, in_channels, 32, 32), torch.tensor([0, 1]))
    assert set(calls.values()) == {1}
    assert res.losses.shape == (len(net),) and torch.isfinite(res.losses).all()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    net.eval()
    assert net(torch.rand(2, in_channels, 32, 32)).shape == (2, 10)


def test_resnet17_is_unchanged_by_the_shared_helper():
    net = create_model("deeperforward_resnet17", num_classes=10, in_channels=1)
    assert sum(p.numel() for p in net.parameters()) == 9 * (1 * 100 + 4 * (100**2 + 200**2 + 400**2 + 800**2))
    assert net.shortcuts == {i: i - 2 for i in range(2, 17, 2)}
    assert [layer.out_channels for layer in net.layers][-1] == 1600
