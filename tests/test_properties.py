"""Property tests (hypothesis) for ffkit.goodness and ffkit.losses.

test_goodness.py and test_losses.py pin every formula to hand-computed values; this file checks relations that must
hold for *any* input: shapes and dtypes, batch-size independence, invariances (SymBa only sees ``g_neg - g_pos``,
cross-entropy only sees scores up to a per-sample constant, goodness only sees a multiset of activities), scaling and
monotonicity, and finite gradients for extreme but finite inputs.

Every test is derandomised (``derandomize=True, database=None``) so that CI sees the same examples on every run.

Tolerances. Comparisons of two ways of computing the same thing are done in float64 (``EPS = 2.2e-16``), with an
absolute tolerance taken from a floating-point error bound of the computation: a sum of ``n`` terms, each at most
``S`` in magnitude, is off by at most ``n * EPS * S`` (we allow a factor 8), and softplus / log-softmax are
1-Lipschitz, so an input error ``e`` moves them by at most ``e``. PyTorch's ``softplus`` returns ``x`` itself for
``x > 20`` (its documented ``threshold``), which is off by ``log1p(exp(-x)) < 2.1e-9``: comparisons against an exact
reference or against a mirrored formula allow that per element (``SOFTPLUS_CUT``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.testing import assert_close

from ffkit import goodness, losses
from ffkit.goodness import DTGTemperature

EPS = float(np.finfo(np.float64).eps)  # 2.2e-16
SOFTPLUS_CUT = 2.1e-9  # log1p(exp(-20)) ~ 2.06e-9: PyTorch's softplus(x) == x above x = 20

# Cheap examples (a few tensor ops each): 60 per test keeps the whole file well under the time budget on 2 CPU cores.
PROPS = settings(max_examples=60, deadline=None, derandomize=True, database=None)

# -- strategies ----------------------------------------------------------------------------------------------------


def reals(bound: float, dtype=np.float64) -> st.SearchStrategy[float]:
    """Finite floats in ``[-bound, bound]`` representable in ``dtype``, with the landmarks always in the mix:
    zeros of both signs, the bounds, +-1 and tiny values (hypothesis' floats add subnormals and other edge cases)."""
    width = 32 if dtype == np.float32 else 64
    tiny = 1e-30 if width == 32 else 1e-300
    b = np.asarray(bound, dtype=dtype)
    bound = float(b if b <= bound else np.nextafter(b, 0))  # the largest value <= bound that dtype represents
    landmarks = [0.0, -0.0, bound, -bound, tiny, -tiny, 1.0, -1.0]
    landmarks = [float(np.asarray(v, dtype=dtype)) for v in landmarks]  # exact in dtype
    return st.one_of(
        st.sampled_from(landmarks),
        st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=width),
    )


def arrays(shape: tuple[int, ...], bound: float, dtype=np.float64) -> st.SearchStrategy[torch.Tensor]:
    return hnp.arrays(dtype, shape, elements=reals(bound, dtype)).map(lambda a: torch.tensor(a))


@st.composite
def layouts(draw, max_batch: int = 4) -> tuple[int, tuple[int, ...], int]:
    """``(B, feature_shape, G)``: a 2-D ``[B, D]`` or 4-D ``[B, C, H, W]`` layout whose dim 1 splits into ``G``."""
    b = draw(st.integers(1, max_batch))
    groups = draw(st.integers(1, 4))
    c = groups * draw(st.integers(1, 3))
    if draw(st.booleans()):
        return b, (c,), groups
    return b, (c, draw(st.integers(1, 3)), draw(st.integers(1, 3))), groups


@st.composite
def activations(draw, bound: float = 1e4, dtype=np.float64) -> tuple[torch.Tensor, int]:
    b, feat, groups = draw(layouts())
    return draw(arrays((b, *feat), bound, dtype)), groups


@st.composite
def goodness_pairs(draw, bound: float = 1e4, dtype=np.float64, max_batch: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g_pos, g_neg)``, both ``[B]``."""
    b = draw(st.integers(1, max_batch))
    return draw(arrays((b,), bound, dtype)), draw(arrays((b,), bound, dtype))


@st.composite
def class_scores(
    draw, bound: float = 1e4, dtype=np.float64, max_batch: int = 5, min_classes: int = 1, k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [B, K], target [B])``, with ``K`` drawn unless given."""
    b = draw(st.integers(1, max_batch))
    k = draw(st.integers(min_classes, 6)) if k is None else k
    scores = draw(arrays((b, k), bound, dtype))
    target = torch.tensor(draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b)), dtype=torch.long)
    return scores, target


