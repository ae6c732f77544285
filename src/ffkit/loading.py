"""Load a trained network from a checkpoint in one call: :func:`load`.

A checkpoint written by ``ffkit train`` or :meth:`Trainer.save <ffkit.train.Trainer.save>` records the name of the
registered builder that made the network and its keyword arguments (``model_name``, ``model_kwargs``): the network is
built again from them and given the saved weights. Reading the file never runs code from it
(:func:`~ffkit.train.load_checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .device import resolve_device
from .network import FFNetwork

__all__ = ["load", "network_from_checkpoint"]


def load(checkpoint: str | os.PathLike[str], *, device: str | torch.device | None = None) -> FFNetwork:
    """The trained network of an ``ffkit train`` checkpoint (or a :meth:`Trainer.save` file), ready to predict.

    The network is rebuilt by the registered builder the checkpoint names, with the keyword arguments it was built
    with, given the saved weights and buffers (its SIP inference range among them), moved to ``device`` and put in
    eval mode: ``net(x)`` maps images ``x: [B, C, H, W]`` to class scores ``[B, K]``, and
    :func:`~ffkit.collect_scores` evaluates it. A ``bp_*`` baseline comes back as its
    :class:`~ffkit.models.baselines.SingleHeadNetwork`, which answers the same calls.

    Example::

        net = ffkit.load("runs/quick/checkpoint.pt")
        predicted = net(images).argmax(dim=1)  # images: [B, 1, 28, 28] on net's device

    Args:
        checkpoint: path of the checkpoint file.
        device: where to put the network: ``None`` (default) or ``"auto"`` for CUDA when available, else the CPU;
            or ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a :class:`torch.device` (:mod:`ffkit.device`).

    Returns:
        The network, on ``device``, in eval mode.

    Raises:
        TypeError: ``checkpoint`` is not a path, or ``device`` not a device.
        FileNotFoundError: there is no such file.
        ValueError: the file is not an ffkit checkpoint (or is truncated, or holds objects other than tensors and
            containers); it is one pipeline stage's file (the message names the whole network's file beside it);
            its network was built by hand, not by a registered builder (the message says how to load its weights
            into a network built the same way); its builder is not registered in this process; its weights do not
            fit the network the builder makes, or are not finite; or ``device`` is not on this machine.
    """
    from .train.checkpoint import load_checkpoint

    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path (str or os.PathLike), got {type(checkpoint).__name__}")
    target = resolve_device(device)  # before reading the file: a bad device fails at once
    payload = load_checkpoint(checkpoint, map_location="cpu")
    net = network_from_checkpoint(payload, checkpoint)
    return net.to(target).eval()


def network_from_checkpoint(payload: dict[str, Any], source: str | os.PathLike[str], *, purpose: str = "load") -> Any:
    """Build the network a loaded checkpoint holds (on the device of its tensors) and give it the saved state.

    What :func:`load` and ``ffkit test`` share.

    Args:
        payload: the checkpoint's contents, as :func:`~ffkit.train.load_checkpoint` returns them.
        source: the checkpoint's path, for the messages.
        purpose: the verb the messages use for the whole network's file (``"load"``, ``"test"``).

    Raises:
        ValueError: see :func:`load`.
    """
    from .models import create_model
    from .train.checkpoint import check_finite_state

    path = Path(source)
    if "network" not in payload and "stage" in payload:
        whole = path.name.split(".stage")[0] + ".pt"
        raise ValueError(f"{source} is the file of pipeline stage {payload['stage']} (its layers only, for resuming "
                         f"that stage); {purpose} the whole network's checkpoint the run wrote beside it: "
                         f"{path.with_name(whole)}")
    if not isinstance(payload.get("network"), dict):
        raise ValueError(f"{source} is an ffkit checkpoint without a network's state ('network' entry): it is not a "
                         f"file written by 'ffkit train' or Trainer.save")
    name = payload.get("model_name")
    if name is None:
        raise ValueError(
            f"{source} holds a network built by hand (it records no model_name: it was not made by a registered "
            f"builder such as ffkit.create_model), so ffkit cannot rebuild it; build the same network in Python "
            f"and load the weights into it: network.load_state_dict(load_checkpoint(path)[\"network\"]) "
            f"(from ffkit import load_checkpoint)"
        )
    kwargs = payload.get("model_kwargs") or {}
    try:
        net = create_model(name, **kwargs)
    except ValueError as err:
        if str(err).startswith("unknown model"):
            raise ValueError(f"{source} holds model {name!r}, which is not registered in this process: import the "
                             f"module that registers it (@ffkit.register_model) first. {err}") from None
        raise
    check_finite_state(payload["network"], source)
    try:
        net.load_state_dict(payload["network"])
    except RuntimeError as err:
        raise ValueError(f"{source} does not match model {name!r}: {err}") from None
    return net
