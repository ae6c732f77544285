"""Time ``ffkit train`` end to end and store its JSON summary with the machine it ran on.

    python benchmarks/train_cli.py --name tinycnn-fmnist-1ep -- --model deeperforward_tinycnn \
        --dataset fashion-mnist --epochs 1

Everything after ``--`` goes to ``ffkit train``. Prints the result as the last line, and writes it to ``--out`` when
given (nothing is written without it).
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default=None, help="a label recorded in the result")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments for ffkit train, after --")
    args = p.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    cmd = [sys.executable, "-m", "ffkit", "train", *train_args, "--json", "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return proc.returncode
    import torch

    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(
        name=args.name,
        command="ffkit train " + " ".join(train_args),
        process_wall_seconds=wall,
        machine={
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
    )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