alphas = st.floats(1e-3, 10.0)
thresholds = st.floats(-1e4, 1e4, allow_nan=False)
smoothings = st.one_of(st.just(0.0), st.floats(0.0, 0.99))


# -- goodness: helpers ----------------------------------------------------------------------------------------------

# name -> (function, power): power 1 for a mean of activities, 2 for sums/means of squares (used by the error bounds).
GOODNESS: dict[str, tuple[Callable[..., torch.Tensor], int]] = {
    "mean": (goodness.mean, 1),
    "squared-sum": (lambda h, groups=None: goodness.squared(h, groups=groups, reduction="sum"), 2),
    "squared-mean": (lambda h, groups=None: goodness.squared(h, groups=groups, reduction="mean"), 2),
}
GOODNESS_NAMES = list(GOODNESS)


def _gtol(name: str, h: torch.Tensor) -> float:
    """Error bound for a goodness of ``h``: ``8 * n * EPS * max|term|`` (sum of ``n`` terms), plus underflow slack."""
    power = GOODNESS[name][1]
    n = h[0].numel()
    scale = float(h.abs().max()) ** power if h.numel() else 0.0
    return 8 * n * EPS * scale + 1e-300


def _gfn(name: str, grouped: bool, groups: int) -> Callable[[torch.Tensor], torch.Tensor]:
    fn = GOODNESS[name][0]
    return (lambda h: fn(h, groups=groups)) if grouped else fn


# -- goodness: shape, dtype, batch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(data=activations(), grouped=st.booleans(), f32=st.booleans())
def test_goodness_shape_and_dtype(name, data, grouped, f32):
    h, groups = data
    if f32:
        h = h.float()
    out = _gfn(name, grouped, groups)(h)
    assert out.shape == ((h.shape[0], groups) if grouped else (h.shape[0],))
    assert out.dtype == h.dtype


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(layout=layouts(), b2=st.integers(1, 3), grouped=st.booleans(), data=st.data())
def test_goodness_batch_concatenation(name, layout, b2, grouped, data):
    # Per-sample goodness: computing on cat([h1, h2]) equals cat of the parts, so batching never mixes samples.
    b1, feat, groups = layout
    h1 = data.draw(arrays((b1, *feat), 1e4))
    h2 = data.draw(arrays((b2, *feat), 1e4))
    fn = _gfn(name, grouped, groups)
    h = torch.cat([h1, h2])
    assert_close(fn(h), torch.cat([fn(h1), fn(h2)]), rtol=0, atol=_gtol(name, h))


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(data=activations(), grouped=st.booleans(), perm_seed=st.integers(0, 2**16))
def test_goodness_batch_permutation_equivariance(name, data, grouped, perm_seed):
    h, groups = data
    perm = torch.randperm(h.shape[0], generator=torch.Generator().manual_seed(perm_seed))
    fn = _gfn(name, grouped, groups)
    assert_close(fn(h[perm]), fn(h)[perm], rtol=0, atol=_gtol(name, h))


