"""The ``ffkit`` command end to end on real Fashion-MNIST (from the Debian package), with small widths and slices."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffkit.cli import main
from ffkit.data import DEBIAN_FASHION_MNIST_DIR

needs_fmnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)

QUICK = ["--width-multiplier", "0.2", "--limit", "512", "--eval-limit", "256", "--no-progress", "--lr", "0.01"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@needs_fmnist
def test_train_test_and_resume_on_real_fashion_mnist(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", data_dir, "--out", str(out), "--json", *QUICK]
    assert main(args) == 0
    text = capsys.readouterr().out
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["epochs"] == 1 and summary["dataset"] == "fashion-mnist"
    assert len(summary["test_accuracy_per_layer"]) == 4
    assert 0.0 < summary["test_accuracy"] <= 1.0 and summary["images_per_s"] > 0
    assert "train acc" in text and "Next steps:" in text
    steps = text[text.index("Next steps:"):].splitlines()
    assert f"  ffkit plot {out}" in steps and f"  ffkit test --checkpoint {out / 'checkpoint.pt'} --tta flip" in steps
    assert "  ffkit train --recipe deeperforward-tinycnn-fmnist" in steps  # the paper's recipe for this model
    assert any("time not estimated" in line for line in steps)  # --limit: the paper's epoch is longer than this one
    resume = next(line.strip() for line in steps if line.strip().endswith("--resume"))
    assert {"checkpoint.pt", "metrics.json", "metrics.csv"} <= {p.name for p in out.iterdir()}

    assert main(["test", "--checkpoint", str(out / "checkpoint.pt"), "--data-dir", data_dir, "--eval-limit", "256",
                 "--json"]) == 0
    test_out = capsys.readouterr().out
    rep = json.loads(test_out.strip().splitlines()[-1])
    assert "prediction (SIP layer" in test_out and len(rep["per_layer"]) == 4
    assert rep["prediction"] == pytest.approx(summary["test_accuracy"])
    # the same checkpoint and test slice give the same per-layer accuracy as the training run reported
    assert rep["per_layer"] == pytest.approx(summary["test_accuracy_per_layer"])

    # the resume command it suggests (to 5 epochs) works as printed, here to 2 epochs
    suggested = shlex.split(resume)
    assert suggested[0] == "ffkit" and suggested[suggested.index("--epochs") + 1] == "5"
    suggested[suggested.index("--epochs") + 1] = "2"
    assert main(suggested[1:]) == 0
    resumed = capsys.readouterr().out
    assert "resumed from" in resumed and "after epoch 1" in resumed
    assert json.loads(resumed.strip().splitlines()[-1])["epochs"] == 2
    assert len(json.loads((out / "metrics.json").read_text())) == 2


@needs_fmnist
def test_short_run_learns_fashion_mnist(tmp_path, data_dir, capsys):
    """A quick real-data run must beat chance by a wide margin (10 classes: chance is 10%)."""
    args = ["train", "--dataset", "fmnist", "--data-dir", data_dir, "--out", str(tmp_path), "--json",
            "--width-multiplier", "0.2", "--limit", "3072", "--eval-limit", "1000", "--no-progress", "--epochs", "2",
            "--lr", "0.01"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy"] > 0.65


@needs_fmnist
def test_only_deeperforward_holds_out_a_split_for_sip(tmp_path, data_dir, capsys):
    """A DeeperForward model holds out part of the training set and predicts with SIP's range; another model
    (Hinton's MLP) trains on the whole training set and predicts with its own read-out, never overwritten by SIP."""
    quick = ["--limit", "256", "--eval-limit", "128", "--no-progress", "--json", "--data-dir", data_dir]
    assert main(["train", "--model", "hinton_mlp", "--dataset", "fashion-mnist", "--out", str(tmp_path / "h"),
                 "--lr", "0.01", *quick]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text.strip().splitlines()[-1])
    assert "held-out for SIP" not in text and summary["sip_range"] is None
    assert summary["prediction_range"] == [1, 3]  # Hinton's FF: every layer but the first
    assert summary["test_accuracy"] == pytest.approx(
        json.loads((tmp_path / "h" / "metrics.json").read_text())[-1]["test"]["prediction"])
    assert main(["train", "--model", "deeperforward_tinycnn", "--width-multiplier", "0.1", "--dataset",
                 "fashion-mnist", "--out", str(tmp_path / "d"), *quick]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text.strip().splitlines()[-1])
    assert "held-out for SIP" in text and summary["sip_range"] == summary["prediction_range"]
    assert main(["train", "--model", "deeperforward_tinycnn", "--width-multiplier", "0.1", "--dataset",
                 "fashion-mnist", "--out", str(tmp_path / "n"), "--no-holdout", *quick]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # without SIP, the release's range before selection: every layer but the first
    assert summary["sip_range"] is None and summary["prediction_range"] == [1, 3]


def test_models_lists_builders(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("deeperforward_tinycnn", "deeperforward_cnn14", "deeperforward_resnet17"):
        assert name in out


def test_missing_dataset_says_where_files_go(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "MNIST" in err and str(tmp_path) in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["train", "--dataset", "imagenet"], "imagenet"),
        (["train", "--device", "cuda:7"], "--device"),
        (["train", "--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_are_clear_errors(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_checkpoint_of_another_model_is_rejected(tmp_path, capsys):
    import ffkit

    net = ffkit.create_model("deeperforward_tinycnn", num_classes=10, in_channels=1, width_multiplier=0.1)
    path = ffkit.LocalTrainer(net, total_steps=1).save(tmp_path / "checkpoint.pt")
    rc = main(["train", "--model", "deeperforward_cnn14", "--width-multiplier", "0.1", "--out", str(tmp_path),
               "--resume", "--no-progress", "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and "deeperforward_tinycnn" in err
    assert main(["test", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert path.exists()


def test_negative_epochs_rejected_by_parser(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "0"])
    assert "positive int" in capsys.readouterr().err


def test_console_script_and_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "ffkit", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("ffkit ")
    exe = Path(sys.executable).parent / "ffkit"
    if exe.exists():
        res = subprocess.run([str(exe), "models"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "deeperforward_tinycnn" in res.stdout


def test_with_index_yields_indices():
    from torch.utils.data import DataLoader, TensorDataset

    from ffkit.data import WithIndex

    ds = WithIndex(TensorDataset(torch.rand(5, 1, 2, 2), torch.arange(5)))
    x, y, i = next(iter(DataLoader(ds, batch_size=5)))
    assert i.tolist() == [0, 1, 2, 3, 4] and y.tolist() == [0, 1, 2, 3, 4] and len(ds) == 5


@needs_fmnist
def test_train_with_performance_flags(tmp_path, data_dir, capsys, monkeypatch):
    import ffkit.recipes

    seen = {}
    real = ffkit.recipes.build_trainer

    def spy(*a, **kw):
        trainer = real(*a, **kw)
        seen.update(channels_last=trainer.channels_last, amp=trainer.amp, compile=trainer.compile)
        return trainer

    monkeypatch.setattr(ffkit.recipes, "build_trainer", spy)
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", data_dir, "--out", str(tmp_path / "run"), "--json",
            "--channels-last", "--amp", *QUICK[:2], "--limit", "256", "--eval-limit", "128", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 < summary["test_accuracy"] <= 1.0
    assert seen == {"channels_last": True, "amp": True, "compile": False}


@needs_fmnist
@pytest.mark.parametrize("extra", [[], ["--normalize", "standard", "--holdout"]])
def test_data_on_device_trains_exactly_as_the_dataloader_path(tmp_path, data_dir, capsys, extra):
    """``--data-on-device`` (automatic on CUDA) makes the same batches in the same order on the device: on the CPU
    the two runs must end with the same weights and the same report."""
    from ffkit.train import load_checkpoint

    runs = {}
    for flag in ("--no-data-on-device", "--data-on-device"):
        out = tmp_path / flag
        args = ["train", "--dataset", "fashion-mnist", "--data-dir", data_dir, "--out", str(out), "--json",
                "--width-multiplier", "0.2", "--limit", "384", "--eval-limit", "128", "--no-progress", "--epochs", "2",
                flag, *extra]
        assert main(args) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        runs[flag] = (summary, load_checkpoint(out / "checkpoint.pt")["network"])
    (plain, w_plain), (device, w_device) = runs.values()
    for key in ("test_accuracy", "test_accuracy_all_layers", "test_accuracy_per_layer", "sip_range"):
        assert plain[key] == device[key], key
    assert w_plain.keys() == w_device.keys()
    for k in w_plain:
        torch.testing.assert_close(w_device[k], w_plain[k], atol=1e-6, rtol=1e-5)


@needs_fmnist
def test_data_on_device_conflicts(tmp_path, data_dir, capsys):
    base = ["train", "--dataset", "fashion-mnist", "--data-dir", data_dir, "--out", str(tmp_path / "r"), *QUICK]
    assert main([*base, "--data-on-device", "--workers", "2"]) == 2
    assert "--data-on-device" in capsys.readouterr().err
    assert main([*base, "--data-on-device", "--pipeline"]) == 2
    assert "conflicts with --pipeline" in capsys.readouterr().err


@needs_fmnist
def test_train_with_a_threads_pipeline(tmp_path, data_dir, capsys):
    args = ["train", "--dataset", "fashion-mnist", "--data-dir", data_dir, "--out", str(tmp_path / "run"), "--json",
            "--pipeline", "--stages", "0,2", *QUICK]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["train_images"] == 512 and 0.0 < summary["test_accuracy"] <= 1.0
    assert (tmp_path / "run" / "checkpoint.stage1-of-2.pt").is_file()


@pytest.mark.parametrize("stages,message", [("0,x", "--stages must be"), ("0,9", "starts"),
                                            ("0,1.5", "backend='distributed'"), ("7", "between 1 and the number")])
def test_bad_pipeline_stages_are_refused_before_any_data_is_read(tmp_path, capsys, stages, message):
    # CIFAR-10 is not in the empty data directory: a split checked only after loading the data would fail on that
    args = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run"),
            "--pipeline", "--stages", stages, *QUICK]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "cifar" not in err.lower()


def test_pipeline_conflicts_with_backprop(capsys):
    assert main(["train", "--pipeline", "--trainer", "backprop", "--limit", "8"]) == 2
    assert "--pipeline" in capsys.readouterr().err


@needs_fmnist
@pytest.mark.parametrize("variant", ["stages", "federated", "all-layers", "stages:0,1.5"])
def test_torchrun_pipeline_variants(tmp_path, data_dir, variant):
    """`torchrun --nproc-per-node 2 -m ffkit train ... --pipeline`: two gloo processes train, rank 0 alone reports.
    ``--stages 0,1.5`` shares layer 1 between the two stages, half of each batch on each."""
    from helpers.distributed import torchrun

    variant, _, split = variant.partition(":")
    proc, _ = torchrun("-m", "ffkit", "train", "--dataset", "fashion-mnist", "--data-dir", data_dir,
                       "--out", str(tmp_path / "run"), "--json", "--pipeline", "--pipeline-variant", variant,
                       *(["--stages", split] if split else []),
                       "--chapter-batches", "2", "--pipeline-timeout", "30", *QUICK, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 prints
    summary = json.loads(lines[0])
    assert 0.0 < summary["test_accuracy"] <= 1.0 and summary["epochs"] == 1
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    if split:
        record = json.loads((tmp_path / "run" / "metrics.json").read_text())[-1]
        assert record["shared_layers"][0]["layer"] == 1 and record["stage_starts"] == [0, 1.5]


@needs_fmnist
def test_torchrun_data_parallel_trains_and_resumes(tmp_path, data_dir):
    """`torchrun --nproc-per-node 2 -m ffkit train ... --data-parallel`: each process trains on half of every
    --batch-size batch; rank 0 alone reports and writes; a resume for a second epoch continues it."""
    from helpers.distributed import torchrun

    def run(*extra):
        proc, _ = torchrun("-m", "ffkit", "train", "--dataset", "fashion-mnist", "--data-dir", data_dir,
                           "--out", str(tmp_path / "run"), "--json", "--data-parallel", "--pipeline-timeout", "30",
                           *QUICK, *extra, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        assert len(lines) == 1  # only rank 0 prints
        return json.loads(lines[0]), json.loads((tmp_path / "run" / "metrics.json").read_text())

    proc, _ = torchrun("-m", "ffkit", "train", "--data-dir", data_dir, "--out", str(tmp_path / "odd"),
                       "--data-parallel", "--batch-size", "7", *QUICK, timeout=120)
    assert proc.returncode != 0 and ("--batch-size 7 (the global batch) must be a multiple of the 2 data-parallel "
                                     "processes") in proc.stderr
    summary, metrics = run()
    assert summary["epochs"] == 1 and 0.0 < summary["test_accuracy"] <= 1.0
    assert metrics[-1]["ranks"] == 2 and metrics[-1]["train_images"] == summary["train_images"]
    summary, metrics = run("--epochs", "2", "--resume")
    assert summary["epochs"] == 2 and [r["epoch"] for r in metrics] == [1, 2]


@needs_fmnist
def test_torchrun_data_parallel_with_sharded_parameters_and_synchronised_batchnorm(tmp_path, data_dir, capsys):
    """`--data-parallel --shard-parameters --sync-batchnorm` on CwComp's CNN (a BatchNorm per layer): two processes
    train with FSDP2-sharded layers; rank 0's checkpoint is a whole network that `ffkit test` reads in one process,
    and a resume continues it sharded."""
    from helpers.distributed import torchrun

    def run(*extra):
        proc, _ = torchrun("-m", "ffkit", "train", "--model", "cwcomp_cnn", "--dataset", "fashion-mnist",
                           "--data-dir", data_dir, "--out", str(tmp_path / "run"), "--json", "--data-parallel",
                           "--shard-parameters", "--sync-batchnorm", "--pipeline-timeout", "30", *QUICK, *extra,
                           timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])

    assert run()["epochs"] == 1
    assert run("--epochs", "2", "--resume")["epochs"] == 2
    assert main(["test", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--data-dir", data_dir,
                 "--eval-limit", "256", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 < report["prediction"] <= 1.0 and len(report["per_layer"]) == 4


@needs_fmnist
def test_loewex_recipe_trains_and_tests_on_28x28_images(tmp_path, data_dir, capsys):
    """The recipe's network takes the stored 28x28 images (784 inputs): train and test load them at that size."""
    out = tmp_path / "lx"
    assert main(["train", "--recipe", "hinton-mlp-fmnist-loewex", "--epochs", "1", "--limit", "400",
                 "--eval-limit", "200", "--data-dir", data_dir, "--out", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy_head"] == summary["test_accuracy"]  # the softmax layer predicts
    assert main(["test", "--checkpoint", str(out / "checkpoint.pt"), "--data-dir", data_dir, "--eval-limit", "200",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["prediction"] == pytest.approx(summary["test_accuracy"])
    net = torch.load(out / "checkpoint.pt", weights_only=False)
    assert net["network"]["layers.0.linear.weight"].shape == (1000, 784)
    assert "layers.0.peer_mean" in net["network"]  # the running means are saved, so a resumed run continues them



@needs_fmnist
def test_flip_test_time_augmentation_is_recorded_and_tested_again(tmp_path, data_dir, capsys):
    out = tmp_path / "tta"
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", data_dir, "--out", str(out), "--json",
                 "--tta", "flip", *QUICK]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tta"] == "flip"
    ckpt = str(out / "checkpoint.pt")
    assert main(["test", "--checkpoint", ckpt, "--data-dir", data_dir, "--eval-limit", "256", "--json"]) == 0
    text = capsys.readouterr().out
    rep = json.loads(text.strip().splitlines()[-1])
    assert "test-time augmentation flip" in text and rep["tta"] == "flip"
    assert rep["per_layer"] == pytest.approx(summary["test_accuracy_per_layer"])
    assert main(["test", "--checkpoint", ckpt, "--data-dir", data_dir, "--eval-limit", "256", "--json",
                 "--tta", "none"]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plain["tta"] is None and plain["goodness_pos"] != pytest.approx(rep["goodness_pos"], rel=1e-6)


def test_models_prints_one_plain_sentence_per_model(capsys):
    from ffkit.cli import one_line
    from ffkit.models import list_models

    doc = "A :class:`~ffkit.layers.DTGLinear` net (Sec. 4.4), e.g. ``lr`` 0.5 here.\n  Second line.\n\nMore."
    assert one_line(doc) == "A DTGLinear net (Sec. 4.4), e.g. lr 0.5 here."
    assert one_line(None) == ""
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(list_models())
    for line in lines:
        description = line.split(None, 2)[2]
        assert description.endswith(".") and ":class:" not in description and "``" not in description, line
        assert not description.endswith(("Sec.", "e.g.")), line  # cut inside an abbreviation
