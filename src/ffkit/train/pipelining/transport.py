"""The channels between the ranks of a distributed pipeline: what a stage sends its successor for one batch (features,
labels, residual shortcuts and, for a shared layer, the features of its part), over ``torch.distributed``
point-to-point operations posted ahead. A link knows ranks, devices, shapes and timeouts; nothing of a trainer."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .._distributed import lost_peer, wait_work

__all__ = ["Link", "exchange_shapes", "BATCH", "EPOCH_END", "STOP"]

#: Message kinds in a header: a batch, the end of an epoch, the end of training.
BATCH, EPOCH_END, STOP = 0, 1, 2


class Link:
    """This rank's point-to-point channels: a ring of receive buffers posted ahead, and sends kept until done.

    When this stage shares a layer with the previous one, each slot of the ring has a second part, posted after the
    first: the previous stage's features of its part of the shared layer, which it sends after the gradient exchange.
    Messages between two ranks are matched in the order they were posted, so the two parts never cross."""

    def __init__(self, *, rank: int, world: int, device: torch.device, timeout: float, ring: int,
                 shapes: list[dict[str, Any]], prev: int | None, nxt: int | None,
                 ranks: list[int] | None = None) -> None:
        self.rank, self.world, self.device, self.timeout = rank, world, device, timeout
        self.prev, self.nxt = prev, nxt
        # The process of each stage: stage k is rank k, unless this pipeline is one replica of a hybrid (data x
        # pipeline) job, whose stages are ranks of a bigger world.
        self.ranks = list(range(world)) if ranks is None else list(ranks)
        job = world if ranks is None else dist.get_world_size()
        self.me = f"pipeline stage {rank} (rank {self.ranks[rank]} of {job})"
        self.prev_rank = self.ranks[prev] if prev is not None else None
        self.next_rank = self.ranks[nxt] if nxt is not None else None
        self.ring = max(2, ring)
        self.pending: list[tuple[list, list]] = []
        self.slots: list[dict[str, Any]] = []
        self.received = 0
        self.batch_size = 0
        self.shapes = shapes
        self.parts = 2 if nxt is not None and self.shapes[rank]["share"] is not None else 1
        if prev is not None:
            spec = self.shapes[prev]
            self.batch_size = spec["batch_size"]
            for _ in range(self.ring):
                self.slots.append(self._alloc(spec))
            for slot in self.slots:
                self._post(slot)

    def _alloc(self, spec: dict[str, Any]) -> dict[str, Any]:
        dev = self.device
        return {
            "header": torch.zeros(3, dtype=torch.int64, device=dev),
            "h": torch.empty(spec["h"], dtype=spec["dtype"], device=dev),
            "y": torch.empty(spec["y"], dtype=torch.int64, device=dev),
            "sc": {s: torch.empty(shape, dtype=spec["dtype"], device=dev) for s, shape in spec["sc"].items()},
            "share": None if spec["share"] is None else torch.empty(spec["share"], dtype=spec["dtype"], device=dev),
        }

    def _tensors(self, slot) -> list[torch.Tensor]:
        return [slot["header"], slot["h"], slot["y"], *(slot["sc"][s] for s in sorted(slot["sc"]))]

    def _post(self, slot) -> None:
        with lost_peer(f"{self.me} lost the previous stage (rank {self.prev_rank}) while posting a receive",
                        self.timeout):
            slot["works"] = dist.batch_isend_irecv([dist.P2POp(dist.irecv, t, self.prev_rank)
                                                    for t in self._tensors(slot)])
            if slot["share"] is not None:
                slot["share_works"] = dist.batch_isend_irecv([dist.P2POp(dist.irecv, slot["share"],
                                                                         self.prev_rank)])

    def _wait_recv(self, works) -> None:
        for w in works:
            wait_work(w, self.timeout, f"{self.me} lost the previous stage (rank {self.prev_rank}) while waiting "
                  f"for its next batch")

    def recv(self):
        slot = self.slots[self.received % self.ring]
        self._wait_recv(slot["works"])
        kind = int(slot["header"][0])
        # The layers read h and y during the step; clone so the slot can be posted again at once.
        h, y = slot["h"].clone(), slot["y"].clone()
        sc = {s: v.clone() for s, v in slot["sc"].items()}
        if slot["share"] is None or kind != BATCH:
            self._release(slot, kind)
        return kind, h, y, sc

    def recv_share(self) -> torch.Tensor:
        """The previous stage's features of its part of the shared layer, for the batch :meth:`recv` returned."""
        slot = self.slots[self.received % self.ring]
        self._wait_recv(slot["share_works"])
        feats = slot["share"].clone()
        self._release(slot, BATCH)
        return feats

    def _release(self, slot, kind: int) -> None:
        if slot["share"] is not None and kind != BATCH:  # a control message's placeholder: nothing to read
            self._wait_recv(slot["share_works"])
        self.received += 1
        if kind != STOP:  # after STOP nothing more comes: leave no receive posted
            self._post(slot)

    def check_batch(self, h: torch.Tensor, y: torch.Tensor, b: int) -> None:
        spec = self.shapes[0]
        if tuple(h.shape) != tuple(spec["h_in"]) or b != spec["batch_size"]:
            raise ValueError(f"PipelineTrainer needs batches of one size ({spec['batch_size']}): use "
                             f"DataLoader(drop_last=True); got a batch of {b}")

    def send(self, kind: int, h=None, y=None, sc=None) -> None:
        if self.nxt is None:
            return
        spec = self.shapes[self.rank]
        dev = self.device
        control = h is None
        if control:  # the payload keeps its shapes so the receiver's posted buffers match
            h = torch.zeros(spec["h"], dtype=spec["dtype"], device=dev)
            y = torch.zeros(spec["y"], dtype=torch.int64, device=dev)
            sc = {s: torch.zeros(shape, dtype=spec["dtype"], device=dev) for s, shape in spec["sc"].items()}
        header = torch.tensor([kind, 0, 0], dtype=torch.int64, device=dev)
        self._isend([header, h.contiguous(), y.to(torch.int64), *(sc[s].contiguous() for s in sorted(sc))])
        if control and spec["share"] is not None:
            self.send_share(torch.zeros(spec["share"], dtype=spec["dtype"], device=dev))

    def send_share(self, feats: torch.Tensor) -> None:
        """This stage's features of its part of the layer it shares with the next stage."""
        self._isend([feats.contiguous()])

    def _isend(self, tensors: list[torch.Tensor]) -> None:
        # gloo may report a peer that stopped reading at the send itself, not only at the wait
        with lost_peer(f"{self.me} lost the next stage (rank {self.next_rank}) while sending it a batch",
                        self.timeout):
            works = dist.batch_isend_irecv([dist.P2POp(dist.isend, t, self.next_rank) for t in tensors])
        self.pending.append((works, tensors))
        while len(self.pending) > self.ring * self.parts:  # wait on a send only when its buffers would be reused
            self._wait_send(self.pending.pop(0))

    def _wait_send(self, item) -> None:
        for w in item[0]:
            wait_work(w, self.timeout, f"{self.me} lost the next stage (rank {self.next_rank}) while sending it a "
                  f"batch")

    def flush(self) -> None:
        while self.pending:
            self._wait_send(self.pending.pop(0))


def exchange_shapes(rank: int, world: int, spec: list[dict[str, Any]] | None, timeout: float,
                    group: dist.ProcessGroup | None = None) -> list[dict[str, Any]]:
    """Every rank learns what each stage sends for one batch (``spec``, measured by rank 0 in one no-grad pass:
    feature, label and shortcut shapes and the dtype): rank 0 broadcasts it (to the stages of its own pipeline
    ``group``; ``None``: the whole world)."""
    box: list[Any] = [None]
    if rank == 0:
        assert spec is not None, "rank 0 measures the shapes before the link is built"
        box[0] = [{**d, "dtype": str(d["dtype"]).replace("torch.", "")} for d in spec]
    with lost_peer(f"pipeline rank {rank} of {world} lost rank 0 while receiving the stage shapes", timeout):
        dist.broadcast_object_list(box, group=group, group_src=0)
    return [{**d, "dtype": getattr(torch, d["dtype"])} for d in box[0]]