# -- goodness: invariances and relations ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(data=activations(), grouped=st.booleans(), perm_seed=st.integers(0, 2**16))
def test_goodness_invariant_to_permuting_features_within_a_group(name, data, grouped, perm_seed):
    # A goodness is a mean / sum of (squared) activities: it sees a group's activities as a multiset. The groups are
    # consecutive channel blocks, so a group is h.reshape(B, G, -1)[:, k] and any shuffle inside it is allowed.
    h, groups = data
    g = groups if grouped else 1
    gen = torch.Generator().manual_seed(perm_seed)
    blocks = h.reshape(h.shape[0], g, -1)
    shuffled = torch.stack([blocks[:, k, torch.randperm(blocks.shape[2], generator=gen)] for k in range(g)], dim=1)
    fn = _gfn(name, grouped, groups)
    assert_close(fn(shuffled.reshape(h.shape)), fn(h), rtol=0, atol=_gtol(name, h))


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(data=activations(), perm_seed=st.integers(0, 2**16))
def test_goodness_permuting_channel_groups_permutes_class_scores(name, data, perm_seed):
    # Swapping whole channel blocks swaps the per-class scores: block k always belongs to class k.
    h, groups = data
    perm = torch.randperm(groups, generator=torch.Generator().manual_seed(perm_seed))
    blocks = h.reshape(h.shape[0], groups, -1)[:, perm]
    fn = _gfn(name, True, groups)
    assert_close(fn(blocks.reshape(h.shape)), fn(h)[:, perm], rtol=0, atol=_gtol(name, h))


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(data=activations())
def test_goodness_group_k_is_the_goodness_of_channel_block_k(name, data):
    # Grouped goodness = ungrouped goodness of each consecutive block of C / G channels.
    h, groups = data
    fn = GOODNESS[name][0]
    per = h.shape[1] // groups
    expected = torch.stack([fn(h[:, k * per : (k + 1) * per]) for k in range(groups)], dim=1)
    assert_close(fn(h, groups=groups), expected, rtol=0, atol=_gtol(name, h))


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(data=activations())
def test_goodness_groups_aggregate_to_the_ungrouped_goodness(name, data):
    # Groups have equal sizes, so the mean (of squares) over all elements is the mean over groups of the group means,
    # and the sum of squares is the sum over groups.
    h, groups = data
    fn = GOODNESS[name][0]
    per_group = fn(h, groups=groups)
    agg = per_group.sum(dim=1) if name == "squared-sum" else per_group.mean(dim=1)
    assert_close(agg, fn(h), rtol=0, atol=_gtol(name, h))


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(data=activations(bound=1e3), c=reals(100.0), grouped=st.booleans())
def test_goodness_scaling(name, data, c, grouped):
    # mean(c h) = c mean(h) (linear); sum/mean of squares of c h = c^2 times (quadratic).
    h, groups = data
    fn = _gfn(name, grouped, groups)
    power = GOODNESS[name][1]
    tol = 8 * h[0].numel() * EPS * (abs(c) * float(h.abs().max())) ** power + 1e-300
    assert_close(fn(c * h), c**power * fn(h), rtol=0, atol=tol)


@PROPS
@given(data=activations(), grouped=st.booleans())
def test_squared_is_nonnegative_and_sum_is_n_times_mean(data, grouped):
    h, groups = data
    g = groups if grouped else None
    s = goodness.squared(h, groups=g, reduction="sum")
    m = goodness.squared(h, groups=g, reduction="mean")
    assert (s >= 0).all() and (m >= 0).all()
    n = h[0].numel() // (groups if grouped else 1)
    assert_close(s, n * m, rtol=8 * n * EPS, atol=1e-300)


@PROPS
@given(data=activations(), grouped=st.booleans())
def test_mean_lies_between_min_and_max_and_below_root_mean_square(data, grouped):
    # min <= mean <= max of each group's activities, and mean^2 <= mean of squares (Jensen / Cauchy-Schwarz).
    h, groups = data
    g = groups if grouped else 1
    blocks = h.reshape(h.shape[0], g, -1)
    m = goodness.mean(h, groups=groups if grouped else None).reshape(h.shape[0], g)
    tol = _gtol("mean", h)
    assert (m >= blocks.amin(dim=2) - tol).all() and (m <= blocks.amax(dim=2) + tol).all()
    msq = goodness.squared(h, groups=groups if grouped else None, reduction="mean").reshape(h.shape[0], g)
    assert (m.square() <= msq + _gtol("squared-mean", h)).all()


# -- goodness: gradients -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOODNESS_NAMES)
@PROPS
@given(data=activations(bound=1e15, dtype=np.float32), grouped=st.booleans())
@example(data=(torch.zeros(3, 4), 2), grouped=True)  # all-zero activations (dead ReLUs)
@example(data=(torch.full((2, 2, 3, 3), 1e-30), 2), grouped=False)  # tiny activities: squares underflow
def test_goodness_gradient_finite_and_analytic(name, data, grouped):
    # float32 activities up to 1e15 (squares up to 1e30, sums of <= 108 of them stay below float32's 3.4e38).
    # d mean / dh = 1 / n, d sum(h^2) / dh = 2 h, d mean(h^2) / dh = 2 h / n, with n the group size.
    h, groups = data
    h = h.clone().requires_grad_(True)
    out = _gfn(name, grouped, groups)(h)
    assert torch.isfinite(out).all()
    (grad,) = torch.autograd.grad(out.sum(), h)
    assert torch.isfinite(grad).all()
    n = h[0].numel() // (groups if grouped else 1)
    hd = h.detach()
    expected = {"mean": torch.full_like(hd, 1.0 / n), "squared-sum": 2 * hd, "squared-mean": 2 * hd / n}[name]
    assert_close(grad, expected)


