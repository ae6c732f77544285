"""Run by tests under ``python -m torch.distributed.run``: ChapterTrainer (Pipeline-FF all-layers) on 2 ranks.

    python -m torch.distributed.run --nproc-per-node 2 tests/helpers/chapters_worker.py OUT.pt MODEL EPOCHS CHAPTER \
        [FAULT]

MODEL is ``deeperforward_tinycnn``, ``hinton_mlp`` (FixedNEG negatives, index batches) or ``hinton_mlp_head`` (the
same with Pipeline-FF's softmax layer). FAULT ``kill``: rank 1
SIGKILLs itself after training its first layer. With ``FFKIT_TEST_LOCAL_DATA=1`` each rank trains on its own half
of the data (``local_data=True``, Pipeline-FF's federated variant). Rank 0 writes the trained state_dict and the last
record to OUT.pt.
"""

import os
import signal
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from ffkit.models import create_model
from ffkit.train.chapters import ChapterTrainer
from ffkit.train.pipeline import init_distributed

torch.set_num_threads(1)
out, name, epochs, chapter = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fault = sys.argv[5] if len(sys.argv) > 5 else None
timeout = float(os.environ.get("FFKIT_TEST_TIMEOUT", "20"))
rank, world = init_distributed(timeout=timeout)
torch.manual_seed(0)
if name.startswith("hinton_mlp"):
    net = create_model("hinton_mlp", width_multiplier=0.1, negatives="fixed", head=name == "hinton_mlp_head")
else:
    net = create_model(name, width_multiplier=0.1, in_channels=3, dropout=0.0)
g = torch.Generator().manual_seed(1)
x = torch.randn(48, net.in_channels, 32, 32, generator=g)
y = torch.randint(0, 10, (48,), generator=g)
local = os.environ.get("FFKIT_TEST_LOCAL_DATA") == "1"
index = torch.arange(48)
if local:  # rank r: samples 24 r .. 24 r + 23
    x, y, index = x[24 * rank : 24 * rank + 24], y[24 * rank : 24 * rank + 24], index[24 * rank : 24 * rank + 24]
loader = DataLoader(TensorDataset(x, y, index), batch_size=8)
trainer = ChapterTrainer(net, chapter_batches=chapter, schedule="cosine", total_steps=6 * epochs, timeout=timeout,
                         local_data=local)

if fault == "kill" and rank == 1:
    real = trainer.inner.train_layers

    def dying(*a, **k):
        result = real(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    trainer.inner.train_layers = dying

for _ in range(epochs):
    record = trainer.train_epoch(loader)
if rank == 0:
    torch.save({"state": net.state_dict(), "record": record, "chapters_trained": trainer.chapters_trained}, out)
dist.destroy_process_group()
