"""Replay issue 17's hostile-user cases against the ffkit that is importable, and print what each one did.

Each case sets up files in a fresh temporary directory and runs ``ffkit`` as a user would: the command line as
``python -m ffkit ...``, or a short Python snippet, always in a subprocess of this interpreter (``sys.executable``,
with this process's environment, so ``PYTHONPATH`` selects the tree), so a crash or a hang cannot take the harness
down. The outcome of a case is one record::

    {"id", "category", "tried", "exit", "kind", "message", "handled", "seconds", "detail"}

``kind`` is ``clean-error`` (nonzero exit without a traceback; for a Python snippet: an exception raised by ffkit's
own code, its type and first line printed), ``traceback`` (a traceback on stderr: an error raised from inside torch
or Python, or an uncaught one), ``ok`` (exit 0), ``killed`` (ended by a signal, no message) or ``timeout``;
``handled`` is the case's own check of what issue 17 asks (the crafted pickle did not run, the error names the flag,
the resumed lr is the one asked for, ...). The datasets are tiny IDX files written here; nothing is downloaded.

Compare two trees (the two runs must be sequential: each is a few minutes of CPU)::

    PYTHONPATH=/path/to/old/src python benchmarks/hostile_cases.py --json --out before.json
    PYTHONPATH=/path/to/new/src python benchmarks/hostile_cases.py --json --out after.json

``--only ID,ID`` and ``--category N`` run a subset. Nothing is written without ``--out``.

Cases not built: a read-only data directory (this harness may run as root, whom permissions do not stop; the
not-a-directory variant of the same check is case 5-unpack-not-a-directory); the Debian ``.gz`` copy's own damage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import ffkit

TIMEOUT = 120.0
#: A tiny ``ffkit train``: a 0.1-width TinyCNN, 16 training images, one epoch.
TINY = ["--width-multiplier", "0.1", "--limit", "16", "--eval-limit", "8", "--no-progress", "--epochs", "1"]
#: The run the resume cases continue (as tests/test_bad_input.py's): 2 steps of 16 images, lr 0.01, cosine.
RESUME_BASE = ["--width-multiplier", "0.1", "--limit", "32", "--batch-size", "16", "--eval-limit", "8",
               "--no-progress", "--lr", "0.01"]
#: Enough work for a signal to arrive mid-epoch: 16 steps per epoch, 3 epochs.
LONG = ["--width-multiplier", "0.1", "--limit", "2000", "--eval-limit", "64", "--no-progress", "--epochs", "3"]
RESULT_TAG = "@@RESULT "

# -- what every Python snippet starts with ---------------------------------------------------------------------------
PRELUDE = '''
import json, math, os, sys, traceback, warnings
from pathlib import Path
import torch
torch.set_num_threads(1)
import ffkit
from ffkit.models import create_model
from torch.utils.data import DataLoader, TensorDataset
FFKIT_DIR = os.path.dirname(os.path.abspath(ffkit.__file__))
TMP = Path(os.environ["HARNESS_TMP"])


def tiny(seed=0, classes=10, **kw):
    torch.manual_seed(seed)
    kw.setdefault("width_multiplier", 0.1)
    return create_model("deeperforward_tinycnn", num_classes=classes, in_channels=1, **kw)


def batch(n=4, size=32):
    return torch.rand(n, 1, size, size), torch.arange(n) % 10


def data(n=48, size=32, classes=4):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.arange(n) % classes
    x[torch.arange(n), 0, y, y] += 2.0
    return TensorDataset(x, y)


def finite(state):
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def result(**facts):
    print("@@RESULT " + json.dumps(facts, default=repr), flush=True)


def run(body):
    try:
        body()
    except BaseException as e:  # the case's outcome: ffkit's own error, or a raw one from torch or Python
        frames = traceback.extract_tb(e.__traceback__)
        # ffkit's own error: a raise statement in ffkit's code; anything else (torch, Python, an index) is raw
        own = bool(frames) and os.path.abspath(frames[-1].filename).startswith(FFKIT_DIR) and "raise" in (
            frames[-1].line or "")
        if not own:
            traceback.print_exc()
        text = " ".join(str(e).split())
        print(f"{type(e).__name__}: {text}", file=sys.stderr, flush=True)
        sys.exit(1)
'''

# -- patches of a wrapped ``python -m ffkit`` (runpy), to observe or to time a signal ---------------------------------
WRAP = '''
import os, runpy, sys
{patch}
sys.argv = ["ffkit", *{args!r}]
runpy.run_module("ffkit", run_name="__main__", alter_sys=True)
'''

LR_LOG = '''
import ffkit.train.local as _local
_real_step = _local.LocalTrainer.train_step
def _logged_step(self, *a, **k):  # the lr each step is taken with
    with open(os.environ["HARNESS_LR_LOG"], "a") as f:
        f.write(repr(self.optimizers[0].param_groups[0]["lr"]) + "\\n")
    return _real_step(self, *a, **k)
_local.LocalTrainer.train_step = _logged_step
'''

STEP_MARK = '''
import ffkit.train.local as _local
_real_step = _local.LocalTrainer.train_step
_steps = [0]
def _marked_step(self, *a, **k):  # touch HARNESS_MARK after step 3, so the harness can signal mid-epoch
    out = _real_step(self, *a, **k)
    _steps[0] += 1
    if _steps[0] == 3:
        open(os.environ["HARNESS_MARK"], "w").close()
        import time; time.sleep(0.5)
    return out
_local.LocalTrainer.train_step = _marked_step
'''

LOAD_MARK = '''
import time
import ffkit.data as _data
_real_load = _data.load_dataset
_loads = [0]
def _marked_load(*a, **k):  # the first split is about to be read: before training, before any checkpoint
    _loads[0] += 1
    if _loads[0] == 1:
        open(os.environ["HARNESS_MARK"], "w").close()
        time.sleep(3)
    return _real_load(*a, **k)
_data.load_dataset = _marked_load
'''

WORKER_GUARD = '''
import multiprocessing.process as _mp
_started = [0]
_real_start = _mp.BaseProcess.start
def _guarded_start(self):  # a fork bomb on a shared machine is not replayed: stop at the 17th worker
    _started[0] += 1
    if _started[0] > 16:
        raise RuntimeError("harness guard: ffkit started more than 16 worker processes for --workers 100000 "
                           "(stopped here so the machine is not flooded)")
    return _real_start(self)
_mp.BaseProcess.start = _guarded_start
'''


# -- processes -------------------------------------------------------------------------------------------------------
@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def _env(ctx: Ctx, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HARNESS_TMP": str(ctx.tmp),
           "FFKIT_DATA_DIR": str(ctx.tmp / "default-data")}
    env.update(extra or {})
    return env


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (a session this harness started)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def run_cmd(ctx: Ctx, cmd: list[str], timeout: float = TIMEOUT, env: dict[str, str] | None = None) -> Proc:
    proc = subprocess.Popen(cmd, cwd=ctx.tmp, env=_env(ctx, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        timed_out = True
    ctx.leftovers += _group_members(proc.pid)
    _kill_group(proc.pid)
    return Proc(proc.returncode, out, err, timed_out)


def cli(ctx: Ctx, *args: str | Path, timeout: float = TIMEOUT, env: dict[str, str] | None = None) -> Proc:
    return run_cmd(ctx, [sys.executable, "-m", "ffkit", *map(str, args)], timeout, env)


def wrapped_cli(ctx: Ctx, patch: str, *args: str | Path, env: dict[str, str] | None = None) -> list[str]:
    """The command of ``python -m ffkit ARGS`` run through runpy after ``patch`` (an observer or a signal mark)."""
    return [sys.executable, "-c", WRAP.format(patch=patch, args=[str(a) for a in args])]


def py(ctx: Ctx, code: str, timeout: float = TIMEOUT, env: dict[str, str] | None = None, setup: str = "") -> Proc:
    """Run PRELUDE, then ``setup``, then ``code`` (dedented) in a fresh interpreter."""
    return run_cmd(ctx, [sys.executable, "-c", PRELUDE + setup + textwrap.dedent(code)], timeout, env)


def facts_of(p: Proc) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            facts.update(json.loads(line[len(RESULT_TAG):]))
    return facts


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(RESULT_TAG)]
    return lines[-1] if lines else ""


def ok_line(stdout: str) -> str:
    """The line of a successful run that says most: a resume's plan, else the test accuracy, else the last."""
    lines = stdout.splitlines()
    for key in ("re-planned", "resum", "Test accuracy"):
        found = next((ln for ln in lines if key in ln), None)
        if found:
            return found
    return last_line(stdout)


