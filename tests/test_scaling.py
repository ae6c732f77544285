"""DeeperForward's depth-scaling networks: ResNet33 (plain) and ResNet100 (bottleneck)."""

import pytest
import torch

import ffkit
from ffkit.models import create_model
from ffkit.models.deeperforward import RESNET33_BLOCKS, RESNET100_BLOCKS


def resnet33_params(in_channels: int, base: int) -> int:
    """Hand derivation (the authors' ``resnet34.py``). Bias-free 3x3 convs; stem ``C_in -> w``; stage ``s`` has width
    ``W_s = w 2^s`` and ``B_s`` ({3, 4, 6, 3}) blocks of two convs. A block whose input width ``W_in`` equals ``W_s``
    costs ``2 * 9 W_s^2``; a stage's first block in stages 2-4 reads ``W_in = W_{s-1}``: ``W_in -> W_s``, then
    ``W_s -> W_s - W_in`` (the input is concatenated after it):

        9 * (C_in w + sum_s [ (B_s - 1) * 2 W_s^2 + W_in W_s + W_s (W_s - W_in or W_s) ])
    """
    total, w_in = in_channels * base, base
    for s, blocks in enumerate(RESNET33_BLOCKS):
        w = base * 2**s
        second = w if w_in == w else w - w_in
        total += w_in * w + w * second + (blocks - 1) * 2 * w * w
        w_in = w
    return 9 * total


def resnet100_params(in_channels: int, base: int) -> int:
    """Hand derivation (the authors' ``resnet101.py``). Stem ``9 C_in p_0``; stage ``s`` has inner width
    ``p_s = base 2^s``, output ``4 p_s`` and ``B_s`` ({3, 4, 23, 3}) bottlenecks: 1x1 ``W_in -> p``, 3x3 ``p -> p``
    (``9 p^2``), 1x1 ``p -> C_conv`` with ``C_conv = 4p`` when the block input is added (``W_in = 4p``) and
    ``4p - W_in`` when it is concatenated (each stage's first block).
    """
    total, w_in = 9 * in_channels * base, base
    for s, blocks in enumerate(RESNET100_BLOCKS):
        p = base * 2**s
        out = 4 * p
        for _ in range(blocks):
            total += w_in * p + 9 * p * p + p * (out if w_in == out else out - w_in)
            w_in = out
    return total


def test_hand_formulas_evaluate_to_the_expected_numbers():
    # 9 * (100 + [6*100^2] + [100*200 + 200*100 + 6*200^2] + [200*400 + 400*200 + 10*400^2]
    #      + [400*800 + 800*400 + 4*800^2]) = 9 * 5,300,100
    assert resnet33_params(1, 100) == 47_700_900
    # stem 630; stage 1 (p=70): (70*70 + 44,100 + 70*210) + 2*(280*70 + 44,100 + 70*280) = 63,700 + 166,600;
    # stage 2 (p=140): (280*140 + 176,400 + 140*280) + 3*(560*140 + 176,400 + 140*560) = 254,800 + 999,600;
    # stage 3 (p=280): (560*280 + 705,600 + 280*560) + 22*(1120*280 + 705,600 + 280*1120) = 1,019,200 + 29,321,600;
    # stage 4 (p=560): (1120*560 + 2,822,400 + 560*1120) + 2*(2240*560 + 2,822,400 + 560*2240) = 4,076,800 + 10,662,400
    assert resnet100_params(1, 70) == 630 + 230_300 + 1_254_400 + 30_340_800 + 14_739_200 == 46_565_330


@pytest.mark.parametrize(("num_classes", "in_channels"), [(10, 1), (100, 3)])
def test_parameter_counts_match_hand_derivation(num_classes, in_channels):
    net33 = create_model("deeperforward_resnet33", num_classes=num_classes, in_channels=in_channels)
    assert sum(p.numel() for p in net33.parameters()) == resnet33_params(in_channels, 100)  # 100: both divide it
    net100 = create_model("deeperforward_resnet100", num_classes=num_classes, in_channels=in_channels)
    # 70 channels for 10 classes; for 100 classes rounded up to 100 (the release would refuse 70)
    base = 70 if num_classes == 10 else 100
    assert sum(p.numel() for p in net100.parameters()) == resnet100_params(in_channels, base)


def test_scaled_parameter_counts_match_hand_derivation():
    # width 0.1 with 10 classes: ResNet33 w = 10; ResNet100 70 * 0.1 = 7, rounded up to 10
    net33 = create_model("deeperforward_resnet33", num_classes=10, in_channels=3, width_multiplier=0.1)
    assert sum(p.numel() for p in net33.parameters()) == resnet33_params(3, 10)
    net100 = create_model("deeperforward_resnet100", num_classes=10, in_channels=3, width_multiplier=0.1)
    assert sum(p.numel() for p in net100.parameters()) == resnet100_params(3, 10)


