"""The benchmark scripts that feed docs/results.md and docs/performance.md run, and write only where asked."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


def test_eval_cost_measures_both_and_writes_only_with_out(tmp_path, monkeypatch):
    eval_cost = _load("eval_cost")
    monkeypatch.chdir(tmp_path)
    args = ["--recipe", "fast-fmnist-cpu", "--images", "64", "--steps", "1", "--rounds", "1", "--no-amp"]
    result = eval_cost.main(args)
    assert result["train_ms_per_image"] > 0 and result["eval_ms_per_image"] > 0
    assert result["eval_over_train"] == pytest.approx(result["eval_ms_per_image"] / result["train_ms_per_image"])
    assert result["amp"] is False and result["eval_batch_size"] == 128  # the recipe's batch, as ffkit train on a CPU
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "r.json"
    eval_cost.main([*args, "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "eval_cost"
    with pytest.raises(SystemExit):
        eval_cost.main(["--images", "8"])  # neither --model nor --recipe


def test_reproduce_records_a_run_and_builds_the_table(tmp_path):
    reproduce = _load("reproduce")
    run = tmp_path / "run"
    run.mkdir()
    history = [{"epoch": e, "train_seconds": 10.0 + e, "test": {"prediction": 0.5 + e / 10, "prediction_range": [3, 3],
                                                                 "head": None}} for e in (1, 2)]
    (run / "metrics.json").write_text(json.dumps(history))
    rec = reproduce.record_from_run(run, "fast-fmnist-cpu", "ffkit train --recipe fast-fmnist-cpu --epochs 2", "cpu",
                                    30.0)
    assert rec["test_accuracy"] == 0.7 and rec["epochs"] == 2 and rec["recipe_epochs"] == 8
    assert rec["per_epoch_test_accuracy"] == [0.6, 0.7] and rec["train_seconds"] == 23.0
    row = reproduce._row("fast-fmnist-cpu", rec)
    assert "**70.00**" in row and "| 2 of 8 |" in row and "12 s/epoch (median)" in row and "wall 0.5 min" in row
    assert "needs a GPU: not measured yet" in reproduce._row("deeperforward-resnet17-cifar10", None)
    assert reproduce._paper_figure("92.31 (CwComp ...)") == "92.31"
    assert reproduce._paper_figure("no published figure") == "none published"
    docs = tmp_path / "results.md"
    docs.write_text(f"# R\n\n{reproduce.BEGIN}\nstale rows\n{reproduce.END}\n\nafter\n")
    reproduce.write_table(docs)
    text = docs.read_text()
    assert "stale rows" not in text and text.endswith("\n\nafter\n") and "| `fast-fmnist-cpu` |" in text
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        reproduce.write_table(tmp_path / "bare.md")


def test_fingerprint_compare_names_every_difference():
    fingerprint = _load("fingerprint")
    recorded = {"a/local": {"hash": "1", "seconds": 3.0}, "b/local": {"refused": 2, "message": "x"},
                "gone/local": {"hash": "2"}}
    now = {"a/local": {"hash": "1", "seconds": 9.0}, "b/local": {"hash": "3"}, "new/local": {"hash": "4"}}
    problems = fingerprint.compare(recorded, now)
    assert problems[0].startswith("b/local: recorded {'refused': 2") and len(problems) == 3  # seconds do not count
    assert any("gone/local: only in the recorded" in p for p in problems)
    assert any("new/local: only in the new" in p for p in problems)
    cases = fingerprint.cases(["hinton_mlp", "bp_vgg8"], ["local", "backprop"], ["fast-fmnist-cpu"])
    assert set(cases) == {"hinton_mlp/local", "hinton_mlp/backprop", "bp_vgg8/backprop", "recipe:fast-fmnist-cpu"}


@pytest.mark.skipif(not __import__("ffkit").data.DEBIAN_FASHION_MNIST_DIR.is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fingerprint_hashes_a_run_and_checks_it(tmp_path):
    """The same case twice gives the same hash; a recorded hash that differs is reported and exits 1."""
    fingerprint = _load("fingerprint")
    args = ["--models", "hinton_mlp", "--engines", "local", "--recipes", "--limit", "32", "--timeout", "120"]
    out = tmp_path / "fp.json"
    assert fingerprint.main([*args, "--out", str(out)]) == 0
    recorded = json.loads(out.read_text())
    assert len(recorded["runs"]["hinton_mlp/local"]["hash"]) == 64
    assert fingerprint.main(["--check", str(out), "--limit", "32"]) == 0
    recorded["runs"]["hinton_mlp/local"]["hash"] = "0" * 64
    out.write_text(json.dumps(recorded))
    assert fingerprint.main(["--check", str(out), "--limit", "32"]) == 1


def test_loewex_summary_of_repeated_pairs():
    """--repeats K: samples/s over all training seconds, the mean accuracy and its sample standard deviation."""
    loewex = _load("loewex")
    runs = [{"seed": 42, "train_seconds": 100.0, "samples_per_s": 2000.0, "test_accuracy": 0.86},
            {"seed": 43, "train_seconds": 300.0, "samples_per_s": 1000.0, "test_accuracy": 0.88}]
    summary = loewex._summary(runs)
    # (2000 * 100 + 1000 * 300) / 400 = 1250 samples/s; mean 0.87; stdev of (0.86, 0.88) = 0.01 * sqrt(2)
    assert summary["samples_per_s"] == pytest.approx(1250.0) and summary["train_seconds"] == 400.0
    assert summary["test_accuracy"] == pytest.approx(0.87)
    assert summary["test_accuracy_std"] == pytest.approx(0.01 * 2**0.5)
    assert summary["test_accuracies"] == [0.86, 0.88] and summary["runs"] == runs
    with pytest.raises(SystemExit):
        loewex.main(["--reference-dir", ".", "--repeats", "0"])


def _results_listing() -> dict[str, int]:
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    return {str(f): f.stat().st_mtime_ns for f in results.rglob("*")}


def test_step_throughput_writes_only_with_out(tmp_path, monkeypatch):
    step_throughput = _load("step_throughput")
    monkeypatch.chdir(tmp_path)
    before = _results_listing()
    args = ["--model", "deeperforward_tinycnn", "--batch-size", "4", "--rounds", "1"]
    result = step_throughput.main(args)
    assert result["ff_images_per_s"] > 0 and result["bp_images_per_s"] > 0
    assert list(tmp_path.iterdir()) == [] and _results_listing() == before  # nothing written anywhere
    step_throughput.main([*args, "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["benchmark"] == "step_throughput"
    assert _results_listing() == before


def test_hostile_cases_replays_a_case_and_says_it_was_handled(tmp_path, capsys):
    """Issue 17's replay harness: a CLI case and a Python case, each in a subprocess of this interpreter."""
    bench = _load("hostile_cases")
    out = tmp_path / "cases.json"
    assert bench.main(["--only", "3-cli-lr-nan,8-empty-batch", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result
    cases = {c["id"]: c for c in result["cases"]}
    assert cases.keys() == {"3-cli-lr-nan", "8-empty-batch"} and result["handled"] == result["total"] == 2
    assert cases["3-cli-lr-nan"]["kind"] == "clean-error" and "--lr" in cases["3-cli-lr-nan"]["message"]
    assert cases["8-empty-batch"]["message"].startswith("ValueError: input is an empty batch")
