"""Balancing a pipeline: measure each layer's local step, then cut the layers into the stages whose slowest is fastest.

A pipeline of ``S`` stages (:class:`~ffkit.train.pipeline.PipelineTrainer`) trains as fast as its slowest stage, so
the split matters as much as the number of stages. :func:`profile_layers` times every layer's part of a
:class:`~ffkit.LocalTrainer` step (and the bytes it saves for backward, and the bytes a stage boundary after it must
send) on a few real batches, leaving the trainer exactly as it found it; :func:`balance_stages` then chooses the
contiguous split that minimises the slowest stage's cost, optionally charging each stage for sending its output.

A split is written as the stages' first layers: ``(0, 2)`` is two stages, layers ``0..1`` and ``2..L-1``.

Whole layers cannot always balance a pipeline: four layers costing ``0.39, 0.52, 0.20, 0.32`` s split no better than
``0.91 / 0.52`` s. A *shared* layer is split by its batch between two neighbouring stages: the split ``(0, 1.625)``
gives stage 0 layer 0 and the first 62.5% of every batch's samples through layer 1, and stage 1 the other 37.5% of
layer 1 and layers 2..3 (``0.715 / 0.715`` s). The two stages sum their gradients of the shared layer before they
both take the same optimizer step, so the layer learns exactly as if one stage had run it on the whole batch; this
needs a layer loss that is a mean over samples and no batch statistics (BatchNorm) in the layer.
"""

from __future__ import annotations

import bisect
import copy
import math
import numbers
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._validation import check_int, check_real
from ..profiling import SavedTensorMeter
from .local import LocalTrainer
from .rng import capture_rng, restore_rng

__all__ = ["LayerCosts", "profile_layers", "balance_stages", "stage_times", "check_split", "stage_balance",
           "shared_layers"]


@dataclass(frozen=True)
class LayerCosts:
    """What each of a network's ``L`` layers costs in one local training step on one batch.

    Attributes:
        seconds: ``L`` median wall-clock seconds of each layer's local step (forward, loss, backward, optimizer
            step). The last layer's also covers the end of the step (a classifier head, the finiteness check, the
            schedules); the batch preparation before the first layer is in none.
        peak_bytes: ``L`` peak bytes autograd held for backward during each layer's step (activations, not weights:
            :class:`~ffkit.profiling.SavedTensorMeter`), the largest over the measured steps; 0 if not measured.
        output_bytes: ``L`` bytes a stage boundary right after layer ``i`` must send for one batch: layer ``i``'s
            features plus the features of every layer whose residual shortcut crosses the boundary
            (``network.crossing_shortcuts(i)``, a source ``s == i`` included, as the pipeline sends it separately).
    """

    seconds: tuple[float, ...]
    peak_bytes: tuple[int, ...]
    output_bytes: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.seconds)
        if len(self.peak_bytes) != n or len(self.output_bytes) != n:
            raise ValueError(
                f"seconds, peak_bytes and output_bytes must have one entry per layer, got lengths {n}, "
                f"{len(self.peak_bytes)} and {len(self.output_bytes)}"
            )

    def __len__(self) -> int:
        return len(self.seconds)


