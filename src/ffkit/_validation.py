"""Argument checks shared by the public functions, so every error names the argument and what was expected."""

from __future__ import annotations

import difflib
import math
import numbers
from typing import TYPE_CHECKING

# The tensor checks import torch when called, so that the torch-free commands of the CLI (ffkit models, ffkit recipes,
# --help) can use the name and number checks here.
if TYPE_CHECKING:
    import torch

__all__ = [
    "check_tensor", "check_groups", "check_labels", "check_bool", "check_int", "check_real",
    "check_image_input", "check_device", "suggest_names", "callable_name", "unknown_model",
]


def check_tensor(value: object, name: str, *, min_dim: int = 1, floating: bool = True) -> torch.Tensor:
    """Return ``value`` if it is a tensor of at least ``min_dim`` dims (floating if asked), else raise."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_groups(h: torch.Tensor, groups: int, name: str = "h") -> None:
    """Check that dim 1 of ``h`` splits into ``groups`` equal consecutive groups."""
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if h.dim() < 2:
        raise ValueError(f"{name} must be [B, C, ...] to be grouped, got shape {tuple(h.shape)}")
    if h.shape[1] % groups != 0:
        raise ValueError(
            f"{name} has {h.shape[1]} channels, which do not split into groups={groups} equal groups "
            f"(channels must be a multiple of the group count)"
        )


def check_labels(y: object, num_classes: int, name: str = "labels", batch_size: int | None = None) -> torch.Tensor:
    """Check class labels: an integer tensor ``[B]`` with values in ``[0, num_classes)``."""
    import torch

    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got dtype {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {tuple(y.shape)}")
    if batch_size is not None and y.shape[0] != batch_size:
        raise ValueError(f"{name} has {y.shape[0]} entries but the batch has {batch_size} samples")
    if y.numel() > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) for num_classes={num_classes}, got values in [{lo}, {hi}]"
            )
    return y


def check_bool(value: object, name: str, *, what: str = "") -> bool:
    """``value`` if it is a ``bool`` (not merely truthy: ``0``, ``"no"`` and ``None`` are refused), else
    ``TypeError``."""
    if not isinstance(value, bool):
        hint = f" ({what})" if what else ""
        raise TypeError(f"{name} must be a bool{hint}, got {type(value).__name__}")
    return value


def check_int(value: object, name: str, *, minimum: int | None = None, what: str = "") -> int:
    """``value`` as an ``int``: an integer (not a bool; NumPy integers too) of at least ``minimum``. ``what`` says in
    the error what the number counts (``"batches per chapter"``). Wrong type: ``TypeError``; too small:
    ``ValueError``."""
    hint = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{hint}, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{hint}, got {value}")
    return int(value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    assert high is not None
    return f"{'<' if high_open else '<='} {high:g}"


def check_real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> float:
    """``value`` as a ``float``: a finite real number (not a bool, not NaN or infinite) in the interval from ``low``
    to ``high`` (closed ends unless ``low_open``/``high_open``). Wrong type: ``TypeError``; out of range:
    ``ValueError``, naming the interval."""
    hint = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{hint}, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number{hint}, got {v}")
    if low is not None or high is not None:
        below = low is not None and (v < low or (low_open and v == low))
        above = high is not None and (v > high or (high_open and v == high))
        if below or above:
            raise ValueError(f"{name} must be a number {_interval(low, high, low_open, high_open)}{hint}, got {value}")
    return v


def check_image_input(
    x: object,
    in_channels: int,
    input_size: tuple[int, ...] | None,
    num_classes: int,
    y: object | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> None:
    """Check a model's input ``[B, in_channels, H, W]`` (and ``(H, W) == input_size`` when given) and its labels.

    ``dtype``: the model's parameter dtype, which the input must share (torch would otherwise fail deep inside the
    first conv or matmul). Labels must be ``int64``: the losses' ``cross_entropy`` accepts no other integer type.
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError("input is on the meta device, which holds shapes but no data: create it on 'cpu' or 'cuda'")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype} (convert images to float)")
    if dtype is not None and x.dtype != dtype:
        numpy_hint = " (NumPy arrays are float64: torch.from_numpy(a).float())" if x.dtype == torch.float64 else ""
        raise TypeError(
            f"input has dtype {x.dtype}, but this model's parameters are {dtype}: convert the input with "
            f"x.to({dtype}){numpy_hint}, or the model with model.to({x.dtype})"
        )
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"input must have shape [B, {in_channels}, H, W] for this model "
            f"(in_channels={in_channels}), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("input is an empty batch (0 samples); a DataLoader gives none, so check how it was built")
    if input_size is not None and tuple(x.shape[-2:]) != tuple(input_size):
        raise ValueError(
            f"input must be {input_size[0]}x{input_size[1]} pixels for this model, got {x.shape[-2]}x{x.shape[-1]}"
        )
    if y is not None:
        labels = check_labels(y, num_classes, "labels", batch_size=x.shape[0])
        if labels.dtype != torch.int64:
            raise TypeError(
                f"labels must be int64 (torch.long) class indices, got dtype {labels.dtype}: convert them with y.long()"
            )


def check_device(value: object, name: str = "device", *, auto: bool = False) -> torch.device:
    """A device this machine can train on: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` with ``N`` an existing GPU (a
    ``torch.device`` or its string). ``auto=True`` also accepts ``"auto"``: CUDA if available, else the CPU."""
    import torch

    expected = "'auto', 'cpu', 'cuda' or 'cuda:N'" if auto else "'cpu', 'cuda' or 'cuda:N'"
    if auto and value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, str):
        try:
            device = torch.device(value)
        except RuntimeError:
            raise ValueError(f"{name} {value!r} is not a valid device; expected {expected}") from None
    else:
        raise TypeError(f"{name} must be a str or torch.device, got {type(value).__name__}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {value!r}: CUDA is not available on this machine; use 'cpu'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name} {value!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ValueError(f"{name} {value!r}: only 'cpu' and 'cuda' devices are supported; expected {expected}")
    return device


def callable_name(fn: object) -> str:
    """How a ``repr`` shows a user's callable (a goodness, a loss): its qualified name, else its type's name."""
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def suggest_names(name: object, names: list[str]) -> list[str]:
    """Up to three known names that ``name`` may have meant: those containing it, then similar spellings."""
    if not isinstance(name, str) or not name:
        return []
    key = name.lower()
    found = [n for n in names if key in n.lower()]
    found += [n for n in difflib.get_close_matches(key, names, n=3) if n not in found]
    return found[:3]


def unknown_model(name: object, known: list[str]) -> ValueError:
    """The error for a model name that is not registered (``known``: the registered names, sorted), with the names
    it may have meant."""
    close = suggest_names(name, known)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return ValueError(
        f"unknown model {name!r}{hint}; available models (described by `ffkit models`): {', '.join(known)}"
    )
