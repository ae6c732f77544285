"""How batches move through a pipeline's stages: all stages as threads of one process, or this rank's stage in a
pipeline of processes. A schedule drives :class:`~.stage.Stage` steps and a :class:`~.transport.Link`; it knows
neither the trainer nor its checkpoints. ``prepare(x, y, index) -> (inputs, y, batch_size)`` turns a loader's batch
into the first stage's input (the objective's preparation: labels embedded, negatives drawn)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from .._distributed import PipelineError
from .stage import Stage, merge_samples, sample_rows, take_samples
from .transport import BATCH, EPOCH_END, STOP, Link, exchange_shapes

__all__ = ["Prepare", "run_threads", "DistributedSchedule"]

#: ``prepare(x, y, index) -> (inputs, y, batch_size)``: a loader's batch made into the first stage's input.
Prepare = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor, int]]


def stage_error(k: int, e: BaseException) -> BaseException:
    """A stage's failure as the caller should see it: the user's own errors as they are, the rest as a
    :class:`PipelineError` naming the stage."""
    if isinstance(e, (ValueError, TypeError, FloatingPointError)):
        return e
    return PipelineError(f"pipeline stage {k} failed: {type(e).__name__}: {e}")


def run_threads(
    stages: list[Stage],
    batches: Iterable,
    prepare: Prepare,
    *,
    concurrent: bool,
    queue_size: int,
    timeout: float,
) -> None:
    """Every stage in a thread of this process (a CUDA stream each on GPU), handing each batch's features, labels and
    shortcuts on through bounded queues of ``queue_size``. With ``concurrent=False`` the stages run one after the
    other on each batch (one batch in flight). A stage that waits more than ``timeout`` seconds for the one before it
    raises :class:`PipelineError`; any stage's error stops every thread and is raised here."""
    if not concurrent:
        for x, y, index in batches:
            h, y, b = prepare(x, y, index)
            sc: dict[int, torch.Tensor] = {}
            for st in stages:
                h, sc = st.step(h.to(st.device), y.to(st.device), b, {k: v.to(st.device) for k, v in sc.items()})
        return
    queues: list[queue.Queue] = [queue.Queue(maxsize=queue_size) for _ in range(len(stages) - 1)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def put(q: queue.Queue, item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(q: queue.Queue, k: int):
        waited = 0.0
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                waited += 0.1
                if waited > timeout:
                    raise PipelineError(f"stage {k} waited {timeout:.0f} s for stage {k - 1}") from None
        return None

    def worker(k: int) -> None:
        st = stages[k]
        stream = torch.cuda.Stream(st.device) if st.device.type == "cuda" else None
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                while True:
                    if k == 0:
                        item = next(source, None)
                        if item is None:
                            break
                        began = time.perf_counter()
                        h, y, b = prepare(*item)
                        st.busy += time.perf_counter() - began
                        sc: dict[int, torch.Tensor] = {}
                    else:
                        item = get(queues[k - 1], k)
                        if item is None:
                            break
                        h, y, b, sc = item
                        h, y = h.to(st.device, non_blocking=True), y.to(st.device, non_blocking=True)
                        sc = {s: v.to(st.device, non_blocking=True) for s, v in sc.items()}
                        if stream is not None:  # the tensors were produced on the previous stage's stream
                            stream.wait_stream(torch.cuda.default_stream(st.device))
                    h, sc = st.step(h, y, b, sc)
                    if k < len(stages) - 1:
                        if stream is not None:
                            stream.synchronize()
                        put(queues[k], (h, y, b, sc))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller with the stage named
            errors.append(e if isinstance(e, PipelineError) else stage_error(k, e))
            stop.set()
        finally:
            if k < len(stages) - 1 and not stop.is_set():
                put(queues[k], None)

    source = iter(batches)
    threads = [threading.Thread(target=worker, args=(k,), name=f"ffkit-stage-{k}", daemon=True)
               for k in range(len(stages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class DistributedSchedule:
    """This rank's stage in a pipeline of processes: rank 0 prepares the batches, every rank steps its layers and
    sends the result on through its :class:`Link` (connected on the first epoch, kept across epochs), and the end of
    an epoch or of training travels down the pipeline behind the last batch.

    A stage that shares a layer with its neighbour steps its part of it: by samples (the rows of the batch it keeps,
    one gradient exchange per batch) or by units (the first stage's unit-shard update is finished when the next batch
    arrives, so the goodness exchange costs it no waiting)."""

    def __init__(self, *, rank: int, world: int, device: torch.device, timeout: float, ring: int,
                 group: dist.ProcessGroup | None = None) -> None:
        self.rank, self.world, self.device, self.timeout, self.ring = rank, world, device, timeout, ring
        #: This pipeline's process group: ``None`` when its stages are the whole world; in a hybrid (data x pipeline)
        #: job, the stages of one replica, whose ranks in the world are not the stage indices.
        self.group = group
        self.link: Link | None = None
        #: The size of the last batch this rank stepped (ranks after the first learn it from the link).
        self.batch_size: int | None = None
        self._pending_units: dict[str, Any] | None = None  # the first stage's unit-shard update, finished later

    def connect(self, shapes: list[dict[str, Any]] | None) -> Link:
        """The link to the neighbours, made on first use from every stage's message shapes (rank 0 knows them)."""
        if self.link is None:
            prev = self.rank - 1 if self.rank > 0 else None
            nxt = self.rank + 1 if self.rank < self.world - 1 else None
            every = exchange_shapes(self.rank, self.world, shapes, self.timeout, self.group)
            ranks = dist.get_process_group_ranks(self.group) if self.group is not None else None
            self.link = Link(rank=self.rank, world=self.world, device=self.device, timeout=self.timeout,
                             ring=self.ring, shapes=every, prev=prev, nxt=nxt, ranks=ranks)
        return self.link

    def run(self, st: Stage, batches: Iterable, prepare: Prepare, shapes: list[dict[str, Any]] | None) -> None:
        """One epoch: rank 0 feeds ``batches`` (``(x, y, index)``); the other ranks receive until the epoch ends."""
        try:
            link = self.connect(shapes)
            if self.rank == 0:
                for x, y, index in batches:
                    began = time.perf_counter()
                    h, y, b = prepare(x, y, index)
                    st.busy += time.perf_counter() - began  # preparing batches is the first stage's work too
                    self.batch_size = b
                    link.check_batch(h, y, b)
                    self._step(st, link, h, y, b, {})
                self._finish_units(st)
                link.send(EPOCH_END)
            else:
                while True:
                    kind, h, y, sc = link.recv()
                    if kind != BATCH:
                        self._finish_units(st)
                        link.send(kind)
                        if kind == STOP:
                            self.link = None
                        break
                    b = self.batch_size = link.batch_size
                    lead = None
                    if st.head is not None and st.head.mode == "units":  # h is the shared layer's whole input
                        pending = st.unit_forward(st.head, h, y, b, self.timeout)
                        loss, right = st.unit_finish(pending, self.timeout)
                        h = torch.cat([link.recv_share(), pending["features"]], dim=1)
                        sc = {**sc, st.head.layer: h}
                        lead = (loss, right)
                    elif st.head is not None:  # h holds this stage's rows of the shared layer's input
                        j = st.head.layer
                        part = take_samples(sc, b, st.head.lo, b)
                        mine, loss, right = st.share_step(st.head, h, y[st.head.lo :], part, self.timeout)
                        theirs = link.recv_share()
                        h = merge_samples(theirs, mine, b, st.head.lo)
                        sc = {**sc, j: h}
                        lead = (loss, right)
                    self._step(st, link, h, y, b, sc, lead)
            link.flush()
        except PipelineError:
            raise
        except RuntimeError as e:  # the step itself failed (a lost peer is a PipelineError already)
            where = (self.link.me if self.link is not None
                     else f"pipeline stage {self.rank} (rank {self.rank} of {self.world})")
            raise PipelineError(f"{where} failed: {type(e).__name__}: {e}") from e

    def _finish_units(self, st: Stage) -> None:
        if self._pending_units is not None:
            pending, self._pending_units = self._pending_units, None
            st.unit_finish(pending, self.timeout)

    def _step(self, st: Stage, link: Link, h, y, b: int, sc: dict, lead=None) -> None:
        """This stage's whole layers on the batch, then (if it shares the next layer) its part of that layer."""
        h, sc = st.step(h, y, b, sc, lead)
        if st.tail is None:
            link.send(BATCH, h, y, sc)
            return
        if st.tail.mode == "units":
            link.send(BATCH, h, y, sc)  # the next stage runs its units on the same input at the same time
            self._finish_units(st)  # the previous batch's update: this shard's weights must be current
            self._pending_units = st.unit_forward(st.tail, h, y, b, self.timeout)
            link.send_share(self._pending_units["features"])
            # The update itself waits for the next batch (or the epoch's end): the goodness exchange then costs
            # this stage no waiting, while the next stage runs its units.
            return
        m = st.tail.hi
        rows_next = sample_rows(h.shape[0], b, m, b, h.device)
        rows_mine = sample_rows(h.shape[0], b, 0, m, h.device)
        link.send(BATCH, h.index_select(0, rows_next), y, sc)  # the next stage starts its part at once
        part = take_samples(sc, b, 0, m)
        feats, _, _ = st.share_step(st.tail, h.index_select(0, rows_mine), y[:m], part, self.timeout)
        link.send_share(feats)

    def close(self) -> None:
        """Tell every stage that training is over (rank 0 starts it, each rank passes it on), so no receive stays
        posted."""
        if self.link is None:
            return
        # Every receive a stage posted ahead must be matched, or it would stay posted and swallow the first message
        # of the next pipeline between the same two ranks (a second trainer in the same processes): STOP fills the
        # whole ring.
        try:
            link = self.link
            if self.rank == 0:
                for _ in range(link.ring):
                    link.send(STOP)
                link.flush()
            else:
                while True:
                    kind, *_ = link.recv()
                    if kind == STOP:
                        for _ in range(link.ring - 1):
                            link.recv()
                        for _ in range(link.ring):
                            link.send(STOP)
                        link.flush()
                        break
        finally:
            self.link = None

    def abandon(self) -> None:
        """Forget the link without a goodbye: after a failure the peers may be gone, and waiting for their STOP would
        hold this rank's error back for the whole timeout."""
        self.link = None
