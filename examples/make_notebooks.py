"""Write each example notebook from its plain-script twin, so the two can never drift apart.

    python examples/make_notebooks.py           # rewrites examples/*.ipynb (without outputs)
    python examples/make_notebooks.py --check   # exit 1 if a notebook is not what its script gives

The scripts are in "percent" format (as Jupytext, VS Code and Spyder read them):

* everything before the first ``# %%`` line (the module docstring: how to run the script) stays in the script;
* ``# %% [markdown]`` starts a markdown cell; its lines are comments (``# text``), written without the ``# ``;
* ``# %%`` starts a code cell;
* ``# %% [script]`` starts a cell that only the script runs (reading its command-line arguments); it is left out of
  the notebook.

The notebooks are written without outputs; ``tests/test_notebooks.py`` executes every one of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
NOTEBOOKS = ("quickstart", "build_your_own", "ff_vs_backprop", "pipeline")

_KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _cells(script: str) -> list[tuple[str, list[str]]]:
    """``[(kind, lines)]`` of a percent-format script; kind is ``"markdown"``, ``"code"`` or ``"script"``."""
    cells: list[tuple[str, list[str]]] = []
    for line in script.splitlines():
        if line.startswith("# %%"):
            tag = line[4:].strip()
            kind = {"": "code", "[markdown]": "markdown", "[script]": "script"}.get(tag)
            if kind is None:
                raise ValueError(f"unknown cell marker {line!r}")
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
    return cells


def _source(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return [line + "\n" for line in lines[:-1]] + lines[-1:]


def notebook(script_path: Path) -> dict:
    """The notebook (nbformat 4.5, no outputs) that a percent-format script gives."""
    cells = []
    for kind, lines in _cells(script_path.read_text()):
        if kind == "script":
            continue
        if kind == "markdown":
            bad = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
            if bad:
                raise ValueError(f"{script_path.name}: a markdown cell holds a non-comment line {bad[0]!r}")
            lines = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in lines]
        cell: dict = {"cell_type": kind, "id": f"cell-{len(cells)}", "metadata": {}, "source": _source(lines)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {"kernelspec": _KERNEL, "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(script_path: Path) -> str:
    return json.dumps(notebook(script_path), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in NOTEBOOKS:
        text = render(EXAMPLES / f"{name}.py")
        path = EXAMPLES / f"{name}.ipynb"
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python examples/make_notebooks.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
