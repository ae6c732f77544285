"""What the benchmark scripts share: arguments, the machine description, a random batch, emit (which writes the
result only where asked), and launching a script's workers under torchrun."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import ffkit


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="deeperforward_resnet17", choices=ffkit.models.list_models("ff"),
                   metavar="NAME", help="any registered FF builder (default: deeperforward_resnet17)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("--out", default=None, help="also write the JSON result to this file (nothing written without it)")


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "ffkit": ffkit.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info


def make_batch(network: torch.nn.Module, batch_size: int, seed: int):
    """A random batch ``[B, C, 32, 32]`` with labels, as every ffkit model takes 32x32 inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, network.in_channels, 32, 32, generator=g)
    y = torch.randint(0, network.num_classes, (batch_size,), generator=g)
    return x, y  # on the host, as a DataLoader delivers them: the trainer moves them (inside the timing)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def emit(result: dict, out: str | None, print_json: bool) -> dict:
    """Write ``result`` to ``out`` only when one is given; with ``--json``, print it as the last line."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    if print_json:
        print(json.dumps(result))
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a torchrun job's rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_prefix(procs: int) -> list[str]:
    """``python -m torch.distributed.run`` for ``procs`` processes on this machine (gloo's rendezvous on a free port
    of 127.0.0.1); the script or ``-m module`` and its arguments follow."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr",
            "127.0.0.1", "--master-port", str(free_port())]


def run_workers(script: str, procs: int, args: list[str], threads: int = 1) -> dict:
    """Run ``script`` in worker mode: ``procs`` processes of ``threads`` threads each under torchrun, with ``args``
    and ``--worker-out FILE``; returns the JSON the workers wrote to ``FILE``."""
    with tempfile.TemporaryDirectory() as tmp:
        worker_out = Path(tmp) / "worker.json"
        subprocess.run([*torchrun_prefix(procs), script, *args, "--worker-out", str(worker_out)], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return json.loads(worker_out.read_text())
