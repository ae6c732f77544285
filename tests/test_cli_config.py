"""``ffkit train --model-kwargs`` and ``--config FILE``, the settings summary and ``OUT/config.json``, and
``ffkit models --verbose``: how a run's settings are given, merged, checked, recorded and resumed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ffkit.cli import (
    apply_train_config,
    build_parser,
    check_resume_flags,
    load_train_config,
    main,
    parse_model_kwarg_value,
    parse_model_kwargs,
    resolve_train_config,
)
from ffkit.data import DEBIAN_FASHION_MNIST_DIR

needs_fmnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "configs" / "hinton-mlp-3x1000-fmnist.toml"


def resolved(argv: list[str]) -> dict:
    """``ffkit train``'s resolved configuration for ``argv``, as ``main`` makes it (without training)."""
    return resolve_train_config(apply_train_config(build_parser().parse_args(argv), argv))


def error_of(argv: list[str], capsys) -> str:
    """The one-line error ``ffkit`` prints for ``argv`` (exit status 2, no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ffkit {argv[0]}: error: ") and "Traceback" not in err
    return err


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- --model-kwargs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "value"), [
    ("1000", 1000), ("0.5", 0.5), ("1e-3", 1e-3), ("-2", -2), ("True", True), ("false", False), ("true", True),
    ("None", None), ("1000,1000,1000", (1000, 1000, 1000)), ("[1000, 1000]", (1000, 1000)), ("(7,)", (7,)),
    ("[[0, 1], [2, 3]]", ((0, 1), (2, 3))), ("fixed", "fixed"), ("relu-full-grad", "relu-full-grad"),
    ("'None'", "None"), (" l2 ", "l2"), ("{'a': [1]}", {"a": (1,)}),
])
def test_model_kwarg_values_are_python_literals_else_strings(text, value):
    """Literals where they parse (lists as tuples, as recipes write sequences), true/false as booleans, anything else
    kept as its text."""
    parsed = parse_model_kwarg_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_model_kwargs_parse_key_by_key():
    assert parse_model_kwargs(["hidden=64,64", "negatives=fixed", "head=true"]) == {
        "hidden": (64, 64), "negatives": "fixed", "head": True}


@pytest.mark.parametrize(("items", "message"), [
    (["hidden"], "--model-kwargs 'hidden': expected KEY=VALUE"),
    (["=3"], "--model-kwargs '=3': expected KEY=VALUE"),
    (["hid den=3"], "expected KEY=VALUE with KEY an argument name"),
    (["hidden="], "--model-kwargs 'hidden=': no value after '='"),
    (["hidden=1", "hidden=2"], "--model-kwargs: hidden is given twice"),
])
def test_malformed_model_kwargs_are_refused(items, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_model_kwargs(items)


def test_an_unknown_model_kwarg_names_the_key_the_model_and_what_it_accepts(capsys):
    err = error_of(["train", "--model", "pon_mlp", "--model-kwargs", "hiden=64", "--data-dir", "/nonexistent"], capsys)
    assert "--model-kwargs: model pon_mlp takes no argument 'hiden' (did you mean 'hidden'?)" in err
    assert "it accepts: hidden, image_size (see 'ffkit models --verbose pon_mlp')" in err


@pytest.mark.parametrize(("key", "owner"), [
    ("num_classes", "comes from the dataset (--dataset)"), ("in_channels", "comes from the dataset (--dataset)"),
    ("width_multiplier", "is set by --width-multiplier"),
])
def test_model_kwargs_that_other_settings_own_are_refused(key, owner, tmp_path, capsys):
    """One way to set each value: the dataset sets the classes and channels, --width-multiplier the width; on the
    command line and in a config file alike."""
    err = error_of(["train", "--model-kwargs", f"{key}=2"], capsys)
    assert f"--model-kwargs: {key} {owner}" in err and "not from model kwargs" in err
    config = write(tmp_path / "c.toml", f"[model-kwargs]\n{key} = 2\n")
    assert f"model-kwargs in {config}: {key} {owner}" in error_of(["train", "--config", config], capsys)


def test_model_kwargs_merge_over_the_recipes_key_by_key():
    cfg = resolved(["train", "--recipe", "trifecta-shallow-fmnist", "--model-kwargs", "alpha=2",
                    "--width-multiplier", "0.25"])
    assert cfg["model_kwargs"] == {"learned_label": True, "alpha": 2, "width_multiplier": 0.25}
    assert {k: v for k, v in cfg["sources"].items() if k.startswith("model_kwargs.")} == {
        "model_kwargs.learned_label": "recipe", "model_kwargs.alpha": "flag", "model_kwargs.width_multiplier": "flag"}
    # a recipe's own argument can be changed
    assert resolved(["train", "--recipe", "trifecta-shallow-fmnist", "--model-kwargs", "learned_label=false"]
                    )["model_kwargs"] == {"learned_label": False}


def test_a_resume_compares_the_model_arguments_with_their_defaults(tmp_path):
    """Stating a builder default changes nothing; a changed argument is refused naming it and the flag that gives
    the checkpoint's value back; another model is left to check_same_model."""
    ckpt = tmp_path / "checkpoint.pt"
    saved = {"model": "hinton_mlp", "model_kwargs": {"hidden": (64, 64), "width_multiplier": 0.5}}
    check_resume_flags(saved, {"model": "hinton_mlp", "model_kwargs": {
        "hidden": [64, 64], "width_multiplier": 0.5, "negatives": "random"}}, ckpt)
    with pytest.raises(ValueError) as excinfo:
        check_resume_flags(saved, {"model": "hinton_mlp", "model_kwargs": {"hidden": (64,), "negatives": "fixed"}},
                           ckpt)
    msg = str(excinfo.value)
    assert (f"checkpoint {ckpt} was trained with hinton_mlp(width_multiplier=0.5, hidden=(64, 64), "
            "negatives='random'), this run asks for hinton_mlp(width_multiplier=1.0, hidden=(64,), negatives='fixed')"
            in msg)
    assert "a resumed run cannot change the model's arguments" in msg
    assert "resume with --width-multiplier 0.5 --model-kwargs hidden=64,64 negatives=random" in msg
    check_resume_flags(saved, {"model": "pon_mlp", "model_kwargs": {}}, ckpt)  # check_same_model's to refuse


