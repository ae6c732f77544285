"""Hinton's Forward-Forward fully-connected layer (The Forward-Forward Algorithm, 2022, Sec. 2-3).

Its options cover the two released implementations ffkit follows: Pipeline-FF's (input divided by its length plus
``1e-4``, PyTorch's initialisation) and Sindy Loewe's reference implementation of Hinton's FF (``loeweX``: input
divided by its root mean square, a ReLU whose gradient passes everywhere, ``N(0, 1/D)`` weights and peer
normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .. import goodness as _goodness
from .._validation import check_int, check_real
from .base import FFLayer, LayerOutput

if TYPE_CHECKING:  # pragma: no cover
    from ..objectives import PreparedBatch

__all__ = ["FFLinear", "relu_full_grad", "rms_normalize", "peer_normalization_loss"]

NORMS = ("l2", "rms")
ACTIVATIONS = ("relu", "relu-full-grad")
INITS = ("torch", "normal")


class _ReLUFullGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad


def relu_full_grad(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)`` forward; the gradient passes through unchanged everywhere, also where ``x < 0`` (loeweX's
    ``ReLU_full_grad``), so a unit that is off still learns from the goodness and peer losses.

    Shape: any; returns the same shape.
    """
    return _ReLUFullGrad.apply(x)


