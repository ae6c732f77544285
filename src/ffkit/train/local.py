"""``LocalTrainer``: trains any :class:`~ffkit.FFNetwork` layer by layer with strictly local gradients."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .. import defaults
from .._validation import check_real
from ..network import FFNetwork
from ..objectives import PreparedBatch
from .base import (
    DIVERGENCE_ACTIONS,
    DivergenceError,
    StepResult,
    Trainer,
    check_trainer_args,
)
from .schedules import all_finite, make_optimizer, make_schedule, optimizer_params, run_plan

if TYPE_CHECKING:
    from .data_parallel import GradientAverage

__all__ = ["LocalTrainer", "PendingUpdate"]


class LocalTrainer(Trainer):
    """Train an :class:`~ffkit.FFNetwork` with one optimizer and one lr schedule per layer.

    Each step runs every layer exactly once, in order (DeeperForward Alg. 2): layer ``l`` gets the detached
    features of layer ``l - 1``, computes its local loss, updates its own parameters and frees its graph before
    layer ``l + 1`` runs, so at most one layer's activations are held for backward at a time. No gradient crosses a
    layer boundary.

    Args:
        network: the network to train.
        lr: initial learning rate of every layer. The default suits short runs; DeeperForward's 150-epoch recipe
            uses 0.08 (``ffkit.recipes``).
        final_lr: learning rate at the end of the cosine schedule (default ``lr / 10``, as DeeperForward's
            0.08 -> 0.008).
        weight_decay: weight decay (DeeperForward: 5e-4).
        optimizer: ``"adam"`` (default, as DeeperForward), ``"adamw"`` or ``"sgd"``.
        schedule: ``"cosine"`` (stepped every iteration over ``total_steps``), ``"constant"``, ``"cooldown"`` or
            ``"piecewise"`` (see :func:`ffkit.train.base.make_schedule`).
        total_steps: number of training steps the schedule spans (epochs x batches per epoch); required for
            ``"cosine"`` and ``"cooldown"``.
        milestones: ``((step, factor), ...)`` for ``"piecewise"``.
        schedule_every: the lr changes once per this many steps; the batches per epoch make the schedule
            epoch-wise, as DeeperForward's released code (``CosineAnnealingLR(T_max=epochs)`` stepped per epoch).
        device: where to train: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a :class:`torch.device`; ``None`` (the
            default) or ``"auto"``: CUDA when available, else the CPU, as ``ffkit train --device auto``
            (:mod:`ffkit.device`). The network is moved there.
        overlap: The Trifecta's Overlapping Local Updates (OLU). Layers train in overlapping pairs: at step ``t``
            layer ``k`` updates when ``(k even) XOR (t even)``, with an optimizer over its own and layer ``k - 1``'s
            parameters (a learned label encoder is stepped by layer 0's optimizer only); the layers that do not
            update pass their features on *undetached*, so each gradient crosses exactly one layer boundary (a residual
            shortcut, which crosses more, carries detached features) and the pairing alternates with the step's
            parity. ``t`` is the batch's index in its epoch when training with
            :meth:`fit` or :meth:`train_epoch` (so it restarts at 0 every epoch, as the release's), else the
            trainer's step count.
        head_lr: learning rate of the network's classifier head, if it has one (default ``lr``).
        head_weight_decay: the head's weight decay (default ``weight_decay``).
        channels_last: keep conv weights and activations in channels-last memory format (faster convolutions on
            CPU with wide early layers and on CUDA tensor cores).
        amp: run each layer's forward and loss under ``torch.autocast`` in bfloat16 (CUDA, or CPUs with bf16
            support); parameters, optimizer states and the layer losses stay float32.
        tta: test-time augmentation of evaluation and SIP: ``None``, or ``"flip"`` (each image's class scores
            averaged with its mirror image's; :func:`~ffkit.evaluation.collect_scores`). Training is unchanged.
        compile: compile each layer's forward with ``torch.compile`` (its backward is compiled with it); ``True`` for
            the default backend, or a backend name such as ``"aot_eager"``.
        fused_optimizer: use PyTorch's fused optimizer kernels (``None``: when the parameters allow it).
        check_finite: check every layer's loss and goodness for NaN and infinity before any optimizer steps. The
            check runs once per step on the stacked per-layer flags, so a CUDA step needs no host synchronisation
            per layer; the layers' optimizer steps wait for it (their gradients are held until then).
        layer_steps: per layer, the window ``(start, end)`` of training steps in which it trains (``start <= step <
            end``; ``None`` for every step): outside it the layer still runs (in training mode, so a BatchNorm keeps
            updating its statistics) and passes its features on, but takes no backward pass and no optimizer step.
            CwComp's released code trains its layers in such windows of epochs ("ILT"); recipes give them in epochs
            (``Recipe.layer_epochs``). Not with ``overlap``.
        on_divergence: what a non-finite step does. ``"stop"`` (default): raise
            :class:`~ffkit.train.DivergenceError` naming the layer, the epoch and the step; no parameter, optimizer
            state or normalisation statistic has taken the bad step, so the trainer holds the last good state
            (:meth:`fit` saves it as the checkpoint before raising). ``"skip"``: drop the batch's update (every
            layer's, and the statistics its forward changed), count it in the epoch's ``skipped_batches`` and go on;
            the learning-rate schedules still advance, so the schedule stays tied to the data position.

    Performance: each layer's input is detached (it never requires grad), so its backward computes weight
    gradients only, never the input gradient that backprop needs; each layer runs exactly once per batch and its
    graph is freed before the next layer runs. ``benchmarks/step_throughput.py`` measures the step against backprop.
    """

    #: Averages each optimizer's gradients across data-parallel ranks (set by
    #: :class:`~ffkit.train.DataParallelTrainer`): started when a layer's backward ends, finished before any step.
    gradient_sync: GradientAverage | None = None

    def __init__(
        self,
        network: FFNetwork,
        *,
        lr: float = defaults.LR,
        final_lr: float | None = None,
        weight_decay: float = defaults.WEIGHT_DECAY,
        optimizer: str = defaults.OPTIMIZER,
        schedule: str = defaults.SCHEDULE,
        total_steps: int | None = None,
        device: str | torch.device | None = None,
        milestones: tuple[tuple[int, float], ...] = (),
        schedule_every: int = 1,
        overlap: bool = False,
        head_lr: float | None = None,
        head_weight_decay: float | None = None,
        channels_last: bool = False,
        amp: bool = False,
        tta: str | None = None,
        compile: bool | str = False,
        fused_optimizer: bool | None = None,
        check_finite: bool = True,
        on_divergence: str = "stop",
        layer_steps: Sequence[tuple[int, int] | None] | None = None,
    ) -> None:
        if not isinstance(network, FFNetwork):
            raise TypeError(f"network must be an ffkit FFNetwork, got {type(network).__name__}")
        check_trainer_args(network, lr, schedule, total_steps)
        for name, value, positive in (("head_lr", head_lr, True), ("head_weight_decay", head_weight_decay, False)):
            if value is not None:
                check_real(value, name, low=0.0, low_open=positive)
                if network.head is None:
                    raise ValueError(f"{name} configures a classifier head, but this network has none")
        self._setup(network, lr, final_lr, device)
        self._setup_performance(channels_last, amp, compile, tta)
        if on_divergence not in DIVERGENCE_ACTIONS:
            raise ValueError(f"on_divergence must be one of {DIVERGENCE_ACTIONS}, got {on_divergence!r}")
        self.check_finite = bool(check_finite)
        self.on_divergence = on_divergence
        self.overlap = bool(overlap)
        self.layer_steps = _check_layer_steps(layer_steps, len(network), self.overlap)
        self.optimizers: list[torch.optim.Optimizer | None] = []
        self.schedulers: list[torch.optim.lr_scheduler.LRScheduler | None] = []
        self.plan = run_plan(optimizer, schedule, total_steps, schedule_every)
        for i in range(len(network)):
            params = [p for p in network.local_parameters(i) if p.requires_grad]
            if self.overlap and i > 0:  # OLU: layer i's loss also trains layer i - 1 (not a learned label encoder,
                # which only layer 0's optimizer steps, as in The Trifecta's release)
                params += [p for p in network.layers[i - 1].parameters() if p.requires_grad]
            opt = make_optimizer(params, optimizer, self.lr, weight_decay, fused=fused_optimizer) if params else None
            self.optimizers.append(opt)
            if opt is None:
                self.schedulers.append(None)
                continue
            self.schedulers.append(make_schedule(opt, schedule, total_steps, self.final_lr, milestones, schedule_every))
        if network.head is not None and network.head.hybrid and (network.objective.head_uses_training_pass or overlap):
            # Its loss must reach the layers through a pass of its own (the training pass frees each layer's graph
            # before the next layer runs), and under OLU not every layer steps at every step.
            raise ValueError(
                "a hybrid classifier head needs its own neutral-label pass through the layers (PosNegObjective) and "
                "overlap=False"
            )
        if network.head is not None:  # the head has its own optimizer and schedule, after the layers'
            lr_h = self.lr if head_lr is None else head_lr
            wd_h = weight_decay if head_weight_decay is None else head_weight_decay
            opt = make_optimizer(network.head.parameters(), optimizer, lr_h, wd_h, fused=fused_optimizer)
            self.optimizers.append(opt)
            final_h = lr_h * self.final_lr / self.lr
            self.schedulers.append(make_schedule(opt, schedule, total_steps, final_h, milestones, schedule_every))
        self._init_progress()

    # -- one step -----------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One local update of every layer on the batch ``x [B, C, H, W]``, ``y [B]``."""
        net = self.network
        x, y = self.batch_to_device(x, y)
        update = self.begin_update(range(len(net)), head=True)  # before prepare: adaptive negatives change BN stats
        batch = net.objective.prepare(net, x, y, index)
        goodness: list[torch.Tensor | None] = []
        losses, correct, head_feats, _ = self.train_layers(batch, batch.inputs, update=update, goodness=goodness)
        head_result = None
        # a hybrid head's loss adds to the layers' held gradients, so it runs before their optimizers step, as does a
        # head that reads the layers before this step's update
        same_step = net.head is not None and (net.head.hybrid or net.head.pre_update)
        if net.head is not None and (net.objective.head_uses_training_pass or same_step):
            head_result = self.head_step(batch, head_feats, update)
        applied = self.commit_update(update, losses, head_result)
        if applied and net.head is not None and not net.objective.head_uses_training_pass and not same_step:
            # The head reads a neutral-label pass through the layers as this step's update left them, so it is
            # trained and checked after that update (a second synchronisation, for such heads only). If it
            # diverges, the layers keep their update and the head does not take its own.
            head_update = self.begin_update((), head=True)
            head_result = self.head_step(batch, {}, head_update)
            applied = self.commit_update(head_update, losses[:0], head_result, first_layer=len(net))
        self._finish_step(range(len(self.schedulers)))
        g_pos = g_neg = None
        if goodness and all(g is not None for g in goodness):
            g_pos, g_neg = torch.stack(goodness).unbind(1)  # type: ignore[arg-type]  # [L, 2] -> two [L]
        return StepResult(losses, correct, batch.batch_size, head_result, skipped=not applied, goodness_pos=g_pos,
                          goodness_neg=g_neg)

    def train_layers(
        self,
        batch: PreparedBatch,
        inputs: torch.Tensor,
        *,
        start: int = 0,
        end: int | None = None,
        shortcuts: dict[int, torch.Tensor] | None = None,
        keep: Iterable[int] = (),
        loss_scale: float = 1.0,
        before_step: Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        update: PendingUpdate | None = None,
        goodness: list[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Update layers ``start..end`` in order on one batch: the core of :meth:`train_step` and of a pipeline stage.

        Args:
            batch: the prepared batch (targets; ``batch_size`` for positive/negative splits).
            inputs: layer ``start``'s input (the network input when ``start == 0``, else layer ``start - 1``'s
                detached features).
            start: first layer of the range.
            end: last layer of the range (inclusive; ``None``: the last layer).
            shortcuts: detached features of earlier layers that residual shortcuts into this range read.
            keep: layers whose detached features to return (e.g. what the next pipeline stage needs).
            loss_scale: each layer's loss is multiplied by this before its backward: the share of the whole batch
                when ``batch`` is one part of it (a layer shared by two pipeline stages).
            before_step: called as ``before_step(i, scaled_loss, correct)`` between layer ``i``'s backward and its
                optimizer step (e.g. to sum the gradients of the batch's parts over processes); it returns the
                ``(loss, correct)`` to record for the layer.
            update: collect the range's optimizer steps and finiteness checks into this update (from
                :meth:`begin_update`), for the caller's :meth:`commit_update`; ``None`` (default): check and step
                before returning.
            goodness: if given, each layer run appends its batch goodness here (``[2]``, positive and negative data,
                :meth:`~ffkit.objectives.Objective.batch_goodness`; ``None`` when the objective has none).

        Returns:
            ``(losses [n], correct [n], head_features, kept)``: per-layer losses and correct counts of the ``n`` layers
            run (on the device, no host synchronisation), the detached features a classifier head reads, and
            ``{i: features}`` for every ``i`` in ``keep`` that was run.
        """
        net = self.network
        commit = update is None
        if update is None:
            update = self.begin_update(range(start, len(net) if end is None else end + 1))
        keep = set(keep)
        losses, correct = [], []
        kept: dict[int, torch.Tensor] = {}
        # OLU's parity: inside an epoch, the batch's index in it (The Trifecta's release uses Lightning's batch_idx,
        # which restarts every epoch); a step outside one (a bare train_step), the trainer's step count.
        progress = getattr(self, "_epoch_progress", None)
        updates = self.updates_at(progress.batches if progress is not None else self.step_count)
        head = net.head
        head_feats: dict[int, torch.Tensor] = {}
        reuse = head is not None and net.objective.head_uses_training_pass
        layers = net.iter_layers(inputs, start=start, end=end, detach=updates, shortcuts=shortcuts)
        while True:
            with self.autocast():  # the forward of layer i runs inside next(): under autocast, backward outside
                nxt = next(layers, None)
                if nxt is None:
                    break
                i, out = nxt
                if reuse and i in head.layers:
                    head_feats[i] = out.features.detach()
                if i in keep:
                    kept[i] = out.features.detach()
                if not updates(i) or not self.trains_at(i, self.step_count):
                    # OLU: this layer is trained through the next layer's loss at this step; or it is outside its
                    # training window (layer_steps): it only passes its features on
                    with torch.no_grad():
                        loss, n_right = net.layer_loss(i, out, batch)
                    if goodness is not None:
                        goodness.append(net.objective.batch_goodness(out, batch))
                    losses.append(loss.float())
                    correct.append(n_right)
                    continue
                loss, n_right = net.layer_loss(i, out, batch)
                if goodness is not None:
                    goodness.append(net.objective.batch_goodness(out, batch))
            update.check(i, out)
            opt = self.optimizers[i]
            if loss_scale != 1.0:
                loss = loss * loss_scale
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
            recorded = loss.detach().float()
            if before_step is not None:
                recorded, n_right = before_step(i, recorded, n_right)
            if opt is not None:
                self._queue(update, opt)
            losses.append(recorded)
            correct.append(n_right)
            del loss, out, nxt  # release this layer's graph before the next layer runs
        stacked = torch.stack(losses)
        if commit:
            self.commit_update(update, stacked, None, first_layer=start)
        return stacked, torch.stack(correct), head_feats, kept

    # -- the finiteness guard -------------------------------------------------------------------------------------
    def begin_update(self, layers: Iterable[int], head: bool = False) -> PendingUpdate:
        """Start a step of ``layers`` (and of the head): remember their buffers (BatchNorm statistics) so a dropped
        step can restore them, since a step's forward changes them before its losses can be checked. Each call gets
        its own update, so pipeline stages in threads sharing this trainer never mix theirs."""
        if not self.check_finite:
            return PendingUpdate(checking=False)
        net = self.network
        modules = [net.layers[i] for i in layers] + ([net.head] if head and net.head is not None else [])
        return PendingUpdate(saved=[(b, b.clone()) for m in modules for b in m.buffers()])

    def commit_update(
        self,
        update: PendingUpdate,
        losses: torch.Tensor,
        head: tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        first_layer: int = 0,
    ) -> bool:
        """Take the optimizer steps ``update`` holds, after one check (one host synchronisation) that every loss
        ``losses [n]`` (of layers ``first_layer ..``), the head's loss and every layer's goodness are finite.
        Returns ``True`` if the update was applied, ``False`` if ``on_divergence="skip"`` dropped it.

        Raises:
            DivergenceError: a value is not finite and ``on_divergence="stop"``; the trainer's state is the one
                before this step.
        """
        pending, checks, saved = update.optimizers, update.checks, update.saved
        sync = self.gradient_sync
        if sync is not None:
            sync.finish()  # every rank's gradients averaged (and so checked alike) before anything steps
        if self.check_finite:
            every = losses.float() if head is None else torch.cat([losses.float(), head[0].float().view(1)])
            ok = torch.isfinite(every).all()
            if checks:
                ok = ok & torch.stack([c for _, c in checks]).all()
            # A finite loss can still back-propagate a non-finite gradient (a sqrt or a division at 0), which one
            # optimizer step would write into the weights, and which the next step's loss would catch too late: the
            # state before that step, the one a divergence saves, would already hold it.
            # The weights the step would update were left by the previous step, whose finite gradients can still
            # have overflowed them (an lr far too high); they are checked in the same synchronisation.
            grads = self._update_checks(pending)
            if grads:
                ok = ok & torch.stack([g for _, _, g in grads]).all()
            everywhere = sync.agree(ok) if sync is not None else ok  # the ranks step together or stop together
            if not bool(everywhere):
                for opt in pending:
                    opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for buf, before in saved:
                        buf.copy_(before)
                if self.on_divergence == "skip":
                    return False
                if bool(ok):
                    epoch, step = self.epoch + 1, self.step_count + 1
                    raise DivergenceError(
                        f"another rank's step was not finite at epoch {epoch}, step {step} (its own error names the "
                        f"layer); no rank took it", epoch=epoch, step=step)
                self._raise_divergence(losses, head, checks, first_layer, grads)
        if self.step_undo is not None:
            self.step_undo.before_step(pending, self.step_count, saved)
        for opt in pending:
            opt.step()
        return True

    def _queue(self, update: PendingUpdate, opt: torch.optim.Optimizer) -> None:
        """Hold ``opt``'s step for :meth:`commit_update`; its gradients are final, so a data-parallel exchange of
        them starts now, behind the next layer's work."""
        update.optimizers.append(opt)
        if self.gradient_sync is not None:
            self.gradient_sync.launch(opt)

    def _finish_step(self, schedulers: Iterable[int]) -> None:
        """Step the given schedulers (by index) and count the step."""
        self.step_schedules_of(schedulers)
        self.step_count += 1

    def _update_checks(self, pending: list[torch.optim.Optimizer]) -> list[tuple[int, str, torch.Tensor]]:
        """``(optimizer index, "gradient" or "weights", all finite)`` for each optimizer about to step (a layer's
        index is its optimizer's; the head's is ``L``), as device flags: one norm per tensor, no host
        synchronisation."""
        index = {id(o): k for k, o in enumerate(self.optimizers) if o is not None}
        flags = []
        for opt in pending:
            params = optimizer_params(opt)
            grads = [p.grad for p in params if p.grad is not None]
            for what, tensors in (("gradient", grads), ("weights", params)):
                if tensors:
                    flags.append((index[id(opt)], what, all_finite(tensors)))
        return flags

    def _raise_divergence(
        self,
        losses: torch.Tensor,
        head: tuple[torch.Tensor, torch.Tensor] | None,
        goodness_ok: list[tuple[int, torch.Tensor]],
        first_layer: int,
        update_ok: Sequence[tuple[int, str, torch.Tensor]] = (),
    ) -> None:
        """Name the first layer whose loss, goodness, weights or gradient is not finite (else the head) in a
        :class:`DivergenceError`."""
        net = self.network
        epoch, step = self.epoch + 1, self.step_count + 1
        bad_loss = (~torch.isfinite(losses)).nonzero().flatten().tolist()
        bad_goodness = [i for i, ok in goodness_ok if not bool(ok)]
        bad_update = [(i, what) for i, what, ok in update_ok if not bool(ok)]
        candidates: list[tuple[int, str, float | None]] = [
            (first_layer + k, "loss", losses[k].item()) for k in bad_loss
        ]
        candidates += [(i, "goodness", None) for i in bad_goodness]
        candidates += [(i, what, None) for i, what in bad_update if i < len(net)]
        if not candidates:
            assert head is not None
            if not math.isfinite(head[0].item()):
                shown = f"produced a non-finite loss ({head[0].item()})"
            elif any(what == "weights" for _, what in bad_update):
                shown = "holds non-finite weights after its previous step"
            else:
                shown = "produced a non-finite gradient"
            raise DivergenceError(
                f"the classifier head {shown} at epoch {epoch}, step {step}",
                layer=None, epoch=epoch, step=step,
            )
        # weights that are not finite explain everything computed from them, so they are named first
        rank = {"weights": 0, "goodness": 1, "loss": 2, "gradient": 3}
        i, what, value = min(candidates, key=lambda c: (c[0], rank[c[1]]))
        shown = {"loss": f"produced a non-finite loss ({value})", "goodness": "produced a non-finite goodness",
                 "gradient": "produced a non-finite gradient (with a finite loss)",
                 "weights": "holds non-finite weights after its previous step (whose gradients were finite)"}[what]
        if what == "gradient" and self.gradient_sync is not None:
            shown += " (averaged over the data-parallel ranks: it can come from another rank's samples)"
        raise DivergenceError(
            f"layer {i + 1} of {len(net)} (index {i}, {type(net.layers[i]).__name__}) {shown} at epoch "
            f"{epoch}, step {step}; lower the learning rate (now {self.current_lr(i):.3g}) or check the input data",
            layer=i, epoch=epoch, step=step,
        )

    def head_step(
        self, batch, features: dict[int, torch.Tensor], update: PendingUpdate
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train the classifier head on detached features (from the training pass, or a neutral-label pass); a hybrid
        head's neutral-label pass keeps its graph, so its loss also reaches the layers it passes through."""
        net = self.network
        head = net.head
        assert head is not None  # only called for a network with a head
        with self.autocast():  # the head runs in the precision of the layers' forward, whose features it reads
            if features:
                # channel-wise networks: the head reads the training pass's features of the real samples
                feats = {i: f[: batch.batch_size] for i, f in features.items()}
            else:
                with torch.set_grad_enabled(head.hybrid):
                    inputs = net.objective.head_inputs(net, batch.x)
                    last = max(head.layers)
                    detach = not head.hybrid
                    feats = {i: o.features for i, o in net.iter_layers(inputs, end=last, detach=detach)
                             if i in head.layers}
            logits = head([feats[i] for i in head.layers]) if head.hybrid else net.head_logits(batch.x, feats)
        loss = head.loss(logits.to(torch.promote_types(logits.dtype, torch.float32)), batch.target)  # bf16 -> fp32
        opt = self.optimizers[-1]
        assert opt is not None  # a network with a head always has the head's optimizer last
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self._queue(update, opt)  # stepped by commit_update with the layers'
        return loss.detach(), (logits.detach().argmax(dim=1) == batch.target).sum()

    def trains_at(self, layer: int, step: int) -> bool:
        """Whether ``layer`` is inside its training window (``layer_steps``) at training step ``step`` (0-based)."""
        window = self.layer_steps[layer] if self.layer_steps is not None else None
        return window is None or window[0] <= step < window[1]

    def updates_at(self, step: int) -> Callable[[int], bool]:
        """Which layers update (and detach their output) at training step ``step`` (0-based)."""
        if not self.overlap:
            return _always
        even_step = step % 2 == 0
        return lambda k: (k % 2 == 0) != even_step

    def current_lr(self, layer: int) -> float:
        opt = self.optimizers[layer]
        return opt.param_groups[0]["lr"] if opt is not None else 0.0


class WrapsLocalTrainer(Trainer):
    """Base of the engines built around one :class:`LocalTrainer` (``inner``), which does the per-layer optimisation
    (pipeline stages, federated ranks, chapters). What belongs to that optimisation is read through from ``inner``,
    never copied, so the two cannot disagree: the network, the device, the optimizers and their schedules, the
    learning rates and the precision options that evaluation follows."""

    inner: LocalTrainer

    @property
    def network(self) -> Any:
        return self.inner.network

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.inner.device

    @property
    def optimizers(self) -> list[torch.optim.Optimizer | None]:  # type: ignore[override]
        return self.inner.optimizers

    @property
    def schedulers(self) -> list[torch.optim.lr_scheduler.LRScheduler | None]:  # type: ignore[override]
        return self.inner.schedulers

    @property
    def lr(self) -> float:  # type: ignore[override]
        return self.inner.lr

    @property
    def final_lr(self) -> float:  # type: ignore[override]
        return self.inner.final_lr

    @property
    def amp(self) -> bool:  # type: ignore[override]
        return self.inner.amp

    @property
    def channels_last(self) -> bool:  # type: ignore[override]
        return self.inner.channels_last

    @property
    def tta(self) -> str | None:  # type: ignore[override]
        return self.inner.tta

    @property
    def plan(self) -> dict[str, Any] | None:  # type: ignore[override]
        return self.inner.plan


class PendingUpdate:
    """One training step's optimizer steps, held until its losses and goodness are known to be finite, with the
    checks queued on the device and the buffers to restore if the step is dropped."""

    def __init__(self, saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None, checking: bool = True) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.checks: list[tuple[int, torch.Tensor]] = []  # (layer, its goodness and scores all finite)
        self.saved = saved or []  # (buffer, its value before the step)
        self.checking = checking

    def check(self, layer: int, out) -> None:
        """Queue the check that the layer's goodness and class scores (the goodness per class) are finite: a loss can
        stay finite when they are not (a saturated softplus or softmax)."""
        if not self.checking:
            return
        values = [v.detach() for v in (out.goodness, out.scores) if v is not None]
        if values:
            ok = torch.isfinite(values[0]).all()
            for v in values[1:]:
                ok = ok & torch.isfinite(v).all()
            self.checks.append((layer, ok))


def _always(_: int) -> bool:
    return True


def _check_layer_steps(
    layer_steps: Sequence[tuple[int, int] | None] | None, n_layers: int, overlap: bool
) -> tuple[tuple[int, int] | None, ...] | None:
    if layer_steps is None:
        return None
    if overlap:
        raise ValueError("layer_steps (training windows per layer) conflicts with overlap=True (OLU)")
    windows = tuple(layer_steps)
    if len(windows) != n_layers:
        raise ValueError(f"layer_steps must give one window per layer ({n_layers}), got {len(windows)}")
    out: list[tuple[int, int] | None] = []
    for i, w in enumerate(windows):
        if w is None:
            out.append(None)
            continue
        if (not isinstance(w, (tuple, list)) or len(w) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in w) or not 0 <= w[0] <= w[1]):
            raise ValueError(f"layer_steps[{i}] must be None or (start, end) with 0 <= start <= end, got {w!r}")
        out.append((int(w[0]), int(w[1])))
    return tuple(out)


