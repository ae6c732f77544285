"""Kill-and-resume: ``ffkit train`` SIGKILLed at every kind of point (mid-epoch, mid-checkpoint, mid-evaluation, between
checkpoint and metrics, and repeatedly) resumes from its last checkpoint and ends with exactly the weights and the
training history of an uninterrupted run (CPU, same seed), with no corrupt or stray file."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from ffkit.data import DEBIAN_FASHION_MNIST_DIR
from ffkit.train import load_checkpoint

pytestmark = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)

HARNESS = Path(__file__).parent / "helpers" / "kill_run.py"
# 96 images in batches of 16: 6 steps per epoch, 2 epochs; a checkpoint after every 2nd batch and at each epoch end,
# a step record after batches 4 and 6 of each epoch (so a checkpoint after batch 2 holds an interval in flight).
# Random augmentation and dropout make every random stream matter.
RUN = ["--model", "deeperforward_tinycnn", "--dataset", "fashion-mnist", "--width-multiplier", "0.15",
       "--limit", "96", "--eval-limit", "48", "--batch-size", "16", "--epochs", "2", "--augment", "crop-rotate",
       "--checkpoint-every", "2", "--no-progress", "--seed", "3", "--log-interval", "4"]

# Each case: the kill points of successive attempts (every attempt but the last is killed), as KILL_AT values.
CASES = {
    "mid-epoch-1": ["step:3"],  # after step 3; the last checkpoint is after step 2
    "just-after-a-checkpoint": ["step:5"],  # the checkpoint after step 4 is the last one
    "checkpoint-half-written": ["save-partial:2"],
    "checkpoint-complete-not-renamed": ["save-before-rename:3"],
    "during-evaluation": ["eval:1"],
    "between-checkpoint-and-metrics": ["metrics:1"],
    "mid-epoch-2": ["step:9"],
    "last-step": ["step:12"],
    "three-kills": ["step:2", "save-partial:2", "step:4"],
}


def _run(out: Path, data_dir: Path, kill_at: str | None, resume: bool, extra: list[str], *, sig: str = "KILL",
         run: list[str] = RUN) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FFKIT_DATA_DIR": str(data_dir), "KILL_SIGNAL": sig}
    env.pop("KILL_AT", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    args = [sys.executable, str(HARNESS), *run, *extra, "--out", str(out)]
    if resume:
        args.append("--resume")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _attempts(out: Path, data_dir: Path, kills: list[str], extra: list[str]) -> list[str]:
    """Run until done: one attempt per kill point, then one more; each resumes if a checkpoint exists."""
    log = []
    for kill_at in [*kills, None]:
        resume = (out / "checkpoint.pt").is_file()
        proc = _run(out, data_dir, kill_at, resume, extra)
        expected = -signal.SIGKILL if kill_at else 0
        assert proc.returncode == expected, (kill_at, proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
        log.append(proc.stdout)
    return log


def _final(out: Path) -> tuple[dict, list, list]:
    # no temporary file; the lock file of the run directory stays (the kernel dropped its lock with the process)
    names = sorted(p.name for p in out.iterdir())
    assert names == [".ffkit-train.lock", "checkpoint.pt", "config.json", "metrics.csv", "metrics.json",
                     "metrics.jsonl"]
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["trainer"]["epoch"] == 2 and payload["position"] is None
    history = json.loads((out / "metrics.json").read_text())
    volatile = ("time", "train_seconds", "train_images_per_s")  # wall-clock fields
    records = [{k: v for k, v in json.loads(line).items() if k not in volatile}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return payload, history, records


def _same_run(a: tuple[dict, list, list], b: tuple[dict, list, list]) -> None:
    (pa, ha, ra), (pb, hb, rb) = a, b
    assert pa["network"].keys() == pb["network"].keys()
    for k in pa["network"]:
        assert torch.equal(pa["network"][k], pb["network"][k]), k
    for oa, ob in zip(pa["trainer"]["optimizers"], pb["trainer"]["optimizers"]):
        for sa, sb in zip(oa["state"].values(), ob["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert pa["trainer"]["step_count"] == pb["trainer"]["step_count"] == 12
    keys = ("train_loss", "train_acc", "train_images", "test", "holdout_sip")
    assert [{k: r[k] for k in keys} for r in ha] == [{k: r[k] for k in keys} for r in hb]
    # metrics.jsonl: the step records of an uninterrupted run, none repeated or lost, then each epoch's record
    assert [(r["kind"], r["step"], r.get("batches")) for r in ra] == [
        ("step", 4, 4), ("step", 6, 2), ("epoch", 6, None), ("step", 10, 4), ("step", 12, 2), ("epoch", 12, None)]
    assert [r for r in ra if r["kind"] == "step"] == [r for r in rb if r["kind"] == "step"]
    assert [{k: r[k] for k in keys} for r in ra if r["kind"] == "epoch"] == [
        {k: r[k] for k in keys} for r in rb if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("reference")
    _attempts(out, data_dir, [], [])
    return _final(out)


@pytest.mark.slow
def test_every_kill_point_resumes_to_the_uninterrupted_weights(tmp_path, data_dir, reference):
    def case(name: str) -> tuple[str, tuple[dict, list], list[str]]:
        out = tmp_path / name
        log = _attempts(out, data_dir, CASES[name], [])
        return name, _final(out), log

    with ThreadPoolExecutor(2) as pool:  # two runs at a time, one thread each: the machine's two cores
        results = list(pool.map(case, CASES))
    for _name, final, _log in results:
        _same_run(reference, final)
    by_name = {name: log for name, _, log in results}
    assert "resumed from" in by_name["mid-epoch-1"][1] and "after batch 2 of epoch 1" in by_name["mid-epoch-1"][1]
    assert "after batch 4 of epoch 1" in by_name["just-after-a-checkpoint"][1]
    # the half-written second checkpoint never replaced the first: the run resumed from batch 2
    assert "after batch 2 of epoch 1" in by_name["checkpoint-half-written"][1]
    assert "after batch 4 of epoch 1" in by_name["checkpoint-complete-not-renamed"][1]
    assert "after batch 6 of epoch 1" in by_name["during-evaluation"][1]
    assert "after epoch 1" in by_name["between-checkpoint-and-metrics"][1]
    assert "after batch 2 of epoch 2" in by_name["mid-epoch-2"][1]
    assert len(by_name["three-kills"]) == 4


def _start(out: Path, data_dir: Path, extra: list[str]) -> tuple[subprocess.Popen, float]:
    """Start an attempt (resuming if a checkpoint exists); return it once it has begun training, and that moment.
    It prints ``step N`` after each of its steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FFKIT_DATA_DIR": str(data_dir), "REPORT_STEPS": "1"}
    env.pop("KILL_AT", None)
    args = [sys.executable, str(HARNESS), *RUN, *extra, "--out", str(out)]
    if (out / "checkpoint.pt").is_file():
        args.append("--resume")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the CLI prints this line just before the first epoch
        if line.startswith("ffkit ") and ": training " in line:
            break
    return proc, time.perf_counter()


