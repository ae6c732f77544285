"""Prediction time of one-pass (channel-wise) goodness against all-label goodness on the same layers.

    python benchmarks/eval_passes.py --model deeperforward_tinycnn --batch-size 128 --json

A channel-wise network (DeeperForward's CW-Conv, DTG-FF) reads every class's score from one pass. A network with the
label in its input (Hinton's FF, The Trifecta) must run once per candidate label and compare goodness. For a
channel-wise model the script times its own one-pass prediction and then the same layers wrapped in a label-overlay
network (``PosNegObjective`` with ``LabelOverlay``), which predicts with ``K`` passes. For a label-input model it
times its all-label prediction and one pass of the same network (what each of the ``K`` passes costs).

Both are timed alternately, in eval mode under ``torch.no_grad``; medians over ``--rounds``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, emit, machine_info, make_batch, sync  # noqa: E402

import ffkit  # noqa: E402
from ffkit.objectives import ClassScoreObjective, LabelOverlay, PosNegObjective, RandomNegative  # noqa: E402  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p)
    p.set_defaults(model="deeperforward_tinycnn")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    net = ffkit.models.create_model(args.model).to(device).eval()
    k = net.num_classes
    x, _ = make_batch(net, args.batch_size, args.seed)
    x = x.to(device)
    if isinstance(net.objective, ClassScoreObjective):
        one_pass = net.layer_scores
        overlay = ffkit.FFNetwork(
            list(net.layers), PosNegObjective(LabelOverlay(k), RandomNegative(k)), num_classes=k,
            in_channels=net.in_channels, input_norm=net.input_norm, shortcuts=net.shortcuts,
        ).to(device).eval()
        all_label = overlay.layer_scores
        setting = "channel-wise model: its one-pass prediction vs the same layers with the label overlaid (K passes)"
    else:
        encoded = net.objective.encoder(x, torch.zeros(x.shape[0], dtype=torch.long, device=device))

        def one_pass(_x):
            return [out.goodness for _, out in net.iter_layers(encoded)]

        all_label = net.layer_scores
        setting = "label-input model: its all-label prediction (K passes) vs one pass of the same network"
    timed = {"one_pass": one_pass, "all_label": all_label}
    times: dict[str, list[float]] = {n: [] for n in timed}
    with torch.no_grad():
        for fn in timed.values():
            fn(x)  # warm-up
        for _ in range(args.rounds):
            for name, fn in timed.items():
                sync(device)
                start = time.perf_counter()
                fn(x)
                sync(device)
                times[name].append(time.perf_counter() - start)
    sec = {n: statistics.median(v) for n, v in times.items()}
    result = {
        "benchmark": "eval_passes",
        "model": args.model,
        "batch_size": args.batch_size,
        "device": str(device),
        "num_classes": k,
        "setting": setting,
        "one_pass_images_per_s": args.batch_size / sec["one_pass"],
        "all_label_images_per_s": args.batch_size / sec["all_label"],
        "all_label_over_one_pass_time": sec["all_label"] / sec["one_pass"],
        "seconds": sec,
        "seconds_all": times,
        "machine": machine_info(),
    }
    print(f"{args.model}, batch {args.batch_size}, {device}: {setting}")
    print(f"  one pass   {sec['one_pass']:.4f} s  {result['one_pass_images_per_s']:.1f} img/s")
    print(f"  all labels {sec['all_label']:.4f} s  {result['all_label_images_per_s']:.1f} img/s  "
          f"({result['all_label_over_one_pass_time']:.2f}x the time)")
    return emit(result, args.out, args.json)


if __name__ == "__main__":
    main()
