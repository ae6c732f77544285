"""Quickstart: train DeeperForward's TinyCNN on Fashion-MNIST with ffkit, read its accuracy layer by layer, plot it.

    python examples/quickstart.py [PLOTS_DIR]     # about 2 minutes on a 2-core CPU with the defaults

The notebook twin is examples/quickstart.ipynb (written from this file by examples/make_notebooks.py).
Environment variables: FFKIT_EXAMPLE_LIMIT (training images, default 10000; held-out and test images: at most
2000), FFKIT_EXAMPLE_EPOCHS (default 1), FFKIT_EXAMPLE_PLOTS (where the figures go, default plots/quickstart; the
PLOTS_DIR argument wins). The run directory is runs/quickstart. Fashion-MNIST is read from the Debian package
dataset-fashion-mnist or from $FFKIT_DATA_DIR; nothing is downloaded.
"""

# %% [markdown]
# # Quickstart: a Forward-Forward network on Fashion-MNIST
#
# **The idea.** Backpropagation trains a network through one loss at the output; every layer waits for the error
# signal to travel back through all the layers above it. A *Forward-Forward* (FF) network gives every layer its own
# **local** objective instead. Layer `l` receives the output of layer `l - 1` *detached* (no gradient flows back
# through it), computes a *goodness* from its own activity and minimises a loss on that goodness. No gradient ever
# crosses a layer boundary, so a layer can update as soon as its forward pass is done.
#
# **DeeperForward** (Sun et al., 2025), the network trained here, makes this work for convolutional networks:
#
# * each layer is a **channel-wise convolution** (`CWConv`) whose output channels are split into one group per
#   class; class `k` owns group `k`;
# * the **goodness** of class `k` is the mean activity of its group (`ffkit.goodness.mean(h, groups=K)`), so a layer
#   produces one score per class, and its local loss is a cross-entropy over those scores (`ffkit.losses.local_ce`);
# * the features passed on are group-normalised, so the next layer cannot simply read the previous goodness;
# * at test time each layer votes with its class scores; **SIP** picks, on held-out data, the contiguous range of
#   layers whose summed votes are most accurate, and later layers are never run.
#
# This notebook loads Fashion-MNIST, trains the 4-layer TinyCNN for one short epoch with `LocalTrainer`, reads the
# accuracy of every layer, of all layers together and of the SIP range, and draws the four standard plots.

# %%
import logging
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit import plotting
from ffkit.data import dataset_tensors
from ffkit.evaluation import collect_scores, layer_accuracies, range_accuracy, select_layers

logging.basicConfig(level=logging.INFO, format="%(message)s")  # show the trainers' per-epoch tables (ffkit.train)

LIMIT = int(os.environ.get("FFKIT_EXAMPLE_LIMIT", "10000"))  # training images (the test suite uses a few hundred)
EVAL_LIMIT = min(LIMIT, 2000)  # held-out and test images
EPOCHS = int(os.environ.get("FFKIT_EXAMPLE_EPOCHS", "1"))
PLOTS = Path(os.environ.get("FFKIT_EXAMPLE_PLOTS", "plots/quickstart"))
RUN_DIR = Path("runs/quickstart")
torch.manual_seed(0)

# %% [script]
if __name__ == "__main__":  # python examples/quickstart.py PLOTS_DIR
    import sys

    if len(sys.argv) > 1:
        PLOTS = Path(sys.argv[1])

# %% [markdown]
# ## The data
#
# `ffkit.load_dataset(name, split)` reads a dataset from local files through torchvision (it never downloads).
# Images come as `float32` tensors `[C, 32, 32]` in `[0, 1]`: Fashion-MNIST's 28x28 images are resized to 32x32.
# Besides `"test"`, the official training set is split into `"train"` and `"holdout"`; the held-out part is what
# SIP chooses layers on. We keep a slice of each in memory as tensors.

# %%
t0 = time.perf_counter()
x_train, y_train = dataset_tensors(ffkit.load_dataset("fashion-mnist", "train"), LIMIT)
x_hold, y_hold = dataset_tensors(ffkit.load_dataset("fashion-mnist", "holdout"), EVAL_LIMIT)
x_test, y_test = dataset_tensors(ffkit.load_dataset("fashion-mnist", "test"), EVAL_LIMIT)
print(f"train {tuple(x_train.shape)}, holdout {tuple(x_hold.shape)}, test {tuple(x_test.shape)} "
      f"({time.perf_counter() - t0:.1f} s)")

CLASSES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
fig, axes = plt.subplots(1, 8, figsize=(10, 1.8), layout="constrained")
for ax, img, label in zip(axes, x_train, y_train):
    ax.imshow(img[0], cmap="gray")
    ax.set_title(CLASSES[label], fontsize=9)
    ax.axis("off")
PLOTS.mkdir(parents=True, exist_ok=True)
fig.savefig(PLOTS / "samples.png", bbox_inches="tight")