def kind_of(p: Proc) -> str:
    if p.timed_out:
        return "timeout"
    if "Traceback (most recent call last)" in p.stderr:
        return "traceback"
    if p.returncode == 0:
        return "ok"
    return "killed" if p.returncode < 0 and not p.stderr.strip() else "clean-error"


def trained(p: Proc) -> bool:
    """Whether a run got as far as an epoch's summary."""
    return any(ln.startswith("epoch ") for ln in p.stdout.splitlines())


# -- data and fixtures -----------------------------------------------------------------------------------------------
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 IDX file as the MNIST files are stored: magic 0x00000803/0x00000801, big-endian dims, then data."""
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def fashion_files(root: Path, n: int = 128, n_test: int | None = None) -> Path:
    """Fashion-MNIST as ffkit reads it: ``ROOT/FashionMNIST/raw/`` with the four un-gzipped IDX files."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n_test or n)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, (count, 28, 28))
        images[np.arange(count), 2 * labels + 3, 2 * labels + 3] = 255  # a class-dependent pixel
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


class FixtureError(Exception):
    """A case's setup failed (its outcome is recorded as such, not raised out of the harness)."""


class Fixtures:
    """Data directories and a base run, made once per harness run with the tree under test, copied by each case."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Path] = {}

    def data(self, kind: str = "small") -> Path:
        if kind not in self._cache:
            path = self.root / f"data-{kind}"
            fashion_files(path, *((2400, 64) if kind == "big" else (128,)))
            self._cache[kind] = path
        return self._cache[kind]

    def base_run(self, ctx: Ctx) -> Path:
        """A finished one-epoch run of RESUME_BASE (cosine, lr 0.01, 2 steps)."""
        if "run" not in self._cache:
            out = self.root / "base-run"
            p = cli(ctx, "train", "--data-dir", self.data(), "--out", out, *RESUME_BASE)
            if p.returncode != 0 or not (out / "checkpoint.pt").is_file():
                raise FixtureError(f"the base run failed ({p.returncode}): {last_line(p.stderr)}")
            self._cache["run"] = out
        return self._cache["run"]

    def run_copy(self, ctx: Ctx) -> Path:
        out = ctx.tmp / "run"
        shutil.copytree(self.base_run(ctx), out)
        return out


@dataclass
class Ctx:
    tmp: Path
    fx: Fixtures
    leftovers: list[int] = field(default_factory=list)


@dataclass
class Outcome:
    proc: Proc
    handled: bool
    message: str | None = None
    detail: str = ""


@dataclass
class Case:
    id: str
    category: int
    tried: str
    body: Callable[[Ctx], Outcome]


CASES: list[Case] = []


def case(id: str, category: int, tried: str) -> Callable[[Callable[[Ctx], Outcome]], Callable[[Ctx], Outcome]]:
    def register(body: Callable[[Ctx], Outcome]) -> Callable[[Ctx], Outcome]:
        CASES.append(Case(id, category, tried, body))
        return body

    return register


def refused(p: Proc, *needles: str) -> bool:
    """A clean error whose stderr says every one of ``needles``."""
    return kind_of(p) == "clean-error" and all(n in p.stderr for n in needles)


# -- 1. loading a checkpoint never runs code --------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this object runs a shell command that creates ``marker``: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def malicious(ctx: Ctx, path: Path, legacy: bool = False) -> tuple[Path, Path]:
    """A valid checkpoint of the base run with one entry whose unpickling runs code (zip format or legacy pickle)."""
    import torch

    marker = ctx.tmp / "pwned"
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:
        with open(path, "wb") as f:
            pickle.dump({"ffkit_checkpoint_format": 1, "note": _RunsCode(marker)}, f, protocol=2)
    else:
        payload = torch.load(ctx.fx.base_run(ctx) / "checkpoint.pt", weights_only=False)  # our own file
        payload["metadata"] = {**payload.get("metadata", {}), "note": _RunsCode(marker)}
        torch.save(payload, path)
    return path, marker


def _no_code(p: Proc, marker: Path) -> Outcome:
    return Outcome(p, not marker.exists(), detail=f"marker file created: {marker.exists()}")


@case("1-load-checkpoint-zip", 1, "load_checkpoint(path) of a crafted zip checkpoint whose unpickling runs code")
def _(ctx: Ctx) -> Outcome:
    path, marker = malicious(ctx, ctx.tmp / "checkpoint.pt")
    return _no_code(py(ctx, f"from ffkit.train import load_checkpoint\nrun(lambda: load_checkpoint({str(path)!r}))"),
                    marker)


@case("1-load-checkpoint-legacy", 1, "load_checkpoint(path) of a crafted legacy-pickle checkpoint")
def _(ctx: Ctx) -> Outcome:
    path, marker = malicious(ctx, ctx.tmp / "checkpoint.pt", legacy=True)
    return _no_code(py(ctx, f"from ffkit.train import load_checkpoint\nrun(lambda: load_checkpoint({str(path)!r}))"),
                    marker)


@case("1-trainer-resume", 1, "LocalTrainer(...).resume(path) of a crafted checkpoint")
def _(ctx: Ctx) -> Outcome:
    path, marker = malicious(ctx, ctx.tmp / "checkpoint.pt")
    return _no_code(py(ctx, f"run(lambda: ffkit.LocalTrainer(tiny(), total_steps=2).resume({str(path)!r}))"),
                    marker)


@case("1-cli-test", 1, "ffkit test --checkpoint crafted.pt")
def _(ctx: Ctx) -> Outcome:
    path, marker = malicious(ctx, ctx.tmp / "checkpoint.pt")
    return _no_code(cli(ctx, "test", "--checkpoint", path, "--data-dir", ctx.fx.data(), "--eval-limit", "8"), marker)


@case("1-cli-train-resume", 1, "ffkit train --resume crafted.pt")
def _(ctx: Ctx) -> Outcome:
    path, marker = malicious(ctx, ctx.tmp / "checkpoint.pt")
    return _no_code(cli(ctx, "train", "--data-dir", ctx.fx.data(), "--out", ctx.tmp / "run", *RESUME_BASE,
                        "--epochs", "2", "--resume", path), marker)


@case("1-stage-file", 1, "a crafted pipeline stage file read by stage_files (as a pipeline resume reads it)")
def _(ctx: Ctx) -> Outcome:
    code = f"""
    from ffkit.train.pipelining.files import stage_files, stage_path
    print(stage_path(Path({str(ctx.tmp / 'run.pt')!r}), 0, 2))
    """
    p = py(ctx, code)
    stage = Path(last_line(p.stdout))
    if p.returncode != 0 or not stage.name:
        raise FixtureError(f"stage_path failed: {last_line(p.stderr)}")
    _, marker = malicious(ctx, stage)
    p = py(ctx, "from ffkit.train.pipelining.files import stage_files\n"
           f"run(lambda: stage_files(Path({str(ctx.tmp / 'run.pt')!r}), 0, 2))")
    return _no_code(p, marker)


@case("1-older-numpy-rng-checkpoint", 1, "resume a checkpoint holding NumPy's random state as an array (older ffkit)")
def _(ctx: Ctx) -> Outcome:
    src = ctx.fx.base_run(ctx) / "checkpoint.pt"
    code = f"""
    import numpy as np
    def body():
        payload = torch.load({str(src)!r}, weights_only=False)
        np.random.seed(3); expected = np.random.rand(3).tolist(); np.random.seed(3)
        payload["rng"]["numpy"] = np.random.get_state()
        torch.save(payload, TMP / "older.pt")
        np.random.seed(99)
        t = ffkit.LocalTrainer(tiny(), lr=0.01, total_steps=2)  # the base run's plan: 2 cosine steps
        t.resume(TMP / "older.pt")
        result(restored=np.random.rand(3).tolist() == expected)
    run(body)
    """
    p = py(ctx, code)
    restored = bool(facts_of(p).get("restored"))
    return Outcome(p, p.returncode == 0 and restored, detail=f"NumPy random state restored: {restored}")


# -- 2. resume does what the user asked, or refuses -------------------------------------------------------------------
REFUSED_FLAGS: list[tuple[str, list[str], str]] = [
    ("batch-size", ["--batch-size", "8"], "--batch-size"),
    ("seed", ["--seed", "1"], "--seed"),
    ("limit", ["--limit", "64"], "--limit"),
    ("holdout", ["--no-holdout"], "holdout"),
    ("drop-last", ["--drop-last"], "drop-last"),
    ("normalize", ["--normalize", "standard"], "--normalize"),
    ("optimizer", ["--optimizer", "sgd"], "--optimizer"),
    ("schedule", ["--schedule", "constant"], "--schedule"),
    ("schedule-interval", ["--schedule-interval", "epoch"], "--schedule-interval"),
    ("overlap", ["--overlap"], "overlap"),
]


def _refused_flag_case(change: list[str], flag: str) -> Callable[[Ctx], Outcome]:
    def body(ctx: Ctx) -> Outcome:
        out = ctx.fx.run_copy(ctx)
        before = (out / "checkpoint.pt").read_bytes()
        p = cli(ctx, "train", "--data-dir", ctx.fx.data(), "--out", out, *RESUME_BASE, "--epochs", "2", *change,
                "--resume")
        untouched = (out / "checkpoint.pt").read_bytes() == before
        handled = refused(p, "was trained with") and flag in last_line(p.stderr) and untouched
        return Outcome(p, handled, detail=f"checkpoint untouched: {untouched}; trained: {trained(p)}")

    return body


for _name, _change, _flag in REFUSED_FLAGS:
    CASES.append(Case(f"2-cli-resume-{_name}", 2, f"ffkit train --resume {' '.join(_change)} --epochs 2 after a "
                      "1-epoch run without it", _refused_flag_case(_change, _flag)))


def _lr_log(ctx: Ctx) -> tuple[dict[str, str], Path]:
    log = ctx.tmp / "lrs.txt"
    return {"HARNESS_LR_LOG": str(log)}, log


def _lrs(log: Path) -> list[float]:
    return [float(x) for x in log.read_text().split()] if log.exists() else []


def _saved_lr(path: Path) -> tuple[float | None, dict[str, Any]]:
    from ffkit.train import load_checkpoint

    try:
        payload = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - whatever the tree under test raises, the case records "no lr"
        return None, {}
    return float(payload["trainer"]["optimizers"][0]["param_groups"][0]["lr"]), payload.get("metadata", {})


@case("2-cli-resume-lr", 2, "ffkit train --resume --lr 0.002 --epochs 3 after 1 epoch at --lr 0.01 (cosine)")
def _(ctx: Ctx) -> Outcome:
    out = ctx.fx.run_copy(ctx)
    env, log = _lr_log(ctx)
    args = [a if a != "0.01" else "0.002" for a in RESUME_BASE]
    p = run_cmd(ctx, wrapped_cli(ctx, LR_LOG, "train", "--data-dir", ctx.fx.data(), "--out", out, *args,
                                 "--epochs", "3", "--resume"), env=env)
    lrs = _lrs(log)
    saved, meta = _saved_lr(out / "checkpoint.pt")
    # honoured: every resumed step at most the new lr, ending at the new final lr (lr/10) with the new lr recorded
    handled = (p.returncode == 0 and bool(lrs) and max(lrs) <= 0.002 * (1 + 1e-9) and saved is not None
               and math.isclose(saved, 0.0002, rel_tol=1e-6) and meta.get("lr") == 0.002)
    line = next((ln for ln in p.stdout.splitlines() if "re-planned" in ln), None)
    return Outcome(p, handled, message=line, detail=f"resumed steps' lr: {[f'{x:.3g}' for x in lrs]}; saved lr "
                   f"{saved}; metadata lr {meta.get('lr')}")


@case("2-cli-resume-epochs-cosine", 2, "ffkit train --resume --epochs 4 after a finished 1-epoch cosine run")
def _(ctx: Ctx) -> Outcome:
    out = ctx.fx.run_copy(ctx)
    end_lr, _ = _saved_lr(out / "checkpoint.pt")
    env, log = _lr_log(ctx)
    p = run_cmd(ctx, wrapped_cli(ctx, LR_LOG, "train", "--data-dir", ctx.fx.data(), "--out", out, *RESUME_BASE,
                                 "--epochs", "4", "--resume"), env=env)
    lrs = _lrs(log)
    # the lr must not go back up: no resumed step above the lr the finished run ended at
    handled = p.returncode == 0 and bool(lrs) and end_lr is not None and max(lrs) <= end_lr * (1 + 1e-9)
    return Outcome(p, handled, detail=f"checkpoint ended at lr {end_lr}; resumed steps' lr: "
                   f"{[f'{x:.3g}' for x in lrs]}")


@case("2-cli-resume-constant-longer", 2, "ffkit train --schedule constant --epochs 2 --resume after 1 epoch, against "
      "one 2-epoch run")
def _(ctx: Ctx) -> Outcome:
    base = ["train", "--data-dir", str(ctx.fx.data()), *RESUME_BASE, "--schedule", "constant"]
    whole, parts = ctx.tmp / "whole", ctx.tmp / "parts"
    for p in (cli(ctx, *base, "--out", whole, "--epochs", "2"), cli(ctx, *base, "--out", parts, "--epochs", "1")):
        if p.returncode != 0:
            raise FixtureError(f"a run to compare failed: {last_line(p.stderr)}")
    p = cli(ctx, *base, "--out", parts, "--epochs", "2", "--resume")
    q = py(ctx, f"""
    from ffkit.train import load_checkpoint
    a = load_checkpoint({str(whole / 'checkpoint.pt')!r})["network"]
    b = load_checkpoint({str(parts / 'checkpoint.pt')!r})["network"]
    result(same=all(torch.equal(a[k], b[k]) for k in a))
    """)
    same = bool(facts_of(q).get("same"))
    return Outcome(p, p.returncode == 0 and same, detail=f"weights bit-identical to one 2-epoch run: {same}")


@case("2-cli-resume-lr-mid-epoch", 2, "extra (not a docs row): a run killed (SIGKILL) in step 3 of epoch 1 with "
      "--checkpoint-every 1, then ffkit train --resume --lr 0.002 (it ran with --lr 0.005)")
def _(ctx: Ctx) -> Outcome:
    out, mark = ctx.tmp / "run", ctx.tmp / "mark"
    args = ["train", "--data-dir", ctx.fx.data("big"), "--out", out, *LONG, "--checkpoint-every", "1"]
    proc = _start(ctx, wrapped_cli(ctx, STEP_MARK, *args), {"HARNESS_MARK": str(mark)})
    _wait_for(proc, mark.exists)  # inside step 3: the checkpoints of steps 1 and 2 are on disk
    _kill_group(proc.pid)
    _finish(ctx, proc)
    if not (out / "checkpoint.pt").exists():
        raise FixtureError("the killed run left no checkpoint to resume")
    env, log = _lr_log(ctx)
    p = run_cmd(ctx, wrapped_cli(ctx, LR_LOG, *args, "--lr", "0.002", "--resume"), env=env)
    lrs = _lrs(log)
    saved, meta = _saved_lr(out / "checkpoint.pt")
    handled = (p.returncode == 0 and bool(lrs) and max(lrs) <= 0.002 * (1 + 1e-9) and saved is not None
               and math.isclose(saved, 0.0002, rel_tol=1e-6) and meta.get("lr") == 0.002)
    line = next((ln for ln in p.stdout.splitlines() if "re-planned" in ln), None)
    return Outcome(p, handled, message=line, detail=f"resumed steps: {len(lrs)}, lr from {lrs[0] if lrs else None} "
                   f"to {lrs[-1] if lrs else None} (max {max(lrs) if lrs else None}); saved lr {saved}")


def _api_resume(ctx: Ctx, before: str, after: str, then_step: bool = True) -> Proc:
    """A LocalTrainer(tiny, total_steps=8, BEFORE) takes 3 steps and saves; LocalTrainer(tiny, AFTER) resumes it."""
    return py(ctx, f"""
    def body():
        torch.manual_seed(0)
        t = ffkit.LocalTrainer(tiny(), **{{"total_steps": 8, **{before}}})
        for _ in range(3):
            t.train_step(*batch())
        path = t.save(TMP / "checkpoint.pt")
        again = ffkit.LocalTrainer(tiny(), **{{"total_steps": 8, **{after}}})
        again.resume(path)
        result(resumed=True, lr=again.optimizers[0].param_groups[0]["lr"],
               notes=list(getattr(again, "resume_notes", [])))
        if {then_step}:
            again.train_step(*batch())
            result(stepped=True)
    run(body)
    """)


@case("2-api-resume-lr", 2, "LocalTrainer(net, lr=0.002, total_steps=8).resume(path) of an lr-0.01 checkpoint at "
      "step 3")
def _(ctx: Ctx) -> Outcome:
    p = _api_resume(ctx, "{'lr': 0.01}", "{'lr': 0.002}", then_step=False)
    # the lr a run planned with lr 0.002 from the start has at step 3
    q = py(ctx, """
    t = ffkit.LocalTrainer(tiny(), lr=0.002, total_steps=8)
    for _ in range(3):
        t.train_step(*batch())
    result(lr=t.optimizers[0].param_groups[0]["lr"])
    """)
    lr, expected = facts_of(p).get("lr"), facts_of(q).get("lr")
    handled = lr is not None and expected is not None and math.isclose(lr, expected, rel_tol=1e-6)
    return Outcome(p, handled, message=None if p.returncode else f"resumed lr {lr}",
                   detail=f"lr after resume {lr}; a run planned with lr 0.002 is at {expected}")


API_REFUSALS: list[tuple[str, str, str, str, str]] = [
    ("optimizer", "LocalTrainer(net, optimizer='sgd').resume(path) of an Adam checkpoint, then a step", "{}",
     "{'optimizer': 'sgd'}", "optimizer='adam'"),
    ("schedule", "LocalTrainer(net, schedule='constant').resume(path) of a cosine checkpoint", "{}",
     "{'schedule': 'constant'}", "schedule='cosine'"),
    ("cooldown-length", "a 'cooldown' checkpoint of total_steps=8 resumed with total_steps=20",
     "{'schedule': 'cooldown'}", "{'schedule': 'cooldown', 'total_steps': 20}", "cooldown"),
    ("shorter-than-done", "LocalTrainer(net, total_steps=2).resume(path) of a checkpoint 3 steps in", "{}",
     "{'total_steps': 2}", "3 steps"),
]


def _api_refusal_case(before: str, after: str, needle: str) -> Callable[[Ctx], Outcome]:
    def body(ctx: Ctx) -> Outcome:
        p = _api_resume(ctx, before, after)
        facts = facts_of(p)
        handled = refused(p, needle) and not facts.get("resumed")
        return Outcome(p, handled, message=None if p.returncode else "resumed and stepped, no error",
                       detail=f"resume returned: {bool(facts.get('resumed'))}; a step after it ran: "
                       f"{bool(facts.get('stepped'))}")

    return body


for _name, _tried, _before, _after, _needle in API_REFUSALS:
    CASES.append(Case(f"2-api-resume-{_name}", 2, _tried, _api_refusal_case(_before, _after, _needle)))


# -- 3. non-finite values --------------------------------------------------------------------------------------------
#: The head flags on dtg_mlp, a model with a classifier head (TinyCNN has none, and says so before any value check).
HEAD = ["--model", "dtg_mlp"]
FLAG_CASES: list[tuple[str, list[str], str]] = [
    ("final-lr-nan", ["--final-lr", "nan"], "--final-lr"),
    ("final-lr-negative", ["--final-lr", "-0.1"], "--final-lr"),
    ("weight-decay-negative", ["--weight-decay", "-1"], "--weight-decay"),
    ("head-weight-decay-inf", [*HEAD, "--head-weight-decay", "inf"], "--head-weight-decay"),
    ("lr-nan", ["--lr", "nan"], "--lr"),
    ("lr-inf", ["--lr", "inf"], "--lr"),
    ("lr-zero", ["--lr", "0"], "--lr"),
    ("head-lr-nan", [*HEAD, "--head-lr", "nan"], "--head-lr"),
]


def _flag_case(flags: list[str], name: str) -> Callable[[Ctx], Outcome]:
    def body(ctx: Ctx) -> Outcome:
        p = cli(ctx, "train", "--data-dir", ctx.fx.data(), "--out", ctx.tmp / "run", *TINY, *flags)
        handled = refused(p, name) and name in last_line(p.stderr) and not trained(p)
        msg = None if p.returncode else f"accepted; {ok_line(p.stdout)}"
        return Outcome(p, handled, message=msg, detail=f"trained an epoch first: {trained(p)}")

    return body


for _name, _flags, _flag in FLAG_CASES:
    CASES.append(Case(f"3-cli-{_name}", 3, f"ffkit train {' '.join(_flags)}", _flag_case(_flags, _flag)))


@case("3-api-final-lr-nan", 3, "LocalTrainer(net, final_lr=float('nan'))")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, "run(lambda: ffkit.LocalTrainer(tiny(), final_lr=float('nan'), schedule='constant'))")
    return Outcome(p, refused(p, "final_lr"), message=None if p.returncode else "accepted, no error")


@case("3-api-weight-decay-negative", 3, "LocalTrainer(net, weight_decay=-1.0)")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, "run(lambda: ffkit.LocalTrainer(tiny(), weight_decay=-1.0, schedule='constant'))")
    return Outcome(p, refused(p, "weight_decay"), message=None if p.returncode else "accepted, no error")


@case("3-api-head-weight-decay-inf", 3, "extra (not a docs row): LocalTrainer(dtg_mlp, head_weight_decay=inf)")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, "run(lambda: ffkit.LocalTrainer(create_model('dtg_mlp', num_classes=10, in_channels=1, "
           "width_multiplier=0.1), head_weight_decay=float('inf'), schedule='constant'))")
    return Outcome(p, refused(p, "weight_decay", "inf"), message=None if p.returncode else "accepted, no error")


@case("3-make-report-nan-scores", 3, "make_report(scores, labels) where every true-class score is NaN")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    from ffkit.evaluation import make_report
    def body():
        labels = torch.arange(6) % 3
        scores = torch.zeros(2, 6, 3)
        scores[:, torch.arange(6), labels] = float("nan")
        rep = make_report(scores, labels, (0, 1), head_scores=scores[0].clone(), prediction_range=(0, 1))
        result(per_layer=rep.per_layer, all_layers=rep.all_layers, sip=rep.sip, prediction=rep.prediction,
               head=rep.head)
    run(body)
    """)
    f = facts_of(p)
    values = [*(f.get("per_layer") or [1.0]), *(f.get(k) for k in ("all_layers", "sip", "prediction", "head"))]
    handled = p.returncode == 0 and all(v == 0.0 for v in values)
    return Outcome(p, handled, message=None if p.returncode else f"accuracies: {values}")


