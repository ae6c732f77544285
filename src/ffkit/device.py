"""ffkit's device policy, in one place: where a trainer, ``ffkit.load`` and the command line put a network when
nothing says otherwise.

``None`` (the keyword default of :class:`~ffkit.LocalTrainer`, :class:`~ffkit.BackpropTrainer` and
:func:`ffkit.load`) and ``"auto"`` (``ffkit train --device``'s default) both mean: the first CUDA GPU when PyTorch
can use one, else the CPU. Any other value must be a device this machine has: ``"cpu"``, ``"cuda"`` or
``"cuda:N"`` (a string or a :class:`torch.device`).

The multi-process engines (pipeline, federated, chapters, data parallel) take the GPU of their process under torchrun
(``LOCAL_RANK``) instead; ``ffkit.train._distributed.default_device`` says how.
"""

from __future__ import annotations

import torch

from ._validation import check_device

__all__ = ["AUTO", "auto_device", "resolve_device"]

#: The name that asks for :func:`auto_device` (``None`` asks for it too).
AUTO = "auto"


def auto_device() -> torch.device:
    """The device ffkit uses by default: ``cuda`` when PyTorch can use a CUDA GPU, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None, name: str = "device") -> torch.device:
    """The device ``device`` names, checked: ``None`` or ``"auto"`` -> :func:`auto_device`; ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or a :class:`torch.device` -> that device, if this machine has it.

    Args:
        device: the device asked for.
        name: how errors name the argument (``"--device"`` on the command line).

    Raises:
        TypeError: ``device`` is not ``None``, a string or a :class:`torch.device`.
        ValueError: ``device`` is no device name, or names a device this machine lacks (CUDA without a GPU, a GPU
            index past the last one).
    """
    if device is None or (isinstance(device, str) and device == AUTO):
        return auto_device()
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be None, 'auto', a device name or a torch.device, got {type(device).__name__}")
    return check_device(device, name, auto=True)