@needs_fmnist
def test_model_kwargs_build_the_network_and_the_checkpoint_rebuilds_it(tmp_path, capsys):
    """The arguments reach the builder, the checkpoint records them (ffkit test rebuilds the same network), a resume
    with other arguments is refused and one with the same (in another spelling) continues."""
    out = tmp_path / "run"
    base = ["train", "--model", "hinton_mlp", "--dataset", "fashion-mnist", "--limit", "256", "--eval-limit", "128",
            "--no-progress", "--lr", "0.01", "--out", str(out), "--data-dir", str(tmp_path / "d")]
    assert main([*base, "--model-kwargs", "hidden=40,40", "negatives=fixed"]) == 0
    text = capsys.readouterr().out
    assert "model hinton_mlp [flag] with hidden=40,40, negatives=fixed [flag]\n" in text
    payload = torch.load(out / "checkpoint.pt", weights_only=False)
    assert payload["model_kwargs"]["hidden"] == (40, 40) and payload["model_kwargs"]["negatives"] == "fixed"
    assert payload["metadata"]["model_kwargs"] == {"hidden": (40, 40), "negatives": "fixed"}
    assert main(["test", "--checkpoint", str(out / "checkpoint.pt"), "--data-dir", str(tmp_path / "d"),
                 "--eval-limit", "128"]) == 0
    assert "layer           1      2\n" in capsys.readouterr().out

    err = error_of([*base, "--epochs", "2", "--resume", "--model-kwargs", "hidden=40,40"], capsys)
    assert "was trained with hinton_mlp(negatives='fixed'), this run asks for hinton_mlp(negatives='random')" in err
    assert "resume with --model-kwargs negatives=fixed" in err
    assert main([*base, "--epochs", "2", "--resume", "--model-kwargs", "hidden=[40, 40]", "negatives='fixed'"]) == 0
    assert "resumed from" in capsys.readouterr().out