def rms_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``x / (sqrt(mean(x^2)) + eps)`` over the last dimension (loeweX's ``_layer_norm``): unit root mean square, so
    the vector keeps its direction at length ``sqrt(D)``.

    Shape: ``[B, D] -> [B, D]``.
    """
    return x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + eps)


def peer_normalization_loss(
    activity: torch.Tensor, running_mean: torch.Tensor, momentum: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Peer normalisation (Hinton 2022, Sec. 5; loeweX's ``_calc_peer_normalization_loss``).

    The running mean of each unit's activity is ``m' = momentum * m + (1 - momentum) * mean_b(activity)``, and the
    loss is the spread of the units' running means around their average, ``mean_j (mean_k m'_k - m'_j)^2``: it pulls
    every unit towards the same average activity, so no unit stays always off or always on. The gradient reaches
    ``activity`` through this batch's share of ``m'`` only (``m`` is a constant).

    Args:
        activity: the activities of the positive samples ``[B, D]``.
        running_mean: ``m`` ``[D]``.
        momentum: the weight of ``m`` in ``m'``.

    Returns:
        ``(loss, m')``: the scalar loss and the new running mean ``[D]`` (detach it before storing).
    """
    updated = running_mean.detach() * momentum + activity.mean(dim=0) * (1 - momentum)
    return (updated.mean() - updated).pow(2).mean(), updated


class FFLinear(FFLayer):
    """FF fully-connected layer: length-normalised input, linear, ReLU, squared goodness.

    The input is divided by its L2 length so that the previous layer's goodness (its length) cannot leak into this
    layer's decision; only the direction of the activity vector is passed on (Hinton 2022, Sec. 2).

    Args:
        in_features: input size ``D_in`` (images are flattened).
        out_features: number of units ``D``.
        goodness: ``"sum"`` (sum of squares, Hinton), ``"mean"`` (mean of squares), or a callable
            ``goodness(h) -> [B]`` (e.g. :func:`ffkit.goodness.mean`). A layer with a callable goodness cannot be
            cut into unit shards (:meth:`split_units`), whose goodness values must add up to the layer's.
        eps: added to the length to avoid dividing by zero.
        norm: ``"l2"``: ``x / (|x| + eps)`` (Pipeline-FF's release); ``"rms"``: ``x / (sqrt(mean x^2) + eps)``
            (loeweX), the same direction at ``sqrt(D_in)`` times the length.
        activation: ``"relu"`` or ``"relu-full-grad"`` (:func:`relu_full_grad`, loeweX).
        init: ``"torch"`` (``nn.Linear``'s) or ``"normal"``: weights ``N(0, 1 / D)`` (std ``1 / sqrt(out_features)``)
            and zero biases (loeweX).
        peer_normalization: weight of the peer-normalisation loss (:func:`peer_normalization_loss`, on the positive
            samples' activities) added to the layer's loss; 0 (default) turns it off. loeweX: 0.03.
        peer_momentum: the running mean's momentum (loeweX: 0.9); its buffer ``peer_mean`` starts at 0.5.

    Shape:
        ``x [B, D_in] or [B, C, H, W] -> LayerOutput(features [B, D], goodness [B])``.
    """

    _units_of_whole: int = 0  # set on a unit shard (split_units): the whole layer's unit count

    peer_mean: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        goodness: str | Callable[..., torch.Tensor] = "sum",
        eps: float = 1e-8,
        norm: str = "l2",
        activation: str = "relu",
        init: str = "torch",
        peer_normalization: float = 0.0,
        peer_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            check_int(v, name, minimum=1)
        if not callable(goodness) and goodness not in ("sum", "mean"):
            raise ValueError(f"goodness must be 'sum', 'mean' or a callable goodness(h), got {goodness!r}")
        for name, option, allowed in (("norm", norm, NORMS), ("activation", activation, ACTIVATIONS),
                                      ("init", init, INITS)):
            if option not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {option!r}")
        check_real(peer_normalization, "peer_normalization", low=0.0)
        check_real(peer_momentum, "peer_momentum", low=0.0, high=1.0, high_open=True)
        self.linear = nn.Linear(in_features, out_features)
        if init == "normal":
            nn.init.normal_(self.linear.weight, mean=0.0, std=1 / math.sqrt(out_features))
            nn.init.zeros_(self.linear.bias)
        self.reduction = goodness
        self.eps = eps
        self.norm, self.activation, self.init = norm, activation, init
        self.peer_normalization, self.peer_momentum = float(peer_normalization), float(peer_momentum)
        self.register_buffer("peer_mean", torch.full((out_features,), 0.5) if peer_normalization > 0 else None)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        x = x.flatten(1)
        if x.shape[1] != self.linear.in_features:
            raise ValueError(f"FFLinear expects {self.linear.in_features} input features, got {x.shape[1]}")
        if self.norm == "rms":
            x = rms_normalize(x, self.eps)
        else:
            x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        z = self.linear(x)
        h = relu_full_grad(z) if self.activation == "relu-full-grad" else F.relu(z)
        if callable(self.reduction):
            return LayerOutput(features=h, goodness=self.reduction(h))
        g = _goodness.squared(h, reduction="sum")
        if self.reduction == "mean":
            g = g / self._goodness_units
        return LayerOutput(features=h, goodness=g)

    def regularizer(self, out: LayerOutput, batch: PreparedBatch) -> torch.Tensor | None:
        """The weighted peer-normalisation loss of the batch's positive samples (its first ``batch.batch_size``
        rows), or ``None`` when it is off. In training mode it also moves the running mean ``peer_mean``."""
        if self.peer_mean is None:
            return None
        loss, updated = peer_normalization_loss(out.features[: batch.batch_size], self.peer_mean, self.peer_momentum)
        if self.training:
            self.peer_mean.copy_(updated.detach())
        return self.peer_normalization * loss

    @property
    def batch_coupled(self) -> bool:
        return self.peer_mean is not None

    def extra_repr(self) -> str:
        shown = _goodness.goodness_name(self.reduction) if callable(self.reduction) else repr(self.reduction)
        options = [f"goodness={shown}"]
        options += [f"{k}={v!r}" for k, v, default in (
            ("norm", self.norm, "l2"), ("activation", self.activation, "relu"), ("init", self.init, "torch"),
        ) if v != default]
        if self.peer_mean is not None:
            options.append(f"peer_normalization={self.peer_normalization}, peer_momentum={self.peer_momentum}")
        return ", ".join(options)

    @property
    def unit_shardable(self) -> bool:
        """Whether :meth:`split_units` can cut the layer: its goodness is a sum over units and no loss of its own
        compares the units (peer normalisation)."""
        return not callable(self.reduction) and self.peer_mean is None

    @property
    def num_units(self) -> int:
        """The layer's output units ``D`` (what :meth:`split_units` cuts)."""
        return self.linear.out_features

    @property
    def _goodness_units(self) -> int:
        # A unit shard divides by the whole layer's unit count, so the shards' goodness values sum to the layer's.
        return self._units_of_whole or self.linear.out_features

    def split_units(self, lo: int, hi: int) -> FFLinear:
        """A copy of units ``lo..hi-1`` (rows of the weight and bias): its features are those units' activities
        ``[B, hi - lo]`` and its goodness is their part of this layer's goodness, so the goodness values of shards
        that cover the layer sum to the layer's (a layer split between two pipeline stages by units)."""
        n = self.linear.out_features
        if not 0 <= lo < hi <= n:
            raise ValueError(f"units must satisfy 0 <= lo < hi <= {n}, got {lo}..{hi}")
        if self.peer_mean is not None:
            # the loss compares every unit with the average of all of them: a shard cannot compute its part alone
            raise ValueError("a layer with peer normalisation cannot be split by units")
        if not self.unit_shardable:
            raise ValueError("a layer with a callable goodness cannot be split by units: nothing says the shards' "
                             "goodness values add up to the layer's")
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: leave the RNG untouched
            shard = FFLinear(self.linear.in_features, hi - lo, goodness=self.reduction, eps=self.eps, norm=self.norm,
                             activation=self.activation)
        shard._units_of_whole = n
        shard.to(device=self.linear.weight.device, dtype=self.linear.weight.dtype)
        shard.pull_units(self, lo)
        return shard

    @torch.no_grad()
    def pull_units(self, whole: FFLinear, lo: int) -> None:
        """Copy ``whole``'s units ``lo..lo + n - 1`` into this shard's parameters (in place)."""
        n = self.linear.out_features
        self.linear.weight.copy_(whole.linear.weight[lo : lo + n])
        self.linear.bias.copy_(whole.linear.bias[lo : lo + n])

    @torch.no_grad()
    def push_units(self, whole: FFLinear, lo: int) -> None:
        """Copy this shard's parameters into ``whole``'s units ``lo..lo + n - 1``."""
        n = self.linear.out_features
        whole.linear.weight[lo : lo + n].copy_(self.linear.weight)
        whole.linear.bias[lo : lo + n].copy_(self.linear.bias)
