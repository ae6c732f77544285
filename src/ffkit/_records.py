"""The run directory's record file, ``metrics.jsonl``: its name and its reader, which :mod:`ffkit.train.runlog`
(writing it) and :mod:`ffkit.plotting` (drawing it) share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["METRICS_JSONL", "read_records"]

#: The file name of the step and epoch records in a run directory.
METRICS_JSONL = "metrics.jsonl"


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in order. A last line cut short (a run killed while writing it) is
    skipped; any other line that is not a JSON object raises ``ValueError`` naming the line."""
    path = Path(path)
    lines = path.read_text().splitlines()
    records = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                continue
            raise ValueError(f"{path}, line {k + 1}: not a JSON object") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}, line {k + 1}: not a JSON object")
        records.append(rec)
    return records
