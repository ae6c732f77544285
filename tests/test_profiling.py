"""SavedTensorMeter: exact byte counts of what autograd saves for backward, with dedup, exclusion and release."""

import gc

import pytest
import torch

from ffkit.profiling import SavedTensorMeter

F32 = 4  # bytes per float32 element


def test_product_saves_both_factors():
    # mul saves each factor for the other's gradient: 10 + 10 float32 values
    x = torch.randn(10, requires_grad=True)
    w = torch.randn(10, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = (x * w).sum()
    assert meter.current == meter.peak == 20 * F32
    y.backward()
    assert meter.current == 0 and meter.peak == 20 * F32


def test_only_what_a_gradient_needs_is_saved():
    # x requires grad and w does not: d(x*w)/dx needs w only
    x = torch.randn(10, requires_grad=True)
    w = torch.randn(10)
    with SavedTensorMeter() as meter:
        (x * w).sum()
    assert meter.peak == 10 * F32


def test_a_storage_saved_twice_counts_once():
    x = torch.randn(6, 5, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = (x * x).sum()  # x saved as both factors
        z = (x[:3] * 2.0).exp().sum()  # exp saves its output (a new 3 x 5 storage)
    assert meter.peak == 30 * F32 + 15 * F32
    del y
    assert meter.current == 15 * F32  # x released with the last node holding it
    del z
    assert meter.current == 0


def test_views_count_their_whole_storage_once():
    x = torch.randn(8, 4, requires_grad=True)
    w = torch.randn(4, 3, requires_grad=True)
    with SavedTensorMeter() as meter:
        a = x[:2] @ w  # saves the view x[:2] (storage: all of x) and w
        b = x[2:] @ w
        loss = (a.sum() + b.sum())
    assert meter.peak == 32 * F32 + 12 * F32
    loss.backward()
    assert meter.current == 0


def test_excluded_parameters_are_not_activations():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    with SavedTensorMeter(exclude=lin.parameters()) as meter:
        y = lin(x).relu().sum()  # addmm saves x and weight.t() (a view of the weight); relu saves its output
    assert meter.peak == (4 * 16 + 4 * 8) * F32
    with SavedTensorMeter() as meter_all:
        y2 = lin(x).relu().sum()
    assert meter_all.peak == meter.peak + 16 * 8 * F32
    y.backward()
    y2.backward()
    assert meter.current == meter_all.current == 0


def test_graph_released_after_backward_keeps_peak():
    x = torch.randn(100, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = x.exp().sum()  # exp saves its output
        y.backward()
        assert meter.current == 0
        assert meter.peak == 100 * F32
        y2 = (x.exp() * 3).sum()
    assert meter.current == 100 * F32  # counted while active, released after the block exits
    meter.reset_peak()
    assert meter.peak == 100 * F32
    y2.backward()
    assert meter.current == 0 and meter.peak == 100 * F32


def test_two_stage_chain_peak_is_the_max_not_the_sum():
    """Layer-by-layer training frees stage 1's graph before stage 2's is built: peak = max(stage bytes)."""
    x = torch.randn(4, 32, requires_grad=True)
    with SavedTensorMeter() as meter:
        h = x.exp()  # stage 1 saves 4 x 32
        h.sum().backward()
        assert meter.current == 0
        h2 = h.detach().requires_grad_().repeat(1, 2).exp()  # stage 2 saves 4 x 64
        h2.sum().backward()
    assert meter.peak == 4 * 64 * F32
    with SavedTensorMeter() as meter_e2e:
        h = x.exp()
        h2 = h.repeat(1, 2).exp()
        h2.sum().backward()
    assert meter_e2e.peak == (4 * 32 + 4 * 64) * F32


def test_custom_function_and_reference_cycles():
    """save_for_backward goes through the hooks; an op's saved output is freed without the garbage collector."""

    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            out = a * a
            ctx.save_for_backward(a, out)
            return out

        @staticmethod
        def backward(ctx, g):
            a, _ = ctx.saved_tensors
            return 2 * a * g

    x = torch.randn(7, requires_grad=True)
    gc.disable()
    try:
        with SavedTensorMeter() as meter:
            y = Square.apply(x).sum()
        assert meter.peak == 14 * F32
        del y
        assert meter.current == 0
    finally:
        gc.enable()


def test_bad_arguments_and_reentry():
    with pytest.raises(TypeError, match="exclude"):
        SavedTensorMeter(exclude=3)
    with pytest.raises(TypeError, match=r"exclude\[1\]"):
        SavedTensorMeter(exclude=[torch.zeros(1), "w"])
    meter = SavedTensorMeter(exclude=torch.zeros(2))
    with meter, pytest.raises(RuntimeError, match="already active"):
        meter.__enter__()
    assert "peak=0" in repr(meter)
