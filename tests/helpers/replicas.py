"""What the data-parallel and hybrid tests and their torchrun workers share: small networks, the global batches every
rank takes its part of, and the weights ``LocalTrainer`` reaches on the whole batches (the reference they must equal).

Workers run as scripts (``tests/helpers`` is then on ``sys.path``) and import it as ``replicas``; tests import it as
``helpers.replicas``.
"""

from __future__ import annotations

import torch

import ffkit
from ffkit.models import create_model

#: Small versions of the networks the multi-process tests train (a few seconds per step on one thread).
SMALL = {
    "deeperforward_tinycnn": {"width_multiplier": 0.1, "in_channels": 3, "dropout": 0.0},
    "deeperforward_resnet17": {"width_multiplier": 0.1, "in_channels": 3, "dropout": 0.0},
    "hinton_mlp": {"width_multiplier": 0.1, "negatives": "fixed"},
    "cwcomp_cnn": {"width_multiplier": 0.25},
    "trifecta_shallow": {"width_multiplier": 0.25, "negatives": "fixed"},
    "dtg_vgg8": {"width_multiplier": 0.1, "dropout": 0.0, "head_dropout": 0.0, "in_channels": 3},
}
#: Global batches of this many samples, five of them: each rank or replica takes its part of every one.
GLOBAL_BATCH, BATCHES = 16, 5


def small_model(name: str, seed: int = 0, **overrides) -> ffkit.FFNetwork:
    """``name`` at its small size (:data:`SMALL`, then ``overrides``), initialised from ``seed``."""
    torch.manual_seed(seed)
    return create_model(name, **{**SMALL[name], **overrides})


def global_batches(channels: int, n: int = GLOBAL_BATCH * BATCHES, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random images ``[n, channels, 32, 32]`` and labels ``[n]``, the same in every process."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def local_reference(name: str, **overrides) -> ffkit.FFNetwork:
    """The network after ``LocalTrainer``'s five Adam steps (lr 0.01, constant) on the whole global batches, in
    float64, from the seed-0 start that the multi-process runs broadcast from rank 0."""
    net = small_model(name, **overrides).double()
    x, y = global_batches(net.in_channels)
    x = x.double()
    trainer = ffkit.LocalTrainer(net, lr=0.01, schedule="constant", device="cpu")
    for b in range(BATCHES):
        rows = slice(b * GLOBAL_BATCH, (b + 1) * GLOBAL_BATCH)
        trainer.train_step(x[rows], y[rows], torch.arange(rows.start, rows.stop))
    return net


def largest_difference(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between the floating-point entries of two state_dicts (in float64)."""
    return max(float((got[k].double() - v.double()).abs().max()) for k, v in want.items()
               if v.is_floating_point() and v.numel())
