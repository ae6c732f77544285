"""Hinton's FF MLP in ffkit beside Sindy Loewe's reference implementation (loeweX/Forward-Forward), same data, same
machine, one sitting.

    python benchmarks/loewex.py --reference-dir PATH --reference-python PY --epochs 20 --json

``PATH`` is your local checkout of ``loeweX/Forward-Forward`` (the folder holding ``main.py``, ``config.yaml`` and
``src/ff_model.py``); ``PY`` a Python that can run it (its ``hydra-core`` and ``omegaconf``; ffkit does not need
them). Nothing of it is copied into ffkit, and no file of the checkout is changed: a small runner started with ``PY``
imports the release, points its MNIST loader at Fashion-MNIST (``torchvision.datasets.FashionMNIST`` with the same
partitions: training on the first 50,000 training images), sets ``device=cpu``, ``training.epochs=--epochs`` and runs
its own ``train`` and then ``validate_or_test(..., "test")``. Everything else is the release's ``config.yaml``: 3x1000
MLP, batch 100, SGD, peer normalisation, the softmax layer on a neutral-label pass, four DataLoader workers.

ffkit then runs ``ffkit train --recipe hinton-mlp-fmnist-loewex --epochs N --limit 50000`` (the same 50,000 images,
the same test set) in a subprocess of this Python.

Reported for each side: training samples/s (50,000 images x epochs / the seconds of the training epochs; loeweX
prints each epoch's time, ffkit's summary its training seconds; evaluation is excluded on both sides), the test
accuracy after the last epoch (the softmax layer on the neutral label) and the wall time. ffkit also reports its test
accuracy after every epoch. The last line printed is one JSON object; ``--out FILE`` also writes it to ``FILE``.

``--repeats K`` runs K pairs (release, then ffkit, in turn; pair i with the release's seed 42 + i and ffkit's
``--seed`` + i) and reports, per side, samples/s over all its training seconds, the mean test accuracy with its sample
standard deviation, and every run: after 20 of the schedule's 100 epochs the lr has not started to cool, and one
seed's test accuracy moves by about a point from epoch to epoch, so a single pair cannot rank the two.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_info  # noqa: E402

TRAIN_IMAGES = 50_000  # the release's "train" partition: the first 50,000 training images
RELEASE_SEED = 42  # the release's config.yaml

# Runs inside the release's Python: argv = reference dir, data root, epochs, seed.
RUNNER = r"""
import sys, time
ref, root, epochs, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, ref)
import torch, torchvision
from omegaconf import OmegaConf
from src import utils

def fashion_partition(opt, partition):
    # the release's get_MNIST_partition with FashionMNIST in place of MNIST
    train = partition in ("train", "val", "train_val")
    data = torchvision.datasets.FashionMNIST(root, train=train, download=False,
                                             transform=torchvision.transforms.ToTensor())
    if partition == "train":
        return torch.utils.data.Subset(data, range(50000))
    if partition == "val":
        return torch.utils.data.Subset(data, range(50000, 60000))
    return data

