"""Build your own network from ffkit's parts and train it on real Fashion-MNIST.

    python examples/build_your_own.py [PLOTS_DIR]     # about 30 seconds on a 2-core CPU with the defaults

Two networks from the same parts: a DeeperForward-style CW-Conv network with parameter-free residual shortcuts,
and an FF MLP (Hinton's linear FF layers and label overlay, random negative labels, SymBa loss).
The notebook twin is examples/build_your_own.ipynb (written from this file by examples/make_notebooks.py).
Environment variables: FFKIT_EXAMPLE_LIMIT (training images, default 10000; held-out and test images: at most
2000), FFKIT_EXAMPLE_EPOCHS (default 2), FFKIT_EXAMPLE_PLOTS (where the figures go, default plots/build_your_own;
the PLOTS_DIR argument wins).
"""

# %% [markdown]
# # Build your own network from the parts
#
# A Forward-Forward network in ffkit is made of a few kinds of parts, and any of them can be swapped:
#
# | part | what it decides | examples |
# |---|---|---|
# | **goodness** | how activity becomes a score | `goodness.mean` (DeeperForward), `goodness.squared` (Hinton) |
# | **loss** | what a layer does with its scores | `losses.local_ce`, `losses.ff_threshold`, `losses.symba` |
# | **layers** | the computation and its goodness | `CWConv`, `ParamFreeResidual`, `FFLinear`, `TrifectaConv` |
# | **encoders** | how the label enters; negative data | `LabelOverlay`, `LabelChannel`; `RandomNegative`, ... |
# | **objective** | how layers train and vote | `ClassScoreObjective`, `PosNegObjective` |
#
# `FFNetwork(layers, objective, ...)` puts them together, and `LocalTrainer` trains any such network layer by layer.
# We first look at each part on toy tensors, then build and train two networks on Fashion-MNIST.

# %%
import logging
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit import goodness, losses, plotting
from ffkit.data import dataset_tensors
from ffkit.layers import CWConv, FFLinear, ParamFreeResidual

logging.basicConfig(level=logging.INFO, format="%(message)s")  # show the trainers' per-epoch tables (ffkit.train)

LIMIT = int(os.environ.get("FFKIT_EXAMPLE_LIMIT", "10000"))  # training images (the test suite uses a few hundred)
EVAL_LIMIT = min(LIMIT, 2000)  # held-out and test images
EPOCHS = int(os.environ.get("FFKIT_EXAMPLE_EPOCHS", "2"))
PLOTS = Path(os.environ.get("FFKIT_EXAMPLE_PLOTS", "plots/build_your_own"))
K = 10  # classes
torch.manual_seed(0)

# %% [script]
if __name__ == "__main__":  # python examples/build_your_own.py PLOTS_DIR
    import sys

    if len(sys.argv) > 1:
        PLOTS = Path(sys.argv[1])

# %% [markdown]
# ## Goodness and losses
#
# A **goodness** turns a layer's activity `h` into a score. DeeperForward uses the *mean* activity; split into `K`
# channel groups, it gives one score per class (class `k` owns group `k`). Hinton's FF uses the *sum of squares*,
# one score per sample.

# %%
h = torch.relu(torch.randn(4, 20, 8, 8))  # a batch of 4 activities with 20 channels: 2 per class
print("mean goodness, one per sample:   ", tuple(goodness.mean(h).shape))
print("mean goodness per class group:   ", tuple(goodness.mean(h, groups=K).shape))
print("sum-of-squares goodness:         ", tuple(goodness.squared(h).shape))

# %% [markdown]
# A **loss** acts on goodness. With one score per class, `local_ce` is a cross-entropy over the scores. With one
# goodness per sample, the network sees *positive* data (an image with its true label) and *negative* data (with a
# wrong label): `ff_threshold` pushes positive goodness above a threshold and negative goodness below it; `symba`
# only pushes their difference.

# %%
scores = goodness.mean(h, groups=K)
target = torch.tensor([0, 1, 2, 3])
print(f"local_ce:     {losses.local_ce(scores, target):.3f}")
g_pos, g_neg = torch.tensor([3.0, 2.5]), torch.tensor([0.5, 1.0])
print(f"ff_threshold: {losses.ff_threshold(g_pos, g_neg, threshold=2.0):.3f}")
print(f"symba:        {losses.symba(g_pos, g_neg, alpha=4.0):.3f}")

# %% [markdown]
# ## Layers
#
# `CWConv` is DeeperForward's channel-wise convolution: `[avg-pool] -> conv -> ReLU -> dropout`. Its class scores
# are the mean goodness of each class's channel group, and the features it passes on are normalised per group. Its
# width must be a multiple of `K`.
#
# `ParamFreeResidual` is DeeperForward's parameter-free shortcut: after the scores, the earlier layer's output is
# average-pooled to the layer's size and added to its features (same width) or concatenated after them (fewer
# channels). A `CWConv` built with `shortcut_channels=` holds one.

# %%
res = ParamFreeResidual(shortcut_channels=40, out_channels=120, groups=K)
block = torch.randn(2, 80, 8, 8)  # the layer's normalised features: its conv makes 120 - 40 channels
shortcut = torch.randn(2, 40, 16, 16)  # an earlier layer's output, at twice the resolution
print("residual ([features, shortcut]):", tuple(res(block, shortcut).shape))

