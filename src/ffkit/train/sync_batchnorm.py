"""BatchNorm statistics of the whole global batch across data-parallel ranks, on CUDA and on the CPU.

:func:`sync_batchnorm` swaps every ``BatchNorm1d``/``2d``/``3d`` of a module for a :class:`SyncBatchNorm`, which in
training mode normalises with the mean and variance of the samples of every rank of a process group and updates its
running statistics with them (the global mean and the unbiased global variance), as one process holding the whole
batch would.

On CUDA its forward is :class:`torch.nn.SyncBatchNorm`'s own. PyTorch's refuses CPU tensors (its statistics kernels
have no CPU implementation), so on the CPU each rank sums, per channel, its values, their squares and its count,
one ``all_reduce`` adds them up, and the normalisation is computed from the totals. That ``all_reduce`` is
differentiable: its backward sums the gradients of the statistics over the
ranks, so each rank's weight gradient also holds the part that its samples' statistics contributed to the other
ranks' losses, and the data-parallel average of the ranks' gradients is the gradient of the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["SyncBatchNorm", "sync_batchnorm"]


class SyncBatchNorm(nn.SyncBatchNorm):
    """:class:`torch.nn.SyncBatchNorm` that also synchronises CPU tensors (gloo).

    Input ``[N, C]``, ``[N, C, L]``, ``[N, C, H, W]`` or ``[N, C, D, H, W]``; output of the same shape and dtype. The
    statistics of a training-mode forward on a CPU tensor cover the ``N x (spatial)`` values per channel of every
    rank of ``process_group`` (the world by default); every rank must run the same forwards (and backwards) in the
    same order, as data-parallel training does. Evaluation mode, a world of one rank and other devices are
    :class:`torch.nn.SyncBatchNorm`'s.

    Parameters and buffers are those of a ``BatchNorm*d`` (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``), so its state_dict loads into the unconverted module and back.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and input.device.type == "cpu" and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        if group is None or dist.get_world_size(group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        return self._cpu_forward(input, group)

    def _cpu_forward(self, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        # The totals are float64: the variance is E[x^2] - E[x]^2, whose cancellation float32 would magnify.
        local = torch.cat([
            x.sum(dim=dims, dtype=torch.float64),
            x.square().sum(dim=dims, dtype=torch.float64),
            x.new_full((1,), x.numel() // channels, dtype=torch.float64),
        ])
        total = _SumOverRanks.apply(local, group)
        n = total[-1]
        count = int(n.item())
        if count < 2:
            raise ValueError(f"SyncBatchNorm needs more than one value per channel in a training batch over all "
                             f"ranks, got {count}")
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean.square()).clamp_min(0.0)  # biased, as BatchNorm normalises
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None  # tracked statistics come with their count
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        invstd = torch.rsqrt(var + self.eps)
        scale = invstd if self.weight is None else invstd * self.weight
        shift = -mean * scale if self.bias is None else self.bias - mean * scale
        shape = [1, channels] + [1] * (x.dim() - 2)
        return x * scale.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce`` (sum) whose backward sums the incoming gradients over the ranks too: the gradient of a rank's
    local statistics is what every rank's loss owes to them. (``torch.distributed.nn.functional.all_reduce`` does
    the same but is deprecated in torch 2.14.)"""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.contiguous().clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


def sync_batchnorm(module: nn.Module, group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every BatchNorm of ``module`` (``nn.BatchNorm1d``/``2d``/``3d``, including a
    :class:`torch.nn.SyncBatchNorm` of another group) by a :class:`SyncBatchNorm` over ``group`` (``None``: the
    world), in place.

    The new norms take over the old ones' parameters and buffers (the same tensors: device, dtype, values and any
    optimizer that holds them are kept) and their training mode, so the state_dict's keys and the parameter count do
    not change. Returns ``module``, or the new norm when ``module`` itself is a BatchNorm.

    Raises:
        TypeError: ``module`` is not an ``nn.Module`` or ``group`` not a process group.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}")
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _converted(module, group)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, _converted(child, group))
    return module


def _converted(norm: nn.modules.batchnorm._BatchNorm, group: dist.ProcessGroup | None) -> SyncBatchNorm:
    if type(norm) is SyncBatchNorm and norm.process_group is group:
        return norm
    # built on the meta device: its own parameters and buffers are replaced by the old norm's at once
    new = SyncBatchNorm(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, group,
                        device="meta", bias=norm.bias is not None)
    new.weight, new.bias = norm.weight, norm.bias
    new.running_mean, new.running_var = norm.running_mean, norm.running_var
    new.num_batches_tracked = norm.num_batches_tracked
    new.train(norm.training)
    return new
