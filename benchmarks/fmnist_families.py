"""One short, fixed budget per model family on real Fashion-MNIST, next to each paper's full-length figure.

    python benchmarks/fmnist_families.py                 # all families (about 30 minutes on a 2-core CPU)
    python benchmarks/fmnist_families.py --only dtg      # one family

Every row is an ``ffkit train --recipe ...`` command with the same budget overrides (``--epochs``, ``--limit``,
``--eval-limit``); the commands are printed and stored. Writes ``benchmarks/results/fmnist-families.json`` and prints a
markdown table (the one in ``docs/results.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# family -> (recipe, extra flags, the paper's full-length Fashion-MNIST figure; docs/references.md)
FAMILIES = {
    "deeperforward": ("deeperforward-tinycnn-fmnist", [], "91.83 (TinyCNN, 150 epochs)"),
    "trifecta": ("trifecta-shallow-fmnist", [], "91.38 (TFF shallow, 200 epochs)"),
    "dtg": ("dtg-vgg8-fmnist", [], "94.67 (VGG8 concat head, 400 epochs)"),
    "hinton": ("pff-mlp-mnist-randomneg", ["--dataset", "fashion-mnist"], "no F-MNIST figure (MNIST 98.33)"),
    "pon": ("pon-mlp-mnist", ["--dataset", "fashion-mnist"], "no F-MNIST figure (MNIST 98.38)"),
    "bp-deepsup": ("bp-deepsup-tinycnn-fmnist", [], "no published figure (BP ResNet18: 93.78)"),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit", type=int, default=10000, help="training images")
    p.add_argument("--eval-limit", type=int, default=2000, help="held-out and test images")
    p.add_argument("--only", nargs="*", choices=sorted(FAMILIES), default=None)
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = p.parse_args()
    budget = ["--epochs", str(args.epochs), "--limit", str(args.limit), "--eval-limit", str(args.eval_limit)]
    rows = []
    for family in args.only or FAMILIES:
        recipe, extra, paper = FAMILIES[family]
        cmd = ["ffkit", "train", "--recipe", recipe, *extra, *budget, "--out", f"runs/families/{family}",
               "--no-progress", "--json"]
        print("$", " ".join(cmd), flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ffkit", *cmd[1:]], capture_output=True, text=True)
        wall = time.perf_counter() - start
        sys.stdout.write(proc.stdout[-3000:])
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            rows.append({"family": family, "command": " ".join(cmd), "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"family": family, "command": " ".join(cmd), "paper": paper, "process_wall_seconds": wall,
                     **summary})
    result = {
        "budget": {"epochs": args.epochs, "train_images": args.limit, "eval_images": args.eval_limit},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "rows": rows,
    }
    if args.out:  # results are written only where asked
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("\n| family | recipe (overridden budget) | test acc. (SIP / all layers / head) | wall time | paper |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['family']} | `{r['command']}` | failed: {r['error']} | | |")
            continue
        head = f" / {100 * r['test_accuracy_head']:.2f}" if r.get("test_accuracy_head") is not None else ""
        print(f"| {r['family']} | `{r['recipe']}` | {100 * r['test_accuracy']:.2f} / "
              f"{100 * r['test_accuracy_all_layers']:.2f}{head} | {r['wall_seconds']:.0f} s | {r['paper']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
