"""``BackpropTrainer``: the baselines FF is compared against, trained with the same data, recipe and evaluation.

* On an :class:`~ffkit.FFNetwork` it is **BP-DeepSup**: the sum of every layer's local loss (and the head's) is
  back-propagated end to end, so gradients cross layer boundaries (DTG-FF's "BP-DeepSup, same VGG8 and recipe").
* On a single-head model from :mod:`ffkit.models.baselines` (``bp_resnet18``, ``bp_vgg8``) it is plain backprop
  with cross-entropy on the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..network import FFNetwork
from .base import DivergenceError, StepResult, Trainer, check_trainer_args, make_optimizer, make_schedule

__all__ = ["BackpropTrainer"]


class BackpropTrainer(Trainer):
    """One optimizer over all parameters, one backward pass per step through the whole network.

    Args:
        network: an :class:`~ffkit.FFNetwork` (trained as BP-DeepSup) or a single-head baseline model.
        lr, final_lr, weight_decay, optimizer, schedule, total_steps, device: as :class:`~ffkit.LocalTrainer`.
        label_smoothing: label smoothing of a single-head model's cross-entropy.
    """

    def __init__(
        self,
        network,
        *,
        lr: float = 1e-3,
        final_lr: float | None = None,
        weight_decay: float = 5e-4,
        optimizer: str = "adam",
        schedule: str = "cosine",
        total_steps: int | None = None,
        device: str | torch.device = "cpu",
        milestones: tuple[tuple[int, float], ...] = (),
        label_smoothing: float = 0.0,
    ) -> None:
        check_trainer_args(network, lr, schedule, total_steps)
        self._setup(network, lr, final_lr, device)
        self.label_smoothing = label_smoothing
        opt = make_optimizer([p for p in network.parameters() if p.requires_grad], optimizer, self.lr, weight_decay)
        self.optimizers = [opt]
        self.schedulers = [make_schedule(opt, schedule, total_steps, self.final_lr, milestones)]
        self._init_progress()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> StepResult:
        """One end-to-end update on ``x [B, C, H, W]``, ``y [B]``."""
        net = self.network
        x, y = self._batch_to_device(x, y)
        head_result = None
        if isinstance(net, FFNetwork):
            batch = net.objective.prepare(net, x, y, index)
            losses, correct, head_feats = [], [], {}
            for i, out in net.iter_layers(batch.inputs, detach=False):
                loss, n_right = net.objective.layer_loss(out, batch)
                losses.append(loss)
                correct.append(n_right)
                if net.head is not None and net.objective.head_uses_training_pass and i in net.head.layers:
                    head_feats[i] = out.features[: batch.batch_size]
            total = torch.stack(losses).sum()
            if net.head is not None:
                if head_feats:  # gradients from the head flow into the layers too: this is backprop
                    logits = net.head([head_feats[i] for i in net.head.layers])
                else:
                    logits = net.head_logits(x)
                head_loss = net.head.loss(logits, y)
                total = total + head_loss
                head_result = (head_loss.detach(), (logits.detach().argmax(dim=1) == y).sum())
            losses = torch.stack([v.detach() for v in losses])
            correct = torch.stack(correct)
        else:
            logits = net(x)
            total = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            losses, correct = total.detach().view(1), (logits.detach().argmax(dim=1) == y).sum().view(1)
        if not torch.isfinite(total):
            raise DivergenceError(
                f"the backprop loss became non-finite ({total.item()}) at epoch {self.epoch + 1}, "
                f"step {self.step_count + 1}; per-layer losses: {losses.tolist()}"
            )
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        self._step_schedules()
        self.step_count += 1
        return StepResult(losses, correct, x.shape[0], head_result)