utils.get_MNIST_partition = fashion_partition
import main as release
opt = OmegaConf.load(f"{ref}/config.yaml")
opt.device, opt.training.epochs, opt.training.final_test, opt.seed = "cpu", epochs, True, seed
opt = utils.parse_args(opt)
model, optimizer = utils.get_model_and_optimizer(opt)
began = time.perf_counter()
model = release.train(opt, model, optimizer)
print(f"RUNNER train wall {time.perf_counter() - began:.3f}", flush=True)
release.validate_or_test(opt, model, "test")
"""

EPOCH_LINE = re.compile(r"Epoch (\d+) \s*train \s*Time: (\d+):(\d+):([\d.]+)")
TEST_LINE = re.compile(r"^test\b.*classification_accuracy: ([\d.]+)", re.M)


def run_release(args: argparse.Namespace, data_root: Path, seed: int) -> dict:
    ref = Path(args.reference_dir).resolve()
    if not (ref / "src" / "ff_model.py").is_file() or not (ref / "config.yaml").is_file():
        raise FileNotFoundError(
            f"--reference-dir {ref} does not look like loeweX/Forward-Forward (no src/ff_model.py)"
        )
    began = time.perf_counter()
    proc = subprocess.run([args.reference_python, "-u", "-c", RUNNER, str(ref), str(data_root), str(args.epochs),
                           str(seed)],
                          capture_output=True, text=True, cwd=ref,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})  # leave the checkout as it is
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"the release failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    epochs = [int(h) * 3600 + int(m) * 60 + float(s) for _, h, m, s in EPOCH_LINE.findall(proc.stdout)]
    test = TEST_LINE.findall(proc.stdout)
    if len(epochs) != args.epochs or not test:
        raise RuntimeError(f"could not read the release's epoch times or test accuracy from:\n{proc.stdout[-3000:]}")
    return {
        "seed": seed,
        "epoch_seconds": epochs,
        "train_seconds": sum(epochs),
        "samples_per_s": TRAIN_IMAGES * args.epochs / sum(epochs),
        "test_accuracy": float(test[-1]),
        "wall_seconds": wall,
    }


def run_ffkit(args: argparse.Namespace, data_root: Path, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ffkit", "train", "--recipe", "hinton-mlp-fmnist-loewex", "--epochs",
               str(args.epochs), "--limit", str(TRAIN_IMAGES), "--data-dir", str(data_root), "--out", tmp,
               "--no-progress", "--json", "--seed", str(seed), *args.ffkit_args]
        began = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - began
        if proc.returncode != 0:
            raise RuntimeError(f"ffkit failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        records = json.loads((Path(tmp) / "metrics.json").read_text())
    return {
        "seed": seed,
        "command": " ".join(cmd[1:]),
        "train_seconds": summary["train_seconds"],
        "samples_per_s": summary["images_per_s"],  # training images of all epochs / training seconds
        "test_accuracy": summary["test_accuracy"],
        "test_accuracy_per_epoch": [r["test"]["prediction"] for r in records],
        "wall_seconds": wall,
    }


def _say(side: str, run: dict) -> None:
    print(f"{side + ':':8} seed {run['seed']}: {run['samples_per_s']:.0f} samples/s, test accuracy "
          f"{100 * run['test_accuracy']:.2f}%", flush=True)


def _summary(runs: list[dict]) -> dict:
    """Several runs of one side: samples/s over all their training seconds, the mean test accuracy and its sample
    standard deviation, and every run."""
    accuracies = [r["test_accuracy"] for r in runs]
    seconds = sum(r["train_seconds"] for r in runs)
    return {
        "train_seconds": seconds,
        "samples_per_s": sum(r["samples_per_s"] * r["train_seconds"] for r in runs) / seconds,
        "test_accuracy": statistics.fmean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies),
        "test_accuracies": accuracies,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference-dir", required=True, help="your checkout of loeweX/Forward-Forward")
    p.add_argument("--reference-python", default=sys.executable,
                   help="a Python with the release's dependencies (hydra-core, omegaconf)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="ffkit's seed (the release uses its config's, 42)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the pair this many times, run i with ffkit's seed --seed + i and the release's 42 + i: "
                        "20-epoch test accuracies move by about a point between seeds, so one pair cannot rank them")
    p.add_argument("--data-dir", default=None, help="ffkit's data directory (FashionMNIST/raw/ is read from it)")
    p.add_argument("--skip-reference", action="store_true", help="run ffkit only")
    p.add_argument("--ffkit-args", nargs=argparse.REMAINDER, default=[], help="extra flags for ffkit train")
    p.add_argument("--json", action="store_true", help="(kept for symmetry: the last line is always JSON)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")

    from ffkit.data import default_data_dir, load_dataset

    data_root = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    load_dataset("fashion-mnist", "test", data_root)  # unpacks the Debian files into data_root if needed
    result: dict = {"epochs": args.epochs, "train_images": TRAIN_IMAGES, "machine": machine_info()}
    runs: dict[str, list[dict]] = {"release": [], "ffkit": []}
    for i in range(args.repeats):  # alternate the sides so that a drift of the machine touches both alike
        if not args.skip_reference:
            runs["release"].append(run_release(args, data_root, RELEASE_SEED + i))
            _say("release", runs["release"][-1])
        runs["ffkit"].append(run_ffkit(args, data_root, args.seed + i))
        _say("ffkit", runs["ffkit"][-1])
    for side, side_runs in runs.items():
        if side_runs:
            result[side] = side_runs[0] if args.repeats == 1 else _summary(side_runs)
    if "release" in result:
        result["speedup"] = result["ffkit"]["samples_per_s"] / result["release"]["samples_per_s"]
        result["accuracy_gain_points"] = 100 * (result["ffkit"]["test_accuracy"] - result["release"]["test_accuracy"])
    text = json.dumps(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
