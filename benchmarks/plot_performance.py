"""Draw docs/img/performance-DEVICE.png from the JSON results of the performance benchmarks.

    python benchmarks/plot_performance.py --device cpu

Panels: step time of FF and of backprop relative to BP-DeepSup (``step_throughput.py``), peak activation memory
relative to BP-DeepSup (``memory.py``), and the FF step before and after issue 4's optimisations (``ff_step.py``).
Needs matplotlib (``pip install ffkit[plot]``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = ("deeperforward_resnet17", "deeperforward_tinycnn", "dtg_vgg8", "hinton_mlp")
SHORT = {"deeperforward_resnet17": "ResNet17", "deeperforward_tinycnn": "TinyCNN", "dtg_vgg8": "DTG VGG8",
         "hinton_mlp": "Hinton MLP"}


def _load(pattern: str) -> dict[str, dict]:
    out = {}
    for m in MODELS:
        path = RESULTS / pattern.format(model=m)
        if path.exists():
            out[m] = json.loads(path.read_text())
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = _load(f"step-{{model}}-b128-{args.device}.json")
    mem = _load(f"memory-{{model}}-b128-{args.device}.json")
    before = _load(f"ff-step-before-{{model}}-{args.device}.json")
    after = _load(f"ff-step-after-{{model}}-{args.device}.json")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.27

    ax = axes[0]
    names = [m for m in MODELS if m in step]
    for j, (key, label) in enumerate((("ff", "FF (LocalTrainer)"), ("bp_deepsup", "BP-DeepSup"), ("bp", "BP"))):
        vals = [step[m]["step_seconds"][key] / step[m]["step_seconds"]["bp_deepsup"] for m in names]
        bars = ax.bar([i + (j - 1) * width for i in range(len(names))], vals, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(0.75, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(names)), [SHORT[m] for m in names])
    ax.set_ylabel("step time / BP-DeepSup step time")
    ax.set_title(f"Training step time, batch 128 ({args.device})")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.legend(fontsize=7, ncol=2, loc="upper right")

    ax = axes[1]
    names = [m for m in MODELS if m in mem]
    keys = (("ff_peak_bytes", "FF"), ("bp_peak_bytes", "BP-DeepSup"), ("bp_accum_peak_bytes", "BP + accum x4"),
            ("bp_checkpoint_peak_bytes", "BP + checkpoint (bound)"))
    w = 0.2
    for j, (key, label) in enumerate(keys):
        vals = [mem[m][key] / mem[m]["bp_peak_bytes"] for m in names]
        bars = ax.bar([i + (j - 1.5) * w for i in range(len(names))], vals, w, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.axhline(0.3, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(names)), [SHORT[m] for m in names])
    ax.set_ylabel("peak bytes held for backward / BP-DeepSup")
    ax.set_title("Activation memory, batch 128")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.legend(fontsize=7, ncol=2, loc="upper right")

    ax = axes[2]
    names = [m for m in MODELS if m in before and m in after]
    for j, (src, label) in enumerate(((before, "before"), (after, "after"))):
        vals = [src[m]["images_per_s"] / before[m]["images_per_s"] for m in names]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(names))], vals, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(names)), [SHORT[m] for m in names])
    ax.set_ylabel("FF images/s relative to before")
    ax.set_title("FF step before/after the optimisations")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.legend(fontsize=7, ncol=2, loc="upper right")

    fig.tight_layout()
    out = Path(args.out) if args.out else Path(__file__).parents[1] / "docs" / "img" / f"performance-{args.device}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