# -- DTGTemperature -------------------------------------------------------------------------------------------------


@st.composite
def tau_bounds(draw) -> tuple[float, float]:
    lo = draw(st.floats(1e-3, 10.0))
    return lo, lo * draw(st.floats(1.01, 100.0))


@PROPS
@given(bounds=tau_bounds(), s=reals(1e4), data=activations(bound=1e6))
def test_dtg_temperature_bounds_and_division(bounds, s, data):
    # tau stays in [tau_min, tau_max] for any s; the module divides by tau, keeping shape, dtype, order and sign.
    h, _ = data
    t = DTGTemperature(*bounds).double()
    with torch.no_grad():
        t.s.fill_(s)
    tau = float(t.tau.detach())
    assert bounds[0] * (1 - 1e-12) <= tau <= bounds[1] * (1 + 1e-12)
    out = t(h)
    assert out.shape == h.shape and out.dtype == h.dtype
    assert_close(out, h / tau, rtol=4 * EPS, atol=0)
    flat, flat_out = h.reshape(h.shape[0], -1), out.reshape(h.shape[0], -1)
    # tau > 0 never flips a score's sign; only a subnormal score can underflow to 0 (5e-324 / 2 == 0).
    assert (torch.sign(flat_out) * torch.sign(flat) >= 0).all()
    assert ((flat_out != 0) | (flat.abs() < tau * float(np.finfo(np.float64).tiny))).all()
    # A temperature never changes the prediction: the original argmax is still a maximiser (ties may appear when
    # two scores one ulp apart round to the same quotient, so compare values, not indices).
    top = flat_out.gather(1, flat.argmax(dim=1, keepdim=True)).squeeze(1)
    assert torch.equal(top, flat_out.amax(dim=1))


@PROPS
@given(bounds=tau_bounds(), s=reals(1e4, np.float32), data=activations(bound=1e20, dtype=np.float32))
@example(bounds=(0.1, 10.0), s=0.0, data=(torch.zeros(2, 3), 1))
def test_dtg_temperature_gradients_finite(bounds, s, data):
    # Extreme s saturates the sigmoid (gradient 0, not NaN); huge scores divide by tau >= 1e-3 without overflowing.
    # Scores up to 1e20: dL/ds = -sum(g) / tau^2 * dtau/ds reaches ~1e22 * 1e6 * 250, still a finite float32.
    h, _ = data
    h = h.clone().requires_grad_(True)
    t = DTGTemperature(*bounds)
    with torch.no_grad():
        t.s.fill_(s)
    out = t(h)
    assert torch.isfinite(out).all()
    grad_h, grad_s = torch.autograd.grad(out.sum(), [h, t.s])
    assert torch.isfinite(grad_h).all() and torch.isfinite(grad_s).all()


# -- losses: helpers ------------------------------------------------------------------------------------------------


def np_softplus(x: torch.Tensor) -> np.ndarray:
    """Exact reference: log(1 + e^x) = logaddexp(0, x), stable for any finite x."""
    return np.logaddexp(0.0, x.detach().numpy().astype(np.float64))


def _perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


# -- ff_threshold ---------------------------------------------------------------------------------------------------


@PROPS
@given(pair=goodness_pairs(bound=1e6), theta=thresholds, f32=st.booleans())
def test_ff_threshold_scalar_nonnegative_and_matches_reference(pair, theta, f32):
    g_pos, g_neg = pair
    if f32:
        g_pos, g_neg = g_pos.float(), g_neg.float()
    loss = losses.ff_threshold(g_pos, g_neg, threshold=theta)
    assert loss.shape == () and loss.dtype == g_pos.dtype
    assert torch.isfinite(loss) and loss >= 0
    if not f32:
        ref = np_softplus(theta - g_pos).mean() + np_softplus(g_neg - theta).mean()
        assert loss.item() == pytest.approx(ref, rel=1e-12, abs=2 * SOFTPLUS_CUT)


