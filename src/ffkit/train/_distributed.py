"""What the multi-process engines (pipeline, federated, chapters) share: their device and timeout conventions, and
the one place where a backend's error about a peer becomes a :class:`PipelineError`."""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .._validation import check_real

__all__ = ["PipelineError", "lost_peer", "wait_work", "run_collective", "default_device", "comm_device",
           "seed_from_rank0", "check_timeout", "check_divergence_stop", "check_equal_lengths", "hybrid_mesh",
           "release_at_exit"]


class PipelineError(RuntimeError):
    """A pipeline stage (or a federated or chapter rank) failed, or lost contact with a peer; the message names the
    stage or rank and the peer."""


# Seconds the exit hook leaves the GIL free; a backend thread needs it for microseconds (see release_at_exit).
EXIT_GRACE = 0.05
_exit_hook_registered = False


def _drain_and_destroy() -> None:
    # gloo's worker threads drop each finished work's tensors after the caller's wait has returned, and with PyTorch's
    # tensor/PyObject pairing that drop takes the GIL. A thread still waiting for it when the interpreter starts
    # finalizing is made to exit inside a noexcept destructor: std::terminate, SIGABRT, after the script's last line
    # (seen here about once in eight 2-process runs). Sleeping frees the GIL for them before finalization starts.
    time.sleep(EXIT_GRACE)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def release_at_exit() -> None:
    """At the interpreter's exit, give ``torch.distributed``'s backend threads ``EXIT_GRACE`` seconds with the GIL
    free to let go of their finished work, then destroy the process group (if the program has not): registered once
    with :mod:`atexit`. Called by :func:`ffkit.train.init_distributed` and by every multi-process engine, so a script
    that ends without ``destroy_process_group()`` exits with status 0 instead of an occasional ``terminate called
    without an active exception``."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_drain_and_destroy)
        _exit_hook_registered = True


@contextlib.contextmanager
def lost_peer(what: str, timeout: float) -> Iterator[None]:
    """Turn the backend's error of a call to a peer that died or stopped answering into a :class:`PipelineError`:
    ``"{what} (timeout {timeout} s): {the backend's message}"``. gloo raises some of these at the call, not at the
    wait, so both go through here."""
    try:
        yield
    except PipelineError:
        raise
    except RuntimeError as e:  # gloo/NCCL: the peer died, closed its connection or timed out
        raise PipelineError(f"{what} (timeout {timeout:g} s): {e}") from e


def wait_work(work: Any, timeout: float, what: str) -> None:
    """Wait for an asynchronous ``torch.distributed`` work at most ``timeout`` seconds; a lost or silent peer is a
    :class:`PipelineError` that says ``what`` was being done."""
    with lost_peer(what, timeout):
        ok = work.wait(timedelta(seconds=timeout))
    if ok is False:
        raise PipelineError(f"{what}: no answer within {timeout:g} s")


def run_collective(what: str, timeout: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run the ``torch.distributed`` collective ``fn`` asynchronously and wait for it at most ``timeout`` seconds; a
    lost or silent peer is a :class:`PipelineError` that says ``what`` was being done."""
    with lost_peer(what, timeout):
        work = fn(*args, async_op=True, **kwargs)
    wait_work(work, timeout, what)


def default_device() -> torch.device:
    """This process's device under torchrun: CUDA ``LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def comm_device(device: torch.device, group: Any = None) -> torch.device:
    """Where the buffers of ``group``'s collectives live for a process training on ``device``: that device under
    NCCL, which reduces CUDA tensors only; the CPU under gloo, simplest and safest on host tensors."""
    if dist.get_backend(group) == "nccl":
        if device.type != "cuda":
            raise ValueError(f"the NCCL backend needs a CUDA device, got device={device}")
        return device
    return torch.device("cpu")


def seed_from_rank0(device: torch.device, timeout: float, what: str) -> None:
    """Seed this process's torch generator with ``s + rank`` (its rank in the world), ``s`` drawn by rank 0 and
    broadcast (``device``: where the broadcast's buffer lives; ``what`` names it in a lost peer's error): distinct
    streams per process that a resumed run, whose processes all restore rank 0's random state, draws again."""
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(device)
    if dist.get_world_size() > 1:
        run_collective(what, timeout, dist.broadcast, seed, src=0)
    torch.manual_seed(int(seed.item()) + dist.get_rank())


#: The longest wait ffkit accepts (a year): torch.distributed keeps timeouts in milliseconds and Python's timedelta
#: overflows beyond about 1e14 seconds.
MAX_TIMEOUT = 365 * 24 * 3600.0


def check_timeout(timeout: object, name: str = "timeout") -> float:
    """Seconds a rank waits for a peer: a number from 1 (below that, processes cannot even connect: gloo's store
    gives up at once) to :data:`MAX_TIMEOUT`."""
    return check_real(timeout, name, low=1.0, high=MAX_TIMEOUT, what="seconds")


def check_divergence_stop(trainer_options: dict, engine: str) -> None:
    """The multi-process engines stop on divergence; skipping a batch would need every stage or rank to agree."""
    action = trainer_options.get("on_divergence", "stop")
    if action != "stop":
        raise ValueError(f"{engine} supports on_divergence='stop' only (skipping a batch would need every stage or "
                         f"rank to drop it together), got on_divergence={action!r}")


def check_equal_lengths(
    loader: Iterable, rank: int, world: int, device: torch.device,
    all_gather: Callable[[list[torch.Tensor], torch.Tensor], None], *, needs_len: str, mismatch: str,
) -> None:
    """Raise unless every rank's ``loader`` has the same number of batches, or a rank would wait forever for a peer.

    ``all_gather(every, mine)`` runs the engine's own (timed) ``dist.all_gather``. Every rank sees the same lengths, so
    every rank raises together: nobody is left waiting. ``needs_len`` and ``mismatch`` (formatted with ``lengths``,
    ``rank`` and ``n``) word the errors for the engine.
    """
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{needs_len}, got {type(loader).__name__}") from None
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(world)]
    all_gather(every, mine)
    lengths = [int(t) for t in every]
    if len(set(lengths)) > 1:
        raise ValueError(mismatch.format(lengths=lengths, rank=rank, n=n))


def hybrid_mesh(replicas: int, device_type: str, timeout: float) -> Any:
    """The 2-D ``DeviceMesh`` ``[replicas, stages]`` of a data x pipeline job over the whole world: row ``d`` (mesh
    dimension ``"pipeline"``) is replica ``d``'s pipeline, ranks ``d * S .. d * S + S - 1``; column ``s`` (dimension
    ``"data"``) holds stage ``s`` of every replica, which average that stage's gradients.

    The groups are made here with ``timeout`` (``init_device_mesh`` would give its groups the backend's default of
    several minutes, and a blocking collective on them would outwait a lost peer by that long)."""
    from torch.distributed.device_mesh import DeviceMesh

    world, me = dist.get_world_size(), dist.get_rank()
    if replicas < 1 or world % replicas:
        raise ValueError(f"data_parallel={replicas} replicas must divide the {world} processes of the job")
    layout = torch.arange(world).view(replicas, world // replicas)
    wait = timedelta(seconds=timeout)
    mine: dict[str, Any] = {}
    for name, lines in (("pipeline", layout.tolist()), ("data", layout.t().tolist())):
        for ranks in lines:  # every rank creates every group, in the same order (new_group's rule)
            group = dist.new_group(ranks, timeout=wait)
            if me in ranks:
                mine[name] = group
    return DeviceMesh.from_group([mine["data"], mine["pipeline"]], device_type, mesh=layout,
                                 mesh_dim_names=("data", "pipeline"))