@case("3-nan-gradient-finite-loss", 3, "LocalTrainer.train_step where layer 2's weight gradient is NaN behind a "
      "finite loss")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        torch.manual_seed(0)
        net = tiny()
        t = ffkit.LocalTrainer(net, schedule="constant")
        t.train_step(*batch())
        before = [q.detach().clone() for q in net.parameters()]
        net.layers[1].conv.weight.register_hook(lambda g: g * float("nan"))
        try:
            t.train_step(*batch())
        finally:
            same = all(torch.equal(a, b.detach()) for a, b in zip(before, net.parameters()))
            result(unchanged=same, finite=finite(net.state_dict()))
    run(body)
    """)
    f = facts_of(p)
    handled = refused(p, "gradient") and bool(f.get("unchanged"))
    return Outcome(p, handled, message=None if p.returncode else "the step was taken, no error",
                   detail=f"weights unchanged: {f.get('unchanged')}; weights finite: {f.get('finite')}")


def _overflow_case(lr: str) -> Callable[[Ctx], Outcome]:
    def body(ctx: Ctx) -> Outcome:
        p = py(ctx, f"""
        def sgd(lr, seed=0):
            return ffkit.LocalTrainer(tiny(seed, classes=4), lr=lr, optimizer="sgd", schedule="constant")
        def body():
            loader = DataLoader(data(64), batch_size=16)
            try:
                sgd({lr}).fit(loader, epochs=1, out_dir=TMP, log=None)
                result(diverged=False)
            except ffkit.DivergenceError as e:
                result(diverged=True, error=" ".join(str(e).split())[:400])
            if not (TMP / "checkpoint.pt").exists():
                raise RuntimeError("no checkpoint was saved")
            resumed = sgd(0.01, seed=5)
            resumed.resume(TMP / "checkpoint.pt")
            resumed.fit(loader, epochs=2, out_dir=TMP, log=None)
            result(resumed_finite=finite(resumed.network.state_dict()))
        run(body)
        """)
        f = facts_of(p)
        handled = p.returncode == 0 and bool(f.get("diverged")) and bool(f.get("resumed_finite"))
        msg = f.get("error") if p.returncode == 0 else None
        return Outcome(p, handled, message=msg, detail=f"diverged: {f.get('diverged')}; the saved state resumed "
                       f"with lr 0.01 and trained 2 epochs: {p.returncode == 0}")

    return body


for _lr in ("1e38", "1e20"):
    CASES.append(Case(f"3-fit-sgd-lr-{_lr}", 3, f"fit(out_dir=...) with SGD at lr={_lr}, then resume the saved last "
                      "good state with lr 0.01", _overflow_case(_lr)))


@case("3-backprop-lr-1e38", 3, "BackpropTrainer(bp_vgg8, lr=1e38, sgd).fit(out_dir=...), then resume the saved state "
      "with lr 0.01")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    import copy
    def net():
        torch.manual_seed(0)
        return create_model("bp_vgg8", num_classes=4, in_channels=1, width_multiplier=0.05)
    def body():
        loader = DataLoader(data(32), batch_size=8)
        try:
            ffkit.BackpropTrainer(net(), lr=1e38, optimizer="sgd", schedule="constant").fit(
                loader, epochs=1, out_dir=TMP, log=None)
            result(diverged=False)
        except ffkit.DivergenceError as e:
            result(diverged=True, error=" ".join(str(e).split())[:400])
        again = ffkit.BackpropTrainer(net(), lr=0.01, optimizer="sgd", schedule="constant")
        again.resume(TMP / "checkpoint.pt")
        again.fit(loader, epochs=2, out_dir=TMP, log=None)
        result(resumed_finite=finite(again.network.state_dict()))
    run(body)
    """)
    f = facts_of(p)
    handled = p.returncode == 0 and bool(f.get("diverged")) and bool(f.get("resumed_finite"))
    return Outcome(p, handled, message=f.get("error") if p.returncode == 0 else None,
                   detail=f"diverged: {f.get('diverged')}; saved state resumed and trained: {p.returncode == 0}")


