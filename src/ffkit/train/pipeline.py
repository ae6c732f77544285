"""``PipelineTrainer``: an FF network's layers split into stages that train concurrently on different batches.

No gradient crosses a layer boundary, so stage ``k`` can update its layers on batch ``i`` while stage ``k + 1`` updates
its layers on batch ``i - 1`` (DeeperForward Sec. 3.3 and App. G; Pipeline-FF). Every layer still sees exactly the
batches, in the same order and with the same weights, that :class:`~ffkit.LocalTrainer` would give it: a stage's input
for batch ``i`` is computed by the previous stage's layers after their ``i - 1`` updates, as in the sequential loop.
So the pipeline reproduces ``LocalTrainer``'s weights for any number of batches in flight (up to dropout masks,
which come from each stage's own random stream).

Two transports carry a stage's detached features, the labels and any residual-shortcut tensors to the next stage:

* ``backend="threads"``: one process, one thread per stage (one CUDA stream per stage on GPU), bounded queues.
* ``backend="distributed"``: one process per stage on ``torch.distributed`` point-to-point (gloo on CPU, NCCL on
  GPU), launched by ``torchrun``. A stage receives into a ring of ``queue_size`` buffers posted ahead with
  ``dist.batch_isend_irecv``, so it overlaps communication with its local step and the pipeline never drains.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .._version import __version__
from ..network import FFNetwork
from ..objectives import PreparedBatch
from ._distributed import check_timeout, default_device
from .base import StepResult, Trainer
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .local import LocalTrainer

__all__ = ["PipelineTrainer", "PipelineError"]

_BATCH, _EPOCH_END, _STOP = 0, 1, 2


class PipelineError(RuntimeError):
    """A pipeline stage failed, or lost contact with a peer stage; the message names the stage and the peer."""


class _Stage:
    """Layers ``start..end`` of the network, trained with the shared :class:`LocalTrainer`'s per-layer optimizers."""

    def __init__(self, index: int, start: int, end: int, trainer: LocalTrainer, device: torch.device) -> None:
        net = trainer.network
        self.index, self.start, self.end = index, start, end
        self.trainer, self.device = trainer, device
        self.sources_in = sorted(net.crossing_shortcuts(start - 1)) if start > 0 else []
        self.sources_out = sorted(net.crossing_shortcuts(end)) if end < len(net) - 1 else []
        self.keep = {end} | {s for s in self.sources_out if s >= start}
        self.steps = 0
        self.loss_sum: torch.Tensor | None = None
        self.correct_sum: torch.Tensor | None = None
        self.seen = 0
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def step(self, h: torch.Tensor, y: torch.Tensor, batch_size: int, shortcuts: dict[int, torch.Tensor]):
        """One local update of this stage's layers; returns what the next stage needs."""
        t = self.trainer
        began = time.perf_counter()
        batch = PreparedBatch(inputs=h, target=y, batch_size=batch_size, x=None)
        losses, correct, _, kept = t.train_layers(
            batch, h, start=self.start, end=self.end, shortcuts=shortcuts, keep=self.keep
        )
        if t.check_finite:
            t._raise_if_diverged(losses, None, first_layer=self.start)
        t.step_schedules_of(range(self.start, self.end + 1))
        self.steps += 1
        self.last = (losses, correct)
        w = losses * batch_size
        self.loss_sum = w if self.loss_sum is None else self.loss_sum + w
        self.correct_sum = correct if self.correct_sum is None else self.correct_sum + correct
        self.seen += batch_size
        out = {s: (kept[s] if s in kept else shortcuts[s]) for s in self.sources_out}
        self.busy += time.perf_counter() - began
        return kept[self.end], out

    def reset_metrics(self) -> None:
        self.loss_sum = self.correct_sum = None
        self.seen = 0
        self.busy = 0.0  # seconds spent in local steps this epoch (the stage-balance figure)


