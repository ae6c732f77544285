"""Parameters and optimizer states sharded over data-parallel ranks with PyTorch's FSDP2 (``fully_shard``), and the
conversions between those shards and the whole-network checkpoints of a single process.

Each module given to :func:`shard_modules` (a layer, the classifier head) becomes its own FSDP unit on a 1-D device
mesh over the ranks: its parameters become DTensors cut along dim 0 (rank ``r`` holds rows ``r`` of ``world``
chunks), its forward all-gathers them and frees the gathered copy after it, its backward gathers them again and
reduce-scatters (averages) the gradients, so each rank holds and steps only its shard of the gradients and of the
optimizer state. Scalar parameters (FSDP2 cannot cut them) stay whole on every rank, as do parameters outside the
sharded modules (a learned label encoder); the data-parallel trainer averages their gradients itself.

The helpers here are collectives where they say so: every rank must call them in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .schedules import is_sharded, local_shards

__all__ = ["shard_modules", "full_network_state", "full_optimizer_state", "accept_full_states", "unsharded",
           "local_bytes"]


def shard_modules(modules: Sequence[nn.Module], device_type: str, world: int) -> list[nn.Module]:
    """``fully_shard`` each of ``modules`` that has a parameter to shard, in place, on a 1-D mesh of ``world`` ranks
    of ``device_type`` (``"cpu"`` with gloo, ``"cuda"`` with NCCL). Scalar parameters are left whole (FSDP2 shards
    along dim 0). Returns the modules sharded. A collective (the mesh)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (world,))
    done = []
    for module in modules:
        params = list(module.parameters())
        whole = {p for p in params if p.dim() == 0}
        if len(whole) == len(params):
            continue
        fully_shard(module, mesh=mesh, ignored_params=whole or None)
        done.append(module)
    return done


def full_network_state(network: nn.Module) -> dict[str, Any]:
    """``network.state_dict()`` with every sharded entry all-gathered into a whole CPU tensor (a collective: each
    sharded tensor is gathered in the state_dict's order, the same on every rank); other entries as they are."""
    return {k: _whole(v) for k, v in network.state_dict().items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor (Adam's moments) all-gathered into a whole CPU
    tensor: the state a single process's optimizer over the whole parameters would have (a collective)."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: _whole(v) for k, v in s.items()} for i, s in state["state"].items()}
    return state


def _whole(value: Any) -> Any:
    if is_sharded(value):
        return value.full_tensor().cpu()
    return value


def accept_full_states(network: nn.Module, optimizers: Sequence[torch.optim.Optimizer | None]) -> None:
    """Let ``network.load_state_dict`` and each optimizer's ``load_state_dict`` take whole tensors (a single-process
    checkpoint) for sharded parameters and states: each rank keeps its own shard of them (no communication)."""
    params = dict(network.named_parameters())

    def take_shards(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        for key, value in list(state_dict.items()):
            p = params.get(key[len(prefix):]) if key.startswith(prefix) else None
            if p is not None and is_sharded(p) and isinstance(value, torch.Tensor) and not is_sharded(value):
                state_dict[key] = _shard_like(value, p)

    network.register_load_state_dict_pre_hook(take_shards)
    for opt in optimizers:
        if opt is not None:
            opt.register_load_state_dict_post_hook(_shard_optimizer_state)


def _shard_like(value: torch.Tensor, param: Any) -> Any:
    """This rank's shard of the whole tensor ``value``, placed as ``param`` (a DTensor) is."""
    from torch.distributed.tensor import distribute_tensor

    value = value.to(device=param.device, dtype=param.dtype)
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)  # each rank cuts its own


def _shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or not is_sharded(p):
                continue
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and not is_sharded(v) and v.shape == p.shape:
                    state[k] = _shard_like(v, p)


@contextlib.contextmanager
def unsharded(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Hold the whole parameters of the sharded ``modules`` for the scope (a collective on entering: one all-gather
    per module, in order), so that their forwards inside need no collective: ranks may then run different numbers
    of forwards (each scoring its own share of an evaluation). Resharded on leaving."""
    for m in modules:
        m.set_reshard_after_forward(False)  # type: ignore[operator]
    try:
        for m in modules:
            m.unshard()  # type: ignore[operator]
        yield
    finally:
        for m in modules:
            m.reshard()  # type: ignore[operator]
            m.set_reshard_after_forward(True)  # type: ignore[operator]


def local_bytes(network: nn.Module, optimizers: Sequence[torch.optim.Optimizer | None]) -> dict[str, int]:
    """Bytes this rank holds of the network's parameters, their gradients and the optimizers' states (of a sharded
    tensor, its local shard): ``{"parameters", "gradients", "optimizer_state", "total"}``."""
    params = list(network.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    states = [v for opt in optimizers if opt is not None for s in opt.state.values() for v in s.values()
              if isinstance(v, torch.Tensor)]

    def size(tensors: Sequence[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in local_shards(tensors))

    out = {"parameters": size(params), "gradients": size(grads), "optimizer_state": size(states)}
    out["total"] = sum(out.values())
    return out