@PROPS
@given(pair=goodness_pairs(), other=goodness_pairs(), theta=thresholds)
def test_ff_threshold_batch_halves_and_parts(pair, other, theta):
    # A mean over samples: two identical halves give the loss of one half, and a batch's loss is the
    # size-weighted mean of its parts' losses (what a pipeline splitting a batch relies on).
    (p1, n1), (p2, n2) = pair, other
    one = losses.ff_threshold(p1, n1, theta)
    assert_close(losses.ff_threshold(torch.cat([p1, p1]), torch.cat([n1, n1]), theta), one, rtol=1e-12, atol=1e-12)
    b1, b2 = len(p1), len(p2)
    parts = (b1 * one + b2 * losses.ff_threshold(p2, n2, theta)) / (b1 + b2)
    whole = losses.ff_threshold(torch.cat([p1, p2]), torch.cat([n1, n2]), theta)
    assert_close(whole, parts, rtol=1e-12, atol=1e-12)


@PROPS
@given(pair=goodness_pairs(), theta=thresholds, s1=st.integers(0, 2**16), s2=st.integers(0, 2**16))
def test_ff_threshold_positives_and_negatives_are_not_paired(pair, theta, s1, s2):
    # Unlike SymBa, the threshold loss averages positives and negatives separately: shuffling each independently
    # leaves it unchanged.
    g_pos, g_neg = pair
    b = len(g_pos)
    a = losses.ff_threshold(g_pos, g_neg, theta)
    assert_close(losses.ff_threshold(g_pos[_perm(b, s1)], g_neg[_perm(b, s2)], theta), a, rtol=1e-12, atol=1e-12)


@PROPS
@given(pair=goodness_pairs(), theta=thresholds, c=reals(1e4))
def test_ff_threshold_translation_and_mirror(pair, theta, c):
    # Only g - theta matters: shifting g_pos, g_neg and theta together changes nothing. And the loss is symmetric
    # under mirroring about theta with the roles swapped: g_pos' = 2 theta - g_neg, g_neg' = 2 theta - g_pos.
    g_pos, g_neg = pair
    a = losses.ff_threshold(g_pos, g_neg, theta)
    mag = float(torch.cat([g_pos, g_neg]).abs().max()) + abs(theta) + abs(c)
    tol = 8 * EPS * mag  # rounding of the shifted inputs; softplus is 1-Lipschitz
    assert_close(losses.ff_threshold(g_pos + c, g_neg + c, theta + c), a, rtol=1e-12, atol=tol)
    assert_close(losses.ff_threshold(2 * theta - g_neg, 2 * theta - g_pos, theta), a, rtol=1e-12, atol=tol)


@PROPS
@given(
    pair=goodness_pairs(),
    theta=thresholds,
    data=st.data(),
)
def test_ff_threshold_monotone(pair, theta, data):
    # dL/dg_pos = -sigmoid(theta - g_pos) / B <= 0 and dL/dg_neg = sigmoid(g_neg - theta) / B >= 0: raising positive
    # goodness never increases the loss, raising negative goodness never decreases it.
    g_pos, g_neg = pair
    b = len(g_pos)
    up = data.draw(hnp.arrays(np.float64, (b,), elements=st.floats(0.0, 1e4))).copy()
    up = torch.tensor(up)
    base = losses.ff_threshold(g_pos, g_neg, theta).item()
    slack = 1e-12 * abs(base) + 1e-15
    assert losses.ff_threshold(g_pos + up, g_neg, theta).item() <= base + slack
    assert losses.ff_threshold(g_pos, g_neg + up, theta).item() >= base - slack


@PROPS
@given(pair=goodness_pairs(bound=1e30, dtype=np.float32), theta=st.floats(-1e4, 1e4, width=32))
@example(pair=(torch.tensor([1e6, -1e6]), torch.tensor([-1e6, 1e6])), theta=2.0)  # log(1 + e^1e6) would overflow
@example(pair=(torch.zeros(3), torch.zeros(3)), theta=0.0)
def test_ff_threshold_gradients_finite_and_bounded(pair, theta):
    # float32 goodness up to 1e30: theta - g stays finite, softplus(x) for x ~ 1e30 must not go through exp(x).
    g_pos, g_neg = (g.clone().requires_grad_(True) for g in pair)
    b = len(g_pos)
    loss = losses.ff_threshold(g_pos, g_neg, theta)
    assert torch.isfinite(loss)
    dp, dn = torch.autograd.grad(loss, [g_pos, g_neg])
    assert torch.isfinite(dp).all() and torch.isfinite(dn).all()
    tol = 1e-6 / b  # float32 rounding of sigmoid(.) / B
    assert (dp <= 0).all() and (dp >= -1 / b - tol).all()
    assert (dn >= 0).all() and (dn <= 1 / b + tol).all()