@case("3-backprop-nan-gradient", 3, "BackpropTrainer.train_step with a NaN weight gradient behind a finite loss")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        torch.manual_seed(0)
        net = create_model("bp_vgg8", num_classes=4, in_channels=1, width_multiplier=0.05)
        t = ffkit.BackpropTrainer(net, lr=0.01, schedule="constant")
        x, y = data(8)[:]
        before = [q.detach().clone() for q in net.parameters()]
        next(net.parameters()).register_hook(lambda g: g * float("nan"))
        try:
            t.train_step(x, y)
        finally:
            same = all(torch.equal(a, b.detach()) for a, b in zip(before, net.parameters()))
            result(unchanged=same, finite=finite(net.state_dict()))
    run(body)
    """)
    f = facts_of(p)
    handled = refused(p, "gradient") and bool(f.get("unchanged"))
    return Outcome(p, handled, message=None if p.returncode else "the step was taken, no error",
                   detail=f"weights unchanged: {f.get('unchanged')}; weights finite: {f.get('finite')}")


@case("3-nonfinite-previous-state", 3, "fit diverges while the weights already hold an infinity (the last checkpoint "
      "must not be overwritten)")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        torch.manual_seed(0)
        net = tiny(classes=4)
        t = ffkit.LocalTrainer(net, schedule="constant")
        loader = DataLoader(data(8), batch_size=4)
        t.fit(loader, epochs=1, out_dir=TMP, log=None)
        saved = (TMP / "checkpoint.pt").read_bytes()
        with torch.no_grad():
            net.layers[0].conv.weight.fill_(float("inf"))
        try:
            t.fit(loader, epochs=2, out_dir=TMP, log=None)
        finally:
            result(kept=(TMP / "checkpoint.pt").read_bytes() == saved)
    run(body)
    """)
    kept = bool(facts_of(p).get("kept"))
    return Outcome(p, kept and p.returncode != 0, detail=f"last checkpoint kept as it was: {kept}")


