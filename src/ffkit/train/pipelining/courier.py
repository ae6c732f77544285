"""Whole states (a layer with its optimizer and schedule, or a network) carried between ranks: serialised into one
byte message each, sent without waiting, received and broadcast with timeouts. Pipeline-FF's all-layers variant
moves its layers this way (``ChapterTrainer``). A courier knows ranks, devices and timeouts; nothing of a trainer."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from .._distributed import lost_peer, wait_work

__all__ = ["StateCourier"]


class StateCourier:
    """This rank's sends and receives of states, each a size header ``[1]`` int64 then the bytes ``[n]`` uint8.

    Serialising with ``torch.save`` keeps every dtype bit-exact (float weights, int64 counters, Adam's step) in one
    message; receiving loads with ``weights_only=True``, so a peer's message never runs code.

    Args:
        rank, world: this rank and the number of ranks.
        comm_device: where messages live (the CUDA device for NCCL, the CPU for gloo).
        load_device: where received states are loaded (``map_location``).
        timeout: seconds to wait for a peer before :class:`~ffkit.train.PipelineError`.
        role: how errors name this rank (``"chapter rank"`` gives ``"chapter rank 1 of 2 failed ..."``).
    """

    def __init__(self, *, rank: int, world: int, comm_device: torch.device, load_device: torch.device,
                 timeout: float, role: str) -> None:
        self.rank, self.world, self.timeout, self.role = rank, world, timeout, role
        self.comm_device, self.load_device = comm_device, load_device
        # Sends in flight: (works, tensors, peer). The tensors must outlive the works.
        self.pending: list[tuple[list[Any], list[torch.Tensor], int]] = []

    def what(self, what: str, peer: int) -> str:
        """The error text of a failure talking to ``peer``."""
        return f"{self.role} {self.rank} of {self.world} failed {what} (peer rank {peer})"

    def encode(self, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``state`` as a size header ``[1]`` int64 and its bytes ``[n]`` uint8, on the communication device."""
        buf = io.BytesIO()
        torch.save(state, buf)
        payload = torch.frombuffer(bytearray(buf.getbuffer()), dtype=torch.uint8).to(self.comm_device)
        header = torch.tensor([payload.numel()], dtype=torch.int64, device=self.comm_device)
        return header, payload

    def decode(self, payload: torch.Tensor) -> dict[str, Any]:
        return torch.load(io.BytesIO(payload.cpu().numpy().tobytes()), map_location=self.load_device,
                          weights_only=True)

    def send(self, state: dict[str, Any], dst: int, tag: int, what: str) -> None:
        """Post ``state`` to rank ``dst`` (tags ``tag`` and ``tag + 1``) without waiting for it to arrive."""
        header, payload = self.encode(state)
        with lost_peer(self.what(what, dst), self.timeout):
            works = [dist.isend(header, dst, tag=tag), dist.isend(payload, dst, tag=tag + 1)]
        self.pending.append((works, [header, payload], dst))
        # Completed sends release their buffers at once; the rest are waited for in flush().
        self.pending = [p for p in self.pending if not all(w.is_completed() for w in p[0])]

    def receive(self, src: int, tag: int, what: str) -> dict[str, Any]:
        """The state rank ``src`` sent with :meth:`send` under ``tag``."""
        header = torch.zeros(1, dtype=torch.int64, device=self.comm_device)
        self.wait([self._p2p(dist.irecv, header, src, tag, what)], src, what)
        payload = torch.empty(int(header.item()), dtype=torch.uint8, device=self.comm_device)
        self.wait([self._p2p(dist.irecv, payload, src, tag + 1, what)], src, what)
        return self.decode(payload)

    def broadcast(self, state: dict[str, Any] | None, src: int, what: str) -> dict[str, Any] | None:
        """Rank ``src`` sends ``state`` to every rank; the others return it (``src`` returns ``None``)."""
        if self.rank == src:
            assert state is not None
            header, payload = self.encode(state)
        else:
            header = torch.zeros(1, dtype=torch.int64, device=self.comm_device)
        self.collective(what, src, dist.broadcast, header, src=src)
        if self.rank != src:
            payload = torch.empty(int(header.item()), dtype=torch.uint8, device=self.comm_device)
        self.collective(what, src, dist.broadcast, payload, src=src)
        return None if self.rank == src else self.decode(payload)

    def collective(self, what: str, peer: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run the collective ``fn`` asynchronously and wait for it within the timeout."""
        with lost_peer(self.what(what, peer), self.timeout):
            work = fn(*args, async_op=True, **kwargs)
        self.wait([work], peer, what)

    def flush(self, what: str) -> None:
        """Wait for every send still in flight (``what`` names them in a timeout's error)."""
        while self.pending:
            works, _, dst = self.pending.pop(0)
            self.wait(works, dst, what.format(dst=dst))

    def wait(self, works: list[Any], peer: int, what: str) -> None:
        for w in works:
            wait_work(w, self.timeout, self.what(what, peer))

    def _p2p(self, op: Callable[..., Any], tensor: torch.Tensor, peer: int, tag: int, what: str) -> Any:
        with lost_peer(self.what(what, peer), self.timeout):
            return op(tensor, peer, tag=tag)