# -- measuring ----------------------------------------------------------------------------------------------------
def profile_layers(
    trainer: LocalTrainer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 3,
    warmup: int = 1,
    index: torch.Tensor | None = None,
) -> LayerCosts:
    """Time each layer's part of ``trainer.train_step(x, y)`` over ``warmup + steps`` steps, then undo them.

    ``LocalTrainer`` runs layer ``i``'s forward, loss and backward between the start of layer ``i``'s forward and the
    start of layer ``i + 1``'s, and every layer's optimizer step after the last layer's backward (once the step's
    losses are known to be finite), so forward pre-hooks on the layers and step hooks on their optimizers split the
    step without changing the trainer: layer ``i`` takes ``t(i + 1) - t(i)`` plus its optimizer step, the last layer
    the rest until ``train_step`` returns.
    Only forwards run with gradients enabled are stamped, so the no-grad passes of adaptive negatives (before the
    layers) and of a classifier head (after them) do not move the stamps. On CUDA every stamp synchronises first.

    Profiling does not change training: the trainer's state (optimizer moments, schedules, step count), the network's
    parameters and buffers, the gradients, the train/eval mode and the random states (torch's global CPU and CUDA
    generators, and any ``torch.Generator`` the objective's negative sampler holds) are restored afterwards, even if
    a step fails, so a run profiled on its first batch continues exactly as an unprofiled one.

    Args:
        trainer: a :class:`~ffkit.LocalTrainer` built on its network.
        x: one batch ``[B, C, H, W]``, as the training loop would give it.
        y: its labels ``[B]``.
        steps: measured steps (the median is taken); at least 1.
        warmup: steps run first and not measured (lazy initialisation, allocator warm-up, compilation).
        index: the samples' dataset indices ``[B]``, for objectives that need them (``FixedNegative``).

    Returns:
        the :class:`LayerCosts` of the network's layers.
    """
    if not isinstance(trainer, LocalTrainer):
        raise TypeError(f"trainer must be an ffkit LocalTrainer, got {type(trainer).__name__}")
    steps = check_int(steps, "steps", minimum=1)
    warmup = check_int(warmup, "warmup", minimum=0)
    net = trainer.network
    n = len(net.layers)
    cuda = trainer.device.type == "cuda"

    stamps: list[float | None] = [None] * n
    peaks: list[int] = [0] * n
    feature_bytes: list[int | None] = [None] * n
    meter = SavedTensorMeter(exclude=net.parameters())
    measuring = False

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(trainer.device)

    def pre_hook(i: int):
        # Disabled for torch.compile: a compiled layer runs its hooks inside the compiled call, where a clock read
        # would be traced as a constant instead of taken at run time.
        @torch.compiler.disable
        def hook(module: torch.nn.Module, args: Any) -> None:
            if not torch.is_grad_enabled():
                return
            sync()
            stamps[i] = time.perf_counter()
            if measuring:
                if i > 0:
                    peaks[i - 1] = meter.peak
                meter.reset_peak()

        return hook

    def post_hook(i: int):
        @torch.compiler.disable
        def hook(module: torch.nn.Module, args: Any, out: Any) -> None:
            if torch.is_grad_enabled():
                feats = out.features
                feature_bytes[i] = feats.numel() * feats.element_size()

        return hook

    # LocalTrainer takes every layer's optimizer step after the step's finiteness check, i.e. inside the last
    # layer's interval: time each step and move it back to its layer.
    step_began: list[float] = [0.0] * n
    step_seconds: list[float] = [0.0] * n

    def step_pre(i: int):
        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            sync()
            step_began[i] = time.perf_counter()

        return hook

    def step_post(i: int):
        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            sync()
            step_seconds[i] += time.perf_counter() - step_began[i]

        return hook

    saved = _TrainingState(trainer)
    handles: list[Any] = []
    per_step_seconds: list[list[float]] = []
    per_step_peaks: list[list[int]] = []
    try:
        for i, layer in enumerate(net.layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(i)))
            handles.append(layer.register_forward_hook(post_hook(i)))
        for i, opt in enumerate(trainer.optimizers[: n - 1]):
            if opt is not None:
                handles.append(opt.register_step_pre_hook(step_pre(i)))
                handles.append(opt.register_step_post_hook(step_post(i)))
        for _ in range(warmup):
            trainer.train_step(x, y, index)
        with meter:
            measuring = True
            for _ in range(steps):
                stamps[:] = [None] * n
                step_seconds[:] = [0.0] * n
                trainer.train_step(x, y, index)
                sync()
                end = time.perf_counter()
                peaks[n - 1] = meter.peak
                if any(t is None for t in stamps):
                    missing = [i for i, t in enumerate(stamps) if t is None]
                    raise RuntimeError(f"train_step did not run layers {missing} with gradients; cannot time them")
                bounds = [t for t in stamps if t is not None] + [end]
                row = [bounds[i + 1] - bounds[i] + step_seconds[i] for i in range(n)]
                row[n - 1] -= sum(step_seconds[: n - 1])
                per_step_seconds.append(row)
                per_step_peaks.append(list(peaks))
            measuring = False
    finally:
        for h in handles:
            h.remove()
        saved.restore()

    seconds = tuple(float(statistics.median(col)) for col in zip(*per_step_seconds))
    # Peaks are deterministic for a fixed batch but alternate with the step's parity under overlapping updates:
    # the largest is the one a memory budget must hold.
    peak_bytes = tuple(int(max(col)) for col in zip(*per_step_peaks))
    sizes = [int(b or 0) for b in feature_bytes]  # every layer ran, so none is None
    output_bytes = tuple(sizes[i] + sum(sizes[s] for s in net.crossing_shortcuts(i)) for i in range(n))
    return LayerCosts(seconds=seconds, peak_bytes=peak_bytes, output_bytes=output_bytes)


