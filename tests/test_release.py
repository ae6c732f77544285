"""Release: ``python -m build`` makes a wheel and an sdist, and the wheel works when installed into a fresh venv.

How the fresh venv gets its dependencies (the choice, and why it is honest):

The venv is new and empty (``python -m venv --without-pip``): nothing of the source tree and no editable ffkit is
importable in it. Installing the wheel's dependencies for real would mean a second multi-GB PyTorch install (CUDA
wheels plus ``nvidia-*`` libraries, over a minute from the local pip cache and far longer without it), so instead
the venv sees the running interpreter's third-party packages through one ``.pth`` file that points at a directory
of symlinks to them, with every ffkit entry (the editable install, its finder and ``.pth`` files, its dist-info)
left out. The wheel is then installed with ``pip install --no-index`` *with* dependency resolution: pip reads the
wheel's own ``Requires-Dist`` and must find every requirement, at a version that satisfies it, among the visible
packages, or the install fails (a dependency the wheel forgot to declare fails the import or training instead).
``pip check`` then confirms nothing ffkit needs is broken. ``ffkit`` runs from the venv's console script with the
working directory outside the repository and no ``PYTHONPATH``, and the test checks it imported the installed copy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import time
import venv
import zipfile
from pathlib import Path

import pytest
import torch

from ffkit.data import DEBIAN_FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]


def _declared_version() -> str:
    """The version as ``src/ffkit/_version.py`` states it (the one place it is written)."""
    text = (ROOT / "src" / "ffkit" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert match, "src/ffkit/_version.py must set __version__"
    return match.group(1)


def _run(args: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{args} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


def _dependency_overlay(target: Path) -> Path:
    """A directory of symlinks to the running interpreter's installed packages, without any ffkit entry."""
    target.mkdir()
    sources = {Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    for source in sorted(sources):
        for entry in sorted(source.iterdir()):
            name = entry.name.lower()
            if name.startswith(("ffkit", "__editable__")) or name.endswith(".pth") or name == "__pycache__":
                continue
            if not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return target


needs_fmnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)


