"""What evaluation costs per image, against what a training step costs per image, on the same network and machine.

    python benchmarks/eval_cost.py --model deeperforward_tinycnn --json
    python benchmarks/eval_cost.py --recipe fast-fmnist-cpu --json

Evaluation is what ``ffkit train`` runs after every epoch on the test set (and SIP on the held-out set):
``trainer.evaluate(loader)``, i.e. every layer's class scores over the whole set, the head's logits, each layer's
deactivated-unit ratio and the report built from them. Training is ``trainer.train_step`` on batches of the
recipe's (or ``--batch-size``) size. Both run on the same random images, in alternating rounds so that a change in
the machine's load falls on both; the script reports medians and the ratio ``eval_over_train`` (evaluation seconds
per image over training seconds per image). One evaluation is a forward pass per image (per label for label-input
networks), so a channel-wise network should stay well under 0.5.

Prints JSON with ``--json``; writes a file only with ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine_info, sync  # noqa: E402

import ffkit  # noqa: E402
from ffkit.recipes import build_model, build_trainer, get_recipe  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a registered FF builder (with its defaults and LocalTrainer's)")
    p.add_argument("--recipe", default=None, help="a recipe: its model, batch size, trainer and performance options")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: the recipe's, or 128)")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="evaluation batch (default: what ffkit train uses: the batch size on a CPU, at least 256 on "
                        "a GPU)")
    p.add_argument("--images", type=int, default=2048, help="images evaluated per round")
    p.add_argument("--steps", type=int, default=6, help="training steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast of training and evaluation (default: the recipe's, else off)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: the recipe's, else off)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("--out", default=None, help="also write the result to this file")
    args = p.parse_args(argv)
    if (args.model is None) == (args.recipe is None):
        p.error("give one of --model or --recipe")
    torch.manual_seed(args.seed)
    performance = {k: v for k, v in (("amp", args.amp), ("channels_last", args.channels_last)) if v is not None}
    if args.recipe is not None:
        recipe = get_recipe(args.recipe)
        dataset = ffkit.data.dataset_info(recipe.dataset)
        net = build_model(recipe, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
        batch_size = args.batch_size or recipe.batch_size
        trainer = build_trainer(recipe, net, steps_per_epoch=args.steps * (args.rounds + 1), device=args.device,
                                **performance)
        name = args.recipe
    else:
        net = ffkit.models.create_model(args.model)
        batch_size = args.batch_size or 128
        trainer = ffkit.LocalTrainer(net, total_steps=args.steps * (args.rounds + 1), device=args.device,
                                     **performance)
        name = args.model
    device = trainer.device
    side = net.input_size or (32, 32)
    g = torch.Generator().manual_seed(args.seed)
    x_train = torch.rand(args.steps, batch_size, net.in_channels, *side, generator=g)
    y_train = torch.randint(0, net.num_classes, (args.steps, batch_size), generator=g)
    images = torch.rand(args.images, net.in_channels, *side, generator=g)
    labels = torch.randint(0, net.num_classes, (args.images,), generator=g)
    eval_bs = args.eval_batch_size or (batch_size if device.type == "cpu" else max(256, batch_size))  # as ffkit train
    loader = DataLoader(TensorDataset(images, labels), batch_size=eval_bs)

    def train() -> None:
        for x, y in zip(x_train, y_train):
            trainer.train_step(x, y)

    def evaluate() -> None:
        trainer.evaluate(loader)

    timed = {"train": train, "eval": evaluate}
    times: dict[str, list[float]] = {k: [] for k in timed}
    for fn in timed.values():
        fn()  # warm-up (allocator, oneDNN primitives)
    for _ in range(args.rounds):
        for k, fn in timed.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - start)
    train_per_image = statistics.median(times["train"]) / (args.steps * batch_size)
    eval_per_image = statistics.median(times["eval"]) / args.images
    result = {
        "benchmark": "eval_cost",
        "model": net.__class__.__name__ if args.model is None else args.model,
        "name": name,
        "batch_size": batch_size,
        "eval_batch_size": eval_bs,
        "device": str(device),
        "amp": trainer.amp,
        "channels_last": trainer.channels_last,
        "train_ms_per_image": 1000 * train_per_image,
        "eval_ms_per_image": 1000 * eval_per_image,
        "eval_over_train": eval_per_image / train_per_image,
        "seconds_all": times,
        "machine": machine_info(),
    }
    print(f"{name}, {device}: training {result['train_ms_per_image']:.3f} ms/image (batch {batch_size}), "
          f"evaluation {result['eval_ms_per_image']:.3f} ms/image (batch {eval_bs}): "
          f"{result['eval_over_train']:.2f} of a training step")
    return emit(result, args.out, args.json)


if __name__ == "__main__":
    main()