# -- symba ----------------------------------------------------------------------------------------------------------


@PROPS
@given(pair=goodness_pairs(bound=1e6), alpha=alphas, f32=st.booleans())
def test_symba_scalar_nonnegative_and_matches_reference(pair, alpha, f32):
    g_pos, g_neg = pair
    if f32:
        g_pos, g_neg = g_pos.float(), g_neg.float()
    loss = losses.symba(g_pos, g_neg, alpha=alpha)
    assert loss.shape == () and loss.dtype == g_pos.dtype
    assert torch.isfinite(loss) and loss >= 0
    if not f32:
        ref = np_softplus(alpha * (g_neg - g_pos)).mean()
        assert loss.item() == pytest.approx(ref, rel=1e-12, abs=SOFTPLUS_CUT)


@PROPS
@given(pair=goodness_pairs(), alpha=alphas, data=st.data())
def test_symba_depends_only_on_the_difference(pair, alpha, data):
    # Adding the same value c_i to g_pos_i and g_neg_i (a constant, or one per pair) leaves SymBa unchanged.
    # Error bound: the two differences agree to 4 EPS (|g| + |c|); alpha scales it; softplus is 1-Lipschitz.
    g_pos, g_neg = pair
    b = len(g_pos)
    c = data.draw(st.one_of(reals(1e4).map(lambda v: torch.full((b,), v, dtype=torch.float64)), arrays((b,), 1e4)))
    a = losses.symba(g_pos, g_neg, alpha)
    mag = float(torch.cat([g_pos, g_neg]).abs().max()) + float(c.abs().max())
    assert_close(losses.symba(g_pos + c, g_neg + c, alpha), a, rtol=1e-12, atol=8 * alpha * EPS * mag)


@PROPS
@given(pair=goodness_pairs(), alpha=alphas)
def test_symba_swap_identity_and_mirror(pair, alpha):
    # softplus(x) - softplus(-x) = x, so L(g_pos, g_neg) - L(g_neg, g_pos) = alpha * mean(g_neg - g_pos);
    # and (-g_pos) - (-g_neg) = g_neg - g_pos, so L(-g_neg, -g_pos) = L(g_pos, g_neg).
    g_pos, g_neg = pair
    a = losses.symba(g_pos, g_neg, alpha)
    swapped = losses.symba(g_neg, g_pos, alpha)
    d = alpha * (g_neg - g_pos).mean()
    scale = float(alpha * (g_neg - g_pos).abs().max())
    assert_close(a - swapped, d, rtol=0, atol=2 * SOFTPLUS_CUT + 8 * EPS * (scale + 1))
    assert_close(losses.symba(-g_neg, -g_pos, alpha), a, rtol=1e-12, atol=1e-300)


@PROPS
@given(pair=goodness_pairs(bound=1e3), alpha=alphas, k=st.floats(1e-2, 1e2))
def test_symba_scale_moves_into_alpha(pair, alpha, k):
    # L(k g_pos, k g_neg; alpha) = L(g_pos, g_neg; k alpha) for k > 0.
    g_pos, g_neg = pair
    mag = float(torch.cat([g_pos, g_neg]).abs().max())
    tol = 8 * EPS * alpha * k * mag
    assert_close(losses.symba(k * g_pos, k * g_neg, alpha), losses.symba(g_pos, g_neg, k * alpha), rtol=1e-12, atol=tol)


