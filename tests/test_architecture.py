"""The package's import structure: every import points down a fixed order of layers, and nothing imports in a circle.

Read from the source with ``ast`` (no import is executed): an import inside ``if TYPE_CHECKING:`` is for annotations
only and is skipped; one inside a function runs late, so it may not make a cycle, but it must still point down.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "ffkit"

#: Lowest first. A module may import from its own package and from packages on lower levels only.
LEVELS: list[set[str]] = [
    {"_validation", "_version", "defaults", "_model_catalogue", "_records", "_files"},
    {"goodness", "losses", "profiling", "data", "device"},
    {"layers"},
    {"objectives"},
    {"network"},
    {"evaluation", "models", "plotting"},
    {"train"},
    {"recipes", "loading"},
    {"cli"},
    {"__main__", "ffkit"},
]

#: Imports that point up on purpose, each with its reason.
ALLOWED_UP = {
    ("data", "objectives"): "ffkit.data.__getattr__ serves the label encoders' and negative samplers' old names, "
                            "with a DeprecationWarning",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ffkit"


def _level(package: str) -> int:
    for i, names in enumerate(LEVELS):
        if package in names:
            return i
    raise AssertionError(f"package ffkit.{package} has no level in LEVELS: add it")


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ffkit modules an import statement loads (``from . import goodness`` loads ffkit.goodness)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        origin = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
        names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
    found = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(at import time, inside functions)``: module -> the ffkit modules it imports."""
    eager: dict[str, set[str]] = collections.defaultdict(set)
    late: dict[str, set[str]] = collections.defaultdict(set)

    def visit(module: str, nodes: list[ast.stmt], in_function: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                (late if in_function else eager)[module].update(_targets(module, node))
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit(module, [child], in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))

    for module, path in MODULES.items():
        visit(module, ast.parse(path.read_text()).body, False)
    return eager, late


EAGER, LATE = _imports()


@pytest.mark.parametrize("kind", ["at import time", "inside functions"])
def test_imports_point_down(kind):
    graph = EAGER if kind == "at import time" else LATE
    upward = []
    for module, targets in graph.items():
        for target in targets:
            src, dst = _package(module), _package(target)
            if src != dst and _level(dst) >= _level(src) and (src, dst) not in ALLOWED_UP:
                upward.append(f"{module} -> {target}")
    assert not upward, f"imports {kind} that do not point down the levels: {sorted(upward)}"


def test_no_import_cycle():
    """Depth-first search over the import-time graph; a back edge is a cycle."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(EAGER.get(module, ())):
            if target == module or target == "ffkit":  # a package's own __init__ re-exports; ffkit imports all
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := walk(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(MODULES):
        if module not in state:
            cycle = walk(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_package_has_a_level_and_the_checks_see_imports():
    for module in MODULES:
        _level(_package(module))
    assert "ffkit.objectives.base" in EAGER["ffkit.objectives.posneg"]  # the parser follows relative imports
    assert "ffkit.goodness" in EAGER["ffkit.layers.cwconv"]  # `from .. import goodness`
    assert "ffkit.objectives" in LATE["ffkit.data"]  # the deprecated names, imported when asked for
