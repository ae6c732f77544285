"""The example scripts run end to end on real Fashion-MNIST (so they cannot rot).

The notebooks' script twins run on a small slice (``FFKIT_EXAMPLE_LIMIT``, one epoch) and write their figures to
the directory given as their argument; tests/test_notebooks.py runs the notebooks themselves.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffkit.data import DEBIAN_FASHION_MNIST_DIR

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL_SLICE = {"FFKIT_EXAMPLE_LIMIT": "256", "FFKIT_EXAMPLE_EPOCHS": "1"}


#: script -> (text it must print, figures it must write)
CASES = {
    "build_your_own.py": ("FF MLP: test accuracy", ["cwconv_network.png", "ff_mlp.png"]),
    "mix_parts.py": ("CW-Conv with OLU: test accuracy", []),
    "quickstart.py": ("SIP on the held-out split chooses layers",
                      ["samples.png", "quickstart.png", "layer_accuracy.png", "goodness.png", "dead_neurons.png",
                       "sip_grid.png"]),
    "ff_vs_backprop.py": ("FF step time / BP-DeepSup step time", ["ff_vs_backprop.png", "per_layer_accuracy.png"]),
    "pipeline.py": ("stages concurrently: max |weight difference| = 0\n", ["pipeline.png"]),
}


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("script", list(CASES))
def test_example_runs(script, tmp_path):
    expected, plots = CASES[script]
    env = {"FFKIT_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2", **SMALL_SLICE}
    began = time.perf_counter()
    res = subprocess.run([sys.executable, str(EXAMPLES / script), str(tmp_path / "plots")], capture_output=True,
                         text=True, timeout=600, env=env, cwd=tmp_path)
    print(f"\n{script} ran in {time.perf_counter() - began:.1f} s")
    assert res.returncode == 0, res.stderr[-2000:]
    assert expected in res.stdout
    for name in plots:
        assert (tmp_path / "plots" / name).is_file(), f"{script} did not write plots/{name}"