class _TrainingState:
    """A deep copy of everything a training step changes, restored by :meth:`restore`."""

    def __init__(self, trainer: LocalTrainer) -> None:
        net = trainer.network
        self.trainer = trainer
        self.trainer_state = copy.deepcopy(trainer.state_dict())
        self.network_state = copy.deepcopy(net.state_dict())
        self.training = net.training
        self.grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in net.parameters()]
        self.rng = capture_rng(net)

    def restore(self) -> None:
        net = self.trainer.network
        # load_state_dict copies into the existing tensors, so the optimizers keep pointing at the same parameters
        net.load_state_dict(self.network_state)
        self.trainer.load_state_dict(self.trainer_state)
        net.train(self.training)
        for p, g in self.grads:
            p.grad = g
        restore_rng(self.rng, net)


# -- choosing the split -------------------------------------------------------------------------------------------
def balance_stages(
    seconds: Sequence[float],
    num_stages: int,
    *,
    output_bytes: Sequence[int] | None = None,
    bytes_per_second: float | None = None,
    shareable: Sequence[bool] | None = None,
    min_share: float = 0.05,
    min_gain: float = 0.02,
    share_seconds: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """The contiguous split of ``L`` layers into ``num_stages`` stages whose slowest stage is fastest.

    A stage's cost is the sum of its layers' ``seconds``, plus, when ``output_bytes`` and ``bytes_per_second`` are
    both given, the time to send its output, ``output_bytes[last layer] / bytes_per_second``, for every stage but
    the last (the sender pays for the transfer). The split is exact (dynamic programming over suffixes, O(L^2 S)).

    Ties: among the splits with the smallest maximum stage cost, the one with the smallest sum of squared stage
    costs (the most even; it also leaves the most slack to the other stages), and among those, the lexicographically
    smallest starts, i.e. the earliest cuts: the first stage also prepares each batch, which ``seconds`` does not
    count, so it should be the lightest.

    Args:
        seconds: ``L`` non-negative per-layer costs (e.g. :attr:`LayerCosts.seconds`).
        num_stages: ``S``, ``1 <= S <= L``; every stage gets at least one layer.
        output_bytes: ``L`` bytes a boundary after each layer sends (:attr:`LayerCosts.output_bytes`).
        bytes_per_second: the link's bandwidth between consecutive stages.
        shareable: ``L`` flags, whether a layer may be shared by two neighbouring stages (split by its batch). When
            given, a cut may fall inside a shareable layer: each cut goes where the layer costs before it reach
            ``k / S`` of the total (cost assumed proportional to the samples), unless that leaves a stage without a
            whole layer of its own. The shared split is returned only if its slowest stage is faster than the best
            whole-layer split's by more than ``min_gain`` (a share costs a gradient exchange and a synchronisation).
        min_share: a cut closer than this fraction of a layer to a layer boundary snaps to the boundary.
        min_gain: the relative gain a shared split must bring (see ``shareable``).
        share_seconds: ``L`` extra seconds that both stages pay per batch when a layer is shared (e.g. exchanging
            its gradient); counted when comparing a shared split with the whole-layer one.

    Returns:
        the ``S`` stages' first layers, e.g. ``(0, 2)`` for layers ``0..1`` and ``2..L-1``; a non-integer start
        ``j + f`` shares layer ``j``: the stage before it takes the first fraction ``f`` of each batch's samples.
    """
    costs = _check_costs(seconds, "seconds")
    n = len(costs)
    num_stages = check_int(num_stages, "num_stages")
    if not 1 <= num_stages <= n:
        raise ValueError(f"num_stages must be between 1 and the number of layers ({n}), got {num_stages}")
    send = _send_seconds(output_bytes, bytes_per_second, n)
    cost = _stage_cost_table(costs, send)

    # Phase 1, the bottleneck: worst[k][a] is the smallest possible maximum stage cost of layers a..L-1 in k stages.
    inf = math.inf
    worst = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    worst[0][n] = 0.0
    for k in range(1, num_stages + 1):
        for a in range(n - k, -1, -1):
            # the first of the k stages is a..b-1; the k - 1 others need at least one layer each
            worst[k][a] = min(max(cost[a][b - 1], worst[k - 1][b]) for b in range(a + 1, n - k + 2))
    bound = worst[num_stages][0]

    # Phase 2, the tie-break: the smallest sum of squares with every stage within the bottleneck. Scanning cuts in
    # ascending order and keeping the first minimum gives the earliest cut among equals.
    squares = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[-1] * (n + 1) for _ in range(num_stages + 1)]
    squares[0][n] = 0.0
    for k in range(1, num_stages + 1):
        for a in range(n - k, -1, -1):
            for b in range(a + 1, n - k + 2):
                c = cost[a][b - 1]
                # the same table entries that gave ``bound``, so this comparison is exact
                if c > bound or squares[k - 1][b] == inf:
                    continue
                total = c * c + squares[k - 1][b]
                if total < squares[k][a]:
                    squares[k][a], cut[k][a] = total, b
    starts, a = [0], 0
    for k in range(num_stages, 1, -1):
        a = cut[k][a]
        starts.append(a)
    whole = tuple(starts)
    if shareable is None or num_stages == 1:
        return whole
    min_share = check_real(min_share, "min_share", low=0.0, high=0.5, low_open=True, high_open=True)
    shared = _shared_split(costs, num_stages, _check_flags(shareable, n), min_share)
    if shared is None:
        return whole
    extra = _check_costs(share_seconds, "share_seconds") if share_seconds is not None else [0.0] * n
    if len(extra) != n:
        raise ValueError(f"share_seconds must have one entry per layer ({n}), got {len(extra)}")
    penalty = max((extra[j] for j in shared_layers(shared)), default=0.0)
    if max(stage_times(costs, shared, output_bytes, bytes_per_second)) + penalty < (1 - min_gain) * bound:
        return shared
    return whole