class PipelineTrainer(Trainer):
    """Train an :class:`~ffkit.FFNetwork` as a pipeline of stages of consecutive layers.

    Args:
        network: the network (no classifier head, no Overlapping Local Updates: both need gradients or features
            across stages; adaptive negatives need the whole network on the first stage).
        stages: the split. An int ``S`` (``"auto"`` balancing chooses where to cut; otherwise equal layer counts), or
            the stages' first layers, e.g. ``(0, 2)`` for layers ``0..1`` and ``2..L-1``. With
            ``backend="distributed"`` the number of stages is the world size.
        backend: ``"threads"`` (one process) or ``"distributed"`` (one process per stage, ``torch.distributed``).
        devices: one device per stage for ``"threads"`` (default: ``device`` for every stage); for
            ``"distributed"``, ``device`` is this rank's device (default CUDA ``LOCAL_RANK`` if available, else CPU).
        balance: ``"auto"``: profile each layer's local step on the first batch and cut where the slowest stage is
            fastest (:mod:`ffkit.train.balance`); ``"layers"``: equal layer counts. Ignored when ``stages`` gives the
            split.
        queue_size: batches that may wait between two stages (threads), or receive buffers in a stage's ring
            (distributed; at least 2 so that communication overlaps computation).
        timeout: seconds a stage waits for its peer before it stops with :class:`PipelineError`.
        **trainer_options: the per-layer optimisation of :class:`~ffkit.LocalTrainer` (``lr``, ``schedule``,
            ``total_steps``, ...), which every stage uses for its layers.

    Batches must all have the same size (use ``DataLoader(drop_last=True)``): a stage posts its receives ahead.
    """

    def __init__(
        self,
        network: FFNetwork,
        *,
        stages: int | str | Sequence[int] = 2,
        backend: str = "threads",
        devices: Sequence[str | torch.device] | None = None,
        device: str | torch.device | None = None,
        balance: str = "auto",
        queue_size: int = 2,
        timeout: float = 60.0,
        **trainer_options: Any,
    ) -> None:
        if not isinstance(network, FFNetwork):
            raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
        if backend not in ("threads", "distributed"):
            raise ValueError(f"backend must be 'threads' or 'distributed', got {backend!r}")
        if balance not in ("auto", "layers"):
            raise ValueError(f"balance must be 'auto' or 'layers', got {balance!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, got {queue_size!r}")
        check_timeout(timeout)
        if trainer_options.get("overlap"):
            raise ValueError("overlap (OLU) sends gradients across layer boundaries; it cannot be pipelined")
        if network.head is not None:
            raise ValueError("PipelineTrainer does not train classifier heads yet (a head reads several stages' "
                             "features); train the head afterwards or use LocalTrainer")
        from ..data.negatives import AdaptiveNegative

        if isinstance(getattr(network.objective, "negatives", None), AdaptiveNegative):
            raise ValueError("adaptive negatives need the whole network on the first stage; use RandomNegative or "
                             "FixedNegative with PipelineTrainer")
        self.backend = backend
        self.queue_size = queue_size
        self.timeout = float(timeout)
        self.balance = balance
        self.rank, self.world = 0, 1
        if backend == "distributed":
            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("backend='distributed' needs torch.distributed initialised: launch with torchrun "
                                   "and call ffkit.train.pipeline.init_distributed() (the CLI does)")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if device is None:
                device = default_device()
            devices = [device] * self.world
        n_stages = self.world if backend == "distributed" else _count_stages(stages, len(network))
        if devices is None:
            devices = [device or "cpu"] * n_stages
        if len(devices) != n_stages:
            raise ValueError(f"devices must name one device per stage ({n_stages}), got {len(devices)}")
        self.devices = [torch.device(d) for d in devices]
        here = self.devices[self.rank]
        self.inner = LocalTrainer(network, device=here, **trainer_options)
        self.network = self.inner.network
        self.device = here
        self.optimizers = self.inner.optimizers
        self.schedulers = self.inner.schedulers
        self.lr, self.final_lr = self.inner.lr, self.inner.final_lr
        self.starts: tuple[int, ...] | None = None
        if not isinstance(stages, (int, str)):
            from .balance import check_split

            self.starts = check_split(tuple(stages), len(network))
            if len(self.starts) != n_stages:
                raise ValueError(f"stages gives {len(self.starts)} stages, but there are {n_stages} processes/devices")
        self.n_stages = n_stages
        self.balance_report: dict[str, Any] | None = None
        self._stages: list[_Stage] = []
        self._shape_spec: list[dict[str, Any]] | None = None
        self._link: _Link | None = None
        self._out_dir: Path | None = None
        self._init_progress()

    # -- setup ------------------------------------------------------------------------------------------------------
    def _plan(self, x: torch.Tensor | None, y: torch.Tensor | None, index: torch.Tensor | None = None) -> None:
        """Choose the split (profiling on the first batch if balancing is automatic) and place the stages."""
        if self.starts is None:
            if self.balance == "auto" and self.n_stages > 1:
                from .balance import balance_stages, profile_layers, stage_balance, stage_times

                if self.rank == 0:
                    costs = profile_layers(self.inner, x, y, index=index)
                    # The first stage also prepares every batch (label encoding, negatives): charge it to layer 0.
                    with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                        began = time.perf_counter()
                        for _ in range(3):
                            self._prepare(x, y, index)
                        prep = (time.perf_counter() - began) / 3
                    seconds = [costs.seconds[0] + prep, *costs.seconds[1:]]
                    starts = balance_stages(seconds, self.n_stages)
                    times = stage_times(seconds, starts)
                    report = {"layer_seconds": list(costs.seconds), "layer_peak_bytes": list(costs.peak_bytes),
                              "prepare_seconds": prep, "starts": list(starts), "stage_seconds": times,
                              "predicted_balance": stage_balance(times)}
                else:
                    report = None
                if self.backend == "distributed":
                    box = [report]
                    dist.broadcast_object_list(box, src=0)
                    report = box[0]
                self.balance_report = report
                self.starts = tuple(report["starts"])
            else:
                n, s = len(self.network), self.n_stages
                self.starts = tuple(round(k * n / s) for k in range(s))
        ends = [*(s - 1 for s in self.starts[1:]), len(self.network) - 1]
        self._stages = []
        for k, (a, b) in enumerate(zip(self.starts, ends)):
            if self.backend == "threads" and self.devices[k] != self.device:
                self.network.layers[a : b + 1].to(self.devices[k])
            self._stages.append(_Stage(k, a, b, self.inner, self.devices[k]))

    @property
    def stage_ranges(self) -> list[tuple[int, int]]:
        """``[(first_layer, last_layer)]`` of every stage (after the first batch has fixed the split)."""
        return [(s.start, s.end) for s in self._stages]

    # -- training -----------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One batch through every stage, in order (no concurrency): the pipeline with one batch in flight."""
        record = self._run([(x, y, index)], concurrent=False)
        return record["last_step"]

    def train_epoch(self, loader: Iterable, *, progress: bool = False, desc: str = "train") -> dict[str, Any]:
        """One pass over ``loader`` with every stage working concurrently; per-layer means as ``LocalTrainer``."""
        batches = ((b[0], b[1], b[2] if len(b) > 2 else None) for b in loader)
        record = self._run(batches, concurrent=True)["record"]
        self.gather_network()  # every rank takes part; rank 0 then holds the whole trained network
        if self.rank > 0 and self._out_dir is not None:
            self.epoch += 1  # Trainer.fit counts the epoch after this returns; the stage file must say it is done
            save_checkpoint(self.stage_state(self.rank), _stage_path(self._out_dir / "checkpoint.pt", self.rank,
                                                                      self.n_stages))
            self.epoch -= 1
        return record

    def _run(self, batches: Iterable, concurrent: bool) -> dict[str, Any]:
        it = iter(batches) if self.rank == 0 else iter(())
        first = next(it, None) if self.rank == 0 else None
        if self.rank == 0 and first is None:
            raise ValueError("the training data is empty: no batch was produced")
        if not self._stages:
            x0, y0 = self.inner._batch_to_device(first[0], first[1]) if self.rank == 0 else (None, None)
            i0 = first[2].to(self.device) if self.rank == 0 and first[2] is not None else None
            self._plan(x0, y0, i0)
        if self.backend == "distributed" and self.rank == 0 and self._shape_spec is None:
            self._shape_spec = self._shapes(first)
        for st in self._stages:
            st.reset_metrics()
        start = time.perf_counter()

        def feed():
            if first is not None:
                yield first
            yield from it

        if self.backend == "threads":
            self._run_threads(feed(), concurrent)
        else:
            self._run_distributed(feed())
        seconds = time.perf_counter() - start
        done = [st for st in self._stages if st.last is not None]
        last = StepResult(torch.cat([st.last[0] for st in done]), torch.cat([st.last[1] for st in done]),
                          self._batch_size, None)
        return {"record": self._epoch_record(seconds), "last_step": last}

    def _shapes(self, first) -> list[dict[str, Any]]:
        """What each stage sends for one batch: feature, label and shortcut shapes (one no-grad pass, RNG kept)."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.no_grad():
            h0, y0, b = self._prepare(*first)
            feats = {i: out.features for i, out in self.network.iter_layers(h0)}
        spec = []
        for st in self._stages:
            spec.append({"h": tuple(feats[st.end].shape), "y": tuple(y0.shape), "dtype": feats[st.end].dtype,
                         "sc": {s: tuple(feats[s].shape) for s in st.sources_out},
                         "batch_size": b, "h_in": tuple(h0.shape)})
        return spec

    def _prepare(self, x, y, index) -> tuple[torch.Tensor, torch.Tensor, int]:
        t = self.inner
        x, y = t._batch_to_device(x, y)
        if index is not None:
            index = index.to(t.device)
        batch = self.network.objective.prepare(self.network, x, y, index)
        self._batch_size = batch.batch_size
        return batch.inputs, y, batch.batch_size

    def _epoch_record(self, seconds: float) -> dict[str, Any]:
        """Per-layer means over the epoch (on distributed runs, gathered to every rank)."""
        parts = [(s.start, s.loss_sum, s.correct_sum, s.seen, s.busy) for s in self._stages if s.seen]
        if self.backend == "distributed":
            gathered: list[Any] = [None] * self.world
            mine = [(a, ls.cpu(), cs.cpu(), n, busy) for a, ls, cs, n, busy in parts]
            dist.all_gather_object(gathered, mine)
            parts = [p for g in gathered for p in g]
        if not parts:
            raise ValueError("the training data is empty: no batch was produced")
        parts.sort(key=lambda p: p[0])
        seen = parts[0][3]
        losses = torch.cat([p[1].cpu() for p in parts]) / seen
        correct = torch.cat([p[2].cpu() for p in parts]).double() / seen
        self.step_count = max(s.steps for s in self._stages) if self._stages else self.step_count
        return {
            "train_loss": losses.tolist(),
            "train_acc": correct.tolist(),
            "train_images": seen,
            "train_seconds": seconds,
            "train_images_per_s": seen / seconds,
            "stages": [list(r) for r in self._all_ranges()],
            "stage_busy_seconds": [p[4] for p in parts],
        }

    def _all_ranges(self) -> list[tuple[int, int]]:
        ends = [*(s - 1 for s in self.starts[1:]), len(self.network) - 1]
        return list(zip(self.starts, ends))

    # -- threads ------------------------------------------------------------------------------------------------
    def _run_threads(self, batches: Iterable, concurrent: bool) -> None:
        stages = self._stages
        if not concurrent:
            for x, y, index in batches:
                h, y, b = self._prepare(x, y, index)
                sc: dict[int, torch.Tensor] = {}
                for st in stages:
                    h, sc = st.step(h.to(st.device), y.to(st.device), b, {k: v.to(st.device) for k, v in sc.items()})
            return None
        queues = [queue.Queue(maxsize=self.queue_size) for _ in range(len(stages) - 1)]
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
                    if waited > self.timeout:
                        raise PipelineError(f"stage {k} waited {self.timeout:.0f} s for stage {k - 1}") from None
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
                            h, y, b = self._prepare(*item)
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
                errors.append(e if isinstance(e, PipelineError) else _stage_error(k, e))
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
        return None

    # -- distributed ----------------------------------------------------------------------------------------------
    def _run_distributed(self, batches: Iterable) -> None:
        st = self._stages[self.rank]
        try:
            if self._link is None:
                prev = self.rank - 1 if self.rank > 0 else None
                nxt = self.rank + 1 if self.rank < self.world - 1 else None
                self._link = _Link(self, st, prev, nxt)
            link = self._link
            if self.rank == 0:
                for x, y, index in batches:
                    began = time.perf_counter()
                    h, y, b = self._prepare(x, y, index)
                    st.busy += time.perf_counter() - began  # preparing batches is the first stage's work too
                    link.check_batch(h, y, b)
                    h, sc = st.step(h, y, b, {})
                    link.send(_BATCH, h, y, sc)
                link.send(_EPOCH_END)
            else:
                while True:
                    kind, h, y, sc = link.recv()
                    if kind != _BATCH:
                        link.send(kind)
                        if kind == _STOP:
                            self._link = None
                        break
                    self._batch_size = link.batch_size
                    h, sc = st.step(h, y, link.batch_size, sc)
                    link.send(_BATCH, h, y, sc)
            link.flush()
        except PipelineError:
            raise
        except RuntimeError as e:  # gloo/NCCL errors: a peer died or timed out
            raise PipelineError(
                f"pipeline stage {self.rank} (rank {self.rank} of {self.world}) failed talking to its neighbours: "
                f"{e}"
            ) from e

    def close(self) -> None:
        """Distributed: tell every stage that training is over (rank 0 starts it), so no receive stays posted."""
        if self.backend != "distributed" or self._link is None:
            return
        try:
            if self.rank == 0:
                self._link.send(_STOP)
                self._link.flush()
            else:
                while self._link is not None:
                    kind, *_ = self._link.recv()
                    if kind == _STOP:
                        self._link.send(_STOP)
                        self._link.flush()
                        break
        finally:
            self._link = None

    def fit(self, train, *, epochs: int, holdout=None, test=None, out_dir=None, **kwargs):
        """As :meth:`Trainer.fit`. On a distributed run every rank trains its stage and writes its stage checkpoint;
        rank 0 also evaluates (after gathering the layers), logs and writes the metrics and the whole checkpoint."""
        self._out_dir = Path(out_dir) if out_dir is not None else None
        try:
            if self.rank == 0:
                return super().fit(train, epochs=epochs, holdout=holdout, test=test, out_dir=out_dir, **kwargs)
            kwargs["log"] = None
            return super().fit(train, epochs=epochs, **kwargs)
        finally:
            self.close()

    # -- state ----------------------------------------------------------------------------------------------------
    def gather_network(self) -> None:
        """Distributed: bring every stage's layer weights to rank 0's copy of the network (for evaluation)."""
        if self.backend != "distributed" or self.world == 1:
            return
        st = self._stages[self.rank]
        mine = {k: v.cpu() for k, v in self.network.layers[st.start : st.end + 1].state_dict().items()}
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, (st.start, st.end, mine))
        for a, b, state in gathered:
            if (a, b) != (st.start, st.end):
                self.network.layers[a : b + 1].load_state_dict(state)

    def stage_state(self, k: int) -> dict[str, Any]:
        st = self._stages[k]
        idx = range(st.start, st.end + 1)
        return {
            "ffkit_checkpoint_format": CHECKPOINT_FORMAT,
            "ffkit_version": __version__,
            "model_name": self.network.model_name,
            "model_kwargs": self.network.model_kwargs,
            "stage": k,
            "starts": list(self.starts),
            "layers": self.network.layers[st.start : st.end + 1].state_dict(),
            "optimizers": {i: self.optimizers[i].state_dict() for i in idx if self.optimizers[i] is not None},
            "schedulers": {i: self.schedulers[i].state_dict() for i in idx if self.schedulers[i] is not None},
            "steps": st.steps,
            "epoch": self.epoch,
            "history": self.history,
            "rng": torch.get_rng_state(),
        }

    def save(self, path: str | Path) -> Path:
        """Each stage writes ``<path stem>.stage<k>-of-<S>.pt`` (its layers, optimizers, schedules, progress), and
        rank 0 also writes the whole network's checkpoint at ``path`` (loadable by ``ffkit test``)."""
        path = Path(path)
        ks = [self.rank] if self.backend == "distributed" else range(len(self._stages))
        for k in ks:
            save_checkpoint(self.stage_state(k), _stage_path(path, k, self.n_stages))
        if self.rank == 0:
            super().save(path)
        return path

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Every stage reloads its own stage file; the split is the saved one."""
        path = Path(path)
        ks = [self.rank] if self.backend == "distributed" else None
        first = load_checkpoint(_stage_path(path, self.rank if ks else 0, self.n_stages), map_location="cpu")
        self.starts = tuple(first["starts"])
        self._plan(None, None)
        for k in ks or range(len(self._stages)):
            payload = first if k == (ks[0] if ks else 0) else load_checkpoint(
                _stage_path(path, k, self.n_stages), map_location="cpu")
            st = self._stages[k]
            self.network.layers[st.start : st.end + 1].load_state_dict(payload["layers"])
            self._load_optimizer_states(payload["optimizers"].items(), payload["schedulers"].items())
            st.steps = payload["steps"]
            self.epoch = payload["epoch"]
            self.history = list(payload["history"])
        self.step_count = max(s.steps for s in self._stages)
        if self.backend == "distributed":
            self.gather_network()
        return first


class _Link:
    """This rank's point-to-point channels: a ring of receive buffers posted ahead, and sends kept until done."""

    def __init__(self, trainer: PipelineTrainer, stage: _Stage, prev: int | None, nxt: int | None) -> None:
        self.t, self.stage, self.prev, self.nxt = trainer, stage, prev, nxt
        self.ring = max(2, trainer.queue_size)
        self.pending: list[tuple[list, list]] = []
        self.slots: list[dict[str, Any]] = []
        self.received = 0
        self.batch_size = 0
        self.shapes = _exchange_shapes(trainer)
        if prev is not None:
            spec = self.shapes[prev]
            self.batch_size = spec["batch_size"]
            for _ in range(self.ring):
                self.slots.append(self._alloc(spec))
            for slot in self.slots:
                self._post(slot)

    def _alloc(self, spec: dict[str, Any]) -> dict[str, Any]:
        dev = self.t.device
        return {
            "header": torch.zeros(3, dtype=torch.int64, device=dev),
            "h": torch.empty(spec["h"], dtype=spec["dtype"], device=dev),
            "y": torch.empty(spec["y"], dtype=torch.int64, device=dev),
            "sc": {s: torch.empty(shape, dtype=spec["dtype"], device=dev) for s, shape in spec["sc"].items()},
        }

    def _tensors(self, slot) -> list[torch.Tensor]:
        return [slot["header"], slot["h"], slot["y"], *(slot["sc"][s] for s in sorted(slot["sc"]))]

    def _post(self, slot) -> None:
        ops = [dist.P2POp(dist.irecv, t, self.prev) for t in self._tensors(slot)]
        slot["works"] = dist.batch_isend_irecv(ops)

    def recv(self):
        slot = self.slots[self.received % self.ring]
        for w in slot["works"]:
            _wait(w, self.t.timeout, f"pipeline stage {self.t.rank} (rank {self.t.rank} of {self.t.world}) lost the "
                  f"previous stage (rank {self.prev}) while waiting for its next batch")
        self.received += 1
        kind = int(slot["header"][0])
        # The layers read h and y during the step; clone so the slot can be posted again at once.
        h, y = slot["h"].clone(), slot["y"].clone()
        sc = {s: v.clone() for s, v in slot["sc"].items()}
        if kind != _STOP:  # after STOP nothing more comes: leave no receive posted
            self._post(slot)
        return kind, h, y, sc

    def check_batch(self, h: torch.Tensor, y: torch.Tensor, b: int) -> None:
        spec = self.shapes[0]
        if tuple(h.shape) != tuple(spec["h_in"]) or b != spec["batch_size"]:
            raise ValueError(f"PipelineTrainer needs batches of one size ({spec['batch_size']}): use "
                             f"DataLoader(drop_last=True); got a batch of {b}")

    def send(self, kind: int, h=None, y=None, sc=None) -> None:
        if self.nxt is None:
            return
        spec = self.shapes[self.t.rank]
        dev = self.t.device
        if h is None:  # control message: the payload keeps its shapes so the receiver's posted buffers match
            h = torch.zeros(spec["h"], dtype=spec["dtype"], device=dev)
            y = torch.zeros(spec["y"], dtype=torch.int64, device=dev)
            sc = {s: torch.zeros(shape, dtype=spec["dtype"], device=dev) for s, shape in spec["sc"].items()}
        header = torch.tensor([kind, 0, 0], dtype=torch.int64, device=dev)
        tensors = [header, h.contiguous(), y.to(torch.int64), *(sc[s].contiguous() for s in sorted(sc))]
        works = dist.batch_isend_irecv([dist.P2POp(dist.isend, t, self.nxt) for t in tensors])
        self.pending.append((works, tensors))
        while len(self.pending) > self.ring:  # wait on a send only when its buffers would be reused
            self._wait_send(self.pending.pop(0))

    def _wait_send(self, item) -> None:
        for w in item[0]:
            _wait(w, self.t.timeout, f"pipeline stage {self.t.rank} (rank {self.t.rank} of {self.t.world}) lost the "
                  f"next stage (rank {self.nxt}) while sending it a batch")

    def flush(self) -> None:
        while self.pending:
            self._wait_send(self.pending.pop(0))


