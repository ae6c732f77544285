"""Every example notebook runs top to bottom on a small slice of real Fashion-MNIST, and matches its script twin.

The notebooks are executed with nbclient (the engine of nbmake) in the ``python3`` kernel, which jupyter_client
starts with this interpreter, so they run in the plain ``python -m pytest -q``. Each test prints the notebook's run
time; ``pytest --durations=0`` lists it too.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from ffkit.data import DEBIAN_FASHION_MNIST_DIR

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(p.stem for p in EXAMPLES.glob("*.ipynb"))
#: a few hundred training images, one epoch: each notebook takes well under a minute on a 2-core CPU
SMALL_SLICE = {"FFKIT_EXAMPLE_LIMIT": "256", "FFKIT_EXAMPLE_EPOCHS": "1"}
#: text each notebook must print
EXPECTED = {
    "quickstart": "SIP on the held-out split chooses layers",
    "build_your_own": "FF MLP: test accuracy",
    "ff_vs_backprop": "FF step time / BP-DeepSup step time",
    "pipeline": "stages concurrently: max |weight difference| = 0\n",
}

needs_fmnist = pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(),
                                  reason="dataset-fashion-mnist is not installed")


def _make_notebooks():
    spec = importlib.util.spec_from_file_location("make_notebooks", EXAMPLES / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_has_a_notebook_and_a_script():
    assert set(NOTEBOOKS) == set(EXPECTED) == set(_make_notebooks().NOTEBOOKS)
    for name in NOTEBOOKS:
        assert (EXAMPLES / f"{name}.py").is_file()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_written_from_its_script_without_outputs(name):
    """The committed notebook is exactly what examples/make_notebooks.py writes from the script: no drift, no
    outputs, valid nbformat 4."""
    nbformat = pytest.importorskip("nbformat")
    text = (EXAMPLES / f"{name}.ipynb").read_text()
    assert text == _make_notebooks().render(EXAMPLES / f"{name}.py"), "run: python examples/make_notebooks.py"
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.cells[0].cell_type == "markdown"  # concepts first
    source = "\n".join(c.source for c in code)
    assert "FFKIT_EXAMPLE_LIMIT" in source and "sys.argv" not in source


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data directory for all notebooks (Fashion-MNIST is decompressed into it once)."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow
@needs_fmnist
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, data_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for key, value in {**SMALL_SLICE, "FFKIT_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "2"}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figures
    nb = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    began = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - began
    print(f"\n{name}.ipynb ran in {seconds:.1f} s on {SMALL_SLICE['FFKIT_EXAMPLE_LIMIT']} training images "
          f"(python {sys.version.split()[0]})")
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                images += "image/png" in out.data
                text.append(out.data.get("text/plain", ""))
    assert EXPECTED[name] in "".join(text)
    assert images >= 1, "the notebook showed no figure"
    # the figures were also written to the plots directory, relative to the notebook's working directory
    assert list((tmp_path / "plots" / name).glob("*.png"))
