"""``ffkit.load`` (a trained network back from its checkpoint in one call), the one default device policy
(``ffkit.device``), and the metrics files (rounded numbers, 1-based layer ranges, lr and time per epoch)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit.device import auto_device, resolve_device
from ffkit.train.base import metrics_record, round_metric, write_metrics


def tiny(name: str = "deeperforward_tinycnn", **kwargs) -> torch.nn.Module:
    kwargs.setdefault("width_multiplier", 0.1)
    return ffkit.create_model(name, num_classes=10, in_channels=1, **kwargs)


def loader(n: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.rand(n, 1, 32, 32, generator=g), torch.arange(n) % 10), batch_size=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, torch.nn.Module, list]:
    """One epoch of a tiny DeeperForward network with SIP and a test split, written to a run directory."""
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    trainer = ffkit.LocalTrainer(tiny(), schedule="constant", device="cpu")
    history = trainer.fit(loader(), epochs=1, holdout=loader(seed=1), test=loader(seed=2), out_dir=out, log=None)
    return out, trainer.network, history


# -- ffkit.load -------------------------------------------------------------------------------------------------------
def test_load_rebuilds_the_trained_network_ready_to_predict(run):
    """The loaded network has the trained weights and SIP range, is in eval mode on the CPU, and predicts what the
    trained one predicts."""
    out, trained, _ = run
    net = ffkit.load(out / "checkpoint.pt", device="cpu")
    assert isinstance(net, ffkit.FFNetwork) and not net.training
    assert net.model_name == "deeperforward_tinycnn" and net.model_kwargs == trained.model_kwargs
    assert all(p.device.type == "cpu" for p in net.parameters())
    for k, v in trained.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    x = torch.rand(3, 1, 32, 32)
    trained.eval()
    with torch.no_grad():
        assert torch.equal(net(x), trained(x))
    assert ffkit.load(str(out / "checkpoint.pt")).training is False  # a str path and the default device


def test_load_default_device_is_the_library_policy(run):
    out, _, _ = run
    assert next(ffkit.load(out / "checkpoint.pt").parameters()).device == auto_device()


def test_load_a_backprop_baseline_saved_by_trainer_save(tmp_path):
    from ffkit.models.baselines import SingleHeadNetwork

    trainer = ffkit.BackpropTrainer(tiny("bp_vgg8"), schedule="constant", device="cpu")
    trainer.save(tmp_path / "bp.pt")
    net = ffkit.load(tmp_path / "bp.pt", device="cpu")
    assert isinstance(net, SingleHeadNetwork) and not net.training and net.model_name == "bp_vgg8"
    x = torch.rand(2, 1, 32, 32)
    trainer.network.eval()
    with torch.no_grad():
        assert torch.equal(net(x), trainer.network(x)) and net(x).shape == (2, 10)


def test_load_a_pipeline_stage_file_names_the_whole_checkpoint(tmp_path):
    torch.manual_seed(0)
    trainer = ffkit.PipelineTrainer(tiny(), stages=2, balance="layers", schedule="constant")
    trainer.fit(loader(8), epochs=1, out_dir=tmp_path, log=None)
    stage = tmp_path / "checkpoint.stage1-of-2.pt"
    with pytest.raises(ValueError) as err:
        ffkit.load(stage)
    assert str(err.value) == (f"{stage} is the file of pipeline stage 1 (its layers only, for resuming that stage); "
                              f"load the whole network's checkpoint the run wrote beside it: "
                              f"{tmp_path / 'checkpoint.pt'}")
    assert isinstance(ffkit.load(tmp_path / "checkpoint.pt"), ffkit.FFNetwork)


def test_load_a_hand_built_network_says_how_to_load_its_weights(tmp_path):
    net = tiny()
    net.model_name = None  # as a network assembled from the parts, not by a registered builder
    trainer = ffkit.LocalTrainer(net, schedule="constant", device="cpu")
    trainer.save(tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"built by hand .* network\.load_state_dict\(load_checkpoint\(path\)"
                                         r"\[\"network\"\]\)"):
        ffkit.load(tmp_path / "c.pt")
    # the advice works
    again = tiny()
    again.load_state_dict(ffkit.load_checkpoint(tmp_path / "c.pt")["network"])


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "is not a readable checkpoint"),
    (None, "is not an ffkit checkpoint"),
])
def test_load_refuses_a_file_that_is_not_an_ffkit_checkpoint(tmp_path, content, message):
    path = tmp_path / "c.pt"
    if content is None:
        torch.save(tiny().state_dict(), path)  # a bare state_dict
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        ffkit.load(path)


def test_load_argument_errors(tmp_path, run):
    out, _, _ = run
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ffkit.load(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        ffkit.load(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="device must be"):
        ffkit.load(out / "checkpoint.pt", device=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device 'tpu'"):
        ffkit.load(out / "checkpoint.pt", device="tpu")


def test_load_an_unregistered_model_says_to_import_its_module(tmp_path, run):
    out, _, _ = run
    payload = ffkit.load_checkpoint(out / "checkpoint.pt")
    payload["model_name"] = "my_own_net"
    ffkit.save_checkpoint(payload, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="'my_own_net', which is not registered in this process: import the module"):
        ffkit.load(tmp_path / "c.pt")


def test_load_and_ffkit_test_share_one_rebuild():
    """``ffkit test`` rebuilds its network with the function ``ffkit.load`` uses (no second copy of the logic)."""
    import inspect

    from ffkit import cli

    assert "network_from_checkpoint(" in inspect.getsource(cli.cmd_test)
    assert "create_model(" not in inspect.getsource(cli.cmd_test)


# -- the device policy ----------------------------------------------------------------------------------------------
def test_one_default_device_policy(monkeypatch):
    """``None`` and ``"auto"`` mean CUDA when available, else the CPU, for the trainers and the CLI alike."""
    import inspect

    from ffkit.cli import resolve_device as cli_resolve

    for cls in (ffkit.LocalTrainer, ffkit.BackpropTrainer):
        assert inspect.signature(cls.__init__).parameters["device"].default is None
    assert resolve_device(None) == resolve_device("auto") == cli_resolve("auto") == auto_device()
    assert ffkit.LocalTrainer(tiny(), schedule="constant").device == auto_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_device() == torch.device("cpu") == ffkit.BackpropTrainer(tiny(), schedule="constant").device
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="--device 'cuda': CUDA is not available"):
        cli_resolve("cuda")


# -- the metrics files ----------------------------------------------------------------------------------------------
def test_round_metric_is_seven_significant_digits_and_deterministic():
    assert round_metric(0.40459999442100525) == 0.4046
    assert round_metric(2.2951235771179199) == 2.295124
    assert round_metric(1234567.891) == 1234568.0
    assert round_metric(1.23456789e-5) == 1.234568e-5
    assert math.isnan(round_metric(math.nan)) and round_metric(math.inf) == math.inf
    assert round_metric({"a": [0.12345678, 3, True, None, "x"], "b": (1.0, 2)}) == {
        "a": [0.1234568, 3, True, None, "x"], "b": [1.0, 2]}
    for v in (0.1015625, 1 / 3, 77 / 128, 0.987654321):  # within pytest.approx's default tolerance of the exact value
        assert round_metric(v) == pytest.approx(v) and round_metric(v) == round_metric(v)


def test_metrics_record_adds_1_based_layers_and_keeps_the_0_based_ranges():
    rec = {"epoch": 1, "train_loss": [0.1234567891], "holdout_sip": {"start": 3, "end": 3, "accuracy": 0.5},
           "test": {"sip_range": (3, 3), "prediction_range": [1, 3], "sip": 0.40459999442100525}}
    out = metrics_record(rec)
    assert out["test"]["sip_range"] == [3, 3] and out["test"]["sip_layers"] == [4, 4]
    assert out["test"]["prediction_layers"] == [2, 4] and out["holdout_sip"]["layers"] == [4, 4]
    assert out["test"]["sip"] == 0.4046 and out["train_loss"] == [0.1234568]
    assert rec["test"]["sip_range"] == (3, 3) and "sip_layers" not in rec["test"]  # the history is left as it was
    no_sip = metrics_record({"epoch": 1, "test": {"sip_range": None, "prediction_range": None}})
    assert no_sip["test"]["sip_layers"] is None and no_sip["test"]["prediction_layers"] is None


def test_a_run_writes_rounded_1_based_metrics_matching_the_console(run):
    out, _, history = run
    (record,) = json.loads((out / "metrics.json").read_text())
    test, exact = record["test"], history[-1]["test"]
    s, e = exact["sip_range"]
    assert test["sip_range"] == [s, e] and test["sip_layers"] == [s + 1, e + 1]
    line = ffkit.train.base.format_epoch(history[-1], 1)
    assert f"SIP layers {s + 1}..{e + 1}" in line
    assert record["holdout_sip"]["layers"] == [s + 1, e + 1]
    assert test["per_layer"] == [round_metric(v) for v in exact["per_layer"]]
    assert record["lr"] == history[-1]["lr"] == pytest.approx(ffkit.defaults.LR)  # a constant schedule
    assert record["time"].endswith("+00:00") and record["time"][:4].isdigit()
    # the same history always writes the same file
    again = out / "again"
    write_metrics(history, again)
    assert (again / "metrics.json").read_text() == (out / "metrics.json").read_text()
    assert (again / "metrics.csv").read_text() == (out / "metrics.csv").read_text()


def test_metrics_csv_has_overall_accuracy_lr_and_time_per_row(run):
    out, _, history = run
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "layer", "train_loss", "train_acc", "test_acc", "test_accuracy", "lr", "time"]
    assert [r["layer"] for r in rows] == ["1", "2", "3", "4"]  # 1-based, as printed
    rec = history[-1]
    for i, r in enumerate(rows):
        assert float(r["test_acc"]) == pytest.approx(rec["test"]["per_layer"][i], abs=1e-6)
        assert float(r["test_accuracy"]) == pytest.approx(rec["test"]["prediction"], abs=1e-6)
        assert float(r["lr"]) == pytest.approx(rec["lr"]) and r["time"] == rec["time"]


def test_metrics_of_a_history_without_test_lr_or_time(tmp_path):
    """Records written before these fields existed (a resumed old run) still write both files."""
    write_metrics([{"epoch": 1, "train_loss": [0.5, 0.25], "train_acc": [0.5, 0.75], "train_images": 4}], tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["test_acc"], r["test_accuracy"], r["lr"], r["time"]) for r in rows] == [("nan", "nan", "nan", "")] * 2
    assert json.loads((tmp_path / "metrics.json").read_text())[0]["train_acc"] == [0.5, 0.75]