def _nan_checkpoint(ctx: Ctx) -> Path:
    import torch

    payload = torch.load(ctx.fx.base_run(ctx) / "checkpoint.pt", weights_only=False)  # our own file
    name = next(k for k, v in payload["network"].items() if v.is_floating_point())
    payload["network"][name] = payload["network"][name].clone().fill_(float("nan"))
    path = ctx.tmp / "diverged.pt"
    torch.save(payload, path)
    return path


@case("3-nan-checkpoint-resume", 3, "LocalTrainer(...).resume(path) of a checkpoint holding NaN weights")
def _(ctx: Ctx) -> Outcome:
    path = _nan_checkpoint(ctx)
    p = py(ctx, f"run(lambda: ffkit.LocalTrainer(tiny(), lr=0.01, total_steps=2).resume({str(path)!r}))")
    return Outcome(p, refused(p, "holds non-finite weights"), message=None if p.returncode else "resumed, no error")


@case("3-nan-checkpoint-cli-test", 3, "ffkit test --checkpoint of a checkpoint holding NaN weights")
def _(ctx: Ctx) -> Outcome:
    path = _nan_checkpoint(ctx)
    p = cli(ctx, "test", "--checkpoint", path, "--data-dir", ctx.fx.data(), "--eval-limit", "8")
    msg = None if p.returncode else next((ln for ln in p.stdout.splitlines() if "ccuracy" in ln), None)
    return Outcome(p, refused(p, "holds non-finite weights"), message=msg)


