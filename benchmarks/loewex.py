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
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_info  # noqa: E402

TRAIN_IMAGES = 50_000  # the release's "train" partition: the first 50,000 training images

# Runs inside the release's Python: argv = reference dir, data root, epochs.
RUNNER = r"""
import sys, time
ref, root, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
opt.device, opt.training.epochs, opt.training.final_test = "cpu", epochs, True
opt = utils.parse_args(opt)
model, optimizer = utils.get_model_and_optimizer(opt)
began = time.perf_counter()
model = release.train(opt, model, optimizer)
print(f"RUNNER train wall {time.perf_counter() - began:.3f}", flush=True)
release.validate_or_test(opt, model, "test")
"""

EPOCH_LINE = re.compile(r"Epoch (\d+) \s*train \s*Time: (\d+):(\d+):([\d.]+)")
TEST_LINE = re.compile(r"^test\b.*classification_accuracy: ([\d.]+)", re.M)


def run_release(args: argparse.Namespace, data_root: Path) -> dict:
    ref = Path(args.reference_dir).resolve()
    if not (ref / "src" / "ff_model.py").is_file() or not (ref / "config.yaml").is_file():
        raise FileNotFoundError(
            f"--reference-dir {ref} does not look like loeweX/Forward-Forward (no src/ff_model.py)"
        )
    began = time.perf_counter()
    proc = subprocess.run([args.reference_python, "-u", "-c", RUNNER, str(ref), str(data_root), str(args.epochs)],
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
        "epoch_seconds": epochs,
        "train_seconds": sum(epochs),
        "samples_per_s": TRAIN_IMAGES * args.epochs / sum(epochs),
        "test_accuracy": float(test[-1]),
        "wall_seconds": wall,
    }


def run_ffkit(args: argparse.Namespace, data_root: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ffkit", "train", "--recipe", "hinton-mlp-fmnist-loewex", "--epochs",
               str(args.epochs), "--limit", str(TRAIN_IMAGES), "--data-dir", str(data_root), "--out", tmp,
               "--no-progress", "--json", "--seed", str(args.seed), *args.ffkit_args]
        began = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - began
        if proc.returncode != 0:
            raise RuntimeError(f"ffkit failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        records = json.loads((Path(tmp) / "metrics.json").read_text())
    return {
        "command": " ".join(cmd[1:]),
        "train_seconds": summary["train_seconds"],
        "samples_per_s": summary["images_per_s"],  # training images of all epochs / training seconds
        "test_accuracy": summary["test_accuracy"],
        "test_accuracy_per_epoch": [r["test"]["prediction"] for r in records],
        "wall_seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference-dir", required=True, help="your checkout of loeweX/Forward-Forward")
    p.add_argument("--reference-python", default=sys.executable,
                   help="a Python with the release's dependencies (hydra-core, omegaconf)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="ffkit's seed (the release uses its config's, 42)")
    p.add_argument("--data-dir", default=None, help="ffkit's data directory (FashionMNIST/raw/ is read from it)")
    p.add_argument("--skip-reference", action="store_true", help="run ffkit only")
    p.add_argument("--ffkit-args", nargs=argparse.REMAINDER, default=[], help="extra flags for ffkit train")
    p.add_argument("--json", action="store_true", help="(kept for symmetry: the last line is always JSON)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    args = p.parse_args(argv)

    from ffkit.data import default_data_dir, load_dataset

    data_root = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    load_dataset("fashion-mnist", "test", data_root)  # unpacks the Debian files into data_root if needed
    result: dict = {"epochs": args.epochs, "train_images": TRAIN_IMAGES, "machine": machine_info()}
    if not args.skip_reference:
        result["release"] = run_release(args, data_root)
        print(f"release: {result['release']['samples_per_s']:.0f} samples/s, test accuracy "
              f"{100 * result['release']['test_accuracy']:.2f}%", flush=True)
    result["ffkit"] = run_ffkit(args, data_root)
    print(f"ffkit:   {result['ffkit']['samples_per_s']:.0f} samples/s, test accuracy "
          f"{100 * result['ffkit']['test_accuracy']:.2f}%", flush=True)
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
