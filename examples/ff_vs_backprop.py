"""Compare Forward-Forward training with backprop on the same network and the same data slice.

    python examples/ff_vs_backprop.py [PLOTS_DIR]     # about 2.5 minutes on a 2-core CPU with the defaults

DeeperForward's TinyCNN, from the same initial weights, trained three ways: FF (LocalTrainer), BP-DeepSup (the sum
of every layer's local loss back-propagated end to end) and single-head backprop (only the last layer's loss).
The notebook twin is examples/ff_vs_backprop.ipynb (written from this file by examples/make_notebooks.py).
Environment variables: FFKIT_EXAMPLE_LIMIT (training images, default 5000, as three networks are trained; test
images: at most 2000), FFKIT_EXAMPLE_EPOCHS (default 1), FFKIT_EXAMPLE_PLOTS (where the figures go, default
plots/ff_vs_backprop; the PLOTS_DIR argument wins).
"""

# %% [markdown]
# # Forward-Forward against backprop, on the same network
#
# FF and backprop can train *the same* layers; only the engine differs.
#
# * **FF** (`LocalTrainer`): every layer minimises its own loss on a *detached* input and steps its own optimizer.
#   Its backward computes weight gradients only (its input never requires grad), and each layer's graph is freed
#   before the next layer runs, so only one layer's activations are held at a time.
# * **BP-DeepSup** (`BackpropTrainer`, `deep_supervision=True`): the same per-layer losses, summed and
#   back-propagated end to end, so every layer also receives the gradients of the losses above it.
# * **Single-head backprop** (`deep_supervision=False`): only the last layer's loss is back-propagated: ordinary
#   backprop through the same backbone. Its prediction is the last layer's.
#
# We train all three from the *same initial weights* on the same batches, then compare test accuracy, time per
# training step and the activation memory a step holds for backward. One short epoch is far from convergence
# (DeeperForward trains 150): this shows how to run the comparison, not who wins in the end.

# %%
import copy
import logging
import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit import plotting
from ffkit.data import dataset_tensors

logging.basicConfig(level=logging.INFO, format="%(message)s")  # show the trainers' per-epoch tables (ffkit.train)

LIMIT = int(os.environ.get("FFKIT_EXAMPLE_LIMIT", "5000"))  # training images (the test suite uses a few hundred)
EVAL_LIMIT = min(LIMIT, 2000)  # test images
EPOCHS = int(os.environ.get("FFKIT_EXAMPLE_EPOCHS", "1"))
PLOTS = Path(os.environ.get("FFKIT_EXAMPLE_PLOTS", "plots/ff_vs_backprop"))
BATCH = 64
torch.manual_seed(0)

# %% [script]
if __name__ == "__main__":  # python examples/ff_vs_backprop.py PLOTS_DIR
    import sys

    if len(sys.argv) > 1:
        PLOTS = Path(sys.argv[1])

# %% [markdown]
# ## One network, three copies
#
# `copy.deepcopy` gives the three engines identical starting weights.

# %%
x_train, y_train = dataset_tensors(ffkit.load_dataset("fashion-mnist", "train"), LIMIT)
x_test, y_test = dataset_tensors(ffkit.load_dataset("fashion-mnist", "test"), EVAL_LIMIT)
test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=500)

initial = ffkit.create_model("deeperforward_tinycnn", in_channels=1)
steps = EPOCHS * -(-LIMIT // BATCH)  # batches per epoch (the last one may be short) x epochs


def make_trainer(engine: str, net):
    if engine == "FF":
        return ffkit.LocalTrainer(net, lr=0.005, total_steps=steps)
    # backprop: Adam at 1e-3, as ffkit's bp-* recipes
    return ffkit.BackpropTrainer(net, lr=1e-3, total_steps=steps, deep_supervision=engine == "BP-DeepSup")


ENGINES = ("FF", "BP-DeepSup", "BP single head")

# %% [markdown]
# ## Training
#
# Each engine sees the same batches in the same order: `fit` seeds the loader's shuffling per epoch.
# `ffkit.SavedTensorMeter` counts the bytes autograd saves for backward (weights excluded) while it is active; its
# peak over a run is the activation memory of the largest training step (evaluation saves nothing: it runs without
# gradients).

# %%
loader = DataLoader(TensorDataset(x_train, y_train), batch_size=BATCH, shuffle=True, generator=torch.Generator())
histories, memory_mb = {}, {}
for engine in ENGINES:
    print(f"--- {engine}")
    net = copy.deepcopy(initial)
    trainer = make_trainer(engine, net)
    with ffkit.SavedTensorMeter(exclude=net.parameters()) as meter:
        histories[engine] = trainer.fit(loader, epochs=EPOCHS, test=test_loader)
    memory_mb[engine] = meter.peak / 2**20

# %% [markdown]
# ## Side by side
#
# FF and BP-DeepSup predict with the summed class scores of all layers; single-head backprop trains only the last
# layer's read-out, so it predicts with that one. The time per step is the epoch's training time over its steps
# (the first step, which also warms up, is included).

# %%
accuracy, ms_per_step = {}, {}
for engine, hist in histories.items():
    test = hist[-1]["test"]
    accuracy[engine] = test["per_layer"][-1] if engine == "BP single head" else test["all_layers"]
    n_steps = sum(-(-r["train_images"] // BATCH) for r in hist)
    ms_per_step[engine] = 1000 * sum(r["train_seconds"] for r in hist) / n_steps
print(f"{'engine':15s} {'test acc':>9s} {'ms/step':>8s} {'act. MB':>8s}")
for engine in ENGINES:
    print(f"{engine:15s} {100 * accuracy[engine]:8.2f}% {ms_per_step[engine]:8.0f} {memory_mb[engine]:8.1f}")
print(f"FF step time / BP-DeepSup step time: {ms_per_step['FF'] / ms_per_step['BP-DeepSup']:.2f}")

# %%
PLOTS.mkdir(parents=True, exist_ok=True)
colors = ["tab:green", "tab:blue", "tab:gray"]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), layout="constrained")
for ax, values, title in (
    (axes[0], [100 * accuracy[e] for e in ENGINES], "test accuracy (%)"),
    (axes[1], [ms_per_step[e] for e in ENGINES], "time per training step (ms)"),
    (axes[2], [memory_mb[e] for e in ENGINES], "activation memory of a step (MB)"),
):
    bars = ax.bar(ENGINES, values, color=colors)
    ax.bar_label(bars, fmt="%.1f")
    ax.margins(y=0.15)
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8)
fig.savefig(PLOTS / "ff_vs_backprop.png")

# %% [markdown]
# Per-layer test accuracy of the FF and BP-DeepSup networks: with FF each layer is trained to be a classifier on
# its own; with BP-DeepSup the early layers also serve the later layers' losses.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
for ax, engine in zip(axes, ("FF", "BP-DeepSup")):
    plotting.plot_layer_accuracy(histories[engine], ax=ax)
    ax.set_title(engine)
fig.savefig(PLOTS / "per_layer_accuracy.png")

# %% [markdown]
# The same comparison from the command line: `ffkit train --model deeperforward_tinycnn --dataset fashion-mnist`
# and the same command with `--trainer backprop`. `benchmarks/step_throughput.py` and `benchmarks/memory.py` measure
# step time and memory on larger networks (see `docs/performance.md`).
