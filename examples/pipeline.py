"""Pipeline training: an FF network's layers trained as two stages at once, with the same weights as the plain loop.

    python examples/pipeline.py [PLOTS_DIR]     # about 70 seconds on a 2-core CPU with the defaults

The notebook twin is examples/pipeline.ipynb (written from this file by examples/make_notebooks.py).
Environment variables: FFKIT_EXAMPLE_LIMIT (training images, default 10000; held-out and test images: at most
2000), FFKIT_EXAMPLE_EPOCHS (default 1), FFKIT_EXAMPLE_PLOTS (where the figures go, default plots/pipeline; the
PLOTS_DIR argument wins). For one process per stage (and several machines) use torchrun: see docs/pipeline.md.
"""

# %% [markdown]
# # Pipeline training
#
# No gradient crosses a layer boundary in an FF network, so its layers can be cut into **stages** of consecutive
# layers that train *at the same time*: while stage 2 updates its layers on batch `i`, stage 1 already updates its
# layers on batch `i + 1` (DeeperForward Sec. 3.3, Pipeline-FF). With backprop this is impossible without changing
# the algorithm: stage 1 would have to wait for stage 2's gradients.
#
# It also changes nothing about *what* is learned. In the plain loop, every layer has had `i - 1` updates when it
# computes batch `i`: layer `l - 1` computes its features of batch `i` and only then takes its update on it, and
# layer `l` trains on those features. In the pipeline, stage 2 receives batch `i` computed by stage 1's layers after
# exactly `i - 1` updates too. So `PipelineTrainer` reproduces `LocalTrainer`'s weights, whatever the number
# of batches in flight. The only exception is dropout: each stage draws its masks from its own random stream.
#
# `PipelineTrainer(net, stages=2, backend="threads")` runs the stages as threads of one process (this notebook);
# `backend="distributed"` runs one process per stage under `torchrun`, on one machine or several.

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
from ffkit.train import LocalTrainer, PipelineTrainer

logging.basicConfig(level=logging.INFO, format="%(message)s")  # show the trainers' per-epoch tables (ffkit.train)

LIMIT = int(os.environ.get("FFKIT_EXAMPLE_LIMIT", "10000"))  # training images (the test suite uses a few hundred)
EVAL_LIMIT = min(LIMIT, 2000)  # held-out and test images
EPOCHS = int(os.environ.get("FFKIT_EXAMPLE_EPOCHS", "1"))
PLOTS = Path(os.environ.get("FFKIT_EXAMPLE_PLOTS", "plots/pipeline"))
BATCH = 64
torch.manual_seed(0)

# %% [script]
if __name__ == "__main__":  # python examples/pipeline.py PLOTS_DIR
    import sys

    if len(sys.argv) > 1:
        PLOTS = Path(sys.argv[1])

# %%
x_train, y_train = dataset_tensors(ffkit.load_dataset("fashion-mnist", "train"), LIMIT)
x_hold, y_hold = dataset_tensors(ffkit.load_dataset("fashion-mnist", "holdout"), EVAL_LIMIT)
x_test, y_test = dataset_tensors(ffkit.load_dataset("fashion-mnist", "test"), EVAL_LIMIT)

# %% [markdown]
# ## Same weights as the sequential loop
#
# Two copies of TinyCNN with the same initial weights (dropout off, so that the random streams do not matter). One
# trains with `LocalTrainer` on a few batches. The other trains with a 2-stage `PipelineTrainer`: layers 1-2 in the
# first stage and 3-4 in the second (`stages=(0, 2)`: the stages' first layers). First with one batch in flight
# (`train_step`: each batch goes through both stages before the next one starts), then with the stages working
# concurrently (`train_epoch`: up to `queue_size` batches wait between the stages).

# %%
check_batches = [(x_train[i : i + 32], y_train[i : i + 32]) for i in range(0, 4 * 32, 32)]


def fresh_net():
    torch.manual_seed(1)
    return ffkit.create_model("deeperforward_tinycnn", in_channels=1, dropout=0.0)


def max_weight_difference(a, b) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