def _shared_split(costs: list[float], num_stages: int, shareable: list[bool], min_share: float):
    """Cuts at ``k / S`` of the total cost, inside shareable layers; ``None`` if a stage would own no whole layer."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    total = prefix[-1]
    if total <= 0:
        return None
    cuts: list[float] = [0]
    for k in range(1, num_stages):
        target = total * k / num_stages
        j = min(max(bisect.bisect_right(prefix, target) - 1, 0), n - 1)
        f = (target - prefix[j]) / costs[j] if costs[j] > 0 else 0.0
        if shareable[j] and min_share <= f <= 1 - min_share:
            cuts.append(j + f)
        else:  # the nearer boundary
            cuts.append(j if target - prefix[j] <= prefix[j + 1] - target else j + 1)
    try:
        return check_split(cuts, n, shared=True)
    except ValueError:
        return None


def shared_layers(starts: Sequence[float]) -> dict[int, float]:
    """``{layer: fraction}`` of the layers a split shares: the stage before the cut takes the first ``fraction`` of
    each batch's samples through ``layer``, the stage after it the rest."""
    return {int(math.floor(c)): float(c - math.floor(c)) for c in starts if c != math.floor(c)}


def stage_times(
    seconds: Sequence[float],
    starts: Sequence[float],
    output_bytes: Sequence[int] | None = None,
    bytes_per_second: float | None = None,
) -> list[float]:
    """Each stage's cost for the split ``starts``, as :func:`balance_stages` counts it: its layers' ``seconds``
    plus, given ``output_bytes`` and ``bytes_per_second``, the seconds to send its output (all stages but the last).
    A shared layer (non-integer start ``j + f``) costs the stage before the cut ``f`` of its seconds and the stage
    after it the rest; the stage before the cut sends the other part's rows of layer ``j - 1``'s output and its own
    part's rows of layer ``j``'s, charged as ``(1 - f) * send[j - 1] + f * send[j]``."""
    costs = _check_costs(seconds, "seconds")
    n = len(costs)
    split = check_split(starts, n, shared=True)
    send = _send_seconds(output_bytes, bytes_per_second, n)
    if all(isinstance(c, int) for c in split):
        ints = [int(c) for c in split]
        ends = [*ints[1:], n]
        # Summed left to right from zero, as balance_stages' table is, so the figures match it bit for bit.
        return [_sum(costs[a:b]) + (send[b - 1] if b < n else 0.0) for a, b in zip(ints, ends)]
    bounds = [*split, n]

    def before(c: float) -> float:  # the cost of everything before position c
        j = math.floor(c)
        return _sum(costs[:j]) + ((c - j) * costs[j] if j < n else 0.0)

    def sending(c: float) -> float:
        j, f = math.floor(c), c - math.floor(c)
        return (1 - f) * send[j - 1] + f * send[j] if f else send[j - 1]

    return [before(b) - before(a) + (sending(b) if b < n else 0.0) for a, b in zip(bounds, bounds[1:])]


