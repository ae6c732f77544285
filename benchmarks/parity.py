"""ffkit's DeeperForward networks beside the authors' released code: same data, same order, same initial weights.

    python benchmarks/parity.py --reference-dir PATH --model tinycnn --limit 10000 --epochs 3 --json

``PATH`` is your local checkout of the DeeperForward release (the folder holding ``model/tinycnn.py``,
``model/resnet.py``, ...); nothing of it is copied into ffkit: this script imports its model classes from ``PATH`` at
run time and trains them beside ffkit's in one process.

Both sides get:

* the first ``--limit`` Fashion-MNIST training images and the whole test set, standardised and resized to 32x32 by
  ffkit's loader (the release's transform, ``ToTensor, Normalize(0.2860, 0.3530), Resize(32)``, gives the same
  values up to float rounding);
* the same batches in the same order: batch size 128, a permutation per epoch drawn from ``--seed``, the last
  batch partial, as the release's ``DataLoader(shuffle=True)``;
* the same initial weights: the release's model is built first (under ``torch.manual_seed(--seed)``) and its conv
  weights are copied into ffkit's model, layer by layer;
* the paper recipe's optimizer and schedule: the release's own (``torch.optim.AdamW``/``Adam`` per layer,
  ``CosineAnnealingLR`` stepped per epoch) against ffkit's ``deeperforward-<model>-fmnist`` recipe.

* the same dropout masks with ``--dropout-masks shared`` (default): both sides' dropout draws its masks, in the same
  order (layer by layer, batch by batch), from one seeded stream per side with the same seed, so what is left is the
  difference between the two implementations (and float rounding). ``--dropout-masks own`` lets each side draw its
  own (the release ``nn.Dropout``, ffkit its cheaper mask): then the gap includes run-to-run noise, which
  ``--release-twice`` measures by training a second copy of the release from the same start with other masks.

After every epoch each side's per-layer test accuracy is measured on the whole test set (eval mode, the release's
``test_local_acc`` against ffkit's ``EvalReport.per_layer``). The result says, per epoch, every layer's accuracy on
both sides, the largest gap, and whether every layer is within ``--tolerance`` points (default 1).

The last line printed is one JSON object; ``--out FILE`` also writes it to ``FILE`` (nothing is written otherwise).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

import ffkit
import ffkit.layers.cwconv
from ffkit.data import dataset_tensors, load_dataset
from ffkit.recipes import build_model, build_trainer, get_recipe

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine_info  # noqa: E402

#: ffkit model -> (module and class in the release, the release's constructor arguments beyond the common ones)
RELEASE = {
    "tinycnn": ("model.tinycnn", "TinyCNN", {}),
    "cnn14": ("model.vgg", "Vgg", {}),
    "resnet17": ("model.resnet", "Resnet", {"planes": [100, 200, 400, 800], "weight_decay": 5e-4}),
    "resnet33": ("model.resnet34", "Resnet34", {"planes": [100, 200, 400, 800], "weight_decay": 5e-4}),
    "resnet100": ("model.resnet101", "Resnet101", {"planes": [70, 140, 280, 560], "weight_decay": 5e-4}),
}
LR, LR_MIN, DROPOUT = 0.08, 0.008, 0.2  # the release's main.py defaults (the paper's recipe)


def build_release(reference_dir: Path, model: str, epochs: int) -> nn.Module:
    """The release's model class, built as its ``main.py`` builds it for Fashion-MNIST (1 channel, 10 classes)."""
    if not (reference_dir / "model" / "cwconv.py").is_file():
        raise FileNotFoundError(
            f"--reference-dir {reference_dir} does not look like the DeeperForward release (no model/cwconv.py)"
        )
    sys.path.insert(0, str(reference_dir))
    module_name, cls_name, extra = RELEASE[model]
    cls = getattr(importlib.import_module(module_name), cls_name)
    common = {"in_channels": 1, "num_class": 10, "dropout": DROPOUT, "learning_rate": LR,
              "devices": [torch.device("cpu")]}
    if model == "tinycnn":  # main.py: TinyCNN(..., epochs=epochs, lr_decay=lr_min / lr), AdamW's default decay
        return cls(**common, epochs=epochs, lr_decay=LR_MIN / LR)
    if model == "cnn14":  # main.py: Vgg(..., lr_min=lr_min); its schedule has T_max=150 whatever the epochs
        return cls(**common, lr_min=LR_MIN)
    return cls(**common, lr_min=LR_MIN, epochs=epochs, **extra)