reference = fresh_net()
local = LocalTrainer(reference, lr=0.005, total_steps=len(check_batches))
for xb, yb in check_batches:
    local.train_step(xb, yb)

one_in_flight = fresh_net()
pipe = PipelineTrainer(one_in_flight, stages=(0, 2), backend="threads", lr=0.005, total_steps=len(check_batches))
for xb, yb in check_batches:
    pipe.train_step(xb, yb)
print("stages (first, last layer):", pipe.stage_ranges)
print(f"1 batch in flight:   max |weight difference| = {max_weight_difference(reference, one_in_flight):.3g}")

concurrent = fresh_net()
pipe = PipelineTrainer(concurrent, stages=(0, 2), backend="threads", queue_size=2, lr=0.005,
                       total_steps=len(check_batches))
pipe.train_epoch(check_batches)
print(f"stages concurrently: max |weight difference| = {max_weight_difference(reference, concurrent):.3g}")

# %% [markdown]
# Both differences are exactly 0: the pipeline computes the same updates as the loop, only at the same time.
#
# ## A short pipelined run
#
# Now a real run: TinyCNN with its dropout, trained by a 2-stage pipeline with `fit`, which after each epoch runs SIP
# on the held-out split and evaluates on the test split, as `LocalTrainer.fit` does. Every batch must have the same
# size (a stage prepares its receives ahead), so the loader drops the last incomplete batch.
#
# With `stages=2` (a number) the trainer profiles every layer's step on the first batch and cuts where the slowest
# stage is fastest; for TinyCNN that is the `(0, 2)` split used here, given directly to skip the profiling.
# Every epoch record has `stage_busy_seconds`: the time each stage spent on its own work.

# %%
loader = DataLoader(TensorDataset(x_train, y_train), batch_size=BATCH, shuffle=True, drop_last=True,
                    generator=torch.Generator())
holdout_loader = DataLoader(TensorDataset(x_hold, y_hold), batch_size=500)
test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=500)

torch.manual_seed(0)
net = ffkit.create_model("deeperforward_tinycnn", in_channels=1)
trainer = PipelineTrainer(net, stages=(0, 2), backend="threads", lr=0.005, total_steps=EPOCHS * len(loader))
began = time.perf_counter()
history = trainer.fit(loader, epochs=EPOCHS, holdout=holdout_loader, test=test_loader)
print(f"wall time {time.perf_counter() - began:.1f} s")

# %%
last = history[-1]
busy = last["stage_busy_seconds"]
print(f"training took {last['train_seconds']:.1f} s; stage busy seconds: {[round(s, 1) for s in busy]}")
print(f"test accuracy: all layers {100 * last['test']['all_layers']:.2f}%, SIP {100 * last['test']['sip']:.2f}%")

PLOTS.mkdir(parents=True, exist_ok=True)
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
plotting.plot_layer_accuracy(history, ax=axes[0])
axes[1].bar([f"stage {k + 1}\nlayers {a + 1}-{b + 1}" for k, (a, b) in enumerate(last["stages"])], busy,
            color=["tab:blue", "tab:orange"])
axes[1].axhline(last["train_seconds"], color="gray", linestyle="--", label="epoch wall time")
axes[1].set_ylabel("busy seconds")
axes[1].set_title("each stage's own work")
axes[1].legend()
fig.savefig(PLOTS / "pipeline.png")

# %% [markdown]
# Here the two stages are threads of one process. They share this machine's cores with PyTorch's own intra-op
# threads, so how much they gain over `LocalTrainer` depends on how busy each keeps the cores; busy times close to
# the epoch's wall time mean both stages worked nearly all the time. One process per stage is the dependable way:
# on a 2-core CPU a 2-process pipeline (`torchrun --nproc-per-node 2 -m ffkit train --model deeperforward_tinycnn
# --dataset fashion-mnist --pipeline`) trains TinyCNN 1.73x faster than one process (`docs/pipeline.md`). On GPUs,
# `devices=["cuda:0", "cuda:1"]` gives each thread-stage its own device.