def stage_balance(times: Sequence[float]) -> float:
    """The slowest stage's time over the mean stage time: 1.0 is a perfect balance, ``S`` the worst for ``S``
    stages (all the work in one). Stages that all take no time count as balanced (1.0)."""
    values = _check_costs(times, "times")
    mean = _sum(values) / len(values)
    return max(values) / mean if mean > 0 else 1.0


def check_split(starts: Sequence[float], num_layers: int, *, shared: bool = False) -> tuple[float, ...]:
    """Validate a split given as the stages' first layers and return it as a tuple of ints.

    ``starts`` must begin at 0 and increase strictly, with its last entry below ``num_layers``: ``(0, 2)`` splits
    four layers into ``0..1`` and ``2..3``. With ``shared=True`` a start may be a non-integer ``j + f`` (layer ``j``
    shared: :func:`balance_stages`), as long as every stage still owns at least one whole layer; integral starts
    are returned as ints.
    """
    num_layers = check_int(num_layers, "num_layers")
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    if num_layers == 1:
        form = "the stages' first layers; a one-layer network has one stage: (0,)"
    else:
        c = num_layers // 2
        form = (
            f"the stages' first layers: starting at 0, strictly increasing, each below num_layers={num_layers}; "
            f"e.g. (0, {c}) for two stages, layers 0..{c - 1} and {c}..{num_layers - 1}"
        )
    if isinstance(starts, (str, bytes, numbers.Number)):
        raise TypeError(f"starts must be a sequence of ints, {form}; got {type(starts).__name__}")
    try:
        items = list(starts)
    except TypeError:
        raise TypeError(f"starts must be a sequence of ints, {form}; got {type(starts).__name__}") from None
    kind = numbers.Real if shared else numbers.Integral
    for j, s in enumerate(items):
        if isinstance(s, torch.Tensor) and s.numel() == 1:
            items[j] = s = s.item()
        if isinstance(s, bool) or not isinstance(s, kind):
            raise TypeError(f"starts[{j}] must be {'a number' if shared else 'an int'}, got {type(s).__name__}; "
                            f"starts is {form}")
        if shared and not math.isfinite(s):
            raise ValueError(f"starts[{j}] must be finite, got {s!r}")
    split = tuple(int(s) if s == int(s) else float(s) for s in items)
    if not split:
        raise ValueError(f"starts must not be empty; it is {form}")
    ok = split[0] == 0 and all(a < b for a, b in zip(split, split[1:])) and split[-1] < num_layers
    if not ok:
        hint = ""
        if all(s > 0 for s in split) and sum(split) == num_layers:
            # Stage sizes are the other common way to write a split; say what the starts would be.
            as_starts = tuple(sum(split[:j]) for j in range(len(split)))
            hint = f"; {split} looks like stage sizes, whose starts are {as_starts}"
        raise ValueError(f"starts must be {form}, got {split}{hint}")
    bounds = [*split, num_layers]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if math.ceil(a) >= math.floor(b):
            raise ValueError(f"stage {k} of the split {split} owns no whole layer (it runs only parts of layers "
                             f"{math.floor(a)}..{math.ceil(b) - 1}); every stage needs at least one layer of its own")
    return split


