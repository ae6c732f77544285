"""``BackpropTrainer``: the baselines FF is compared against, trained with the same data, recipe and evaluation.

* On an :class:`~ffkit.FFNetwork` it is **BP-DeepSup**: the sum of every layer's local loss (and the head's) is
  back-propagated end to end, so gradients cross layer boundaries (DTG-FF's "BP-DeepSup, same VGG8 and recipe").
  With ``deep_supervision=False`` only the last layer's loss (and the head's) is: single-head backprop on the same
  backbone and width.
* On a single-head model from :mod:`ffkit.models.baselines` (``bp_resnet18``, ``bp_vgg8``) it is plain backprop
  with cross-entropy on the output.

Gradient accumulation and activation checkpointing trade time for memory without changing the update; the memory
benchmark (``benchmarks/memory.py``) compares them with Forward-Forward's layer-by-layer training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import defaults
from .._validation import check_int
from ..network import FFNetwork
from .base import DivergenceError, StepResult, Trainer, check_trainer_args
from .schedules import all_finite, make_optimizer, make_schedule, optimizer_params, run_plan

__all__ = ["BackpropTrainer"]


class BackpropTrainer(Trainer):
    """One optimizer over all parameters, one backward pass per step through the whole network.

    Args:
        network: an :class:`~ffkit.FFNetwork` (trained as BP-DeepSup) or a single-head baseline model.
        lr: initial learning rate (as :class:`~ffkit.LocalTrainer`, and likewise the next six).
        final_lr: learning rate at the end of the schedule (default ``lr / 10``).
        weight_decay: weight decay.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        schedule: ``"cosine"``, ``"constant"``, ``"cooldown"`` or ``"piecewise"``.
        total_steps: number of training steps the schedule spans.
        device: where to train (``None``, the default: CUDA when available, else the CPU, as ``ffkit train
            --device auto``; :mod:`ffkit.device`).
        milestones: ``((step, factor), ...)`` for ``"piecewise"``.
        schedule_every: the lr changes once per this many steps (the batches per epoch: an epoch-wise schedule).
        label_smoothing: label smoothing of a single-head model's cross-entropy.
        deep_supervision: on an FFNetwork, back-propagate every layer's local loss (``True``, BP-DeepSup) or only
            the last layer's (``False``, single-head backprop on the same backbone); the classifier head's loss, if
            the network has a head, is included either way, and every layer's loss and accuracy are still reported.
            A head that reads the training pass sends its loss into the layers; one on its own pass (a neutral-label
            pass) does only if it is hybrid (``ClassifierHead(hybrid=True)``), else it reads detached features.
            A single-head baseline has one loss already, so the flag does not change it.
        accumulation_steps: split each batch into this many micro-batches along dim 0 (``torch.tensor_split``),
            back-propagate each with its loss weighted by ``micro_batch / batch``, then take one optimizer step.
            Only one micro-batch's activations are held at a time; the update equals the whole batch's (up to float
            rounding) unless a layer depends on the batch (BatchNorm statistics) or on fresh random draws (dropout
            masks, random negative labels differ between micro-batches). Must not exceed the batch size.
        checkpoint: activation checkpointing of every layer of an FFNetwork (``torch.utils.checkpoint``,
            non-reentrant): only each layer's inputs are held for backward, and each layer's forward runs again
            when the backward pass reaches it. The update is unchanged (dropout masks are replayed). Single-head
            baselines have no layer boundaries to checkpoint at: ``ValueError``.
        channels_last: channels-last memory format, as :class:`~ffkit.LocalTrainer` (and likewise the next three),
            so that a comparison with FF can give both engines the same optimisations.
        amp: bfloat16 autocast of the forward and loss.
        tta: test-time augmentation of evaluation, as :class:`~ffkit.LocalTrainer`.
        compile: ``torch.compile`` of the forward (``True`` or a backend name).
        fused_optimizer: PyTorch's fused optimizer kernels (``None``: when the parameters allow it).
    """

    def __init__(
        self,
        network,
        *,
        lr: float = defaults.BACKPROP_LR,
        final_lr: float | None = None,
        weight_decay: float = defaults.WEIGHT_DECAY,
        optimizer: str = defaults.OPTIMIZER,
        schedule: str = defaults.SCHEDULE,
        total_steps: int | None = None,
        device: str | torch.device | None = None,
        milestones: tuple[tuple[int, float], ...] = (),
        schedule_every: int = 1,
        label_smoothing: float = 0.0,
        deep_supervision: bool = True,
        accumulation_steps: int = 1,
        checkpoint: bool = False,
        channels_last: bool = False,
        amp: bool = False,
        tta: str | None = None,
        compile: bool | str = False,
        fused_optimizer: bool | None = None,
    ) -> None:
        check_trainer_args(network, lr, schedule, total_steps)
        for name, flag in (("deep_supervision", deep_supervision), ("checkpoint", checkpoint)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        check_int(accumulation_steps, "accumulation_steps", minimum=1)
        if checkpoint and not isinstance(network, FFNetwork):
            raise ValueError(
                f"checkpoint=True checkpoints the layers of an ffkit FFNetwork; {type(network).__name__} is a "
                f"single-head model with no layer boundaries to checkpoint at"
            )
        self._setup(network, lr, final_lr, device)
        self._setup_performance(channels_last, amp, compile, tta)
        self.label_smoothing = label_smoothing
        self.deep_supervision = deep_supervision
        self.accumulation_steps = accumulation_steps
        self.checkpoint = checkpoint
        params = [p for p in network.parameters() if p.requires_grad]
        opt = make_optimizer(params, optimizer, self.lr, weight_decay, fused=fused_optimizer)
        self.optimizers = [opt]
        self.plan = run_plan(optimizer, schedule, total_steps, schedule_every)
        self.schedulers = [make_schedule(opt, schedule, total_steps, self.final_lr, milestones, schedule_every)]
        self._init_progress()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One end-to-end update on ``x [B, C, H, W]``, ``y [B]`` (``index [B]``: dataset indices, optional)."""
        x, y = self.batch_to_device(x, y)
        n, steps = x.shape[0], self.accumulation_steps
        if steps > n:
            raise ValueError(
                f"accumulation_steps ({steps}) must not exceed the batch size ({n}): every micro-batch needs a sample"
            )
        parts = zip(
            torch.tensor_split(x, steps),
            torch.tensor_split(y, steps),
            torch.tensor_split(index, steps) if index is not None else [None] * steps,
        )
        opt = self.optimizers[0]
        assert opt is not None  # one optimizer over the whole network
        opt.zero_grad(set_to_none=True)
        # the forward changes BatchNorm statistics before the loss can be checked: put them back if it diverges
        saved = [(buf, buf.clone()) for buf in self.network.buffers()]
        losses: torch.Tensor | None = None
        correct: torch.Tensor | None = None
        head_result: tuple[torch.Tensor, torch.Tensor] | None = None
        for xm, ym, im in parts:
            # Each micro-batch loss is a mean over its samples; weighting by its share makes the summed gradient the
            # gradient of the whole batch's mean loss.
            weight = xm.shape[0] / n
            with self.autocast():
                total, m_losses, m_correct, m_head = self._losses(xm, ym, im)
            if not torch.isfinite(total):
                self._refuse_step(opt, saved, f"the backprop loss became non-finite ({total.item()})",
                                  f"; per-layer losses: {m_losses.tolist()}")
            (total if steps == 1 else total * weight).backward()
            del total  # free this micro-batch's graph before the next one is built
            if losses is None or correct is None:
                losses, correct = m_losses * weight, m_correct
                head_result = (m_head[0] * weight, m_head[1]) if m_head is not None else None
            else:
                losses, correct = losses + m_losses * weight, correct + m_correct
                if m_head is not None and head_result is not None:
                    head_result = (head_result[0] + m_head[0] * weight, head_result[1] + m_head[1])
        assert losses is not None and correct is not None  # at least one micro-batch ran
        self._check_update(opt, saved)
        if self.step_undo is not None:
            self.step_undo.before_step([opt], self.step_count, saved)
        opt.step()
        self._step_schedules()
        self.step_count += 1
        return StepResult(losses, correct, n, head_result)

    def _check_update(self, opt: torch.optim.Optimizer, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Refuse the step if a gradient is not finite behind a finite loss (a square root or a division at 0)."""
        grads = [p.grad for p in optimizer_params(opt) if p.grad is not None]
        if grads and not bool(all_finite(grads)):
            self._refuse_step(opt, saved, "a gradient became non-finite behind a finite loss")

    def _refuse_step(
        self, opt: torch.optim.Optimizer, saved: list[tuple[torch.Tensor, torch.Tensor]], what: str, detail: str = ""
    ) -> None:
        """Drop the step (gradients, and the statistics its forward changed) and raise a ``DivergenceError`` that
        names what was not finite, or the weights when the previous step overflowed them (the usual cause)."""
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buf, before in saved:
                buf.copy_(before)
        if not bool(all_finite(optimizer_params(opt))):
            what = "the network holds non-finite weights after the previous step (whose gradients were finite)"
            detail = ""
        epoch, step = self.epoch + 1, self.step_count + 1
        raise DivergenceError(f"{what} at epoch {epoch}, step {step}{detail}; lower the learning rate (now "
                              f"{opt.param_groups[0]['lr']:.3g}) or check the input data", epoch=epoch, step=step)

    def _losses(
        self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The loss to back-propagate for ``x [b, ...]``, ``y [b]``; detached per-layer losses ``[L]``, correct
        counts ``[L]`` and the head's ``(loss, correct)`` (or ``None``)."""
        net = self.network
        if not isinstance(net, FFNetwork):
            logits = net(x)
            total = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            return total, total.detach().view(1), (logits.detach().argmax(dim=1) == y).sum().view(1), None
        batch = net.objective.prepare(net, x, y, index)
        last = len(net) - 1
        losses, correct, head_feats = [], [], {}
        for i, out in net.iter_layers(batch.inputs, detach=False, checkpoint=self.checkpoint):
            if self.deep_supervision or i == last:
                loss, n_right = net.layer_loss(i, out, batch)
            else:  # single-head: earlier layers' losses are only reported
                with torch.no_grad():
                    loss, n_right = net.layer_loss(i, out, batch)
            losses.append(loss)
            correct.append(n_right)
            if net.head is not None and net.objective.head_uses_training_pass and i in net.head.layers:
                head_feats[i] = out.features[: batch.batch_size]
        total = torch.stack(losses).sum() if self.deep_supervision else losses[-1]
        head_result = None
        if net.head is not None:
            if head_feats:  # gradients from the head flow into the layers too: this is backprop
                logits = net.head([head_feats[i] for i in net.head.layers])
            elif net.head.hybrid:
                # a hybrid head's own (neutral-label) pass keeps its graph, as under LocalTrainer, so its loss reaches
                # the layers it passes through
                logits = net.head(self._head_features(x, checkpoint=self.checkpoint))
            else:  # a head on its own pass reads detached features: its loss trains the head only
                logits = net.head_logits(x)
            head_loss = net.head.loss(logits, y)
            total = total + head_loss
            head_result = (head_loss.detach(), (logits.detach().argmax(dim=1) == y).sum())
        return total, torch.stack([v.detach().float() for v in losses]), torch.stack(correct), head_result

    def _head_features(self, x: torch.Tensor, *, checkpoint: bool) -> list[torch.Tensor]:
        """The features ``[b, ...]`` of the head's layers (in ``head.layers`` order) from an undetached pass over
        :meth:`~ffkit.objectives.Objective.head_inputs` of ``x`` (the neutral label for label-input networks)."""
        net = self.network
        head = net.head
        inputs = net.objective.head_inputs(net, x)
        feats = {
            i: out.features
            for i, out in net.iter_layers(inputs, end=max(head.layers), detach=False, checkpoint=checkpoint)
            if i in head.layers
        }
        return [feats[i] for i in head.layers]