# %% [markdown]
# ## The network
#
# `ffkit.create_model` builds a registered network by name (`ffkit models` lists them). DeeperForward's TinyCNN
# has four `CWConv` layers of 100, 200, 400 and 400 channels: 10, 20, 40 and 40 channels per class.

# %%
net = ffkit.create_model("deeperforward_tinycnn", in_channels=1)
print(net)
print(f"{sum(p.numel() for p in net.parameters()):,} parameters in {len(net)} layers")

# %% [markdown]
# ## Training with `LocalTrainer`
#
# `LocalTrainer` gives every layer its own Adam optimizer and cosine learning-rate schedule. One step runs the layers
# in order: layer `l` gets the detached features of layer `l - 1`, computes its loss, steps its own optimizer and
# frees its graph before layer `l + 1` runs.
#
# `trainer.fit` trains; after every epoch it runs SIP on the held-out loader, evaluates on the test loader, logs
# the per-layer table (on the `ffkit.train` logger, which the `logging.basicConfig` call above shows) and writes
# `metrics.json`, `metrics.csv` and `checkpoint.pt` to `out_dir`. It returns the history: one record per epoch, the
# same records `metrics.json` holds.

# %%
train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True, generator=torch.Generator())
holdout_loader = DataLoader(TensorDataset(x_hold, y_hold), batch_size=500)
test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=500)

trainer = ffkit.LocalTrainer(net, lr=0.005, total_steps=EPOCHS * len(train_loader))
history = trainer.fit(train_loader, epochs=EPOCHS, holdout=holdout_loader, test=test_loader, out_dir=RUN_DIR)

# %% [markdown]
# ## Reading the accuracy
#
# Every layer is a classifier of its own. The last epoch's record has the test accuracy of each layer, of all layers
# voting together (one forward pass: the class scores are summed over the layers) and of the range SIP chose.

# %%
test = history[-1]["test"]
for i, acc in enumerate(test["per_layer"]):
    print(f"layer {i + 1}: {100 * acc:.2f}%")
start, end = test["sip_range"]
print(f"all layers: {100 * test['all_layers']:.2f}%")
print(f"SIP layers {start + 1}..{end + 1}: {100 * test['sip']:.2f}%")

# %% [markdown]
# The same numbers from the evaluation parts. `collect_scores` runs the network once over a loader and keeps every
# layer's class scores `[L, N, K]`; every read-out is computed from them. `select_layers` is SIP: it scores every
# layer range on the held-out split.

# %%
collected = collect_scores(net, test_loader)  # .layers [L, N, K] scores, .labels [N]
print("per-layer test accuracy:", [round(100 * a, 2) for a in layer_accuracies(collected.layers, collected.labels)])
acc = range_accuracy(collected.layers, collected.labels, start, end)
print(f"layers {start + 1}..{end + 1}: {100 * acc:.2f}%")
held_out = collect_scores(net, holdout_loader)
sip = select_layers(held_out.layers, held_out.labels)
print(f"SIP on the held-out split chooses layers {sip.start + 1}..{sip.end + 1} "
      f"({100 * sip.accuracy:.2f}% held-out accuracy)")

# %% [markdown]
# ## Plots
#
# `ffkit.plotting` draws from the history (or from a run directory's `metrics.json`):
#
# * **per-layer test accuracy**, and that of all layers and of the SIP range;
# * **goodness of positive and negative data**: the score of the true class against the mean score of the wrong
#   classes, layer by layer; training pushes them apart;
# * the **deactivated-neuron ratio**: the share of each layer's units (ReLU outputs) that are 0 for every test
#   image;
# * the **SIP accuracy grid**: the test accuracy of every layer range `i..j` summed, with the range SIP chose on
#   the held-out split outlined.

# %%
fig, axes = plt.subplots(2, 2, figsize=(11, 8), layout="constrained")
plotting.plot_layer_accuracy(history, ax=axes[0, 0])
plotting.plot_goodness(history, ax=axes[0, 1])
plotting.plot_dead_neurons(history, ax=axes[1, 0])
plotting.plot_sip_grid(history, ax=axes[1, 1])
fig.savefig(PLOTS / "quickstart.png")
print(f"wrote {PLOTS / 'quickstart.png'}")

# %% [markdown]
# From the command line, `ffkit plot RUN_DIR` draws the same four plots from a run directory, one file each;
# `plotting.plot_run` is the function behind it.

# %%
for path in plotting.plot_run(RUN_DIR, out_dir=PLOTS):
    print("wrote", path)

# %% [markdown]
# ## Next
#
# * `ffkit train --model deeperforward_tinycnn --dataset fashion-mnist --epochs 1` is this run from the command line,
#   on the whole training set; `ffkit train --recipe deeperforward-tinycnn-fmnist` is the paper's 150-epoch recipe.
# * `build_your_own.ipynb` assembles a network from the parts; `ff_vs_backprop.ipynb` trains the same network with
#   backprop; `pipeline.ipynb` trains its layers as a pipeline of stages.