def _exchange_shapes(t: PipelineTrainer) -> list[dict[str, Any]]:
    """Every rank learns the shapes each stage sends: rank 0 runs one no-grad pass on a batch of the right size."""
    spec: list[Any] = [None]
    if t.rank == 0:
        spec[0] = [{**d, "dtype": str(d["dtype"]).replace("torch.", "")} for d in t._shape_spec]
    dist.broadcast_object_list(spec, src=0)
    return [{**d, "dtype": getattr(torch, d["dtype"])} for d in spec[0]]


def _wait(work, timeout: float, what: str) -> None:
    try:
        ok = work.wait(timedelta(seconds=timeout))
    except RuntimeError as e:
        raise PipelineError(f"{what}: {e}") from e
    if ok is False:
        raise PipelineError(f"{what}: no answer within {timeout:.0f} s")


def _stage_path(path: Path, k: int, n: int) -> Path:
    return path.with_name(f"{path.stem}.stage{k}-of-{n}{path.suffix or '.pt'}")


def _stage_error(k: int, e: BaseException) -> BaseException:
    if isinstance(e, (ValueError, TypeError, FloatingPointError)):
        return e
    return PipelineError(f"pipeline stage {k} failed: {type(e).__name__}: {e}")


def _count_stages(stages: int | str | Sequence[int], n_layers: int) -> int:
    if isinstance(stages, str):
        if stages != "per-layer":
            raise ValueError(f"stages must be an int, 'per-layer' or a sequence of first layers, got {stages!r}")
        return n_layers
    if isinstance(stages, bool):
        raise TypeError("stages must be an int or a sequence of stage start indices, got a bool")
    if isinstance(stages, int):
        if not 1 <= stages <= n_layers:
            raise ValueError(f"stages must be between 1 and the number of layers ({n_layers}), got {stages}")
        return stages
    return len(tuple(stages))


def init_distributed(timeout: float = 60.0, backend: str | None = None) -> tuple[int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...):
    gloo on CPU, NCCL on CUDA. Returns ``(rank, world_size)``."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()