def test_layer_counts():
    assert len(create_model("deeperforward_resnet33", width_multiplier=0.1)) == 1 + 2 * sum(RESNET33_BLOCKS) == 33
    assert len(create_model("deeperforward_resnet100", width_multiplier=0.1)) == 1 + 3 * sum(RESNET100_BLOCKS) == 100


def test_resnet33_wiring():
    net = create_model("deeperforward_resnet33", num_classes=10, in_channels=1)
    # Block g (0..15) is layers 2g+1, 2g+2; its input, layer 2g's output, goes into layer 2g+2.
    assert net.shortcuts == {2 * g + 2: 2 * g for g in range(16)}
    first_blocks = [sum(RESNET33_BLOCKS[:s]) for s in (1, 2, 3)]  # global block index of stages 2-4's first block
    assert first_blocks == [3, 7, 13]
    modes = {i: net.layers[i].combine.mode for i in net.shortcuts}
    assert [i for i, m in modes.items() if m == "concat"] == [2 * g + 2 for g in first_blocks] == [8, 16, 28]
    assert all(m == "add" for i, m in modes.items() if i not in (8, 16, 28))
    assert [i for i, layer in enumerate(net.layers) if layer.conv.stride == (2, 2)] == [7, 15, 27]
    outs = [layer.out_channels for layer in net.layers]
    assert outs == [100] * 7 + [200] * 8 + [400] * 12 + [800] * 6
    # The concatenating layers' convs make out - in channels; the block input brings the rest.
    assert [net.layers[i].conv.out_channels for i in (8, 16, 28)] == [100, 200, 400]


def test_resnet100_wiring():
    net = create_model("deeperforward_resnet100", num_classes=10, in_channels=1)
    # Block g (0..32) is layers 3g+1, 3g+2, 3g+3; its input is layer 3g's output, which goes into layer 3g+3.
    assert net.shortcuts == {3 * g + 3: 3 * g for g in range(33)}
    assert [layer.conv.kernel_size for layer in net.layers[1:7]] == [(1, 1), (3, 3), (1, 1)] * 2
    first_blocks = [sum(RESNET100_BLOCKS[:s]) for s in (0, 1, 2, 3)]  # global block index of each stage's first
    assert first_blocks == [0, 3, 7, 30]
    concat = [3 * g + 3 for g in first_blocks]
    modes = {i: net.layers[i].combine.mode for i in net.shortcuts}
    assert [i for i, m in modes.items() if m == "concat"] == concat == [3, 12, 24, 93]
    strided = [i for i, layer in enumerate(net.layers) if layer.conv.stride == (2, 2)]
    assert strided == [3 * g + 2 for g in first_blocks[1:]] == [11, 23, 92]
    assert [net.layers[3 * g + 1].out_channels for g in first_blocks] == [70, 140, 280, 560]  # inner widths
    # first block of stage 1: the 1x1 makes 4 * 70 - 70 = 210, the stem's 70 are appended
    assert net.layers[3].conv.out_channels == 210 and net.layers[3].out_channels == 280
    assert net.layers[-1].out_channels == 2240


def test_resnet100_feature_sizes():
    net = create_model("deeperforward_resnet100", num_classes=10, in_channels=1, width_multiplier=0.1)
    net.eval()
    shapes = {}
    with torch.no_grad():
        for i, out in net.iter_layers(torch.rand(1, 1, 32, 32)):
            shapes[i] = tuple(out.features.shape[1:])
    # Stage ends: layers 9, 21, 90, 99 (after 3, 4, 23, 3 blocks); inner widths 10/20/40/80, outputs 4x.
    assert [shapes[i] for i in (0, 9, 21, 90, 99)] == [(10, 32, 32), (40, 32, 32), (80, 16, 16), (160, 8, 8),
                                                       (320, 4, 4)]


@pytest.mark.parametrize("name", ["deeperforward_resnet33", "deeperforward_resnet100"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_widths_are_multiples_of_num_classes(name, num_classes):
    for wm in (1.0, 0.15):
        net = create_model(name, num_classes=num_classes, in_channels=3, width_multiplier=wm)
        for layer in net.layers:
            assert layer.out_channels % num_classes == 0
            assert layer.conv.out_channels % num_classes == 0  # concatenation keeps class blocks aligned too


def test_resnet100_cifar100_inner_widths():
    # the release's 70 is not a multiple of 100 classes: rounded up to 100, then doubled per stage
    net = create_model("deeperforward_resnet100", num_classes=100, in_channels=3)
    inner = [net.layers[3 * g + 1].out_channels for g in (0, 3, 7, 30)]
    assert inner == [100, 200, 400, 800]


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


def test_resnet17_wiring_and_count():
    net = create_model("deeperforward_resnet17", num_classes=10, in_channels=1)
    assert sum(p.numel() for p in net.parameters()) == 9 * (1 * 100 + 4 * (100**2 + 200**2 + 400**2 + 800**2))
    assert net.shortcuts == {i: i - 2 for i in range(2, 17, 2)}
    assert [layer.out_channels for layer in net.layers][-1] == 1600
