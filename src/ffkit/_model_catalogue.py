"""The built-in model builders as data, so that ``ffkit models`` lists them without importing torch.

Generated from the registry (ffkit.models) by ``python -m ffkit.models._catalogue``: do not edit by hand. Each entry
is a builder's kind, the first paragraph of its docstring and its keyword arguments (``annotation`` and ``default`` as
text, ``default`` ``None`` when the argument is required).
"""

from __future__ import annotations

from typing import Any

MODELS: dict[str, dict[str, Any]] = {
    "bp_resnet18": {
        "kind": "backprop",
        "doc": (
            "torchvision's ResNet18 adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool), trained end to "
            "end. DeeperForward's BP row: CIFAR-10 94.03 (with augmentation), MNIST 99.58, F-MNIST 93.78."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
        ],
    },
    "bp_vgg8": {
        "kind": "backprop",
        "doc": (
            "VGG8 with the DTG-FF layout (7 convs 128-256-256-512-512-512-512, 2x average pooling after layers "
            "1, 3, 4, 5), BatchNorm and ReLU after each conv, global average pooling and one linear classifier. "
            "DTG-FF's BP row: CIFAR-10 94.80."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
        ],
    },
    "cwcomp_cnn": {
        "kind": "ff",
        "doc": (
            "CwComp's CFSE CNN: 20 - 80 (grouped, max-pool) - 240 - 480 (grouped, max-pool); 280,560 parameters "
            "for ``in_channels=1``. Paper (20 epochs): test error MNIST 0.58, F-MNIST 7.69, CIFAR-10 21.89."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "channels", "annotation": "Sequence[int]", "default": "(20, 80, 240, 480)", "var_keyword": False},
            {"name": "grouped", "annotation": "bool", "default": "True", "var_keyword": False},
            {"name": "input_mean", "annotation": "Sequence[float] | None", "default": "None", "var_keyword": False},
            {"name": "input_std", "annotation": "Sequence[float] | None", "default": "None", "var_keyword": False},
            {"name": "image_size", "annotation": "int | None", "default": "None", "var_keyword": False},
            {"name": "head", "annotation": "bool", "default": "False", "var_keyword": False},
        ],
    },
    "deeperforward_cnn14": {
        "kind": "ff",
        "doc": (
            "DeeperForward's VGG-like CNN (the authors' ``vgg.py``) with 14 3x3 CW-Conv layers (padding 1) in "
            "five blocks: [70, 70], [140 x3], [280 x3], [560 x3], [560 x3], with 2x average pooling before the "
            "first conv of blocks 2-5. Paper: CIFAR-10 81.76, MNIST 99.65, F-MNIST 92.44 (Sun et al., ICLR 2025, "
            "Table 1)."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "dropout", "annotation": "float", "default": "0.2", "var_keyword": False},
        ],
    },
    "deeperforward_resnet100": {
        "kind": "ff",
        "doc": (
            "DeeperForward ResNet100 (bottleneck; the paper's depth-scaling network; the authors' "
            "``resnet101.py``): a 3x3 stem to 70 channels and ResNet101's ``[3, 4, 23, 3]`` bottleneck blocks "
            "with inner widths 70 / 140 / 280 / 560 and outputs four times the inner width: 1 + 3 x 33 = 100 "
            "CW-Conv layers. Paper: CIFAR-10 83.06 (Sun et al., ICLR 2025, depth scaling)."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "dropout", "annotation": "float", "default": "0.2", "var_keyword": False},
        ],
    },
    "deeperforward_resnet17": {
        "kind": "ff",
        "doc": (
            "DeeperForward ResNet17 (ResNet18-like): a 3x3 stem to 100 channels (layer 0) and four stages of "
            "four 3x3 CW-Conv layers at 100 / 200 / 400 / 800 channels (the authors' ``resnet.py``). Paper: "
            "CIFAR-10 86.22, MNIST 99.63, F-MNIST 93.13 (Sun et al., ICLR 2025, Table 1)."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "dropout", "annotation": "float", "default": "0.2", "var_keyword": False},
        ],
    },
    "deeperforward_resnet33": {
        "kind": "ff",
        "doc": (
            "DeeperForward ResNet33 (the paper's depth-scaling network; the authors' ``resnet34.py``): a 3x3 "
            "stem to 100 channels and ResNet34's ``[3, 4, 6, 3]`` basic blocks of two 3x3 CW-Conv layers at 100 "
            "/ 200 / 400 / 800 channels: 1 + 2 x 16 = 33 layers. Paper: CIFAR-10 85.43 (Sun et al., ICLR 2025, "
            "depth scaling)."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "dropout", "annotation": "float", "default": "0.2", "var_keyword": False},
        ],
    },
    "deeperforward_tinycnn": {
        "kind": "ff",
        "doc": (
            "DeeperForward TinyCNN (the authors' ``tinycnn.py``): 4 CW-Conv layers, 100 (5x5, padding 2) - 200 "
            "(5x5, padding 2) - 400 (3x3, padding 1) - 400 (3x3, padding 1), with 2x average pooling before the "
            "2nd and 3rd layers. Paper: CIFAR-10 79.49, MNIST 99.50, F-MNIST 91.83 (Sun et al., ICLR 2025, Table "
            "1)."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "dropout", "annotation": "float", "default": "0.2", "var_keyword": False},
        ],
    },
    "dtg_mlp": {
        "kind": "ff",
        "doc": (
            "A DTG MLP: :class:`~ffkit.layers.DTGLinear` layers trained on positive/negative data, with the "
            "released DTG MLP's hybrid classifier."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {
                "name": "hidden",
                "annotation": "Sequence[int]",
                "default": "(2048, 2048, 2048, 2048)",
                "var_keyword": False,
            },
            {"name": "head", "annotation": "bool", "default": "True", "var_keyword": False},
            {"name": "negatives", "annotation": "str", "default": "'random'", "var_keyword": False},
            {"name": "tau_min", "annotation": "float", "default": "0.1", "var_keyword": False},
            {"name": "tau_max", "annotation": "float", "default": "2.0", "var_keyword": False},
            {"name": "image_size", "annotation": "int", "default": "32", "var_keyword": False},
        ],
    },
    "dtg_vgg11": {
        "kind": "ff",
        "doc": (
            "DTG-FF VGG11: the 8 conv layers of VGG11 (config A) 64-128-256-256-512-512-512-512 as DTGConv "
            "layers, 2x average pooling after layers 1, 2, 4, 6, 8 (1-based). Chen (2026, ablation), CIFAR-10: "
            "84.36."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "head", "annotation": "bool", "default": "True", "var_keyword": False},
            {"name": "tau_min", "annotation": "float", "default": "0.1", "var_keyword": False},
            {"name": "tau_max", "annotation": "float", "default": "2.0", "var_keyword": False},
            {"name": "dropout", "annotation": "float", "default": "0.1", "var_keyword": False},
            {"name": "label_smoothing", "annotation": "float", "default": "0.1", "var_keyword": False},
            {"name": "layer_label_smoothing", "annotation": "float", "default": "0.0", "var_keyword": False},
            {"name": "head_dropout", "annotation": "float", "default": "0.2", "var_keyword": False},
            {"name": "grid", "annotation": "int", "default": "2", "var_keyword": False},
        ],
    },
    "dtg_vgg8": {
        "kind": "ff",
        "doc": (
            "DTG-FF VGG8: 7 DTGConv layers 128-256-256-512-512-512-512, 2x average pooling after layers 1, 3, 4, "
            "5 (1-based). Chen (2026), CIFAR-10: concat head 91.33, logit-sum 91.79; CIFAR-100 67.28; F-MNIST "
            "94.67."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "head", "annotation": "bool", "default": "True", "var_keyword": False},
            {"name": "tau_min", "annotation": "float", "default": "0.1", "var_keyword": False},
            {"name": "tau_max", "annotation": "float", "default": "2.0", "var_keyword": False},
            {"name": "dropout", "annotation": "float", "default": "0.1", "var_keyword": False},
            {"name": "label_smoothing", "annotation": "float", "default": "0.1", "var_keyword": False},
            {"name": "layer_label_smoothing", "annotation": "float", "default": "0.0", "var_keyword": False},
            {"name": "head_dropout", "annotation": "float", "default": "0.2", "var_keyword": False},
            {"name": "grid", "annotation": "int", "default": "2", "var_keyword": False},
        ],
    },
    "hinton_mlp": {
        "kind": "ff",
        "doc": (
            "Hinton's FF MLP as Pipeline-FF trains it (784-2000-2000-2000-2000; here ``in_channels * 1024`` "
            "inputs)."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "1", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {
                "name": "hidden",
                "annotation": "Sequence[int]",
                "default": "(2000, 2000, 2000, 2000)",
                "var_keyword": False,
            },
            {"name": "negatives", "annotation": "str", "default": "'random'", "var_keyword": False},
            {"name": "head", "annotation": "bool", "default": "False", "var_keyword": False},
            {"name": "threshold", "annotation": "float | None", "default": "None", "var_keyword": False},
            {"name": "goodness", "annotation": "str", "default": "'mean'", "var_keyword": False},
            {"name": "label_value", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "label_position", "annotation": "str", "default": "'last'", "var_keyword": False},
            {"name": "image_size", "annotation": "int", "default": "32", "var_keyword": False},
            {"name": "norm", "annotation": "str", "default": "'l2'", "var_keyword": False},
            {"name": "eps", "annotation": "float", "default": "0.0001", "var_keyword": False},
            {"name": "activation", "annotation": "str", "default": "'relu'", "var_keyword": False},
            {"name": "init", "annotation": "str", "default": "'torch'", "var_keyword": False},
            {"name": "peer_normalization", "annotation": "float", "default": "0.0", "var_keyword": False},
            {"name": "peer_momentum", "annotation": "float", "default": "0.9", "var_keyword": False},
            {"name": "head_input_norm", "annotation": "str | None", "default": "None", "var_keyword": False},
            {"name": "head_zero_init", "annotation": "bool", "default": "False", "var_keyword": False},
            {"name": "head_pre_update", "annotation": "bool", "default": "False", "var_keyword": False},
        ],
    },
    "pon_mlp": {
        "kind": "ff",
        "doc": (
            "Pipeline-FF's Performance-Optimized Network (PON, Sec. 4.4): an MLP whose every layer is trained by "
            "its own softmax head, with no negative data (:class:`~ffkit.layers.PONLinear`, local cross-entropy "
            "via :class:`~ffkit.objectives.ClassScoreObjective`). Pipeline-FF Table 4: MNIST 98.38 \"using all "
            "layers\" (98.30 with the last layer only); Table 5: CIFAR-10 53.50."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "1", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {
                "name": "hidden",
                "annotation": "Sequence[int]",
                "default": "(2000, 2000, 2000, 2000)",
                "var_keyword": False,
            },
            {"name": "image_size", "annotation": "int", "default": "32", "var_keyword": False},
        ],
    },
    "trifecta_deep": {
        "kind": "ff",
        "doc": (
            "The Trifecta's deep CNN (the release's ``large``): 12 conv blocks, 64 - 128 (mp) - 128 x3 - 256 "
            "(mp) - 256 x3 - 512 (mp) - 512 x2; 8.5M parameters."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "learned_label", "annotation": "bool", "default": "True", "var_keyword": False},
            {"name": "loss", "annotation": "str", "default": "'symba'", "var_keyword": False},
            {"name": "alpha", "annotation": "float", "default": "4.0", "var_keyword": False},
            {"name": "threshold", "annotation": "float", "default": "2.0", "var_keyword": False},
            {"name": "negatives", "annotation": "str", "default": "'random'", "var_keyword": False},
            {"name": "norm", "annotation": "str", "default": "'batch'", "var_keyword": False},
            {"name": "image_size", "annotation": "int", "default": "32", "var_keyword": False},
        ],
    },
    "trifecta_fcn": {
        "kind": "ff",
        "doc": (
            "The Trifecta's fully-connected network \"6 x 2048\": six :class:`~ffkit.layers.TrifectaLinear` layers "
            "of 2048 units on the flattened ``(in_channels + 1) x S x S`` input (image plus label channel; ``S = "
            "image_size``)."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "learned_label", "annotation": "bool", "default": "True", "var_keyword": False},
            {"name": "loss", "annotation": "str", "default": "'symba'", "var_keyword": False},
            {"name": "alpha", "annotation": "float", "default": "4.0", "var_keyword": False},
            {"name": "threshold", "annotation": "float", "default": "2.0", "var_keyword": False},
            {"name": "negatives", "annotation": "str", "default": "'random'", "var_keyword": False},
            {"name": "norm", "annotation": "str", "default": "'batch'", "var_keyword": False},
            {"name": "image_size", "annotation": "int", "default": "32", "var_keyword": False},
        ],
    },
    "trifecta_shallow": {
        "kind": "ff",
        "doc": (
            "The Trifecta's shallow CNN (the release's ``small``): 6 conv blocks, 128 (mp) - 128 - 256 (mp) - "
            "256 - 256 - 512 (mp); 2.8M parameters."
        ),
        "parameters": [
            {"name": "num_classes", "annotation": "int", "default": "10", "var_keyword": False},
            {"name": "in_channels", "annotation": "int", "default": "3", "var_keyword": False},
            {"name": "width_multiplier", "annotation": "float", "default": "1.0", "var_keyword": False},
            {"name": "learned_label", "annotation": "bool", "default": "True", "var_keyword": False},
            {"name": "loss", "annotation": "str", "default": "'symba'", "var_keyword": False},
            {"name": "alpha", "annotation": "float", "default": "4.0", "var_keyword": False},
            {"name": "threshold", "annotation": "float", "default": "2.0", "var_keyword": False},
            {"name": "negatives", "annotation": "str", "default": "'random'", "var_keyword": False},
            {"name": "norm", "annotation": "str", "default": "'batch'", "var_keyword": False},
            {"name": "image_size", "annotation": "int", "default": "32", "var_keyword": False},
        ],
    },
}
