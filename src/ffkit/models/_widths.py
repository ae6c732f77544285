"""One rule for scaling layer widths by a builder's ``width_multiplier``, shared by every model family."""

from __future__ import annotations

import math

from .._validation import check_real

__all__ = ["scale_width"]


def scale_width(width: int, width_multiplier: float, *, multiple_of: int = 1) -> int:
    """``width * width_multiplier``, at least one unit.

    With ``multiple_of=1`` it is rounded to the nearest integer; otherwise it is rounded *up* to a multiple of
    ``multiple_of`` (channel-wise layers need widths that are multiples of the class count).
    """
    check_real(width_multiplier, "width_multiplier", low=0.0, low_open=True)
    if multiple_of == 1:
        return max(1, round(width * width_multiplier))
    return max(1, math.ceil(width * width_multiplier / multiple_of - 1e-9)) * multiple_of