layer = CWConv(1, 40, K, kernel_size=5)
out = layer(torch.rand(2, 1, 32, 32))
print("CWConv -> features", tuple(out.features.shape), "scores", tuple(out.scores.shape))

# %% [markdown]
# ## Network 1: a DeeperForward-style CW-Conv network with residual shortcuts
#
# Four `CWConv` layers. `shortcuts={2: 0, 3: 1}` wires layer 1's output into layer 3 and layer 2's into layer 4;
# those layers make fewer channels with their conv and concatenate the shortcut. `ClassScoreObjective` trains every
# layer with `local_ce` on its class scores and predicts in one pass by summing the layers' scores.

# %%
layers = [
    CWConv(1, 40, K, kernel_size=5, dropout=0.1),  # 32x32
    CWConv(40, 80, K, pool=2, dropout=0.1),  # 16x16
    CWConv(80, 120, K, pool=2, shortcut_channels=40),  # 8x8; conv makes 80, layer 1's 40 are concatenated
    CWConv(120, 160, K, shortcut_channels=80),  # conv makes 80, layer 2's 80 (pooled 16x16 -> 8x8) concatenated
]
cw_net = ffkit.FFNetwork(
    layers, ffkit.ClassScoreObjective(), num_classes=K, in_channels=1, input_norm=True, shortcuts={2: 0, 3: 1}
)
print(f"{sum(p.numel() for p in cw_net.parameters()):,} parameters")

# %% [markdown]
# A single training step first: every layer is updated once, on detached inputs, and reports its local loss.

# %%
x_train, y_train = dataset_tensors(ffkit.load_dataset("fashion-mnist", "train"), LIMIT)
x_hold, y_hold = dataset_tensors(ffkit.load_dataset("fashion-mnist", "holdout"), EVAL_LIMIT)
x_test, y_test = dataset_tensors(ffkit.load_dataset("fashion-mnist", "test"), EVAL_LIMIT)
train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True, generator=torch.Generator())
holdout_loader = DataLoader(TensorDataset(x_hold, y_hold), batch_size=500)
test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=500)

trainer = ffkit.LocalTrainer(cw_net, lr=0.01, total_steps=EPOCHS * len(train_loader))
step = trainer.train_step(x_train[:64], y_train[:64])
print("per-layer local losses after one step:", [round(v, 3) for v in step.losses.tolist()])

# %% [markdown]
# Then whole epochs with `fit`, with SIP on the held-out split and evaluation on the test split after each epoch.

# %%
cw_history = trainer.fit(train_loader, epochs=EPOCHS, holdout=holdout_loader, test=test_loader)

# %% [markdown]
# The four plots of the run: per-layer test accuracy, goodness of the true class against the wrong classes,
# the share of deactivated units, and SIP's accuracy grid over layer ranges.

# %%
PLOTS.mkdir(parents=True, exist_ok=True)
fig, axes = plt.subplots(2, 2, figsize=(11, 8), layout="constrained")
plotting.plot_layer_accuracy(cw_history, ax=axes[0, 0])
plotting.plot_goodness(cw_history, ax=axes[0, 1])
plotting.plot_dead_neurons(cw_history, ax=axes[1, 0])
plotting.plot_sip_grid(cw_history, ax=axes[1, 1])
fig.savefig(PLOTS / "cwconv_network.png")

# %% [markdown]
# ## Network 2: an FF MLP from linear layers and label encoders
#
# Here the label is part of the input: `LabelOverlay` writes it as a one-hot into the first `K` pixels (Hinton's
# encoding). Positive data carries the true label, negative data a wrong one drawn by `RandomNegative`. Each
# `FFLinear` layer normalises its input's length, applies a linear map and ReLU, and reports the sum of squares as
# its goodness. `PosNegObjective(..., loss="symba")` trains every layer to give the positive data a higher goodness
# than its negative pair; `loss="threshold"` is Hinton's original loss (it starts slower). To predict, the network
# runs once per label and picks the label with the largest goodness summed over the layers.

# %%
mlp = ffkit.FFNetwork(
    [FFLinear(32 * 32, 500), FFLinear(500, 500), FFLinear(500, 500)],
    ffkit.PosNegObjective(ffkit.LabelOverlay(K), ffkit.RandomNegative(K), loss="symba", alpha=4.0),
    num_classes=K,
    in_channels=1,
)
mlp_trainer = ffkit.LocalTrainer(mlp, lr=0.01, total_steps=EPOCHS * len(train_loader))
mlp_history = mlp_trainer.fit(train_loader, epochs=EPOCHS, test=test_loader)

# %% [markdown]
# For this network, "positive" and "negative" goodness are literal: each layer's goodness of an image with its true
# label and with the wrong labels. Training drives them apart, layer by layer.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
plotting.plot_layer_accuracy(mlp_history, ax=axes[0])
plotting.plot_goodness(mlp_history, ax=axes[1])
fig.savefig(PLOTS / "ff_mlp.png")
for name, hist in (("CW-Conv network", cw_history), ("FF MLP", mlp_history)):
    print(f"{name}: test accuracy (all layers) {100 * hist[-1]['test']['all_layers']:.2f}%")

# %% [markdown]
# ## Mixing parts
#
# Every part fits every other: `examples/mix_parts.py` trains CW-Conv layers with The Trifecta's SymBa loss and label
# channel, and with its overlapping local updates. To make a network buildable by name (`ffkit train --model ...`),
# wrap its construction in a keyword-only function decorated with `@ffkit.register_model`.