def _finish(proc: subprocess.Popen) -> int:
    assert proc.stdout is not None
    proc.stdout.read()
    proc.stdout.close()
    return proc.wait(timeout=300)


@pytest.mark.slow
def test_workers_and_random_external_kills_resume_exactly(tmp_path, data_dir):
    """DataLoader workers (their seeds come from the epoch's random state) and SIGKILLs sent from outside at random
    points of training, then resumed until the run completes.

    Each kill point is chosen by progress, not by the clock, so a slow or busy machine kills at the same points: a
    random number of the attempt's steps (at least one, and at least one fewer than remain), then a random fraction
    of its shortest step so far, so the kill may land inside the next step, its checkpoint or an epoch's
    evaluation, but before the run ends."""
    extra = ["--workers", "2"]
    ref = tmp_path / "reference"
    proc, _ = _start(ref, data_dir, extra)
    assert _finish(proc) == 0
    out = tmp_path / "killed"
    rng = random.Random(0)
    total = 12  # 2 epochs of 6 steps (RUN)
    for _ in range(3):
        done = load_checkpoint(out / "checkpoint.pt")["trainer"]["step_count"] if (out / "checkpoint.pt").is_file() \
            else 0
        assert total - done >= 2  # checkpoints every 2 steps: an attempt always has steps left to interrupt
        proc, last = _start(out, data_dir, extra)
        after = rng.randint(1, total - done - 1)
        shortest = float("inf")
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("step "):
                now = time.perf_counter()
                shortest, last = min(shortest, now - last), now
                if int(line.split()[1]) == after:
                    break
        time.sleep(rng.uniform(0.0, 0.9) * shortest)
        assert proc.poll() is None, "the run ended before its kill point"
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its DataLoader workers
        assert _finish(proc) == -signal.SIGKILL
    proc, _ = _start(out, data_dir, extra)
    assert _finish(proc) == 0
    _same_run(_final(ref), _final(out))


# Without --checkpoint-every: only a signal's own checkpoint lies between the epoch ends.
RUN_NO_EVERY = [a for i, a in enumerate(RUN) if a != "--checkpoint-every" and RUN[i - 1] != "--checkpoint-every"]


@pytest.mark.parametrize(("sig", "kill_at", "code", "where"), [
    ("TERM", "step:3", 143, "SIGTERM: stopped after batch 3 of epoch 1"),
    ("INT", "step:9", 130, "Ctrl-C (SIGINT): stopped after batch 3 of epoch 2"),
    ("TERM", "step:6", 143, "SIGTERM: stopped after batch 6 of epoch 1"),
], ids=["sigterm-epoch-1", "ctrl-c-epoch-2", "sigterm-last-step-of-epoch-1"])
def test_sigterm_and_ctrl_c_save_a_checkpoint_that_resumes_exactly(tmp_path, data_dir, reference, sig, kill_at, code,
                                                                   where):
    out = tmp_path / "run"
    proc = _run(out, data_dir, kill_at, False, [], sig=sig, run=RUN_NO_EVERY)
    assert proc.returncode == code, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert (f"{where}; saved a resumable checkpoint in {out / 'checkpoint.pt'}; resume with the same command and "
            f"--resume") in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _run(out, data_dir, None, True, [], run=RUN_NO_EVERY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"after batch {where.split('batch ')[1].split(' of')[0]} of epoch" in proc.stdout
    _same_run(reference, _final(out))


def test_an_interruption_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path, data_dir):
    # SIGTERM while the data is read (the first time the test set is opened), before training began
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FFKIT_DATA_DIR": str(data_dir), "KILL_SIGNAL": "TERM",
           "KILL_AT": "load:1"}
    proc = subprocess.run([sys.executable, str(HARNESS), *RUN_NO_EVERY, "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "ffkit train: SIGTERM: stopped before any checkpoint was written; there is nothing to resume" in proc.stderr
    assert not (out / "checkpoint.pt").exists()