@needs_fmnist
def test_wheel_and_sdist_build_and_the_wheel_installs_and_trains_in_a_fresh_venv(tmp_path):
    version = _declared_version()
    start = time.perf_counter()

    # -- build: sdist, then the wheel from that sdist (python -m build's default), so the sdist must be complete
    dist = tmp_path / "dist"
    res = _run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=ROOT)
    wheel, sdist = dist / f"ffkit-{version}-py3-none-any.whl", dist / f"ffkit-{version}.tar.gz"
    assert sorted(p.name for p in dist.iterdir()) == sorted([sdist.name, wheel.name]), res.stdout[-2000:]

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"ffkit-{version}.dist-info/METADATA").decode()
        entry_points = zf.read(f"ffkit-{version}.dist-info/entry_points.txt").decode()
    assert {"ffkit/py.typed", "ffkit/__init__.py", "ffkit/_version.py", "ffkit/cli.py"} <= names
    assert not any(n.startswith(("tests/", "src/")) for n in names)
    assert f"\nVersion: {version}\n" in metadata and "\nLicense-Expression: MIT\n" in metadata
    assert "Requires-Dist: torch" in metadata
    assert "ffkit = ffkit.cli:main" in entry_points

    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "src/ffkit/py.typed",
            "src/ffkit/_version.py", "tests/conftest.py"} <= members
    build_seconds = time.perf_counter() - start

    # -- a fresh venv; the wheel's declared dependencies resolve against the overlay (module docstring)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
                .stdout.strip())
    overlay = _dependency_overlay(tmp_path / "deps")
    (site / "_ffkit_release_test_deps.pth").write_text(f"{overlay}\n")
    res = _run([py, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", wheel], cwd=tmp_path)
    assert f"Successfully installed ffkit-{version}" in res.stdout, res.stdout[-2000:]
    res = subprocess.run([py, "-m", "pip", "check"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert not [line for line in res.stdout.splitlines() if line.lower().startswith("ffkit ")], res.stdout

    located = _run([py, "-c", "import ffkit, json; print(json.dumps([ffkit.__file__, ffkit.__version__]))"],
                   cwd=tmp_path)
    module_file, installed_version = json.loads(located.stdout)
    assert Path(module_file).is_relative_to(site) and installed_version == version

    # -- the console script: --help, --version and a 2-step training run (32 images, batches of 16)
    exe = env_dir / "bin" / "ffkit"
    res = _run([exe, "--help"], cwd=tmp_path)
    assert res.stdout.startswith("usage: ffkit") and "train" in res.stdout
    assert _run([exe, "--version"], cwd=tmp_path).stdout.strip() == f"ffkit {version}"
    run_dir = tmp_path / "run"
    res = _run([exe, "train", "--dataset", "fashion-mnist", "--data-dir", tmp_path / "data", "--out", run_dir,
                "--limit", "32", "--batch-size", "16", "--epochs", "1", "--eval-limit", "32",
                "--width-multiplier", "0.2", "--device", "cpu", "--no-progress", "--json"], cwd=tmp_path)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["train_images"] == 32 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert f"ffkit {version}: training deeperforward_tinycnn" in res.stdout
    payload = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert payload["trainer"]["step_count"] == 2 and payload["ffkit_version"] == version
    print(f"build {build_seconds:.1f} s, total {time.perf_counter() - start:.1f} s")


def _setup_with_stub_pip(tmp_path: Path, index_works: bool, variant: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``scripts/setup.sh`` in a copy of ``scripts/`` whose ``.venv`` holds a stub ``python`` (torch is never
    importable, so PyTorch must be installed) and a stub ``pip`` that records its arguments and fails any install
    from an ``--index-url`` when ``index_works`` is false (as an unreachable index does)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "setup.sh").write_text((ROOT / "scripts" / "setup.sh").read_text())
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "pip.log"
    (bin_dir / "python").write_text("#!/bin/sh\nexit 1\n")
    fail = "" if index_works else 'case "$*" in *--index-url*) echo "No matching distribution" >&2; exit 1;; esac\n'
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$*" >> {log}\n{fail}exit 0\n')
    for stub in ("python", "pip"):
        (bin_dir / stub).chmod(0o755)
    env = {**os.environ, "FFKIT_TORCH": variant, "FFKIT_TORCH_INDEX": "https://example.invalid/whl/cpu"}
    res = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=60)
    return res, log.read_text().splitlines() if log.exists() else []


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="setup.sh would install the dataset package")
@pytest.mark.parametrize(("variant", "index_works"), [("cpu", True), ("cpu", False), ("default", True)])
def test_setup_installs_the_cpu_only_torch_build_when_asked_and_falls_back_when_its_index_fails(
        tmp_path, variant, index_works):
    res, calls = _setup_with_stub_pip(tmp_path, index_works, variant)
    assert res.returncode == 0, res.stderr
    pin = "torch==2.14.1 torchvision==0.29.1"
    cpu = f"install --progress-bar on --index-url https://example.invalid/whl/cpu {pin}"
    default = f"install --progress-bar on {pin}"
    expected = {("cpu", True): [cpu], ("cpu", False): [cpu, default], ("default", True): [default]}
    assert calls == [*expected[variant, index_works], "install --quiet -e ."]
    assert ("installing PyPI's default build instead" in res.stderr) == (variant == "cpu" and not index_works)
    assert ("about 2.9 GB to download" in res.stdout) == (default in calls)


def test_setup_rejects_an_unknown_torch_variant(tmp_path):
    res, calls = _setup_with_stub_pip(tmp_path, True, "gpu")
    assert res.returncode == 2 and calls == []
    assert "FFKIT_TORCH must be 'default' or 'cpu', got 'gpu'" in res.stderr