@PROPS
@given(pair=goodness_pairs(), other=goodness_pairs(), alpha=alphas, seed=st.integers(0, 2**16))
def test_symba_batch_halves_parts_and_joint_permutation(pair, other, alpha, seed):
    (p1, n1), (p2, n2) = pair, other
    one = losses.symba(p1, n1, alpha)
    assert_close(losses.symba(torch.cat([p1, p1]), torch.cat([n1, n1]), alpha), one, rtol=1e-12, atol=1e-12)
    b1, b2 = len(p1), len(p2)
    parts = (b1 * one + b2 * losses.symba(p2, n2, alpha)) / (b1 + b2)
    assert_close(losses.symba(torch.cat([p1, p2]), torch.cat([n1, n2]), alpha), parts, rtol=1e-12, atol=1e-12)
    perm = _perm(b1, seed)  # pairs move together
    assert_close(losses.symba(p1[perm], n1[perm], alpha), one, rtol=1e-12, atol=1e-12)


@PROPS
@given(pair=goodness_pairs(), alpha=alphas, data=st.data())
def test_symba_monotone(pair, alpha, data):
    # dL/dg_pos = -alpha sigmoid(alpha (g_neg - g_pos)) / B <= 0, dL/dg_neg = -dL/dg_pos >= 0.
    g_pos, g_neg = pair
    up = torch.tensor(data.draw(hnp.arrays(np.float64, (len(g_pos),), elements=st.floats(0.0, 1e4))).copy())
    base = losses.symba(g_pos, g_neg, alpha).item()
    slack = 1e-12 * abs(base) + 1e-15
    assert losses.symba(g_pos + up, g_neg, alpha).item() <= base + slack
    assert losses.symba(g_pos, g_neg + up, alpha).item() >= base - slack


@PROPS
@given(pair=goodness_pairs(bound=1e30, dtype=np.float32), alpha=alphas)
@example(pair=(torch.tensor([-1e6, 1e6]), torch.tensor([1e6, -1e6])), alpha=4.0)  # alpha * diff = +-8e6
@example(pair=(torch.tensor([-1e4]), torch.tensor([1e4])), alpha=10.0)  # exp(2e5) overflows float32 and float64
@example(pair=(torch.zeros(4), torch.zeros(4)), alpha=4.0)
def test_symba_gradients_finite_and_bounded(pair, alpha):
    # float32 goodness up to 1e30 with alpha <= 10 keeps alpha * (g_neg - g_pos) <= 2e31: finite, but far past the
    # point (~88) where a naive log(1 + exp(x)) overflows.
    g_pos, g_neg = (g.clone().requires_grad_(True) for g in pair)
    b = len(g_pos)
    loss = losses.symba(g_pos, g_neg, alpha)
    assert torch.isfinite(loss)
    dp, dn = torch.autograd.grad(loss, [g_pos, g_neg])
    assert torch.isfinite(dp).all() and torch.isfinite(dn).all()
    assert_close(dp, -dn)
    tol = 1e-6 * alpha / b
    assert (dp <= 0).all() and (dp >= -alpha / b - tol).all()


# -- local_ce -------------------------------------------------------------------------------------------------------


@PROPS
@given(sc=class_scores(bound=1e6), eps=smoothings, f32=st.booleans())
def test_local_ce_scalar_nonnegative_and_matches_reference(sc, eps, f32):
    scores, target = sc
    if f32:
        scores = scores.float()
    loss = losses.local_ce(scores, target, label_smoothing=eps)
    assert loss.shape == () and loss.dtype == scores.dtype
    assert torch.isfinite(loss) and loss >= 0
    if not f32:
        s = scores.numpy()
        nlp = np.logaddexp.reduce(s, axis=1, keepdims=True) - s  # -log softmax, stable
        per = (1 - eps) * nlp[np.arange(len(s)), target.numpy()] + eps * nlp.mean(axis=1)
        mag = float(np.abs(s).max())
        assert loss.item() == pytest.approx(per.mean(), rel=1e-10, abs=8 * EPS * (mag + 1) * s.shape[1])


@PROPS
@given(sc=class_scores(), eps=smoothings, data=st.data())
def test_local_ce_invariant_to_per_sample_score_shift(sc, eps, data):
    # softmax(s + c) = softmax(s): adding a constant per sample to all its class scores changes nothing.
    # Error bound: log-softmax sees s_k - max(s), which the shift perturbs by 4 EPS (|s| + |c|) at most (x K terms).
    scores, target = sc
    c = data.draw(arrays((scores.shape[0], 1), 1e4))
    a = losses.local_ce(scores, target, label_smoothing=eps)
    mag = float(scores.abs().max()) + float(c.abs().max())
    tol = 8 * EPS * mag * scores.shape[1]
    assert_close(losses.local_ce(scores + c, target, label_smoothing=eps), a, rtol=1e-12, atol=tol)


