"""The shared argument checks of ``ffkit._validation``: what they accept, and the exact error for what they refuse."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from ffkit._validation import check_bool, check_int, check_real


def test_check_int_accepts_integers_and_refuses_bools_floats_and_small_values():
    assert check_int(3, "n") == 3 and type(check_int(np.int64(3), "n")) is int
    with pytest.raises(TypeError, match=r"^n must be an int, got bool$"):
        check_int(True, "n")
    with pytest.raises(TypeError, match=r"^n must be an int \(batches\), got float$"):
        check_int(2.0, "n", what="batches")
    with pytest.raises(ValueError, match=r"^n must be an int >= 1 \(batches\), got 0$"):
        check_int(0, "n", minimum=1, what="batches")
    assert check_int(-5, "seed") == -5  # no minimum


@pytest.mark.parametrize(("kwargs", "good", "bad", "interval"), [
    ({"low": 0.0, "high": 1.0, "high_open": True}, [0.0, 0.5], [1.0, -0.1], "in [0, 1)"),
    ({"low": 0.0, "low_open": True}, [1e-9, 3], [0.0, -1], "> 0"),
    ({"low": 0.0}, [0.0, 2.5], [-1e-9], ">= 0"),
    ({"high": 2.0, "high_open": True}, [-3, 1.99], [2.0], "< 2"),
    ({"low": 0.0, "high": 0.5, "low_open": True, "high_open": True}, [0.25], [0.0, 0.5], "in (0, 0.5)"),
])
def test_check_real_intervals(kwargs, good, bad, interval):
    for v in good:
        assert check_real(v, "x", **kwargs) == float(v)
    for v in bad:
        with pytest.raises(ValueError, match=rf"^x must be a number {re.escape(interval)}, got {v}$"):
            check_real(v, "x", **kwargs)


def test_check_real_refuses_non_numbers_and_non_finite_values():
    with pytest.raises(TypeError, match=r"^lr must be a number, got str$"):
        check_real("0.1", "lr")
    with pytest.raises(TypeError, match="got bool"):
        check_real(False, "lr")
    for v in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match=rf"^lr must be a finite number \(seconds\), got {v}$"):
            check_real(v, "lr", what="seconds")
    assert check_real(np.float32(0.5), "x") == 0.5


def test_builders_and_layers_check_through_check_int_and_check_real():
    """The public constructors go through the two helpers, so their errors have the same shape everywhere."""
    from ffkit.layers import CwCompConv

    with pytest.raises(ValueError, match=r"^out_channels must be an int >= 1, got 0$"):
        CwCompConv(1, 0, 10)
    with pytest.raises(TypeError, match=r"^kernel_size must be an int, got float$"):
        CwCompConv(1, 10, 10, 3.0)
    with pytest.raises(ValueError, match=r"^bn_eps must be a number > 0, got 0$"):
        CwCompConv(1, 10, 10, bn_eps=0)
    with pytest.raises(ValueError, match=r"^bn_eps must be a finite number, got nan$"):
        CwCompConv(1, 10, 10, bn_eps=math.nan)


def test_check_bool_refuses_truthy_values():
    assert check_bool(False, "flag") is False
    for v in (0, 1, "yes", None):
        with pytest.raises(TypeError, match=rf"^flag must be a bool \(pooling\), got {type(v).__name__}$"):
            check_bool(v, "flag", what="pooling")
