"""DTG-FF's layers: dynamic temperature goodness with decoupled normalisation.

* :class:`DTGConv` -- a conv layer with two paths from one activity ``h``: the *goodness path* reads ``h`` without
  any normalisation (spatial goodness vector -> fixed random projection -> divided by a learnable temperature ->
  class scores trained with a local cross-entropy); the *propagation path* normalises ``h`` (LayerNorm over channels
  at each location), applies dropout and optional pooling, and is what the next layer receives (detached by the
  engine). Decoupling the two lets the goodness keep its magnitude while the next layer sees normalised features.
  Built from the description in Chen, "Synthetic Benchmarks Overstate Forward-Forward Scaling: Real-Data Limits of
  Layer-Local Training" (2026, arXiv:2606.06539); no code of it is released.
* :class:`DTGLinear` -- ffkit's DTG MLP layer: scalar goodness with a learnable margin and a learnable temperature,
  for networks with the label in the input (positive/negative training).

The temperature is :class:`ffkit.goodness.DTGTemperature`: ``tau = tau_min + (tau_max - tau_min) * sigmoid(s)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import goodness as _goodness
from .._validation import check_bool, check_int, check_real
from .base import FFLayer, LayerOutput
from .dropout import Dropout
from .linear import FFLinear

__all__ = ["DTGConv", "DTGLinear", "TAU_MIN", "TAU_MAX", "inverse_softplus"]

#: Default temperature bounds of ffkit's DTG layers: those of the released DTG MLP (``FF_DTG_Model`` builds its
#: layers with ``temp_min=0.1, temp_max=2.0``); Chen (2026) gives the form of tau, not its bounds. With them tau
#: starts at 1.05, so the O(1) projected goodness is an O(1) logit, and it can sharpen the scores 10x or soften them
#: 2x.
TAU_MIN = 0.1
TAU_MAX = 2.0


#: Smallest margin the warm start sets: the mean of squares of a batch can be exactly 0 (every unit dead), where the
#: inverse softplus is ``-inf``.
MARGIN_FLOOR = 1e-6


def inverse_softplus(m: torch.Tensor, floor: float = MARGIN_FLOOR) -> torch.Tensor:
    """``softplus^{-1}(m) = log(exp(m) - 1) = m + log(-expm1(-m))``, elementwise, for ``m`` clamped to ``>= floor``.

    The second form is exact in floating point where the first is not: ``exp(m)`` overflows for large ``m``, and
    ``exp(m) - 1`` loses every digit of ``m`` for small ``m``, while ``expm1(-m)`` is accurate for both.

    Args:
        m: values ``> 0`` (any shape); smaller ones are raised to ``floor``.
        floor: the positive lower clamp.

    Returns:
        ``t`` with ``softplus(t) == max(m, floor)``, the same shape and dtype as ``m``.
    """
    if not floor > 0:
        raise ValueError(f"floor must be positive (the inverse softplus of 0 is -inf), got {floor!r}")
    m = m.clamp_min(floor)
    return m + torch.log(-torch.expm1(-m))


class DTGConv(FFLayer):
    """DTG-FF conv layer: ``h = ReLU(conv(x))`` read by a goodness path and a propagation path.

    Goodness path (no normalisation, so the goodness keeps the activity's magnitude):

    * the spatial goodness map is the per-channel squared activity ``h**2`` ``[B, C, H, W]``;
    * it is average-pooled to a ``grid x grid`` map (adaptive average pooling: cell ``(i, j)`` of channel ``c`` is the
      mean of ``h[c]**2`` over that cell's block of locations) and flattened channel-major to the *goodness vector*
      ``v [B, C * grid * grid]``. This is ffkit's reading of "spatial goodness vector pooled to a small grid":
      ``grid=1`` gives the per-channel mean of squares (``goodness.squared(h, groups=C, reduction="mean")``), larger
      grids keep coarse "where" information;
    * class scores ``s = (v @ P) / tau`` ``[B, K]``, with ``P [C * grid * grid, K]`` a *fixed* random projection (a
      buffer: saved in the ``state_dict``, never trained, reproducible from ``seed``; entries ``N(0, 1 / D)`` with
      ``D = C * grid * grid``, so an O(1) goodness vector gives O(1) scores) and ``tau`` the layer's learnable
      :class:`~ffkit.goodness.DTGTemperature`. The objective (:class:`~ffkit.ClassScoreObjective`) applies the local
      cross-entropy (with label smoothing if asked).

    Propagation path: LayerNorm of ``h`` over the channels at each location ``(b, y, x)``, without affine parameters,
    then dropout, then the optional 2x2 average pool. LayerNorm has no affine parameters because the layer's own loss
    reads the goodness path only: it could never train them.

    The conv is bias-free (as in DeeperForward's CW-Conv and in the ``bp_vgg8`` baseline, whose BatchNorm plays the
    bias's role): a per-channel offset would only shift the goodness, which the projection and temperature already
    scale. Its weight is Kaiming-normal for ReLU with ``fan_in``, so on LayerNorm-ed inputs ``E[h**2] ~ 1`` at init.

    Args:
        in_channels: input channels.
        out_channels: output channels ``C``.
        num_classes: ``K``.
        kernel_size: conv kernel (square, padding ``kernel_size // 2``).
        pool: 2x2 average-pool the propagated features (VGG's downsampling, after the normalisation).
        grid: side of the pooled goodness grid.
        tau_min: lower bound of the learnable temperature.
        tau_max: upper bound of the learnable temperature.
        dropout: dropout probability on the propagation path.
        seed: seed of the fixed random projection.

    Shape:
        ``x [B, C_in, H, W] -> LayerOutput(features [B, C, H', W'], scores [B, K], goodness [B])`` with
        ``H' = H // 2`` when ``pool`` else ``H``; ``goodness`` is the mean of ``h**2`` over ``(C, H, W)``.
    """

    in_channels: int
    out_channels: int
    num_classes: int

    projection: torch.Tensor  # buffer: the fixed random readout ``[C * grid * grid, K]``

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int,
        kernel_size: int = 3,
        *,
        pool: bool = False,
        grid: int = 2,
        tau_min: float = TAU_MIN,
        tau_max: float = TAU_MAX,
        dropout: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("num_classes", num_classes),
                        ("kernel_size", kernel_size), ("grid", grid)):
            check_int(v, name, minimum=1)
        check_bool(pool, "pool", what="2x2 average pooling or none")
        check_int(seed, "seed", minimum=0)
        dropout = check_real(dropout, "dropout", low=0.0, high=1.0, high_open=True)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.grid = grid
        self.pool = pool
        self.seed = seed
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="relu")
        self.temperature = _goodness.DTGTemperature(tau_min, tau_max)
        self.register_buffer("projection", self.make_projection(out_channels * grid * grid, num_classes, seed))
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()

    @staticmethod
    def make_projection(dim: int, num_classes: int, seed: int) -> torch.Tensor:
        """The fixed readout ``[dim, num_classes]``: ``N(0, 1 / dim)`` entries drawn from a generator seeded by
        ``seed`` (independent of the global RNG, so the same seed always gives the same matrix)."""
        gen = torch.Generator().manual_seed(seed)
        # Drawn in float32 whatever the default dtype, so a layer built under float64 has the same matrix.
        P = torch.randn(dim, num_classes, generator=gen, dtype=torch.float32) / math.sqrt(dim)
        return P.to(torch.get_default_dtype())

    def goodness_vector(self, h: torch.Tensor) -> torch.Tensor:
        """``h [B, C, H, W] -> v [B, C * grid * grid]``: ``h**2`` average-pooled to ``grid x grid``, channel-major."""
        return self._pooled_square(h.square())

    def _pooled_square(self, sq: torch.Tensor) -> torch.Tensor:
        g = self.grid
        h, w = sq.shape[-2:]
        if h % g or w % g:  # unequal cells: adaptive pooling's definition
            return F.adaptive_avg_pool2d(sq, g).flatten(1)
        # Equal cells: the same means by a reshape, whose backward keeps no copy of ``sq`` (adaptive pooling's saves
        # its whole input for the backward, one more activation-sized tensor per layer).
        cells = sq.reshape(sq.shape[0], sq.shape[1], g, h // g, g, w // g)
        return cells.mean(dim=(3, 5)).flatten(1)

    def propagate(self, h: torch.Tensor) -> torch.Tensor:
        """The propagation path: LayerNorm over channels at each location, dropout, optional 2x2 average pool."""
        z = F.layer_norm(h.movedim(1, -1), (h.shape[1],)).movedim(-1, 1)
        z = self.dropout(z)
        return F.avg_pool2d(z, 2) if self.pool else z

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        h = F.relu(self.conv(x))
        sq = h.square()  # shared by the goodness vector and the scalar goodness: one pass, one backward
        v = self._pooled_square(sq)
        scores = self.temperature(v @ self.projection.to(v.dtype))
        with self.propagation():
            features = self.propagate(h)
        return LayerOutput(
            features=features,
            scores=scores,
            goodness=sq.mean(dim=(1, 2, 3)),  # goodness.squared(h, reduction="mean")
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, grid={self.grid}, pool={self.pool}, seed={self.seed}"


class DTGLinear(FFLinear):
    """The DTG MLP layer: RMS-normalised input, linear, ReLU; scalar goodness with a learnable margin and temperature.

    ``x_hat = x * sqrt(D_in) / (||x|| + eps)``, ``h = ReLU(W x_hat + b)`` ``[B, D]``, ``g = mean_j h_j**2`` ``[B]``, and
    the layer's output goodness is

        ``G = (g - m) / tau``,  ``m = softplus(theta)``,  ``tau = tau_min + (tau_max - tau_min) * sigmoid(s)``

    with ``theta`` (the margin's raw parameter) and ``s`` learnable scalars; the margin ``m`` (:attr:`margin`) is
    positive, as the released layer's threshold ``softplus(t)``. Trained with the threshold loss at 0
    (:class:`~ffkit.PosNegObjective` with ``loss="threshold", threshold=0.0``) this is

        ``L = mean_pos softplus((m - g_pos) / tau) + mean_neg softplus((g_neg - m) / tau)``,

    Hinton's threshold loss with a learned threshold ``m`` and a learned sharpness ``1 / tau``.

    The input is length-normalised to length ``sqrt(D_in)`` (unit RMS, as loeweX's FF re-implementation does)
    rather than to length 1 (:class:`FFLinear`): with the default Linear init ``g`` then starts O(0.1) instead of
    O(1e-4), so ``tau``'s range is meaningful from the first step. The direction of the input is all that is passed
    on either way.

    Margin warm start: ``theta`` starts at 0 (``m = ln 2``, as the release's ``t``) and, on the first forward pass in
    training mode, is set to ``theta = softplus^{-1}(g_bar)`` (:func:`inverse_softplus`), where ``g_bar`` is the mean
    of ``g`` over that batch (for positive/negative training, over all ``2B`` positive and negative samples it sees)
    raised to at least ``1e-6``; so ``m = g_bar`` and ``G`` starts centred whatever the goodness's scale. A boolean
    buffer ``initialised`` records that this happened: it is saved in the ``state_dict``, so a loaded layer is not
    warm-started again (and a layer loaded from an un-warmed state is warm-started on its next training batch).
    Evaluation passes never warm-start. At the warm start ``m`` sits where the threshold loss's gradient with respect
    to it vanishes to first order, so its gradient (and ``theta``'s, ``sigmoid(theta)`` times it) starts small (third
    order in the spread of ``g``). The release has no warm start: its ``t`` starts at 0 whatever the goodness's scale.

    This layer is ffkit's, not the released one. The released DTG MLP layer (``DTGLayer`` in ``StevenChen16/DTG-FF``)
    is ``h = ReLU(BatchNorm1d(W x + b))`` with a temperature computed from the batch (``tau_min + (tau_max - tau_min)
    * sigmoid(mean_j clamp(std_j / (|mean_j| + 1e-6), 0.1, 10))``, no learnable ``s``), goodness
    ``sum_j (h_j / ||h|| / (tau + 1e-6))**2`` and threshold ``softplus(t)`` with ``t`` starting at 0 (the form of
    ffkit's margin, without the warm start); its loss is a hinge with margin ``clamp(threshold * tau, 0.1, 2.0)``. As
    written it cannot train: its goodness equals ``1 / (tau + 1e-6)**2`` for every sample of a batch (the normalised
    vector has length 1), so it cannot tell a positive sample from a negative one, and the loss of each pass averages
    an empty set of the other kind, so it is NaN at every step (both measured by running the release).

    Args:
        in_features: input size ``D_in`` (images are flattened).
        out_features: number of units ``D``.
        tau_min: lower bound of the learnable temperature.
        tau_max: upper bound of the learnable temperature.
        eps: added to the input's length to avoid dividing by zero.

    Shape:
        ``x [B, D_in] or [B, C, H, W] -> LayerOutput(features [B, D], goodness [B])``.
    """

    initialised: torch.Tensor  # buffer: whether the margin was warm-started (saved in checkpoints)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        tau_min: float = TAU_MIN,
        tau_max: float = TAU_MAX,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(in_features, out_features, goodness="mean", eps=eps)
        self.temperature = _goodness.DTGTemperature(tau_min, tau_max)
        self.theta = nn.Parameter(torch.zeros(()))
        self.register_buffer("initialised", torch.tensor(False))
        # Python-side cache of `initialised`, so the buffer is read on the host once, not at every step.
        self._known_initialised = False

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._known_initialised = False  # re-read the loaded flag before the next training step

    @property
    def margin(self) -> torch.Tensor:
        """The margin ``m = softplus(theta)`` (a scalar tensor, positive, differentiable in ``theta``)."""
        return F.softplus(self.theta)

    @torch.no_grad()
    def _warm_start(self, g: torch.Tensor) -> None:
        if self._known_initialised:
            return
        if not bool(self.initialised):
            # the mean in the parameter's dtype (not a bf16 autocast's) before inverting, so softplus(theta) hits it
            self.theta.copy_(inverse_softplus(g.detach().to(self.theta.dtype).mean()))
            self.initialised.fill_(True)
        self._known_initialised = True

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> LayerOutput:
        x = x.flatten(1)
        if x.shape[1] != self.linear.in_features:
            raise ValueError(f"DTGLinear expects {self.linear.in_features} input features, got {x.shape[1]}")
        x = x * (math.sqrt(x.shape[1]) / (x.norm(dim=1, keepdim=True) + self.eps))
        h = F.relu(self.linear(x))
        g = _goodness.squared(h, reduction="mean")
        if self.training:
            self._warm_start(g)
        return LayerOutput(features=h, goodness=self.temperature(g - self.margin))

    def extra_repr(self) -> str:
        return f"in_features={self.linear.in_features}, out_features={self.linear.out_features}"