@case("3-nan-checkpoint-cli-resume", 3, "ffkit train --resume of a checkpoint holding NaN weights")
def _(ctx: Ctx) -> Outcome:
    path = _nan_checkpoint(ctx)
    p = cli(ctx, "train", "--data-dir", ctx.fx.data(), "--out", ctx.tmp / "run", *RESUME_BASE, "--epochs", "2",
            "--resume", path)
    return Outcome(p, refused(p, "holds non-finite weights") and not trained(p))


# -- 4. no work lost to a late error or a signal ----------------------------------------------------------------------
@case("4-out-is-a-file", 4, "ffkit train --out notes.txt (a file)")
def _(ctx: Ctx) -> Outcome:
    notes = ctx.tmp / "notes.txt"
    notes.write_text("a file")
    p = cli(ctx, "train", "--data-dir", ctx.fx.data(), "--out", notes, *TINY)
    kept = notes.read_text() == "a file"
    return Outcome(p, refused(p, "--out") and not trained(p) and kept,
                   detail=f"trained an epoch first: {trained(p)}; the file kept: {kept}")


@case("4-out-under-a-file", 4, "ffkit train --out notes.txt/run")
def _(ctx: Ctx) -> Outcome:
    notes = ctx.tmp / "notes.txt"
    notes.write_text("a file")
    p = cli(ctx, "train", "--data-dir", ctx.fx.data(), "--out", notes / "run", *TINY)
    return Outcome(p, refused(p, "--out") and not trained(p), detail=f"trained an epoch first: {trained(p)}")


@case("4-damaged-test-labels", 4, "ffkit train with a readable t10k-labels-idx1-ubyte whose labels are all 12")
def _(ctx: Ctx) -> Outcome:
    raw = fashion_files(ctx.tmp / "data", n=40)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(40, 12))
    p = cli(ctx, "train", "--data-dir", ctx.tmp / "data", "--out", ctx.tmp / "run", "--no-holdout", *TINY)
    no_ckpt = not (ctx.tmp / "run" / "checkpoint.pt").exists()
    return Outcome(p, refused(p, "labels") and not trained(p) and no_ckpt,
                   detail=f"trained an epoch first: {trained(p)}; checkpoint written: {not no_ckpt}")


def _start(ctx: Ctx, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, cwd=ctx.tmp, env=_env(ctx, env), stdout=open(ctx.tmp / "stdout.txt", "w"),
                            stderr=open(ctx.tmp / "stderr.txt", "w"), text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen[str], ready: Callable[[], bool], limit: float = 90.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _finish(ctx: Ctx, proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> Proc:
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.wait()
        timed_out = True
    ctx.leftovers += _group_members(proc.pid)
    _kill_group(proc.pid)
    return Proc(proc.returncode, (ctx.tmp / "stdout.txt").read_text(), (ctx.tmp / "stderr.txt").read_text(),
                timed_out)


def _signal_case(sig: signal.Signals, code: int, before_checkpoint: bool = False) -> Callable[[Ctx], Outcome]:
    def body(ctx: Ctx) -> Outcome:
        out, mark = ctx.tmp / "run", ctx.tmp / "mark"
        cmd = wrapped_cli(ctx, LOAD_MARK if before_checkpoint else STEP_MARK, "train", "--data-dir",
                          ctx.fx.data("big"), "--out", out, *LONG)
        proc = _start(ctx, cmd, {"HARNESS_MARK": str(mark)})
        reached = _wait_for(proc, mark.exists)
        if reached:
            os.kill(proc.pid, sig)
        p = _finish(ctx, proc)
        ckpt = out / "checkpoint.pt"
        where = ""
        if ckpt.exists():
            from ffkit.train import load_checkpoint

            try:
                payload = load_checkpoint(ckpt)
                pos = payload.get("position") or {}
                where = f" (epochs done {payload['trainer'].get('epoch')}; inside epoch {pos.get('epoch')} after batch "
                where += f"{pos.get('batches')})"
            except Exception as e:  # noqa: BLE001 - recorded, not raised
                where = f" (unreadable: {type(e).__name__})"
        if before_checkpoint:
            handled = p.returncode == code and not ckpt.exists() and "nothing to resume" in p.stderr
        else:
            handled = p.returncode == code and ckpt.exists() and "--resume" in p.stderr
        handled = handled and reached and "Traceback" not in p.stderr
        return Outcome(p, handled, detail=f"signal sent: {reached}; checkpoint exists: {ckpt.exists()}{where}")

    return body


CASES.append(Case("4-sigterm-mid-epoch", 4, "SIGTERM to ffkit train after batch 3 of epoch 1 (no --checkpoint-every)",
                  _signal_case(signal.SIGTERM, 143)))
CASES.append(Case("4-ctrl-c-mid-epoch", 4, "Ctrl-C (SIGINT) to ffkit train after batch 3 of epoch 1",
                  _signal_case(signal.SIGINT, 130)))
CASES.append(Case("4-sigterm-before-checkpoint", 4, "SIGTERM to ffkit train while it reads the data (nothing saved "
                  "yet)", _signal_case(signal.SIGTERM, 143, before_checkpoint=True)))


# -- 5. datasets validated, not trusted -------------------------------------------------------------------------------
def _dataset_case(damage: Callable[[Path], None], needle: str) -> Callable[[Ctx], Outcome]:
    def body(ctx: Ctx) -> Outcome:
        raw = fashion_files(ctx.tmp / "data", n=40)
        damage(raw)
        p = cli(ctx, "train", "--data-dir", ctx.tmp / "data", "--out", ctx.tmp / "run", *TINY)
        line = next((ln for ln in p.stderr.splitlines() if needle in ln), None)  # the multi-line error's point
        return Outcome(p, refused(p, needle) and not trained(p), message=line, detail=f"expected text: {needle!r}")

    return body


def _image_shape(raw: Path) -> None:
    write_idx(raw / "train-images-idx3-ubyte", np.full((40, 32, 32), 7))


def _counts(raw: Path) -> None:
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(38) % 10)


def _labels_2d(raw: Path) -> None:
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros((40, 2)))


def _directory(raw: Path) -> None:
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte").mkdir()


def _raw_is_file(raw: Path) -> None:
    shutil.rmtree(raw)
    raw.write_text("not a directory")


def _truncated(raw: Path) -> None:
    target = raw / "train-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:1000])


def _garbage(raw: Path) -> None:
    (raw / "train-images-idx3-ubyte").write_bytes(b"<html>not found</html>" * 50)


for _name, _tried, _damage, _needle in [
    ("image-shape", "train-images-idx3-ubyte holding 32x32 images", _image_shape, "32x32"),
    ("counts", "40 training images, 38 training labels", _counts, "38 labels"),
    ("labels-2d", "train-labels-idx1-ubyte holding a 40x2 array", _labels_2d, "2-D"),
    ("directory-for-a-file", "FashionMNIST/raw/train-images-idx3-ubyte is a directory", _directory,
     "a directory where a file is expected"),
    ("raw-is-a-file", "DATA/FashionMNIST/raw is a file", _raw_is_file, "is a file"),
    ("truncated", "train-images-idx3-ubyte cut to 1000 bytes", _truncated, "truncated"),
    ("not-idx", "train-images-idx3-ubyte holding an HTML page", _garbage, "not an IDX file"),
]:
    CASES.append(Case(f"5-{_name}", 5, f"ffkit train --data-dir DATA with {_tried}", _dataset_case(_damage, _needle)))


@case("5-unpack-not-a-directory", 5, "load_dataset('fashion-mnist', 'train', 'notes.txt/data'): the Debian copy "
      "cannot be unpacked there")