@PROPS
@given(k=st.integers(1, 6), eps=smoothings, seed=st.integers(0, 2**16), data=st.data())
def test_local_ce_batch_halves_parts_and_permutations(k, eps, seed, data):
    (s1, t1), (s2, t2) = data.draw(class_scores(k=k)), data.draw(class_scores(k=k))
    ce = lambda s, t: losses.local_ce(s, t, label_smoothing=eps)  # noqa: E731
    one = ce(s1, t1)
    assert_close(ce(torch.cat([s1, s1]), torch.cat([t1, t1])), one, rtol=1e-12, atol=1e-12)
    b1, b2 = len(t1), len(t2)
    parts = (b1 * one + b2 * ce(s2, t2)) / (b1 + b2)
    assert_close(ce(torch.cat([s1, s2]), torch.cat([t1, t2])), parts, rtol=1e-12, atol=1e-12)
    rows = _perm(b1, seed)  # samples move with their labels
    assert_close(ce(s1[rows], t1[rows]), one, rtol=1e-12, atol=1e-12)
    cols = _perm(k, seed + 1)  # relabelling the classes (smoothing is uniform over classes)
    inverse = torch.argsort(cols)
    assert_close(ce(s1[:, cols], inverse[t1]), one, rtol=1e-12, atol=1e-12)


@PROPS
@given(b=st.integers(1, 5), k=st.integers(1, 8), level=reals(1e4), eps=smoothings, data=st.data())
def test_local_ce_equal_scores_give_log_k(b, k, level, eps, data):
    target = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b)), dtype=torch.long)
    loss = losses.local_ce(torch.full((b, k), level, dtype=torch.float64), target, label_smoothing=eps)
    assert loss.item() == pytest.approx(math.log(k), rel=1e-12, abs=1e-12)


@PROPS
@given(sc=class_scores(min_classes=2), up=st.floats(0.0, 1e4), data=st.data())
def test_local_ce_monotone_without_smoothing(sc, up, data):
    # Without label smoothing dL/ds_target = (p_target - 1) / B <= 0 and dL/ds_other = p_other / B >= 0.
    # (With smoothing eps the optimum is finite -- d/ds_target = p_target - (1 - eps + eps / K) turns positive once
    # p_target is large -- so the loss legitimately is not monotone there; hence eps = 0 only.)
    scores, target = sc
    b, k = scores.shape
    i = data.draw(st.integers(0, b - 1))
    j = data.draw(st.integers(0, k - 1))
    bumped = scores.clone()
    bumped[i, j] += up
    base = losses.local_ce(scores, target).item()
    new = losses.local_ce(bumped, target).item()
    slack = 1e-12 * abs(base) + 8 * EPS * k * (float(bumped.abs().max()) + 1) / b
    if j == target[i]:
        assert new <= base + slack
    else:
        assert new >= base - slack


@PROPS
@given(sc=class_scores(bound=1e30, dtype=np.float32), eps=smoothings)
@example(sc=(torch.tensor([[1e6, -1e6, 0.0], [-1e6, 1e6, 0.0]]), torch.tensor([1, 0])), eps=0.0)
@example(sc=(torch.tensor([[1e6, -1e6, 0.0], [-1e6, 1e6, 0.0]]), torch.tensor([1, 0])), eps=0.1)
@example(sc=(torch.zeros(2, 5), torch.tensor([0, 4])), eps=0.0)
def test_local_ce_gradients_finite_and_rows_sum_to_zero(sc, eps):
    # d/ds_i = (softmax(s_i) - smoothed onehot) / B: finite for float32 scores up to 1e30 (exp would overflow at 88),
    # every entry in [-1/B, 1/B], every row summing to 0 (both softmax and the smoothed target sum to 1).
    scores, target = sc
    s = scores.clone().requires_grad_(True)
    loss = losses.local_ce(s, target, label_smoothing=eps)
    assert torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all()
    b, k = s.shape
    tol = 4 * k * 1.2e-7 / b  # float32 rounding of softmax entries
    assert (grad.abs() <= 1 / b + tol).all()
    assert_close(grad.sum(dim=1), torch.zeros(b), rtol=0, atol=tol)
