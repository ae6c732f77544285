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


def _results_rows() -> dict[str, tuple[float, float | None]]:
    """docs/results.md's every-recipe table: ``{recipe: (ffkit's accuracy, wall minutes or None)}`` for the measured
    rows."""
    rows = {}
    for line in (DOCS / "results.md").read_text().splitlines():
        m = re.match(r"\| `([\w-]+)` \| [^|]* \| \*\*(\d+\.\d+)\*\* \| ([^|]*) \|", line)
        if m:
            wall = re.search(r"wall (\d+(?:\.\d+)?) min", m.group(3))
            rows[m.group(1)] = (float(m.group(2)), float(wall.group(1)) if wall else None)
    return rows


def test_readme_figures_match_the_recorded_runs():
    """Every accuracy and time the README gives after a recipe's name is that recipe's recorded run in
    docs/results.md (accuracy within 0.1 points, minutes within 10 %): a re-measured recipe whose README figure was
    not updated fails here."""
    rows = _results_rows()
    assert "fast-fmnist-cpu" in rows and rows["fast-fmnist-cpu"][1] is not None
    names = sorted(rows, key=len, reverse=True)  # "fast-fmnist-cpu-long" before "fast-fmnist-cpu"
    mention = re.compile("|".join(rf"(?<![\w-]){re.escape(n)}(?![\w-])" for n in names))
    # a figure belongs to the recipe named last before it in the same paragraph (a code block's line is one)
    paragraphs, prose, code = [], [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            code = not code
        if code or line.startswith("```") or not line.strip():
            paragraphs.append(" ".join(prose))
            prose = []
            paragraphs.append(line)
        else:
            prose.append(line)
    paragraphs.append(" ".join(prose))
    spans = []
    for text in paragraphs:
        found = list(mention.finditer(text))
        spans += [(m.group(0), text[m.end() : found[k + 1].start() if k + 1 < len(found) else len(text)])
                  for k, m in enumerate(found)]
    checked = 0
    for name, span in spans:
        accuracy, minutes = rows[name]
        for value in re.findall(r"(\d{2}\.\d{1,2}) ?%", span):
            assert abs(float(value) - accuracy) <= 0.1, (name, value, accuracy)
            checked += 1
        for value in re.findall(r"(\d+(?:\.\d+)?) minutes", span):
            assert minutes is not None and abs(float(value) - minutes) <= 0.1 * minutes, (name, value, minutes)
            checked += 1
    assert checked >= 4  # the README quotes fast-fmnist-cpu twice and fast-fmnist-cpu-long once


def test_readme_test_counts_match_the_suite(request):
    """The README's test count and its groups' counts are those of the suite (within 5 %), checked when the whole
    suite is collected (a run of some files or groups skips it)."""
    items = request.session.items
    if request.config.option.markexpr or request.config.option.keyword:
        pytest.skip("a run selected by -m or -k")
    files = {Path(str(i.fspath)).resolve() for i in items}
    every = set((ROOT / "tests").glob("test_*.py")) | set((ROOT / "tests" / "reference").glob("test_*.py"))
    if files != {f.resolve() for f in every} or len(items) < request.session.testscollected:
        pytest.skip("only part of the suite is collected")
    text = " ".join((ROOT / "README.md").read_text().split())
    total = re.search(r"the suite \(([\d,]+) tests", text)
    groups = re.search(r"`unit` .*?: (\d+), (\d+), (\d+) and (\d+) tests", text)
    assert total and groups, "the README's Development section states the test count and the groups' counts"
    assert abs(int(total.group(1).replace(",", "")) - len(items)) <= 0.05 * len(items), (total.group(1), len(items))
    for name, stated in zip(("unit", "systems", "engines", "project"), groups.groups()):
        actual = sum(1 for i in items if i.get_closest_marker(name) is not None)
        assert abs(int(stated) - actual) <= 0.05 * actual, (name, stated, actual)


def test_slow_list_names_existing_tests():
    """tests/conftest.py's SLOW names files and tests that exist, so the fast inner loop cannot keep a slow test by a
    typo or a rename."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_suite_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    for stem, names in conftest.SLOW.items():
        found = list((ROOT / "tests").rglob(f"{stem}.py"))
        assert len(found) == 1, stem
        defined = set(re.findall(r"^def (test_\w+)", found[0].read_text(), flags=re.M))
        assert names is None or names <= defined, (stem, names - defined)


def test_the_fast_recipe_figure_ffkit_train_suggests_is_its_recorded_run():
    """``ffkit train``'s closing suggestions quote fast-fmnist-cpu's accuracy and time: they must be its recorded run
    in docs/results.md (accuracy within 0.1 points, minutes within 10 %)."""
    from ffkit.cli import FAST_CPU_RECIPE

    name, text = FAST_CPU_RECIPE
    accuracy, minutes = _results_rows()[name]
    quoted_accuracy = re.search(r"(\d{2}\.\d{1,2})%", text)
    quoted_minutes = re.search(r"(\d+(?:\.\d+)?) minutes", text)
    assert quoted_accuracy and quoted_minutes, text
    assert abs(float(quoted_accuracy.group(1)) - accuracy) <= 0.1
    assert minutes is not None and abs(float(quoted_minutes.group(1)) - minutes) <= 0.1 * minutes