def _(ctx: Ctx) -> Outcome:
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        raise FixtureError("the Debian package dataset-fashion-mnist is not installed: not built")
    (ctx.tmp / "notes.txt").write_text("a file")
    p = py(ctx, "from ffkit.data import load_dataset\n"
           f"run(lambda: load_dataset('fashion-mnist', 'train', {str(ctx.tmp / 'notes.txt' / 'data')!r}))")
    return Outcome(p, refused(p, "cannot be unpacked"), message=None if p.returncode else "loaded, no error")


# -- 6. one run per output directory ----------------------------------------------------------------------------------
def _long_run(ctx: Ctx, out: Path) -> subprocess.Popen[str]:
    """A run that holds ``out`` for minutes (100 epochs; the case ends it), started once it has printed its plan."""
    longer = [*LONG[:-1], "100"]
    proc = _start(ctx, [sys.executable, "-m", "ffkit", "train", "--data-dir", str(ctx.fx.data("big")), "--out",
                        str(out), *longer])
    started = _wait_for(proc, lambda: "training" in (ctx.tmp / "stdout.txt").read_text())
    if not started:
        _kill_group(proc.pid)
        proc.wait()
        raise FixtureError(f"the first run did not start: {last_line((ctx.tmp / 'stderr.txt').read_text())}")
    return proc


@case("6-second-run-same-out", 6, "a second ffkit train on the --out another one is writing to")
def _(ctx: Ctx) -> Outcome:
    out = ctx.tmp / "run"
    first = _long_run(ctx, out)
    try:
        p = cli(ctx, "train", "--data-dir", ctx.fx.data(), "--out", out, *TINY)
        alive = first.poll() is None
    finally:
        _kill_group(first.pid)
        first.wait()
    if not alive:
        raise FixtureError(f"the first run ended ({first.returncode}) before the second one did: no overlap to test")
    return Outcome(p, refused(p, f"pid {first.pid}"), detail=f"first run's pid {first.pid}, still running when the "
                   "second one ended")


@case("6-after-sigkill", 6, "ffkit train on an --out whose previous run was killed with SIGKILL (the lock is gone)")
def _(ctx: Ctx) -> Outcome:
    out = ctx.tmp / "run"
    first = _long_run(ctx, out)
    _kill_group(first.pid)
    first.wait()
    p = cli(ctx, "train", "--data-dir", ctx.fx.data(), "--out", out, *TINY)
    return Outcome(p, p.returncode == 0)


# -- 7. bounded resources ---------------------------------------------------------------------------------------------
@case("7-workers-100000", 7, "ffkit train --workers 100000 (a tiny run; more than 16 worker starts are stopped by "
      "the harness)")
def _(ctx: Ctx) -> Outcome:
    before = len(ctx.leftovers)
    p = run_cmd(ctx, wrapped_cli(ctx, WORKER_GUARD, "train", "--data-dir", ctx.fx.data(), "--out", ctx.tmp / "run",
                                 *TINY, "--workers", "100000"))
    left = ctx.leftovers[before:]
    warned = "warning" in p.stderr and "--workers 100000" in p.stderr
    msg = next((ln for ln in p.stderr.splitlines() if "warning" in ln), None) if p.returncode == 0 else None
    return Outcome(p, p.returncode == 0 and warned and not left, message=msg,
                   detail=f"warned: {warned}; processes left behind: {len(left)}")


@case("7-workers-memory", 7, "worker_count(6, 96 MiB batches) on 8 cores with 1 GiB available")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        from ffkit import cli
        os.sched_getaffinity = lambda _: set(range(8))
        cli.available_memory = lambda: 2**30
        result(workers=cli.worker_count(6, 96 * 2**20))
    run(body)
    """)
    n = facts_of(p).get("workers")
    return Outcome(p, n == 2, message=None if p.returncode else f"{n} workers", detail=f"workers: {n}")


# -- 8. the Python API ------------------------------------------------------------------------------------------------
def _api_error_case(code: str, needle: str) -> Callable[[Ctx], Outcome]:
    def body(ctx: Ctx) -> Outcome:
        p = py(ctx, code)
        return Outcome(p, refused(p, needle), message=None if p.returncode else "accepted, no error")

    return body


for _name, _tried, _code, _needle in [
    ("empty-batch", "trainer.train_step(torch.rand(0, 1, 32, 32), y)",
     "run(lambda: ffkit.LocalTrainer(tiny(), schedule='constant').train_step(torch.rand(0, 1, 32, 32), "
     "torch.zeros(0, dtype=torch.long)))", "empty"),
    ("meta-batch", "trainer.train_step(torch.empty(4, 1, 32, 32, device='meta'), y)",
     "run(lambda: ffkit.LocalTrainer(tiny(), schedule='constant').train_step(torch.empty(4, 1, 32, 32, "
     "device='meta'), torch.arange(4)))", "meta"),
    ("layers-one-layer", "FFNetwork(CWConv(1, 8, 4), ...): a layer, not a list",
     "from ffkit.layers import CWConv\nrun(lambda: ffkit.FFNetwork(CWConv(1, 8, 4), ffkit.ClassScoreObjective(), "
     "num_classes=4, in_channels=1))", "list"),
    ("layers-generator", "FFNetwork((m for m in [layer]), ...)",
     "from ffkit.layers import CWConv\nrun(lambda: ffkit.FFNetwork((m for m in [CWConv(1, 8, 4)]), "
     "ffkit.ClassScoreObjective(), num_classes=4, in_channels=1))", "generator"),
    ("same-layer-twice", "FFNetwork([a, b, b], ...): one layer object twice",
     "from ffkit.layers import CWConv\nb = CWConv(8, 8, 4)\nrun(lambda: ffkit.FFNetwork([CWConv(1, 8, 4), b, b], "
     "ffkit.ClassScoreObjective(), num_classes=4, in_channels=1))", "same module"),
]:
    CASES.append(Case(f"8-{_name}", 8, _tried, _api_error_case(_code, _needle)))


@case("8-input-requires-grad", 8, "x.requires_grad_(True), then trainer.train_step(x, y)")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        x, y = batch()
        x.requires_grad_(True)
        ffkit.LocalTrainer(tiny(), schedule="constant").train_step(x, y)
        result(grad_none=x.grad is None)
    run(body)
    """)
    none = facts_of(p).get("grad_none")
    return Outcome(p, p.returncode == 0 and bool(none), message=None if p.returncode else f"x.grad is None: {none}")


@case("8-past-total-steps", 8, "LocalTrainer(net, lr=0.01, final_lr=0.001, total_steps=2), then 5 steps")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        torch.manual_seed(0)
        t = ffkit.LocalTrainer(tiny(), lr=0.01, final_lr=0.001, total_steps=2)
        lrs = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                t.train_step(*batch())
                lrs.append(t.optimizers[0].param_groups[0]["lr"])
        said = [str(w.message) for w in caught if "total_steps" in str(w.message)]
        result(lrs=lrs, warning=said[0] if said else None, warnings=len(said))
    run(body)
    """)
    f = facts_of(p)
    lrs = f.get("lrs") or []
    stays = bool(lrs) and max(lrs[1:] or lrs) <= 0.001 * (1 + 1e-9)
    handled = p.returncode == 0 and bool(f.get("warning")) and stays
    msg = (f.get("warning") or "no warning")[:220] if p.returncode == 0 else None
    return Outcome(p, handled, message=msg, detail=f"lr after each step: {[f'{x:.3g}' for x in lrs]}")


# -- 9. distributed ---------------------------------------------------------------------------------------------------
for _value in ("0.001", "1e12"):
    _flags = ["--pipeline", "--batch-size", "8", "--pipeline-timeout", _value]
    CASES.append(Case(f"9-cli-pipeline-timeout-{_value}", 9, f"ffkit train {' '.join(_flags)}",
                      _flag_case(_flags, "--pipeline-timeout")))


@case("9-init-distributed-0.5", 9, "init_distributed(timeout=0.5) in a one-process job (RANK=0, WORLD_SIZE=1)")
def _(ctx: Ctx) -> Outcome:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    p = py(ctx, """
    from ffkit.train.pipeline import init_distributed
    def body():
        result(rank_world=init_distributed(timeout=0.5))
        torch.distributed.destroy_process_group()
    run(body)
    """, timeout=60, env=env)
    return Outcome(p, refused(p, "timeout must be"), message=None if p.returncode else "accepted, no error")


PIPELINE_RUN = """
from torch.utils.data import DataLoader, TensorDataset
def loader():
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(48, 1, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g)),
                      batch_size=8, drop_last=True)
