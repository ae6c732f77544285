"""The example scripts run end to end on real Fashion-MNIST (so they cannot rot)."""

import subprocess
import sys
from pathlib import Path

import pytest

from ffkit.data import DEBIAN_FASHION_MNIST_DIR

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize(("script", "expected"), [
    ("build_your_own.py", "epoch 2/2"),
    ("mix_parts.py", "CW-Conv with OLU: test accuracy"),
])
def test_example_runs(script, expected, tmp_path):
    env = {"FFKIT_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=600,
                         env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert expected in res.stdout