# -- helpers ------------------------------------------------------------------------------------------------------
def _sum(values: Sequence[float]) -> float:
    total = 0.0
    for v in values:
        total += v
    return total


def _stage_cost_table(costs: list[float], send: list[float]) -> list[list[float]]:
    """``table[a][b]``: the cost of a stage of layers ``a..b`` (``b >= a``), summed left to right as
    :func:`stage_times` sums it."""
    n = len(costs)
    table = [[0.0] * n for _ in range(n)]
    for a in range(n):
        total = 0.0
        for b in range(a, n):
            total += costs[b]
            table[a][b] = total + (send[b] if b < n - 1 else 0.0)
    return table


def _send_seconds(output_bytes: Sequence[int] | None, bytes_per_second: float | None, n: int) -> list[float]:
    """Seconds to send each layer's boundary output (zeros when communication is not modelled)."""
    if output_bytes is None and bytes_per_second is None:
        return [0.0] * n
    if output_bytes is None or bytes_per_second is None:
        raise ValueError(
            "output_bytes and bytes_per_second must be given together (to charge stage outputs), or neither"
        )
    if isinstance(bytes_per_second, bool) or not isinstance(bytes_per_second, numbers.Real):  # may be inf
        raise TypeError(f"bytes_per_second must be a number, got {type(bytes_per_second).__name__}")
    bandwidth = float(bytes_per_second)
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bytes_per_second must be a positive finite number, got {bytes_per_second!r}")
    sizes = _check_costs(output_bytes, "output_bytes")
    if len(sizes) != n:
        raise ValueError(f"output_bytes must have one entry per layer ({n}), got {len(sizes)}")
    return [b / bandwidth for b in sizes]


def _check_costs(values: Sequence[float], name: str) -> list[float]:
    """A non-empty sequence of finite, non-negative real numbers, as floats."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}") from None
    out: list[float] = []
    for j, v in enumerate(items):
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}[{j}] must be a number, got {type(v).__name__}")
        f = float(v)
        if not math.isfinite(f) or f < 0:
            raise ValueError(f"{name}[{j}] must be a finite non-negative number, got {v!r}")
        out.append(f)
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


def _check_flags(values: Sequence[bool], n: int) -> list[bool]:
    items = list(values)
    if len(items) != n or not all(isinstance(v, bool) for v in items):
        raise ValueError(f"shareable must be {n} bools, one per layer, got {values!r}")
    return items