def first_run(**kw):
    torch.manual_seed(0)
    t = ffkit.PipelineTrainer(tiny(), stages=2, balance="layers", **kw)
    t.fit(loader(), epochs=1, out_dir=TMP, log=None)
"""


@case("9-stage-file-cli-test", 9, "ffkit test --checkpoint runs/x/checkpoint.stage1-of-2.pt")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, "run(lambda: first_run(schedule='constant'))", setup=PIPELINE_RUN)
    stages = sorted(ctx.tmp.glob("checkpoint.stage*.pt"))
    if p.returncode != 0 or not stages:
        raise FixtureError(f"the pipeline run failed: {last_line(p.stderr)}")
    p = cli(ctx, "test", "--checkpoint", stages[-1], "--data-dir", ctx.fx.data(), "--eval-limit", "8")
    return Outcome(p, refused(p, "pipeline stage", "checkpoint.pt"), detail=f"file: {stages[-1].name}")


@case("9-resume-other-stage-count", 9, "PipelineTrainer(net, stages=3).resume(path) of a 2-stage run")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        first_run(schedule="constant")
        again = ffkit.PipelineTrainer(tiny(), stages=3, balance="layers", schedule="constant")
        again.resume(TMP / "checkpoint.pt")
        again.fit(loader(), epochs=2, out_dir=TMP, log=None)
    run(body)
    """, setup=PIPELINE_RUN)
    return Outcome(p, refused(p, "--stages 2"), message=None if p.returncode else "resumed and trained, no error")


@case("9-resume-other-stage-count-torchrun", 9, "the stage files of a 2-stage run read by a torchrun job of 3 "
      "processes (stage_files(path, 0, 3, 'torchrun --nproc-per-node {n}'))")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    from ffkit.train.pipelining.files import stage_files
    def body():
        first_run(schedule="constant")
        stage_files(TMP / "checkpoint.pt", 0, 3, "torchrun --nproc-per-node {n}")
    run(body)
    """, setup=PIPELINE_RUN)
    return Outcome(p, refused(p, "torchrun --nproc-per-node 2"), message=None if p.returncode else "read, no error")


@case("9-pipeline-resume-lr", 9, "PipelineTrainer(stages=2, lr=0.002, weight_decay=0.1).resume(path) of an lr-0.01 "
      "run 6 of 12 cosine steps in")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        first_run(lr=0.01, final_lr=0.001, total_steps=12)
        again = ffkit.PipelineTrainer(tiny(), stages=2, balance="layers", lr=0.002, final_lr=0.0002,
                                      weight_decay=0.1, total_steps=12)
        again.resume(TMP / "checkpoint.pt")
        opts = [o for o in again.optimizers if o is not None]
        result(lrs=[o.param_groups[0]["lr"] for o in opts], wds=[o.param_groups[0]["weight_decay"] for o in opts])
    run(body)
    """, setup=PIPELINE_RUN)
    f = facts_of(p)
    expected = 2e-4 + 1.8e-3 * (1 + math.cos(6 * math.pi / 12)) / 2  # where a run begun with lr 0.002 is at step 6
    lrs, wds = f.get("lrs") or [], f.get("wds") or []
    handled = (p.returncode == 0 and bool(lrs) and all(math.isclose(x, expected, rel_tol=1e-9) for x in lrs)
               and all(w == 0.1 for w in wds))
    return Outcome(p, handled, message=None if p.returncode else f"stage lrs {[f'{x:.3g}' for x in lrs]}, weight "
                   f"decays {wds}", detail=f"expected lr {expected:.3g}, weight decay 0.1")


@case("9-pipeline-resume-sgd", 9, "PipelineTrainer(stages=2, optimizer='sgd').resume(path) of an Adam run, then fit")
def _(ctx: Ctx) -> Outcome:
    p = py(ctx, """
    def body():
        first_run(lr=0.01, total_steps=12)
        again = ffkit.PipelineTrainer(tiny(), stages=2, balance="layers", lr=0.01, optimizer="sgd", total_steps=12)
        again.resume(TMP / "checkpoint.pt")
        result(resumed=True)
        again.fit(loader(), epochs=2, out_dir=TMP, log=None)
    run(body)
    """, setup=PIPELINE_RUN)
    resumed = bool(facts_of(p).get("resumed"))
    return Outcome(p, refused(p, "optimizer='adam'") and not resumed,
                   message=None if p.returncode else "resumed and trained, no error",
                   detail=f"resume returned: {resumed}")


# -- running ----------------------------------------------------------------------------------------------------------
def run_case(c: Case, fx: Fixtures, root: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"{c.id}-", dir=root))
    ctx = Ctx(tmp, fx)
    start = time.perf_counter()
    record: dict[str, Any] = {"id": c.id, "category": c.category, "tried": c.tried}
    try:
        out = c.body(ctx)
    except FixtureError as e:
        record.update(exit=None, kind="not-built", message=str(e)[:220], handled=False, detail="")
    except Exception as e:  # noqa: BLE001 - a harness failure is one case's record, never the whole run's end
        record.update(exit=None, kind="harness-error", message=f"{type(e).__name__}: {e}"[:220], handled=False,
                      detail="")
    else:
        p = out.proc
        kind = kind_of(p)
        message = out.message if out.message is not None else (
            last_line(p.stderr) if kind != "ok" else (last_line(p.stderr) or ok_line(p.stdout)))
        detail = out.detail
        if ctx.leftovers:
            detail = f"{detail}; processes left behind: {len(set(ctx.leftovers))}".lstrip("; ")
        message = " ".join((message or detail).replace(str(tmp), "TMP").replace(root.as_posix(), "ROOT").split())
        record.update(exit=p.returncode, kind=kind, message=message[:220], handled=bool(out.handled), detail=detail)
    record["seconds"] = round(time.perf_counter() - start, 2)
    shutil.rmtree(tmp, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the whole result as one JSON line, last")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--only", default=None, help="comma-separated case ids")
    parser.add_argument("--category", type=int, default=None, choices=range(1, 10), help="only this category")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    cases = CASES
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.id for c in CASES}
        if unknown:
            parser.error(f"unknown case id(s): {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c.id in wanted]
    if args.category:
        cases = [c for c in cases if c.category == args.category]
    if args.list:
        for c in cases:
            print(f"{c.id:40} {c.category}  {c.tried}")
        return 0

    print(f"ffkit {ffkit.__version__} from {ffkit.__file__}; {len(cases)} case(s)", file=sys.stderr)
    records = []
    with tempfile.TemporaryDirectory(prefix="ffkit-hostile-") as root:
        fx = Fixtures(Path(root) / "fixtures")
        fx.root.mkdir()
        for c in cases:
            r = run_case(c, fx, Path(root))
            records.append(r)
            print(f"{r['id']:38} {r['kind']:13} {'handled' if r['handled'] else 'NOT    '} {r['seconds']:6.1f}s  "
                  f"{r['message'][:110]}", flush=True)
    result = {"benchmark": "hostile_cases", "ffkit": ffkit.__file__, "version": ffkit.__version__,
              "python": sys.executable, "pythonpath": os.environ.get("PYTHONPATH", ""), "cases": records,
              "handled": sum(r["handled"] for r in records), "total": len(records)}
    print(f"handled {result['handled']} of {result['total']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
