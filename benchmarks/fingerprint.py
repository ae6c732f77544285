"""Behaviour fingerprint: the weights after a fixed short run of every registered model under every engine, as hashes.

    python benchmarks/fingerprint.py --out benchmarks/results/fingerprint.json     # record
    python benchmarks/fingerprint.py --check benchmarks/results/fingerprint.json   # compare; exit 1 on a difference

A refactor of the training code that should change no arithmetic must leave every hash as it was. Each run is one
``ffkit train`` process on the first ``--limit`` Fashion-MNIST training images (seed 0, one epoch, batch 32, one
thread per process, so that ``--jobs`` runs may share the machine without changing a sum's order), so the whole
path is covered: flags, recipe, model builder,
engine, optimizer, schedule and checkpoint. The hash is SHA-256 over the network's ``state_dict`` (names, dtypes,
shapes and bytes, in name order) read from the run's ``checkpoint.pt``. A run the CLI refuses is recorded by its exit
status and the first line of its message, so a combination that was refused must stay refused.

Engines: ``local`` (LocalTrainer), ``olu`` (its overlapping local updates), ``chapters``, ``backprop`` (BP-DeepSup for
FF models), ``threads`` (``--pipeline`` in one process) and ``torchrun`` (``--pipeline`` in two gloo processes), both
cut at layer 1, for every FF model (a backprop baseline: ``backprop`` only); and every recipe with its own settings.
Bit-identity holds on one machine and one torch build: record and check on the same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_info, torchrun_prefix  # noqa: E402

from ffkit.models import list_models, model_kind  # noqa: E402
from ffkit.recipes import list_recipes  # noqa: E402
from ffkit.train import load_checkpoint  # noqa: E402

QUICK = ["--dataset", "fashion-mnist", "--epochs", "1", "--batch-size", "32", "--seed", "0", "--eval-limit", "32",
         "--no-progress", "--json"]
ENGINES: dict[str, list[str]] = {
    "local": ["--trainer", "local"],
    "olu": ["--trainer", "local", "--overlap"],
    "chapters": ["--trainer", "chapters"],
    "backprop": ["--trainer", "backprop"],
    # explicit cuts: automatic balancing times the layers, and each stage draws its own dropout masks
    "threads": ["--pipeline", "--stages", "0,1", "--pipeline-timeout", "60"],
    "torchrun": ["--pipeline", "--stages", "0,1", "--pipeline-timeout", "60"],
}
TORCHRUN = "torchrun"  # the engine launched as two processes


def state_hash(path: Path) -> str:
    """SHA-256 over the checkpoint's network state: each entry's name, dtype, shape and bytes, in name order."""
    state = load_checkpoint(path)["network"]
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_one(flags: list[str], limit: int, data_dir: str | None, timeout: float, torchrun: bool = False) -> dict:
    """One ``ffkit train`` run: ``{"hash": ...}``, or ``{"refused": exit status, "message": first line}``."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["train", *flags, *QUICK, "--limit", str(limit), "--out", tmp,
                *(["--data-dir", data_dir] if data_dir else [])]
        if torchrun:
            cmd = [*torchrun_prefix(2), "-m", "ffkit", *args]
        else:
            cmd = [sys.executable, "-m", "ffkit", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        began = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        seconds = round(time.perf_counter() - began, 1)
        checkpoint = Path(tmp) / "checkpoint.pt"
        if proc.returncode == 0 and checkpoint.is_file():
            return {"hash": state_hash(checkpoint), "seconds": seconds}
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("W", "["))]
        message = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
        return {"refused": proc.returncode, "message": message.strip()[:300], "seconds": seconds}


def cases(models: list[str], engines: list[str], recipes: list[str]) -> dict[str, list[str]]:
    out = {f"{m}/{e}": ["--model", m, *ENGINES[e]] for m in models for e in engines
           if model_kind(m) == "ff" or e == "backprop"}
    out.update({f"recipe:{r}": ["--recipe", r] for r in recipes})
    return out


def _source() -> dict:
    """The ffkit the runs imported (a checkout or a worktree given by PYTHONPATH): its folder and git commit."""
    import ffkit

    folder = Path(ffkit.__file__).resolve().parent
    git = ["git", "-C", str(folder)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True).stdout)
    return {"ffkit": str(folder), "commit": commit, "uncommitted_changes": dirty}


def compare(recorded: dict, now: dict) -> list[str]:
    """What differs between two fingerprints' runs (a hash, a refusal, a case present in one only)."""
    problems = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if a is None or b is None:
            problems.append(f"{key}: only in the {'new' if a is None else 'recorded'} fingerprint")
            continue
        strip = ("seconds",)
        if {k: v for k, v in a.items() if k not in strip} != {k: v for k, v in b.items() if k not in strip}:
            problems.append(f"{key}: recorded {a}, now {b}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    p.add_argument("--engines", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--recipes", nargs="*", default=None, help="default: every registered recipe")
    p.add_argument("--limit", type=int, default=64, help="training images per run")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each one thread; torchrun's two)")
    p.add_argument("--out", type=Path, default=None, help="write the fingerprint here")
    p.add_argument("--check", type=Path, default=None, help="compare with this recorded fingerprint")
    args = p.parse_args(argv)
    recorded = json.loads(args.check.read_text()) if args.check else None
    if recorded is not None and args.models is None and args.recipes is None:
        # the recorded cases only, so a newly registered model is not a difference (one gone is)
        every = cases(list_models(), list(ENGINES), list_recipes())
        todo = {k: every[k] for k in recorded["runs"] if k in every}
    else:
        todo = cases(list_models() if args.models is None else args.models, args.engines,
                     list_recipes() if args.recipes is None else args.recipes)
    def one(item: tuple[str, list[str]]) -> tuple[str, dict]:
        key, flags = item
        result = run_one(flags, args.limit, args.data_dir, args.timeout, torchrun=key.endswith("/" + TORCHRUN))
        print(f"{key}: {result}", flush=True)
        return key, result

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        done = dict(pool.map(one, todo.items()))
    runs = {key: done[key] for key in todo}
    result = {"limit": args.limit, "machine": machine_info(), "source": _source(), "runs": runs}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if recorded is not None:
        problems = compare(recorded["runs"], runs)
        for line in problems:
            print("DIFFERS " + line)
        print(json.dumps({"cases": len(runs), "differ": len(problems)}))
        return 1 if problems else 0
    print(json.dumps({"cases": len(runs), "hashed": sum("hash" in r for r in runs.values())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
