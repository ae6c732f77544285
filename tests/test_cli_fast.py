"""The torch-free fast paths (``import ffkit``, ``--help``, ``ffkit models``, ``ffkit recipes``), the model catalogue
they read, and logging: the trainers' per-epoch table on the ``ffkit.train`` logger, shown by the CLI."""

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit.cli import main
from ffkit.data import DEBIAN_FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (the test's own, with its ``PYTHONPATH``)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


FAST = [
    ["--help"], ["--version"], ["train", "--help"], ["test", "--help"], ["plot", "--help"], ["models", "--help"],
    ["recipes", "--help"], ["models"], ["models", "--verbose"], ["models", "-v", "dtg_mlp", "bp_vgg8"],
    ["recipes"], ["models", "nope"],
]


@pytest.mark.parametrize("argv", FAST, ids=" ".join)
def test_fast_commands_do_not_import_torch(argv):
    code = (
        "import contextlib, io, sys\n"
        "from ffkit.cli import main\n"
        "out, err = io.StringIO(), io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
        "    try:\n"
        f"        rc = main({argv!r})\n"
        "    except SystemExit as exit:\n"  # --help and --version exit from argparse
        "        rc = exit.code\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(rc, len(out.getvalue()), len(err.getvalue()), loaded)\n"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    rc, out, err, loaded = res.stdout.split(" ", 3)
    assert loaded.strip() == "[]", f"ffkit {' '.join(argv)} imported {loaded.strip()}"
    if argv == ["models", "nope"]:
        assert rc == "2" and int(err) > 0  # the unknown-model error, on stderr
    else:
        assert rc == "0" and int(out) > 0


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["recipes"]])
def test_the_console_entry_point_imports_no_torch(argv):
    """``python -m ffkit`` (the module that the ``ffkit`` script runs too), watched by ``-X importtime``."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "ffkit", *argv], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time")}
    assert "ffkit.cli" in imported and "torch" not in imported


def test_import_ffkit_is_torch_free_until_a_name_needs_it():
    """In a fresh interpreter: ``import ffkit`` and the recipes without torch, a model with it; and the trainer's
    table logged, shown only once the application configures logging."""
    res = _run(
        "import sys\n"
        "import ffkit\n"
        "assert 'torch' not in sys.modules, 'import ffkit imported torch'\n"
        "assert ffkit.__version__ and 'torch' not in sys.modules\n"
        "import ffkit.recipes, ffkit.defaults\n"
        "assert ffkit.recipes.get_recipe('deeperforward-tinycnn-fmnist').model == 'deeperforward_tinycnn'\n"
        "assert 'torch' not in sys.modules, 'ffkit.recipes imported torch'\n"
        "net = ffkit.create_model('deeperforward_tinycnn', num_classes=10, in_channels=1, width_multiplier=0.1)\n"
        "assert 'torch' in sys.modules and isinstance(net, ffkit.FFNetwork)\n"
        "import logging, torch\n"
        "print(tuple(net(torch.rand(2, 1, 28, 28)).shape))\n"
        # without logging configured, fit shows nothing; basicConfig(level=INFO) shows each epoch's table
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "loader = DataLoader(TensorDataset(torch.rand(16, 1, 28, 28), torch.arange(16) % 10), batch_size=16)\n"
        "trainer = ffkit.LocalTrainer(net, total_steps=2)\n"
        "trainer.fit(loader, epochs=1)\n"
        "logging.getLogger('ffkit.train').warning('a warning, unseen without a handler')\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stdout)\n"
        "trainer.fit(loader, epochs=2)\n"
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    shape, table = res.stdout.split("\n", 1)
    assert shape == "(2, 10)" and table.startswith("ffkit.train: epoch 2/2: 16 images") and "epoch 1/" not in table


def test_every_public_name_resolves_and_dir_lists_them():
    assert set(ffkit.__all__) <= set(dir(ffkit))
    assert {"train", "models", "data", "__version__"} <= set(dir(ffkit))  # the submodules, as attributes
    assert not {"importlib", "logging", "TYPE_CHECKING"} & set(dir(ffkit))  # helpers of __init__.py only
    for name in ffkit.__all__:
        assert getattr(ffkit, name) is not None, name
    from ffkit import FFNetwork, LocalTrainer
    from ffkit.network import FFNetwork as defined

    assert FFNetwork is defined and ffkit.FFNetwork is defined
    assert ffkit.recipes.build_trainer is ffkit.train.build_trainer
    assert LocalTrainer is ffkit.train.LocalTrainer


def test_an_unknown_attribute_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'no_such_thing'"):
        ffkit.no_such_thing  # noqa: B018
    with pytest.raises(ImportError, match="no_such_thing"):
        from ffkit import no_such_thing  # noqa: F401
    with pytest.raises(AttributeError, match="'no_such_thing'"):
        ffkit.recipes.no_such_thing  # noqa: B018
    assert not hasattr(ffkit, "plotting_not_a_module")


def test_the_lazy_table_the_type_checking_imports_and_all_agree():
    """``ffkit/__init__.py`` names each public object three times (``__all__``, the lazy table, the imports that
    type checkers read): they must give the same names from the same submodules."""
    tree = ast.parse((ROOT / "src" / "ffkit" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    imported, submodules = {}, set()
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            if node.module is None:
                submodules.add(alias.name)
            else:
                imported[alias.name] = node.module
    assert imported == ffkit._LAZY
    assert submodules <= ffkit._SUBMODULES
    assert set(ffkit.__all__) == {"__version__", *imported, *submodules}
    assert len(ffkit.__all__) == len(set(ffkit.__all__))


# --- the model catalogue ---------------------------------------------------------------------------------------


def test_the_model_catalogue_is_the_registry():
    """``ffkit/_model_catalogue.py`` is generated from the registry; regenerate it with the command below."""
    from ffkit import _model_catalogue
    from ffkit.models._catalogue import CATALOGUE_PATH, catalogue_source, describe_models

    assert _model_catalogue.MODELS == describe_models(builtin=True), "run: python -m ffkit.models._catalogue"
    assert CATALOGUE_PATH.read_text() == catalogue_source(), "run: python -m ffkit.models._catalogue"
    assert sorted(_model_catalogue.MODELS) == ffkit.list_models(), "every built-in model, nothing else"


def test_the_catalogue_check_command(tmp_path, monkeypatch, capsys):
    from ffkit.models import _catalogue

    assert _catalogue.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    stale = tmp_path / "_model_catalogue.py"
    stale.write_text(_catalogue.catalogue_source().replace("'ff'", "'bp'", 1) + "# edited\n")
    monkeypatch.setattr(_catalogue, "CATALOGUE_PATH", stale)
    assert _catalogue.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert _catalogue.main([]) == 0 and stale.read_text() == _catalogue.catalogue_source()


def test_the_catalogue_wraps_long_summaries_without_changing_them():
    from ffkit.models._catalogue import _wrapped

    text = "word " * 60 + "end.  Two  spaces kept"
    lines = _wrapped("doc", text)
    assert len(lines) > 3 and all(len(line) <= 120 for line in lines)
    assert ast.literal_eval("{" + "\n".join(lines) + "}") == {"doc": text}


def test_models_lists_a_model_registered_in_this_process(monkeypatch, capsys):
    """In a process that imported ffkit.models, ``ffkit models`` reads the live registry: a model registered at run
    time is listed (the catalogue holds only the built-in ones)."""
    from ffkit import _model_catalogue
    from ffkit.models import _registry

    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    monkeypatch.setattr(_registry, "_KINDS", dict(_registry._KINDS))

    @ffkit.register_model
    def my_tiny_net(*, num_classes: int = 10, in_channels: int = 1, depth: int = 2):
        """My own network. Not in the catalogue."""
        raise AssertionError("not built by a listing")

    assert main(["models", "--verbose", "my_tiny_net"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["my_tiny_net", "ff", "My", "own", "network."]
    assert out[1:] == ["    depth: int = 2", "    set by other flags: num_classes, in_channels (--dataset)"]
    assert "my_tiny_net" not in _model_catalogue.MODELS


# --- logging -----------------------------------------------------------------------------------------------------


def _trainer_and_loader():
    torch.manual_seed(0)
    net = ffkit.create_model("hinton_mlp", num_classes=4, in_channels=1, hidden=(8, 8), image_size=4)
    x, y = torch.rand(32, 1, 4, 4), torch.arange(32) % 4
    return ffkit.LocalTrainer(net, lr=0.01, total_steps=4), DataLoader(TensorDataset(x, y), batch_size=16)


def test_fit_logs_the_epoch_table_at_info_under_ffkit_train(caplog, capsys):
    trainer, loader = _trainer_and_loader()
    with caplog.at_level(logging.INFO, logger="ffkit"):
        trainer.fit(loader, epochs=1, test=loader)
    tables = [r for r in caplog.records if r.name == "ffkit.train"]
    assert len(tables) == 1 and tables[0].levelno == logging.INFO
    assert tables[0].getMessage().startswith("epoch 1/1: 32 images") and "train acc" in tables[0].getMessage()
    assert capsys.readouterr().out == ""  # a library does not print


def test_fit_with_log_none_logs_nothing_and_a_callable_gets_the_table(caplog):
    trainer, loader = _trainer_and_loader()
    with caplog.at_level(logging.DEBUG, logger="ffkit"):
        trainer.fit(loader, epochs=1, log=None)
        seen: list[str] = []
        trainer.fit(loader, epochs=2, log=seen.append)
    assert [r for r in caplog.records if r.name.startswith("ffkit")] == []
    assert len(seen) == 1 and seen[0].startswith("epoch 2/2")


def test_ffkit_logs_nowhere_until_the_application_says_so():
    """The library's logger has a NullHandler, so that an application without logging configured sees nothing of
    ffkit's INFO records (nor, from a warning, logging's last-resort output on stderr); the fresh interpreter of
    test_import_ffkit_is_torch_free_until_a_name_needs_it checks it end to end."""
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("ffkit").handlers)


def test_console_logging_is_scoped_and_checks_its_level(capsys):
    from ffkit.cli import console_logging

    root = logging.getLogger("ffkit")
    before = (root.level, list(root.handlers))
    with console_logging("warning"):
        logging.getLogger("ffkit.train").info("hidden")
        logging.getLogger("ffkit.cli").warning("a warning")
    with console_logging():
        logging.getLogger("ffkit.cli").info("shown")
    logging.getLogger("ffkit.cli").info("after")
    assert (root.level, root.handlers) == before
    out, err = capsys.readouterr()
    assert out == "shown\n" and err == "a warning\n"
    with pytest.raises(ValueError, match="level must be one of debug, info, warning, got 'loud'"):
        with console_logging("loud"):
            pass


needs_fmnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)
QUICK = ["--model", "hinton_mlp", "--model-kwargs", "hidden=16,16", "image_size=8", "--dataset", "fashion-mnist",
         "--limit", "64", "--eval-limit", "32", "--batch-size", "32", "--no-progress", "--no-holdout"]


@needs_fmnist
def test_cli_shows_the_epoch_table_and_quiet_keeps_only_the_json_line(tmp_path, capsys):
    data = str(tmp_path / "data")
    assert main(["train", *QUICK, "--data-dir", data, "--out", str(tmp_path / "a"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "settings (flag > config file" in out and "epoch 1/1: 64 images" in out and "train acc" in out
    assert "\nTest accuracy: " in out and "Checkpoint: " in out
    assert json.loads(out.splitlines()[-1])["epochs"] == 1
    for quiet in (["-q"], ["--log-level", "warning"]):
        assert main(["train", *QUICK, "--data-dir", data, "--out", str(tmp_path / quiet[-1]), "--json", *quiet]) == 0
        out = capsys.readouterr().out
        assert len(out.splitlines()) == 1 and json.loads(out)["epochs"] == 1
    ckpt = str(tmp_path / "a" / "checkpoint.pt")
    assert main(["test", "--checkpoint", ckpt, "--data-dir", data, "--eval-limit", "32"]) == 0
    assert "test acc" in capsys.readouterr().out
    assert main(["test", "--checkpoint", ckpt, "--data-dir", data, "--eval-limit", "32", "-q", "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and json.loads(out)["model"] == "hinton_mlp"
    assert logging.getLogger("ffkit").handlers == [h for h in logging.getLogger("ffkit").handlers
                                                   if isinstance(h, logging.NullHandler)]