def ffkit_recipe(model: str, epochs: int):
    name = f"deeperforward-{model}-fmnist"
    try:
        recipe = get_recipe(name)
    except ValueError:  # the depth-scaling networks have CIFAR-10 recipes only: the same optimizer on F-MNIST
        recipe = dataclasses.replace(get_recipe(f"deeperforward-{model}-cifar10"), name=name,
                                     dataset="fashion-mnist")
    return dataclasses.replace(recipe, epochs=epochs)


def copy_conv_weights(release: nn.Module, net: ffkit.FFNetwork) -> int:
    """Copy every conv weight of the release's layers into ffkit's layers, in order; returns how many."""
    theirs = [m for m in release.layers.modules() if isinstance(m, nn.Conv2d)]
    ours = [m for m in net.layers.modules() if isinstance(m, nn.Conv2d)]
    if len(theirs) != len(ours):
        raise ValueError(f"the release has {len(theirs)} convs, ffkit's model {len(ours)}")
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(theirs, ours)):
            if a.weight.shape != b.weight.shape:
                raise ValueError(f"conv {i}: release {tuple(a.weight.shape)}, ffkit {tuple(b.weight.shape)}")
            b.weight.copy_(a.weight)
    return len(ours)


class MaskStream:
    """Dropout masks from one seeded stream: ``drop(like)`` is ``True`` where an element is dropped."""

    def __init__(self, seed: int, p: float) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.p = p

    def drop(self, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(like.shape, generator=self.generator) < self.p


class _StreamDropout(nn.Module):
    """Inverted dropout with the masks of a :class:`MaskStream` (replaces the release's ``nn.Dropout``)."""

    def __init__(self, stream: MaskStream) -> None:
        super().__init__()
        self.stream = stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x.masked_fill(self.stream.drop(x), 0.0) / (1.0 - self.stream.p)


def share_masks(release: nn.Module, seed: int) -> None:
    """Make both sides draw their dropout masks from equal streams (one per side, same seed, same order of draws:
    each batch, layers 0, 1, ... in turn)."""
    release_stream = MaskStream(seed, DROPOUT)
    for m in release.modules():
        if type(m).__name__ == "CWConv":  # the release's layer: conv, ReLU, ``self.dropout``, scores, GroupNorm
            m.dropout = _StreamDropout(release_stream)
    ffkit_stream = MaskStream(seed, DROPOUT)

    def drop_mask(z: torch.Tensor, p: float) -> tuple[torch.Tensor | None, float]:
        return (ffkit_stream.drop(z), ffkit_stream.p) if p > 0 else (None, 0.0)

    ffkit.layers.cwconv.drop_mask = drop_mask  # type: ignore[assignment]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[idx], y[idx]) for idx in order.split(batch_size)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-dir", required=True, type=Path, help="your checkout of the DeeperForward release")
    p.add_argument("--model", choices=sorted(RELEASE), default="tinycnn")
    p.add_argument("--limit", type=int, default=10_000, help="train on the first N training images")
    p.add_argument("--eval-limit", type=int, default=None, help="test on the first N test images (default all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=2222, help="the release's main.py seed")
    p.add_argument("--tolerance", type=float, default=1.0, help="points of test accuracy allowed between layers")
    p.add_argument("--dropout-masks", choices=["shared", "own"], default="shared",
                   help="shared: both sides draw equal masks in the same order; own: each side its own")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="float64 takes float rounding (which a high learning rate amplifies step after step) out of "
                        "the comparison")
    p.add_argument("--release-twice", action="store_true",
                   help="also train a second copy of the release from the same start with other dropout masks "
                        "(the run-to-run noise that dropout alone causes)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    args = p.parse_args(argv)

    train = load_dataset("fashion-mnist", "train_full", args.data_dir, normalize="standard")
    test = load_dataset("fashion-mnist", "test", args.data_dir, normalize="standard")
    x, y = dataset_tensors(train, args.limit)
    x_test, y_test = dataset_tensors(test, args.eval_limit)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # both sides' layers are built after this
    x, x_test = x.to(dtype), x_test.to(dtype)
    test_batches = list(zip(x_test.split(256), y_test.split(256)))

    torch.manual_seed(args.seed)
    release = build_release(args.reference_dir.expanduser(), args.model, args.epochs)
    twin = copy.deepcopy(release) if args.release_twice else None  # its optimizers follow its own parameters
    if args.dropout_masks == "shared":
        share_masks(release, args.seed)
    if twin is not None:
        stream = MaskStream(args.seed + 1, DROPOUT)  # other masks than the first copy's, whatever --dropout-masks
        for m in twin.modules():
            if type(m).__name__ == "CWConv":
                m.dropout = _StreamDropout(stream)
    recipe = ffkit_recipe(args.model, args.epochs)
    net = build_model(recipe, num_classes=10, in_channels=1)
    copied = copy_conv_weights(release, net)
    steps = math.ceil(len(x) / args.batch_size)
    trainer = build_trainer(recipe, net, steps_per_epoch=steps)

    epochs = []
    for epoch in range(args.epochs):
        data = batches(x, y, args.batch_size, args.seed + epoch)
        start = time.perf_counter()
        release.update(data)  # the release's own training loop over one epoch, then its schedulers' step
        release_s = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train_epoch(data)
        ffkit_s = time.perf_counter() - start
        theirs = [v / 100 for v in release.test_local_acc(test_batches)]
        ours = trainer.evaluate(test_batches).per_layer
        gap = max(abs(a - b) for a, b in zip(theirs, ours)) * 100
        record = {
            "epoch": epoch + 1, "release_per_layer": theirs, "ffkit_per_layer": ours, "max_gap_points": gap,
            "within_tolerance": gap <= args.tolerance, "release_lr": release.optimizers[0].param_groups[0]["lr"],
            "ffkit_lr": trainer.current_lr(0), "release_train_seconds": release_s, "ffkit_train_seconds": ffkit_s,
        }
        if twin is not None:
            twin.update(data)
            again = [v / 100 for v in twin.test_local_acc(test_batches)]
            record["release_twice_per_layer"] = again
            record["release_twice_max_gap_points"] = max(abs(a - b) for a, b in zip(theirs, again)) * 100
        epochs.append(record)
        print(f"epoch {epoch + 1}: per-layer test accuracy (%), release vs ffkit; largest gap {gap:.2f} points")
        for i, (a, b) in enumerate(zip(theirs, ours)):
            extra = f"  (release, other masks: {100 * record['release_twice_per_layer'][i]:6.2f})" if twin else ""
            print(f"  layer {i + 1:3d}: {100 * a:6.2f}  {100 * b:6.2f}{extra}")
        print(f"  training time: release {release_s:.1f} s, ffkit {ffkit_s:.1f} s ({len(x)} images)", flush=True)

    result = {
        "benchmark": "parity", "model": args.model, "dataset": "fashion-mnist", "train_images": len(x),
        "test_images": len(x_test), "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
        "recipe": dataclasses.asdict(recipe), "convs_copied": copied, "tolerance_points": args.tolerance,
        "dropout_masks": args.dropout_masks, "dtype": args.dtype,
        "per_epoch": epochs, "all_within_tolerance": all(e["within_tolerance"] for e in epochs),
        "machine": machine_info(),
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
