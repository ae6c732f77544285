"""Measuring activation memory: the bytes autograd holds for backward, on any device.

:class:`SavedTensorMeter` counts what ``torch.autograd.graph.saved_tensors_hooks`` sees: every tensor an autograd
node saves for its backward while the meter is active, deduplicated by storage, until the node releases it. On CPU
this is the figure that separates training algorithms by memory (Forward-Forward frees each layer's graph before the
next layer runs; backprop keeps every layer's until the backward pass), without depending on the allocator.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from types import TracebackType

import torch

__all__ = ["SavedTensorMeter"]


def _storage_key(t: torch.Tensor) -> tuple:
    """Identity and size of the memory a saved tensor keeps alive: ``((device, data_ptr, nbytes), nbytes)``.

    A saved view keeps its whole storage alive, so the storage (not the view) is what is counted.
    """
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts: count the tensor itself
        nbytes = t.numel() * t.element_size()
        return ("tensor", id(t), nbytes), nbytes
    nbytes = storage.nbytes()
    return (str(t.device), storage.data_ptr(), nbytes), nbytes


class _Packed:
    """What the autograd graph holds instead of a saved tensor; its finalizer releases the tensor's bytes."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class SavedTensorMeter:
    """Context manager counting the bytes autograd saves for backward: ``current`` now, ``peak`` at most.

    While active, every tensor an autograd node saves (inputs of a matmul or conv, outputs of a ReLU, a custom
    ``Function``'s ``save_for_backward``) is counted by the size of its storage. A storage saved by several nodes
    (or through several views) counts once. Its bytes are released when the last node holding it drops it: after
    ``backward()`` frees the graph, or when the graph is garbage, even after the ``with`` block has exited. Tensors
    sharing storage with ``exclude`` (e.g. ``model.parameters()``: weights are not activations) are not counted.

    Only saves made while the meter is active and not shadowed by inner hooks are seen: the tensors that
    ``torch.utils.checkpoint(use_reentrant=False)`` recomputes during backward go through checkpoint's own hooks
    and are invisible here. Memory that is not saved for backward (gradients, optimizer state, tensors a caller keeps
    alive) is not counted either.

    Args:
        exclude: tensors whose storages are never counted.

    Attributes:
        current: bytes held for backward now.
        peak: the largest ``current`` since the meter was created or :meth:`reset_peak` was called.

    Example::

        with SavedTensorMeter(exclude=model.parameters()) as meter:
            loss = model(x).sum()
        loss.backward()
        print(meter.peak, meter.current)  # meter.current is 0 again
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        if isinstance(exclude, torch.Tensor):
            exclude = [exclude]
        try:
            tensors = list(exclude)
        except TypeError:
            raise TypeError(f"exclude must be an iterable of tensors, got {type(exclude).__name__}") from None
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"exclude[{i}] must be a tensor, got {type(t).__name__}")
        self._excluded = {_storage_key(t)[0] for t in tensors}
        self._refs: dict[tuple, int] = {}  # storage key -> number of graph references alive
        self.current = 0
        self.peak = 0
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def reset_peak(self) -> None:
        """Start a new peak from the bytes held now."""
        self.peak = self.current

    def __enter__(self) -> SavedTensorMeter:
        if self._hooks is not None:
            raise RuntimeError("this SavedTensorMeter is already active; it cannot be entered twice")
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.__exit__(exc_type, exc, tb)

    def _pack(self, t: torch.Tensor) -> torch.Tensor | _Packed:
        key, nbytes = _storage_key(t)
        if key in self._excluded:
            return t
        # A detached alias keeps the storage without the grad_fn: packing an op's own output with its grad_fn would
        # make a reference cycle (output -> node -> packed -> output) that only the garbage collector could free.
        packed = _Packed(t.detach())
        n = self._refs.get(key, 0)
        self._refs[key] = n + 1
        if n == 0:
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        weakref.finalize(packed, self._release, key, nbytes)
        return packed

    @staticmethod
    def _unpack(packed: torch.Tensor | _Packed) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Packed) else packed

    def _release(self, key: tuple, nbytes: int) -> None:
        n = self._refs[key] - 1
        if n:
            self._refs[key] = n
        else:
            del self._refs[key]
            self.current -= nbytes

    def __repr__(self) -> str:
        return f"SavedTensorMeter(current={self.current}, peak={self.peak})"