# -- ffkit models --verbose --------------------------------------------------------------------------------------------
def test_models_verbose_lists_each_builders_arguments_and_defaults(capsys):
    assert main(["models", "--verbose", "pon_mlp", "bp_resnet18"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pon_mlp ") and lines[1:4] == [
        "    hidden: Sequence[int] = (2000, 2000, 2000, 2000)",
        "    image_size: int = 32",
        "    set by other flags: num_classes, in_channels (--dataset); width_multiplier (--width-multiplier)",
    ]
    assert lines[4].startswith("bp_resnet18 ") and lines[5:] == [
        "    (no --model-kwargs)", "    set by other flags: num_classes, in_channels (--dataset)"]
    assert main(["models", "-v"]) == 0
    assert "    threshold: float | None = None" in capsys.readouterr().out  # every model by default
    assert main(["models"]) == 0
    assert "\n    " not in capsys.readouterr().out  # one line per model without --verbose
    assert "unknown model 'pon'" in error_of(["models", "pon"], capsys)


# -- --config FILE -----------------------------------------------------------------------------------------------------
def test_config_settings_sit_between_the_command_line_and_the_recipe(tmp_path):
    """Precedence: command line > config file > recipe > built-in defaults, for options and model arguments alike;
    a flag given with its default value still overrides the file. Either spelling of a key names the flag."""
    config = write(tmp_path / "c.toml", 'recipe = "trifecta-shallow-fmnist"\nlr = 0.002\nbatch_size = 64\n'
                                        'epochs = 3\nseed = 5\nno-progress = true\n'
                                        '[model-kwargs]\nalpha = 6.0\nnorm = "layer"\n')
    argv = ["train", "--config", config, "--epochs", "7", "--seed", "0", "--model-kwargs", "norm=batch"]
    args = apply_train_config(build_parser().parse_args(argv), argv)
    cfg = resolve_train_config(args)
    assert (cfg["epochs"], cfg["lr"], cfg["batch_size"], cfg["weight_decay"]) == (7, 0.002, 64, 0.0)
    assert (args.seed, args.no_progress, cfg["recipe"], cfg["model"]) == (0, True, "trifecta-shallow-fmnist",
                                                                          "trifecta_shallow")
    assert cfg["model_kwargs"] == {"learned_label": True, "alpha": 6.0, "norm": "batch"}
    sources = cfg["sources"]
    assert (sources["epochs"], sources["seed"], sources["lr"], sources["batch_size"], sources["recipe"]) == (
        "flag", "flag", "config", "config", "config")
    assert (sources["weight_decay"], sources["augment"]) == ("recipe", "recipe")  # what the file leaves to the recipe
    assert "optimizer" not in sources  # the recipe's optimizer is the default one
    assert (sources["model_kwargs.learned_label"], sources["model_kwargs.alpha"], sources["model_kwargs.norm"]) == (
        "recipe", "config", "flag")


def test_config_values_are_converted_and_checked_as_their_flags(tmp_path):
    config = write(tmp_path / "c.toml", 'lr = 1e-3\nepochs = "4"\namp = true\nholdout = false\ndata-parallel = true\n'
                                        'stages = 3\ndevice = "cpu"\nnormalize = "standard"\n'
                                        '[model-kwargs]\nhidden = [64, 32]\n')
    assert load_train_config(config) == {
        "lr": 1e-3, "epochs": 4, "amp": True, "holdout": False, "data_parallel": 0, "stages": "3", "device": "cpu",
        "normalize": "standard", "model_kwargs": {"hidden": (64, 32)}}


@pytest.mark.parametrize(("text", "message"), [
    ("epoch = 2\n", "unknown setting 'epoch' in {path} (did you mean 'epochs'?); a config file holds ffkit train's "
                    "flags by name: amp, augment, batch-size,"),
    ("[train]\nepochs = 2\n", "unknown setting 'train' in {path}"),
    ("batch_size = 3\nbatch-size = 4\n", "'batch-size' in {path}: --batch-size is set twice"),
    ("epochs = 0\n", "'epochs' in {path}: expected a positive int, got '0'"),
    ("epochs = 1.5\n", "'epochs' in {path}: expected a positive int, got '1.5'"),
    ("lr = true\n", "'lr' in {path}: expected a number, got True"),
    ("optimizer = \"adamm\"\n", "'optimizer' in {path}: expected one of adam, adamw, sgd, got 'adamm'"),
    ("holdout = \"yes\"\n", "'holdout' in {path}: expected true or false, got 'yes'"),
    ("model = [\"a\"]\n", "'model' in {path}: expected a string, got ['a']"),
    ("resume = true\n", "'resume' in {path}: resuming is an action on a run directory, not a setting"),
    ("config = \"other.toml\"\n", "'config' in {path}: a config file cannot name another one"),
    ("model-kwargs = 3\n", "'model-kwargs' in {path}: expected a table, e.g. model-kwargs = {{hidden = [1000, 1000]}}"),
    ("model = \"pon_mlp\"\n[model-kwargs]\nhiden = 1\n", "model-kwargs in {path}: model pon_mlp takes no argument "
                                                          "'hiden'"),
    ("epochs = \n", "--config {path} is not valid TOML: "),
])
def test_config_file_errors_name_the_key_and_the_file(text, message, tmp_path, capsys):
    path = write(tmp_path / "bad.toml", text)
    assert message.format(path=path) in error_of(["train", "--config", path, "--data-dir", "/nonexistent"], capsys)


def test_config_file_kinds(tmp_path, capsys, monkeypatch):
    """TOML always; YAML with PyYAML, else an error naming pip install pyyaml; any other file is refused."""
    assert "expected a .toml file (or .yaml/.yml with PyYAML), got .json" in error_of(
        ["train", "--config", write(tmp_path / "c.json", "{}")], capsys)
    assert f"--config {tmp_path / 'none.toml'}: no such file" in error_of(
        ["train", "--config", str(tmp_path / "none.toml")], capsys)
    yaml_file = write(tmp_path / "c.yaml", "epochs: 3\nbatch-size: 32\nmodel-kwargs: {dropout: 0.1}\n")
    pytest.importorskip("yaml")
    assert load_train_config(yaml_file) == {"epochs": 3, "batch_size": 32, "model_kwargs": {"dropout": 0.1}}
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    err = error_of(["train", "--config", yaml_file], capsys)
    assert "reading YAML needs PyYAML (pip install pyyaml), or write the settings as TOML" in err


@needs_fmnist
def test_the_example_config_trains_and_the_run_records_its_settings(tmp_path, capsys):
    """examples/configs' Hinton MLP (3 x 1000) runs, shortened by flags; the run prints its settings with their
    sources first and writes them to OUT/config.json."""
    out = tmp_path / "run"
    argv = ["train", "--config", str(EXAMPLE), "--epochs", "1", "--limit", "256", "--eval-limit", "128",
            "--no-progress", "--out", str(out), "--data-dir", str(tmp_path / "d")]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:7] == [
        f"settings (flag > config file > recipe > default; [source] where not a default): --config {EXAMPLE}, "
        "--recipe hinton-mlp-fmnist-loewex",
        "  model hinton_mlp [config] with hidden=1000,1000,1000 [config], goodness=sum, threshold=1000.0, "
        "label_position=first,",
        "      image_size=28, norm=rms, eps=1e-08, activation=relu-full-grad, init=normal, peer_normalization=0.03,",
        "      peer_momentum=0.9, head=True, head_input_norm=rms, head_zero_init=True, head_pre_update=True [recipe]",
        "  dataset fashion-mnist [config], epochs 1 [flag], batch size 100 [config], lr 0.001 [recipe], "
        "optimizer sgd [recipe],",
        "      schedule linear-cooldown [recipe], trainer local [recipe]",
        "  device cpu (auto), out " + str(out) + " [flag]",
    ]
    assert all(len(line) <= 118 for line in lines[1:7])
    assert lines[7].startswith("ffkit ") and "training hinton_mlp (3 layers" in lines[7]
    assert sorted(p.name for p in out.iterdir()) == [".ffkit-train.lock", "checkpoint.pt", "config.json",
                                                     "metrics.csv", "metrics.json", "metrics.jsonl"]
    record = json.loads((out / "config.json").read_text())
    assert record["config_file"] == str(EXAMPLE) and record["command_line"].startswith("ffkit train --config ")
    settings = record["settings"]
    assert (settings["model"], settings["epochs"], settings["lr"], settings["limit"], settings["device"]) == (
        "hinton_mlp", 1, 1e-3, 256, "cpu")
    assert settings["model_kwargs"]["hidden"] == [1000, 1000, 1000] and settings["model_kwargs"]["goodness"] == "sum"
    assert {k: record["sources"][k] for k in ("model", "epochs", "limit", "lr", "model_kwargs.hidden",
                                              "model_kwargs.goodness")} == {
        "model": "config", "epochs": "flag", "limit": "flag", "lr": "recipe", "model_kwargs.hidden": "config",
        "model_kwargs.goodness": "recipe"}
    assert "seed" not in record["sources"] and "tta" not in record["sources"]  # defaults carry no source
    payload = torch.load(out / "checkpoint.pt", weights_only=False)
    assert payload["model_kwargs"]["hidden"] == (1000, 1000, 1000)


def test_the_cli_page_shows_the_example_config_as_it_is():
    """docs/cli.md's TOML block is the example file's settings, line for line (its comments left out)."""
    import re

    block = re.search(r"```toml\n(.*?)```", (ROOT / "docs" / "cli.md").read_text(), re.DOTALL)
    assert block is not None
    shown = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    settings = [line for line in EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    assert shown and set(shown) <= set(settings)
    assert load_train_config(EXAMPLE)["model_kwargs"] == {"hidden": (1000, 1000, 1000)}
