"""Run recipes to full length and keep the table of every recipe in ``docs/results.md`` current.

    python benchmarks/reproduce.py cwcomp-cnn-fmnist fast-fmnist-cpu          # run, record, rewrite the table
    python benchmarks/reproduce.py deeperforward-tinycnn-fmnist --device cuda
    python benchmarks/reproduce.py --from-run runs/cwcomp_cnn-fashion-mnist --recipe cwcomp-cnn-fmnist \\
        --command "ffkit train --recipe cwcomp-cnn-fmnist"                     # record a run made by hand
    python benchmarks/reproduce.py --table                                     # only rewrite the table

Each run is ``python -m ffkit train --recipe NAME --json`` with the recipe's own settings (``-- ARGS`` appends flags,
which the record keeps in its command). Its result (test accuracy after the last epoch, every epoch's test accuracy
and seconds, wall time, the machine) goes to ``benchmarks/results/reproduce/NAME.json``; the table between the
``reproduce:begin`` / ``reproduce:end`` markers of ``docs/results.md`` is then rebuilt from every registered recipe:
the paper's figure, and ffkit's measured figure with its machine, epochs and command, or "not measured yet".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import ffkit
from ffkit.recipes import RECIPES, get_recipe, list_recipes

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "benchmarks" / "results" / "reproduce"
DOCS = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"


def machine(device: str) -> str:
    """The machine in words: the GPU's name, or the CPU's core count and model."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name()}"
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {cpu}, {torch.get_num_threads()} threads"


def record_from_run(run_dir: Path, recipe: str, command: str, device: str, wall: float | None) -> dict:
    """A record from a run directory's ``metrics.json``."""
    history = json.loads((run_dir / "metrics.json").read_text())
    if not history:
        raise ValueError(f"{run_dir / 'metrics.json'} holds no epoch")
    last = history[-1]["test"]
    return {
        "recipe": recipe,
        "test_accuracy": last["prediction"],
        "prediction_range": last.get("prediction_range"),
        "head": last.get("head"),
        "epochs": len(history),
        "recipe_epochs": get_recipe(recipe).epochs,
        "per_epoch_test_accuracy": [h["test"]["prediction"] for h in history],
        "per_epoch_train_seconds": [h["train_seconds"] for h in history],
        "train_seconds": sum(h["train_seconds"] for h in history),
        "wall_seconds": wall,
        "machine": machine(device),
        "device": device,
        "torch": torch.__version__,
        "ffkit": ffkit.__version__,
        "commit": _commit(),
        "date": datetime.date.today().isoformat(),
        "command": command,
    }


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def run_recipe(name: str, device: str, extra: list[str], keep: Path | None) -> dict:
    get_recipe(name)  # an unknown name fails here, with the list of recipes
    out = (keep / name) if keep else Path(tempfile.mkdtemp(prefix=f"reproduce-{name}-"))
    flags = ["--recipe", name, *(["--device", device] if device != "auto" else []), *extra]
    cmd = [sys.executable, "-m", "ffkit", "train", *flags, "--out", str(out), "--json", "--no-progress"]
    print("running:", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE)
    wall = time.perf_counter() - start
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: ffkit train exited with {proc.returncode}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rec = record_from_run(out, name, "ffkit train " + shlex.join(flags), summary["device"], wall)
    rec["wall_seconds"] = wall  # the whole process: imports, data loading, training, every evaluation
    rec["wall_seconds_in_process"] = summary.get("wall_seconds")
    return rec


def _paper_figure(reference: str) -> str:
    match = re.match(r"\s*([0-9]+(?:\.[0-9]+)?)", reference)
    return match.group(1) if match else "none published"


def _row(name: str, rec: dict | None) -> str:
    recipe = RECIPES[name]
    paper = _paper_figure(recipe.reference)
    if rec is None:
        return f"| `{name}` | {paper} | needs a GPU: not measured yet | | {recipe.epochs} | |"
    epochs = f"{rec['epochs']}" + ("" if rec["epochs"] == rec["recipe_epochs"] else f" of {rec['recipe_epochs']}")
    per_epoch = statistics.median(rec["per_epoch_train_seconds"])  # robust to an epoch slowed by other work
    wall = f", wall {rec['wall_seconds'] / 60:.1f} min" if rec.get("wall_seconds") else ""
    return (f"| `{name}` | {paper} | **{100 * rec['test_accuracy']:.2f}** | {rec['machine']}, {rec['date']}: "
            f"{per_epoch:.0f} s/epoch (median){wall} | {epochs} | `{rec['command']}` |")


def table() -> str:
    records = {p.stem: json.loads(p.read_text()) for p in sorted(STORE.glob("*.json"))} if STORE.is_dir() else {}
    lines = ["| recipe | paper | ffkit (test accuracy, %) | machine, date, training time | epochs | command |",
             "|---|---|---|---|---|---|"]
    lines += [_row(name, records.get(name)) for name in list_recipes()]
    return "\n".join(lines)


def write_table(docs: Path) -> None:
    text = docs.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{docs} has no {BEGIN} ... {END} markers to put the table between")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    docs.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}")
    print(f"rewrote the table in {docs}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="*", help="recipes to run (ffkit recipes lists them)")
    p.add_argument("--device", default="auto")
    p.add_argument("--keep", default=None, help="keep each run's directory under this folder (default: a temp dir)")
    p.add_argument("--from-run", default=None, help="record an existing run directory instead of running")
    p.add_argument("--recipe", default=None, help="with --from-run: the recipe that run used")
    p.add_argument("--command", default=None, help="with --from-run: the command that made it")
    p.add_argument("--wall-seconds", type=float, default=None, help="with --from-run: its wall time")
    p.add_argument("--commit", default=None, help="with --from-run: the commit the run trained with (default HEAD)")
    p.add_argument("--table", action="store_true", help="only rewrite the table")
    p.add_argument("--no-record", action="store_true", help="print the results; change no file")
    p.add_argument("--docs", default=str(DOCS))
    args = p.parse_args(argv)
    records = []
    if args.from_run:
        if not (args.recipe and args.command):
            p.error("--from-run needs --recipe and --command")
        device = "cuda" if args.device.startswith("cuda") else "cpu"
        records.append(record_from_run(Path(args.from_run), args.recipe, args.command, device, args.wall_seconds))
        if args.commit:
            records[-1]["commit"] = args.commit
    for name in args.recipes:
        records.append(run_recipe(name, args.device, extra, Path(args.keep) if args.keep else None))
    for rec in records:
        print(json.dumps(rec))
        if not args.no_record:
            STORE.mkdir(parents=True, exist_ok=True)
            (STORE / f"{rec['recipe']}.json").write_text(json.dumps(rec, indent=1) + "\n")
    if not args.no_record and (records or args.table):
        write_table(Path(args.docs))


if __name__ == "__main__":
    main()
