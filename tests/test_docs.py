"""The documentation site: its Python examples run as written, and ``mkdocs build --strict`` passes.

Every ```` ```python ```` block of the pages listed in ``EXECUTED_PAGES`` is executed, in order, in one namespace per
page (a page's blocks build on each other), on the CPU. The site build is skipped when mkdocs is not installed
(``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffkit.data import DEBIAN_FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"

#: Pages whose ```python blocks are executed (pages that only show shell commands need not be listed).
EXECUTED_PAGES = [
    "index.md",
    "assemble-deeperforward.md",
    "getting-started.md",
    "long-runs.md",
    "extending.md",
]
#: Pages whose blocks read real Fashion-MNIST (skipped when the Debian package is not installed).
NEEDS_FASHION_MNIST = {"getting-started.md"}

_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path) -> list[str]:
    """The ```python fenced blocks of a Markdown page, in order."""
    return _BLOCK.findall(page.read_text(encoding="utf-8"))


def test_executed_pages_have_python_blocks():
    for name in EXECUTED_PAGES:
        assert python_blocks(DOCS / name), f"docs/{name} has no ```python block to run"


@pytest.mark.parametrize("name", EXECUTED_PAGES)
def test_page_python_blocks_run(name, tmp_path, monkeypatch):
    if name in NEEDS_FASHION_MNIST and not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    page = DOCS / name
    # Run directories and unpacked data go to a temporary directory, not the checkout or the home directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FFKIT_DATA_DIR", str(tmp_path / "data"))
    # A page may register models, recipes and datasets (docs/extending.md does): they leave with the page.
    from ffkit import recipes
    from ffkit.data import datasets
    from ffkit.models import _registry

    for module, name in ((_registry, "_MODELS"), (_registry, "_KINDS"), (recipes, "RECIPES"), (datasets, "_SPECS"),
                         (datasets, "_ALIASES")):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    torch_threads = torch.get_num_threads()
    try:
        for i, code in enumerate(python_blocks(page), 1):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    exec(compile(code, f"docs/{name} (python block {i})", "exec"), namespace)
                except Exception as e:  # pragma: no cover - the message is the point
                    raise AssertionError(f"docs/{name}, python block {i} failed: {e!r}\n{code}") from e
    finally:
        torch.set_num_threads(torch_threads)


def _nav_pages(nav) -> list[str]:
    """Every Markdown file named in mkdocs.yml's nav (nested sections included)."""
    pages: list[str] = []
    items = nav if isinstance(nav, list) else [nav]
    for item in items:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                if isinstance(value, str):
                    pages.append(value)
                else:
                    pages.extend(_nav_pages(value))
    return [p for p in pages if p.endswith(".md")]


def _load_nav() -> list[str]:
    yaml = pytest.importorskip("yaml")

    class _Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use tags such as !!python/name (Material's emoji options); they do not matter to the nav.
    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load(MKDOCS_YML.read_text(encoding="utf-8"), Loader=_Loader)
    return _nav_pages(config["nav"])


def test_nav_pages_exist():
    pytest.importorskip("yaml")
    missing = [p for p in _load_nav() if not (DOCS / p).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav that docs/ lacks: {missing}"


def _built_path(site: Path, page: str) -> Path:
    """Where mkdocs (use_directory_urls) writes a page: index.md -> index.html, a/b.md -> a/b/index.html."""
    stem = page[: -len(".md")]
    if stem == "index" or stem.endswith("/index"):
        return site / (stem + ".html")
    return site / stem / "index.html"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
         "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    missing = [p for p in _load_nav() if not _built_path(site, p).is_file()]
    assert not missing, f"nav pages that were not built: {missing}"
    # The API reference was generated from the docstrings, not left empty.
    api = (site / "api" / "layers" / "index.html").read_text(encoding="utf-8")
    assert "CWConv" in api and "shortcut_channels" in api


def test_fidelity_page_names_existing_tests():
    """Every test ``docs/fidelity.md`` cites as evidence (``tests/FILE.py::test_name``) exists, and every system's
    table cites at least one reference-equivalence test."""
    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "fidelity.md").read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", page)
    assert len(cited) > 50
    for path, name in cited:
        source = root / path
        assert source.is_file(), f"docs/fidelity.md cites {path}, which does not exist"
        assert re.search(rf"^def {name}\(", source.read_text(), flags=re.M), f"{path} has no test {name}"
    for ref in ("test_ref_deeperforward", "test_ref_trifecta", "test_ref_cwcomp", "test_ref_dtg", "test_ref_hinton"):
        assert f"tests/reference/{ref}.py::" in page, f"docs/fidelity.md cites no test of {ref}"


def test_results_table_lists_every_recipe_from_the_recorded_runs():
    """docs/results.md's every-recipe table is what ``benchmarks/reproduce.py --table`` builds from the registry and
    ``benchmarks/results/reproduce/*.json``: a new recipe, or a recorded run, without a rewritten table fails here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
    assert spec is not None and spec.loader is not None
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    text = (DOCS / "results.md").read_text()
    between = text.split(reproduce.BEGIN, 1)[1].split(reproduce.END, 1)[0].strip()
    assert between == reproduce.table(), "run `python benchmarks/reproduce.py --table`"
    from ffkit.recipes import list_recipes

    for name in list_recipes():
        assert f"| `{name}` |" in between
