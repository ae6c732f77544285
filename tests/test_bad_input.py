"""Every bad input of docs/errors.md, and what the user sees: one test per row of its table.

Each error must name what was wrong and what was expected, and must be raised by ffkit itself (a ``ValueError`` or
``TypeError`` from ``src/ffkit``), never a raw error from deep inside torch or torchvision. The command line must print
one ``ffkit train: error: ...`` line (no traceback) and return 2. ``test_errors_page_lists_every_test`` keeps the page
and this file in sync.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import shlex
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ffkit
from ffkit._validation import check_device
from ffkit.cli import main
from ffkit.data import DEBIAN_FASHION_MNIST_DIR, DatasetNotFoundError, dataset_info, dataset_tensors, load_dataset
from ffkit.data import datasets as ds
from ffkit.layers import CWConv, TrifectaLinear
from ffkit.models import create_model
from ffkit.train import load_checkpoint
from ffkit.train.checkpoint import CHECKPOINT_FORMAT, CheckpointVersionWarning

SRC = Path(ffkit.__file__).resolve().parent
ERRORS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"

needs_fmnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed"
)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("FFKIT_DEBUG", raising=False)  # FFKIT_DEBUG=1 makes the CLI re-raise instead of printing


def raised_by_ffkit(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    """The message, after checking that ffkit raised it (not torch) and that it contains every fragment."""
    last = excinfo.traceback[-1]
    origin = Path(str(last.path)).resolve()
    assert origin.is_relative_to(SRC), f"raised from {origin}, not from ffkit: {excinfo.value!r}"
    # by one of ffkit's own raise statements, not by a torch function that ffkit code called
    assert str(last.statement).lstrip().startswith("raise"), f"not an ffkit raise: {last.statement}"
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def cli_error(argv: list[str], capsys: pytest.CaptureFixture, *fragments: str) -> str:
    """Run the CLI; it must return 2 and print a single ``ffkit CMD: error: ...`` line naming every fragment."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"ffkit {argv[0]}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def tiny(name: str = "deeperforward_tinycnn", **kwargs) -> torch.nn.Module:
    kwargs.setdefault("width_multiplier", 0.1)
    return create_model(name, num_classes=10, in_channels=1, **kwargs)


def trainer_for(net: torch.nn.Module, backprop: bool = False):
    cls = ffkit.BackpropTrainer if backprop else ffkit.LocalTrainer
    return cls(net, schedule="constant")


def batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, 1, size, size), torch.arange(n) % 10


#: CLI arguments that keep a run tiny if a check ever fails to stop it.
SMALL = ["--no-progress", "--limit", "16", "--eval-limit", "8"]


# -- input shape and dtype ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (1, 32, 32)], ids=["3-channels", "no-batch-dim"])
def test_input_with_wrong_shape(shape):
    x = torch.rand(*shape)
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny()).train_step(x, torch.arange(shape[0]))
    raised_by_ffkit(excinfo, "input must have shape [B, 1, H, W]", f"got {tuple(shape)}")


def test_input_with_wrong_spatial_size_for_fixed_size_model():
    x, y = batch(size=28)
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny("hinton_mlp")).train_step(x, y)
    raised_by_ffkit(excinfo, "input must be 32x32 pixels for this model, got 28x28")


def test_input_size_that_does_not_halve_evenly():
    x, y = batch(size=28)
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny("deeperforward_resnet17")).train_step(x, y)
    raised_by_ffkit(excinfo, "shortcut spatial size (7, 7)", "must halve evenly", "32x32")


@pytest.mark.parametrize("where", ["train-step", "evaluation", "backprop-baseline"])
def test_input_float64(where):
    x, y = batch()
    x = x.double()  # what torch.from_numpy gives for a default NumPy array
    net = tiny("bp_vgg8") if where == "backprop-baseline" else tiny()
    with pytest.raises(TypeError) as excinfo:
        if where == "evaluation":
            net.eval()
            net(x)
        else:
            trainer_for(net, backprop=where == "backprop-baseline").train_step(x, y)
    raised_by_ffkit(excinfo, "input has dtype torch.float64", "parameters are torch.float32", "x.to(torch.float32)")


def test_input_integer_dtype():
    x = (torch.rand(4, 1, 32, 32) * 255).to(torch.uint8)
    with pytest.raises(TypeError) as excinfo:
        trainer_for(tiny()).train_step(x, torch.arange(4))
    raised_by_ffkit(excinfo, "input must be a floating-point tensor, got dtype torch.uint8")


def test_input_not_a_tensor():
    with pytest.raises(TypeError) as excinfo:
        tiny()(np.zeros((4, 1, 32, 32), dtype=np.float32))
    raised_by_ffkit(excinfo, "input must be a torch.Tensor, got ndarray")


# -- channels and classes ------------------------------------------------------------------------------------------
def test_cwconv_channels_not_multiple_of_classes():
    with pytest.raises(ValueError) as excinfo:
        CWConv(1, 10, num_classes=4)
    raised_by_ffkit(excinfo, "out_channels (10) must be a multiple of num_classes (4)", "e.g. use 12")


def test_layer_built_for_another_class_count():
    with pytest.raises(ValueError) as excinfo:
        ffkit.FFNetwork([CWConv(1, 8, 4)], ffkit.ClassScoreObjective(), num_classes=10, in_channels=1)
    raised_by_ffkit(excinfo, "layers[0] (CWConv) was built with num_classes=4", "network has num_classes=10")


@pytest.mark.parametrize("where", ["between-layers", "first-layer"])
def test_layers_with_mismatched_channels(where):
    if where == "between-layers":
        layers, expected = [CWConv(1, 8, 4), CWConv(16, 8, 4)], "layers[1] (CWConv) expects 16 input channels"
    else:
        layers, expected = [CWConv(3, 8, 4)], "layers[0] (CWConv) expects 3 input channels"
    with pytest.raises(ValueError) as excinfo:
        ffkit.FFNetwork(layers, ffkit.ClassScoreObjective(), num_classes=4, in_channels=1)
    raised_by_ffkit(excinfo, expected)


def test_goodness_groups_do_not_divide_channels():
    with pytest.raises(ValueError) as excinfo:
        ffkit.goodness.mean(torch.rand(2, 10, 4, 4), groups=4)
    raised_by_ffkit(excinfo, "h has 10 channels, which do not split into groups=4", "multiple of the group count")


# -- labels --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [10, -1])
def test_labels_out_of_range(bad):
    x, _ = batch()
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny()).train_step(x, torch.tensor([0, 1, bad, 3]))
    raised_by_ffkit(excinfo, "labels must lie in [0, 10) for num_classes=10", f"{bad}]" if bad > 0 else f"[{bad},")


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (torch.float32, "labels must be an integer tensor of class indices, got dtype torch.float32"),
        (torch.bool, "labels must be an integer tensor of class indices, got dtype torch.bool"),
        (torch.int32, "labels must be int64 (torch.long) class indices, got dtype torch.int32"),
    ],
    ids=["float32", "bool", "int32"],
)
def test_labels_of_wrong_dtype(dtype, expected):
    x, y = batch()
    with pytest.raises(TypeError) as excinfo:
        trainer_for(tiny()).train_step(x, (y % 2).to(dtype))
    raised_by_ffkit(excinfo, expected)


@pytest.mark.parametrize("case", ["2-d", "count"])
def test_labels_of_wrong_shape(case):
    x, y = batch()
    y, expected = (y[:, None], "labels must be 1-D [B], got shape (4, 1)") if case == "2-d" else (
        y[:3], "labels has 3 entries but the batch has 4 samples")
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny()).train_step(x, y)
    raised_by_ffkit(excinfo, expected)


# -- empty or too-small datasets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["empty", "smaller-than-a-batch"])
def test_empty_training_data(case):
    n = 0 if case == "empty" else 3
    data = TensorDataset(torch.rand(n, 1, 32, 32), torch.zeros(n, dtype=torch.long))
    loader = DataLoader(data, batch_size=4, drop_last=True)
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny()).fit(loader, epochs=1, log=None)
    raised_by_ffkit(excinfo, "the training data is empty: no batch was produced")


def test_empty_holdout_for_sip():
    x, y = batch()
    empty = DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4)
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny()).fit(DataLoader(TensorDataset(x, y), batch_size=4), epochs=1, holdout=empty, log=None)
    raised_by_ffkit(excinfo, "no batches to evaluate: the evaluation dataset is empty")


def test_materialising_an_empty_dataset():
    with pytest.raises(ValueError) as excinfo:
        dataset_tensors(TensorDataset(torch.rand(0, 1, 2, 2), torch.zeros(0)))
    raised_by_ffkit(excinfo, "cannot materialise an empty dataset")


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fmnist"))


@needs_fmnist
def test_cli_training_set_smaller_than_a_pipeline_batch(fmnist_dir, tmp_path, capsys):
    cli_error(["train", "--pipeline", "--limit", "3", "--batch-size", "128", "--eval-limit", "8", "--no-progress",
               "--width-multiplier", "0.1", "--data-dir", fmnist_dir, "--out", str(tmp_path)], capsys,
              "the training set has 3 samples, fewer than one batch of --batch-size 128", "--pipeline drops")


# -- batch size 1 with BatchNorm ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backprop", [False, True], ids=["local", "backprop"])
def test_batch_of_one_through_a_batchnorm_head(backprop):
    x, y = batch(1)
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny("dtg_vgg8"), backprop=backprop).train_step(x, y)
    raised_by_ffkit(excinfo, "the classifier head's BatchNorm1d needs at least 2 samples per training batch",
                    "got a batch of 1", "drop_last=True")


def test_batch_of_one_through_trifecta_linear():
    layer = TrifectaLinear(16, 8).train()
    with pytest.raises(ValueError) as excinfo:
        layer(torch.rand(1, 16))
    raised_by_ffkit(excinfo, "TrifectaLinear's BatchNorm1d needs at least 2 samples per training batch, got 1")


@pytest.mark.parametrize("name", ["deeperforward_tinycnn", "trifecta_fcn", "bp_vgg8"])
def test_batch_of_one_without_a_batch_statistic_problem_trains(name):
    """CW-Conv nets have no BatchNorm; The Trifecta's layers see the positive and the negative copy (2 samples);
    a BatchNorm2d over H x W > 1 positions has enough values. These train on a batch of one."""
    x, y = batch(1)
    net = tiny(name)
    result = trainer_for(net, backprop=name.startswith("bp_")).train_step(x, y)
    assert result.batch_size == 1 and torch.isfinite(result.losses).all()


@needs_fmnist
@pytest.mark.parametrize("limit, batch_size, expected", [
    ("129", "128", "129 training samples in batches of --batch-size 128 leave a last batch of 1"),
    ("16", "1", "--batch-size 1: dtg_vgg8's classifier head (BatchNorm1d) needs at least 2 samples"),
], ids=["last-batch-of-1", "batch-size-1"])
def test_cli_batch_of_one_with_a_batchnorm_head(fmnist_dir, tmp_path, capsys, limit, batch_size, expected):
    cli_error(["train", "--model", "dtg_vgg8", "--limit", limit, "--batch-size", batch_size, "--eval-limit", "8",
               "--width-multiplier", "0.1", "--no-progress", "--data-dir", fmnist_dir, "--out", str(tmp_path)],
              capsys, expected)


# -- missing or corrupt dataset files --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, where", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_dataset_directory(tmp_path, name, where):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset(name, "train", root)
    assert excinfo.value.__cause__ is None
    raised_by_ffkit(excinfo, f"Dataset {name!r} not found. torchvision needs these files in {root / where}",
                    "(MISSING)", "--data-dir")


def test_cli_missing_dataset_directory(tmp_path, capsys):
    cli_error(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), *SMALL], capsys,
              "Dataset 'mnist' not found", str(tmp_path / "nowhere" / "MNIST" / "raw"))


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 IDX file as the MNIST files are stored: magic 0x00000803/0x00000801, big-endian dims, data."""
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.tobytes())


def fashion_files(root: Path, n: int = 12) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.full((n, 28, 28), 7, dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return raw


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "CORRUPT: truncated, 1000 bytes where its header says 9424"),
    ("garbage", "CORRUPT: not an IDX file (bad header)"),
])
def test_corrupt_idx_file(tmp_path, damage, expected):
    raw = fashion_files(tmp_path)
    target = raw / "train-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:1000] if damage == "truncated" else b"<html>not found</html>" * 50)
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("fashion-mnist", "train", tmp_path)
    raised_by_ffkit(excinfo, "Dataset 'fashion-mnist' is corrupt: train-images-idx3-ubyte cannot be read", expected,
                    "Delete the corrupt file(s)")


@pytest.mark.parametrize("damage, expected", [
    ("image-shape", "train-images-idx3-ubyte  (CORRUPT: holds images of shape 32x32, where fashion-mnist has 28x28)"),
    ("counts", "train-images-idx3-ubyte  (CORRUPT: 12 images, but train-labels-idx1-ubyte holds 10 labels)"),
    ("labels-2d", "train-labels-idx1-ubyte  (CORRUPT: holds a 2-D array where labels are 1-D)"),
    ("directory-for-a-file", "train-images-idx3-ubyte  (CORRUPT: a directory where a file is expected)"),
])
def test_idx_files_that_disagree_with_the_dataset(tmp_path, damage, expected):
    raw = fashion_files(tmp_path)
    if damage == "image-shape":
        write_idx(raw / "train-images-idx3-ubyte", np.zeros((12, 32, 32), dtype=np.uint8))
    elif damage == "counts":
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
    elif damage == "labels-2d":
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros((12, 2), dtype=np.uint8))
    else:
        (raw / "train-images-idx3-ubyte").unlink()
        (raw / "train-images-idx3-ubyte").mkdir()
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("fashion-mnist", "train", tmp_path)
    raised_by_ffkit(excinfo, "Dataset 'fashion-mnist' is corrupt: ", expected)


def test_dataset_directory_that_is_a_file(tmp_path):
    (tmp_path / "FashionMNIST").mkdir()
    (tmp_path / "FashionMNIST" / "raw").write_text("not a directory")
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("fashion-mnist", "train", tmp_path)
    raised_by_ffkit(excinfo, f"Dataset 'fashion-mnist' not found: {tmp_path / 'FashionMNIST' / 'raw'} is a file, "
                    "where torchvision expects a directory holding train-images-idx3-ubyte")


def test_data_directory_where_the_dataset_cannot_be_unpacked(tmp_path, monkeypatch):
    source = tmp_path / "debian"
    source.mkdir()
    for f in ds._IDX_FILES:  # an intact gzipped copy, as the Debian package installs it
        shape = (4, 28, 28) if "images" in f else (4,)
        data = struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
        (source / f"{f}.gz").write_bytes(gzip.compress(data + bytes(int(np.prod(shape)))))
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", source)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("fashion-mnist", "train", blocker / "data")
    target = blocker / "data" / "FashionMNIST" / "raw"
    raised_by_ffkit(excinfo, f"Dataset 'fashion-mnist' cannot be unpacked into {target}",
                    "The data directory must be writable the first time", "pass --data-dir DIR")


def test_cli_corrupt_idx_file(tmp_path, capsys):
    raw = fashion_files(tmp_path / "data")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x0c\x01")  # 12 labels promised, 1 given
    cli_error(["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *SMALL], capsys,
              "Dataset 'fashion-mnist' is corrupt: t10k-labels-idx1-ubyte cannot be read",
              "CORRUPT: truncated, 9 bytes where its header says 20")


def test_corrupt_debian_archive(tmp_path, monkeypatch):
    source = tmp_path / "debian"
    source.mkdir()
    for f in ds._IDX_FILES:
        (source / f"{f}.gz").write_bytes(b"not gzip data")
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", source)
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("fashion-mnist", "test", tmp_path / "data")
    raised_by_ffkit(excinfo, f"a .gz file in {source} is corrupt", "--reinstall dataset-fashion-mnist")
    assert not list((tmp_path / "data" / "FashionMNIST" / "raw").iterdir())  # no half-written file is left


# -- checkpoints -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A LocalTrainer checkpoint of TinyCNN at width 0.1."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    return trainer_for(tiny()).save(path)


def edited(checkpoint: Path, tmp_path: Path, **changes) -> Path:
    payload = torch.load(checkpoint, weights_only=False)
    payload.update(changes)
    torch.save(payload, tmp_path / "edited.pt")
    return tmp_path / "edited.pt"


def test_checkpoint_of_another_model(checkpoint):
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny("deeperforward_cnn14")).resume(checkpoint)
    raised_by_ffkit(excinfo, "is from model 'deeperforward_tinycnn', not 'deeperforward_cnn14'")


def test_checkpoint_of_another_configuration(checkpoint):
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny(width_multiplier=0.2)).resume(checkpoint)
    raised_by_ffkit(excinfo, "'width_multiplier': 0.1", "but this network was built with", "'width_multiplier': 0.2")


@pytest.mark.parametrize("items", [1, 4])
def test_loader_without_labels(items):
    x = torch.rand(8, 1, 32, 32)
    data = TensorDataset(*[x] * items) if items > 1 else TensorDataset(x)
    with pytest.raises(TypeError) as excinfo:
        trainer_for(tiny()).train_epoch(DataLoader(data, batch_size=4))
    raised_by_ffkit(excinfo, "each training batch must be (x, y) or (x, y, index), got a list of " + str(items))


def test_checkpoint_of_another_trainer(checkpoint):
    with pytest.raises(ValueError) as excinfo:
        ffkit.BackpropTrainer(tiny(), schedule="constant").resume(checkpoint)
    raised_by_ffkit(excinfo, "was written by a LocalTrainer", "do not fit this BackpropTrainer")


def test_checkpoint_of_a_newer_format(checkpoint, tmp_path):
    path = edited(checkpoint, tmp_path, ffkit_checkpoint_format=CHECKPOINT_FORMAT + 1, ffkit_version="9.0.0")
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(path)
    raised_by_ffkit(excinfo, f"has checkpoint format {CHECKPOINT_FORMAT + 1} (written by ffkit 9.0.0)",
                    f"this ffkit {ffkit.__version__} understands (format {CHECKPOINT_FORMAT}); upgrade ffkit")


def test_checkpoint_of_another_ffkit_version_loads_with_a_warning(checkpoint, tmp_path):
    path = edited(checkpoint, tmp_path, ffkit_version="0.0.1")
    with pytest.warns(CheckpointVersionWarning, match=f"written by ffkit 0.0.1, this is ffkit {ffkit.__version__}"):
        trainer_for(tiny()).resume(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same version loads silently
        load_checkpoint(checkpoint)


def test_checkpoint_with_an_invalid_format(checkpoint, tmp_path):
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(edited(checkpoint, tmp_path, ffkit_checkpoint_format="1"))
    raised_by_ffkit(excinfo, "has an invalid checkpoint format '1'; expected a positive int")


@pytest.mark.parametrize("keep", [0.5, 10, 0], ids=["half", "10-bytes", "empty"])
def test_truncated_checkpoint(checkpoint, tmp_path, keep):
    data = checkpoint.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny()).resume(path)
    raised_by_ffkit(excinfo, f"{path} is not a readable checkpoint (truncated or corrupt?)")


@pytest.mark.parametrize("kind", ["text", "state_dict"])
def test_file_that_is_not_a_checkpoint(tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "text":
        path.write_text("not a checkpoint")
        expected = "is not a readable checkpoint"
    else:
        torch.save(tiny().state_dict(), path)
        expected = "is not an ffkit checkpoint (no 'ffkit_checkpoint_format' key) (a bare state_dict?"
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(path)
    raised_by_ffkit(excinfo, expected)


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_missing_checkpoint(tmp_path, kind):
    path = tmp_path if kind == "directory" else tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as excinfo:
        load_checkpoint(path)
    raised_by_ffkit(excinfo, f"checkpoint not found: {path}")


@pytest.mark.parametrize("case", ["test-truncated", "resume-missing", "resume-other-model", "resume-other-trainer"])
def test_cli_bad_checkpoint(checkpoint, tmp_path, capsys, case):
    data = str(tmp_path / "data")
    if case == "test-truncated":
        path = tmp_path / "truncated.pt"
        path.write_bytes(checkpoint.read_bytes()[:100])
        cli_error(["test", "--checkpoint", str(path), "--data-dir", data], capsys, "is not a readable checkpoint")
        return
    base = ["train", "--width-multiplier", "0.1", "--data-dir", data, *SMALL]
    if case == "resume-missing":
        cli_error([*base, "--resume", str(tmp_path / "nope.pt")], capsys, f"checkpoint not found: {tmp_path}")
    elif case == "resume-other-model":
        cli_error([*base, "--model", "deeperforward_cnn14", "--resume", str(checkpoint)], capsys,
                  "is from model 'deeperforward_tinycnn', not 'deeperforward_cnn14'")
    else:
        path = edited(checkpoint, tmp_path, metadata={"dataset": "fashion-mnist", "trainer": "local"})
        cli_error([*base, "--trainer", "backprop", "--resume", str(path)], capsys,
                  "was trained with the local trainer; resuming it with --trainer backprop", "pass --trainer local")


class _RunsCode:
    """Unpickling this object runs a shell command that creates ``marker``: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def malicious(checkpoint: Path, path: Path, marker: Path, *, legacy: bool = False) -> Path:
    """A valid ffkit checkpoint with one extra entry whose unpickling runs code (zip format, or the legacy pickle)."""
    payload = load_checkpoint(checkpoint)
    payload["metadata"] = {**payload.get("metadata", {}), "note": _RunsCode(marker)}
    if legacy:  # a bare pickle of plain objects (tensors pickle through torch's own globals)
        with open(path, "wb") as f:
            pickle.dump({"ffkit_checkpoint_format": 1, "note": _RunsCode(marker)}, f, protocol=2)
    else:
        torch.save(payload, path)
    return path


REFUSED = "holds a Python object ffkit does not load (posix.system); loading a checkpoint never runs code"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_malicious_checkpoint_runs_no_code_through_any_loading_path(checkpoint, tmp_path, capsys, legacy):
    marker = tmp_path / "pwned"
    path = malicious(checkpoint, tmp_path / "checkpoint.pt", marker, legacy=legacy)
    with pytest.raises(ValueError) as excinfo:
        load_checkpoint(path)
    raised_by_ffkit(excinfo, f"{path} {REFUSED}")
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny()).resume(path)
    raised_by_ffkit(excinfo, REFUSED)
    cli_error(["test", "--checkpoint", str(path), "--data-dir", str(tmp_path / "data")], capsys, REFUSED)
    cli_error(["train", "--width-multiplier", "0.1", "--data-dir", str(tmp_path / "data"), *SMALL, "--resume",
               str(path)], capsys, REFUSED)
    # a pipeline stage's file is read by the same loader
    from ffkit.train.pipelining.files import stage_files, stage_path

    stage = malicious(checkpoint, stage_path(tmp_path / "run.pt", 0, 2), marker, legacy=legacy)
    with pytest.raises(ValueError) as excinfo:
        stage_files(tmp_path / "run.pt", 0, 2)
    raised_by_ffkit(excinfo, f"{stage} {REFUSED}")
    assert not marker.exists(), "unpickling the checkpoint ran code"
    pickle.loads(pickle.dumps(_RunsCode(marker)))  # the payload is live: plain unpickling does run it
    assert marker.exists()


def test_checkpoints_hold_only_what_weights_only_loads(checkpoint, tmp_path):
    assert torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint) == []
    # checkpoints written before the random state was stored as tensors hold NumPy's key array: they still load
    payload = load_checkpoint(checkpoint)
    payload["rng"]["numpy"] = np.random.get_state()
    torch.save(payload, tmp_path / "older.pt")
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "older.pt")
    np.random.seed(3)
    expected = np.random.rand(3)
    np.random.seed(3)
    payload["rng"]["numpy"] = np.random.get_state()
    torch.save(payload, tmp_path / "older.pt")
    np.random.seed(99)
    trainer_for(tiny()).resume(tmp_path / "older.pt")
    assert np.array_equal(np.random.rand(3), expected)


# -- resume: every training flag is honoured, re-planned or refused ------------------------------------------------
RESUME_BASE = ["--width-multiplier", "0.1", "--limit", "32", "--batch-size", "16", "--eval-limit", "8",
               "--no-progress", "--lr", "0.01"]


@pytest.fixture(scope="module")
def cli_run(fmnist_dir, tmp_path_factory) -> Path:
    """A one-epoch ``ffkit train`` run directory (its checkpoint records the run's flags)."""
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(["train", "--data-dir", fmnist_dir, "--out", str(out), *RESUME_BASE]) == 0
    return out


@pytest.mark.parametrize(("change", "message"), [
    (["--batch-size", "8"], "was trained with --batch-size 16, this run asks for --batch-size 8; a resumed run cannot "
     "change it (it sets the batches of every epoch and the position inside one): resume with --batch-size 16"),
    (["--seed", "1"], "was trained with --seed 0, this run asks for --seed 1"),
    (["--limit", "64"], "was trained with --limit 32, this run asks for --limit 64"),
    (["--no-holdout"], "was trained with --holdout, this run asks for --no-holdout"),
    (["--drop-last"], "was trained with --no-drop-last, this run asks for --drop-last"),
    (["--normalize", "standard"], "was trained with no --normalize, this run asks for --normalize standard"),
    (["--optimizer", "sgd"], "was trained with --optimizer adam, this run asks for --optimizer sgd; a resumed run "
     "cannot change it (the optimizer state does not convert)"),
    (["--schedule", "constant"], "was trained with --schedule cosine, this run asks for --schedule constant"),
    (["--schedule-interval", "epoch"], "was trained with --schedule-interval step, this run asks for "
     "--schedule-interval epoch"),
    (["--overlap"], "was trained with --no-overlap, this run asks for --overlap"),
], ids=["batch-size", "seed", "limit", "holdout", "drop-last", "normalize", "optimizer", "schedule",
        "schedule-interval", "overlap"])
def test_cli_resume_refuses_a_changed_flag_it_cannot_honour(cli_run, fmnist_dir, capsys, change, message):
    ckpt = cli_run / "checkpoint.pt"
    before = ckpt.read_bytes()
    cli_error(["train", "--data-dir", fmnist_dir, "--out", str(cli_run), *RESUME_BASE, *change, "--resume"], capsys,
              f"checkpoint {ckpt} {message}", "or start a new run in another --out")
    assert ckpt.read_bytes() == before  # refused before anything ran


def test_cli_resume_honours_a_new_lr_and_epochs(cli_run, fmnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(cli_run, out)
    capsys.readouterr()
    base = ["train", "--data-dir", fmnist_dir, "--out", str(out), *RESUME_BASE]
    assert main([*[a if a != "0.01" else "0.002" for a in base], "--epochs", "3", "--resume"]) == 0
    text = capsys.readouterr().out
    # 2 steps per epoch: the 1-epoch cosine had ended at its final lr (0.001); the new lr's final is 0.0002
    assert "re-planned from the checkpoint's: optimizer 0: lr 0.01 -> 0.002 (final 0.001 -> 0.0002)" in text
    assert "schedule of 2 -> 6 steps; at step 2 the lr is 0.0002" in text
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["metadata"]["lr"] == 0.002 and payload["metadata"]["epochs"] == 3
    assert [g["lr"] for g in payload["trainer"]["optimizers"][0]["param_groups"]] == [pytest.approx(0.0002)]


@needs_fmnist
def test_cli_resume_for_more_epochs_of_a_constant_schedule_equals_one_longer_run(fmnist_dir, tmp_path):
    base = ["train", "--data-dir", fmnist_dir, *RESUME_BASE, "--schedule", "constant"]
    assert main([*base, "--out", str(tmp_path / "whole"), "--epochs", "2"]) == 0
    assert main([*base, "--out", str(tmp_path / "parts"), "--epochs", "1"]) == 0
    assert main([*base, "--out", str(tmp_path / "parts"), "--epochs", "2", "--resume"]) == 0
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["network"]
    parts = load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["network"]
    for name in whole:
        torch.testing.assert_close(whole[name], parts[name], rtol=0, atol=0)


@pytest.mark.parametrize(("before", "after", "message"), [
    ({"optimizer": "adam"}, {"optimizer": "sgd"},
     "the checkpoint was trained with optimizer='adam', this trainer has optimizer='sgd'; a run cannot change its "
     "optimizer when it resumes: resume with optimizer='adam' (--optimizer on the command line)"),
    ({"schedule": "cosine"}, {"schedule": "constant"}, "trained with schedule='cosine', this trainer has "
     "schedule='constant'"),
    ({"schedule": "cooldown"}, {"schedule": "cooldown", "total_steps": 20}, "the checkpoint's 'cooldown' schedule "
     "spans 8 steps, this trainer's 20; that schedule is shaped by the whole run"),
    ({}, {"total_steps": 2}, "the checkpoint has already taken 3 steps, more than this trainer's total_steps=2"),
], ids=["optimizer", "schedule", "cooldown-length", "shorter-than-done"])
def test_resume_refuses_what_it_cannot_continue(tmp_path, before, after, message):
    torch.manual_seed(0)
    t = ffkit.LocalTrainer(tiny(), **{"total_steps": 8, **before})
    for _ in range(3):
        t.train_step(*batch())
    path = t.save(tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError) as excinfo:
        ffkit.LocalTrainer(tiny(), **{"total_steps": 8, **after}).resume(path)
    raised_by_ffkit(excinfo, message)


# -- the run directory: checked and locked before any data is read -------------------------------------------------
@pytest.mark.parametrize("case", ["a-file", "under-a-file"])
def test_cli_out_that_cannot_hold_a_run(tmp_path, capsys, case):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if case == "a-file" else blocker / "run"
    expected = f"--out {out} is a file, not a directory" if case == "a-file" else f"cannot write to --out {out}:"
    cli_error(["train", "--out", str(out), "--data-dir", str(tmp_path / "data"), *SMALL], capsys, expected)
    assert blocker.read_text() == "a file"


def test_cli_damaged_test_labels_are_refused_before_training(tmp_path, capsys):
    raw = fashion_files(tmp_path / "data", n=40)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(40, 12, dtype=np.uint8))  # a readable file, wrong labels
    cli_error(["train", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--no-holdout",
               "--width-multiplier", "0.1", *SMALL], capsys,
              "the test set of fashion-mnist has labels in [12, 12], outside [0, 10): its files are damaged or belong "
              "to another dataset")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before the first epoch


def test_cli_second_run_in_the_same_out_is_refused(tmp_path, capsys):
    from ffkit.train.rundir import claim_run_dir

    held = claim_run_dir(tmp_path / "run")  # as a running ffkit train holds it
    try:
        cli_error(["train", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), *SMALL], capsys,
                  f"another ffkit train (pid {os.getpid()}) is writing to --out {tmp_path / 'run'}",
                  "give this run another --out")
    finally:
        held.release()
    again = claim_run_dir(tmp_path / "run")  # released: the next run may take it
    again.release()


@needs_fmnist
def test_cli_more_workers_than_cores_are_capped(fmnist_dir, tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    assert main(["train", "--out", str(tmp_path / "run"), "--data-dir", fmnist_dir, "--width-multiplier", "0.1",
                 "--workers", "100000", *SMALL]) == 0
    err = capsys.readouterr().err
    assert (f"ffkit train: warning: --workers 100000 is more than the {cores} CPU core(s) this process may use; "
            f"using {cores}") in err


def test_workers_are_capped_by_memory_as_well_as_cores(monkeypatch, capsys):
    """Half of the available memory, at a worker's own memory plus its 2 prefetched batches each: 1 GiB available
    and 96 MiB batches hold 512 / (64 + 2 * 96) = 2 workers, fewer than the 8 cores."""
    from ffkit import cli

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    monkeypatch.setattr(cli, "available_memory", lambda: 2**30)
    assert cli.worker_count(2, 96 * 2**20) == 2 and capsys.readouterr().err == ""
    assert cli.worker_count(6, 96 * 2**20) == 2
    assert capsys.readouterr().err == (
        "ffkit train: warning: --workers 6 is more than what half of the 1.0 GiB of available memory holds at about "
        "256 MiB per worker (its process and 2 prefetched batches); using 2\n")
    assert cli.worker_count(6, 0) == 6  # small batches: the cores are the limit
    assert cli.worker_count(1, 2**40) == 1  # at least one worker when one was asked for
    monkeypatch.setattr(cli, "available_memory", lambda: None)  # unknown: the cores only
    assert cli.worker_count(20, 2**40) == 8


# -- non-finite values, wherever they appear --------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["stop", "skip"])
def test_nonfinite_gradient_behind_a_finite_loss_is_caught_before_the_step(action):
    torch.manual_seed(0)
    net = tiny()
    t = ffkit.LocalTrainer(net, schedule="constant", on_divergence=action)
    t.train_step(*batch())
    before = [p.detach().clone() for p in net.parameters()]
    target = net.layers[1].conv.weight
    hook = target.register_hook(lambda g: g * float("nan"))  # a finite loss back-propagates a NaN here
    try:
        if action == "stop":
            with pytest.raises(ffkit.DivergenceError) as excinfo:
                t.train_step(*batch())
            raised_by_ffkit(excinfo, "layer 2 of 4 (index 1, CWConv) produced a non-finite gradient (with a finite "
                            "loss) at epoch 1, step 2")
        else:
            assert t.train_step(*batch()).skipped
    finally:
        hook.remove()
    for a, b in zip(before, net.parameters()):  # the step was not taken: no weight holds the NaN
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_nonfinite_checkpoint_is_refused(checkpoint, tmp_path, capsys):
    payload = load_checkpoint(checkpoint)
    name = next(k for k, v in payload["network"].items() if v.is_floating_point())
    payload["network"][name] = payload["network"][name].clone().fill_(float("nan"))
    path = tmp_path / "diverged.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError) as excinfo:
        trainer_for(tiny()).resume(path)
    raised_by_ffkit(excinfo, f"checkpoint {path} holds non-finite weights (NaN or infinity) in {name}: it was saved "
                    "from a diverged run; use an earlier checkpoint")
    cli_error(["test", "--checkpoint", str(path), "--data-dir", str(tmp_path / "data")], capsys,
              f"{path} holds non-finite weights")


def test_a_nonfinite_state_is_not_saved_over_the_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = tiny()
    t = ffkit.LocalTrainer(net, schedule="constant")
    data = DataLoader(TensorDataset(*batch(8)), batch_size=4)
    t.fit(data, epochs=1, out_dir=tmp_path, log=None)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        net.layers[0].conv.weight.fill_(float("inf"))  # as a step that went wrong unnoticed would leave it
    with pytest.raises(ffkit.DivergenceError) as excinfo:
        t.fit(data, epochs=2, out_dir=tmp_path, log=None)
    raised_by_ffkit(excinfo, "The state before this step is not finite either (layers.0.conv.weight), so it was not "
                    f"saved: resume from the last checkpoint in {tmp_path}")
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved


def test_nonfinite_scores_count_as_wrong_in_every_accuracy():
    from ffkit.evaluation import make_report

    labels = torch.arange(6) % 3
    scores = torch.zeros(2, 6, 3)
    scores[:, torch.arange(6), labels] = float("nan")  # argmax would pick the true class every time
    head = scores[0].clone()
    rep = make_report(scores, labels, (0, 1), head_scores=head, prediction_range=(0, 1))
    assert rep.per_layer == [0.0, 0.0] and rep.all_layers == 0.0 and rep.prediction == 0.0 and rep.head == 0.0
    assert rep.sip is not None and rep.sip == 0.0


@pytest.mark.parametrize(("flags", "message"), [
    (["--final-lr", "nan"], "--final-lr must be a finite number, got nan"),
    (["--final-lr", "-0.1"], "--final-lr must be a number >= 0, got -0.1"),
    (["--weight-decay", "-1"], "--weight-decay must be a number >= 0, got -1.0"),
    (["--head-weight-decay", "inf"], "--head-weight-decay must be a finite number, got inf"),
], ids=["final-lr-nan", "final-lr-negative", "weight-decay-negative", "head-weight-decay-inf"])
def test_cli_numeric_flags_out_of_range(tmp_path, capsys, flags, message):
    cli_error(["train", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), *SMALL, *flags], capsys,
              message)


@pytest.mark.parametrize("flag", ["--lr", "--head-lr"])
def test_cli_learning_rate_that_is_not_a_finite_positive_number(tmp_path, capsys, flag):
    for text in ("nan", "inf", "0"):
        with pytest.raises(SystemExit) as excinfo:
            main(["train", "--out", str(tmp_path / "run"), *SMALL, flag, text])
        assert excinfo.value.code == 2
        assert f"argument {flag}: expected a finite positive float, got '{text}'" in capsys.readouterr().err


def test_trainer_learning_rates_out_of_range():
    with pytest.raises(ValueError) as excinfo:
        ffkit.LocalTrainer(tiny(), final_lr=float("nan"), schedule="constant")
    raised_by_ffkit(excinfo, "final_lr must be a finite number, got nan")
    with pytest.raises(ValueError) as excinfo:
        ffkit.LocalTrainer(tiny(), weight_decay=-1.0, schedule="constant")
    raised_by_ffkit(excinfo, "weight_decay must be a number >= 0, got -1.0")
    headed = create_model("dtg_mlp", width_multiplier=0.1)
    for kw, message in (({"head_weight_decay": float("inf")}, "head_weight_decay must be a finite number, got inf"),
                        ({"head_lr": 0.0}, "head_lr must be a number > 0, got 0.0")):
        with pytest.raises(ValueError) as excinfo:
            ffkit.LocalTrainer(headed, schedule="constant", **kw)
        raised_by_ffkit(excinfo, message)
    for kw in ({"head_lr": 0.1}, {"head_weight_decay": 0.0}):  # before: accepted and ignored
        with pytest.raises(ValueError) as excinfo:
            ffkit.LocalTrainer(tiny(), schedule="constant", **kw)
        raised_by_ffkit(excinfo, f"{next(iter(kw))} configures a classifier head, but this network has none")


def test_cli_test_given_a_pipeline_stage_file(tmp_path, capsys):
    torch.manual_seed(0)
    trainer = ffkit.PipelineTrainer(tiny(), stages=2, balance="layers", schedule="constant")
    trainer.fit(DataLoader(TensorDataset(*batch(8)), batch_size=4), epochs=1, out_dir=tmp_path, log=None)
    stage = tmp_path / "checkpoint.stage1-of-2.pt"
    cli_error(["test", "--checkpoint", str(stage), "--data-dir", str(tmp_path / "data")], capsys,
              f"{stage} is the file of pipeline stage 1 (its layers only, for resuming that stage); test the whole "
              f"network's checkpoint the run wrote beside it: {tmp_path / 'checkpoint.pt'}")


@pytest.mark.parametrize("value", ["0.001", "1e12"])
def test_cli_pipeline_timeout_that_torch_distributed_cannot_honour(tmp_path, capsys, value):
    cli_error(["train", "--pipeline", "--pipeline-timeout", value, "--out", str(tmp_path / "run"), "--data-dir",
               str(tmp_path / "data"), *SMALL], capsys,
              f"--pipeline-timeout must be a number in [1, 3.1536e+07] (seconds), got {float(value)}")
    from ffkit.train.pipeline import init_distributed

    with pytest.raises(ValueError) as excinfo:
        init_distributed(timeout=0.5)
    raised_by_ffkit(excinfo, "timeout must be a number in [1, 3.1536e+07] (seconds), got 0.5")


def test_resume_with_another_stage_count_names_the_launcher_flag(tmp_path):
    from ffkit.train.pipelining.files import stage_files

    torch.manual_seed(0)
    first = ffkit.PipelineTrainer(tiny(), stages=2, balance="layers", schedule="constant")
    first.fit(DataLoader(TensorDataset(*batch(8)), batch_size=4), epochs=1, out_dir=tmp_path, log=None)
    again = ffkit.PipelineTrainer(tiny(), stages=3, balance="layers", schedule="constant")
    with pytest.raises(FileNotFoundError) as excinfo:
        again.resume(tmp_path / "checkpoint.pt")
    raised_by_ffkit(excinfo, f"{tmp_path} holds the stage checkpoints of a run with 2 stages "
                    "(checkpoint.stage<k>-of-2.pt), and this run has 3: resume with --stages 2")
    with pytest.raises(FileNotFoundError) as excinfo:  # what a torchrun job of 3 processes is told
        stage_files(tmp_path / "checkpoint.pt", 0, 3, "torchrun --nproc-per-node {n}")
    raised_by_ffkit(excinfo, "and this run has 3: resume with torchrun --nproc-per-node 2, the count the run was "
                    "checkpointed with")


# -- the Python API, as careful as the command line --------------------------------------------------------------------
def test_empty_or_meta_batch():
    t = trainer_for(tiny())
    with pytest.raises(ValueError) as excinfo:
        t.train_step(torch.rand(0, 1, 32, 32), torch.zeros(0, dtype=torch.long))
    raised_by_ffkit(excinfo, "input is an empty batch (0 samples)")
    with pytest.raises(ValueError) as excinfo:
        t.train_step(torch.empty(4, 1, 32, 32, device="meta"), torch.arange(4))
    raised_by_ffkit(excinfo, "input is on the meta device, which holds shapes but no data")


def test_network_layers_must_be_a_list_of_distinct_modules():
    layer = CWConv(1, 8, 4)
    for bad, kind in ((layer, "CWConv"), ((m for m in [layer]), "generator")):
        with pytest.raises(TypeError) as excinfo:
            ffkit.FFNetwork(bad, ffkit.ClassScoreObjective(), num_classes=4, in_channels=1)
        raised_by_ffkit(excinfo, f"layers must be a list of ffkit FFLayers, got {kind} (wrap a single layer in a "
                        "list; materialise a generator with list(...))")
    with pytest.raises(ValueError) as excinfo:
        ffkit.FFNetwork([CWConv(1, 8, 4), layer, layer], ffkit.ClassScoreObjective(), num_classes=4, in_channels=1)
    raised_by_ffkit(excinfo, "layers[2] is the same module as layers[1]; every layer must be its own module")


def test_input_that_requires_grad_trains_without_a_gradient_for_it():
    x, y = batch()
    x.requires_grad_(True)
    trainer_for(tiny()).train_step(x, y)
    assert x.grad is None


def test_trainer_stepped_past_its_total_steps_keeps_the_final_lr():
    torch.manual_seed(0)
    t = ffkit.LocalTrainer(tiny(), lr=0.01, final_lr=0.001, total_steps=2)
    for _ in range(2):
        t.train_step(*batch())
    with pytest.warns(UserWarning, match=r"LocalTrainer is trained past its total_steps=2: its learning-rate "
                      r"schedule has ended, so the lr stays at its final value"):
        for _ in range(3):
            t.train_step(*batch())
    assert all(o.param_groups[0]["lr"] == pytest.approx(0.001) for o in t.optimizers if o is not None)


# -- unknown names -----------------------------------------------------------------------------------------------------
def test_unknown_model_name():
    with pytest.raises(ValueError) as excinfo:
        create_model("resnet17")
    raised_by_ffkit(excinfo, "unknown model 'resnet17' (did you mean 'deeperforward_resnet17'",
                    "available models (described by `ffkit models`): bp_resnet18")


def test_unknown_recipe_name():
    with pytest.raises(ValueError) as excinfo:
        ffkit.get_recipe("deeperforward-tiny")
    raised_by_ffkit(excinfo, "unknown recipe 'deeperforward-tiny' (did you mean 'deeperforward-tinycnn-",
                    "available recipes (described by `ffkit recipes`)")


@pytest.mark.parametrize("call", ["load_dataset", "dataset_info"])
def test_unknown_dataset_name(tmp_path, call):
    with pytest.raises(ValueError) as excinfo:
        load_dataset("imagenet", "train", tmp_path) if call == "load_dataset" else dataset_info("imagenet")
    raised_by_ffkit(excinfo, "unknown dataset 'imagenet'; valid names are mnist, fashion-mnist, cifar10")


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        load_dataset("mnist", "validation", tmp_path)
    raised_by_ffkit(excinfo, "unknown split 'validation'; valid splits are train, holdout, train_full, test")


def test_unknown_model_argument():
    with pytest.raises(TypeError) as excinfo:
        create_model("deeperforward_tinycnn", widht=2)
    raised_by_ffkit(excinfo, "got an unexpected keyword argument 'widht'", "valid arguments: num_classes")


@pytest.mark.parametrize("flag, value, expected", [
    ("--model", "resnet9000", "unknown model 'resnet9000'; available models"),
    ("--recipe", "deeperforward-tiny", "unknown recipe 'deeperforward-tiny' (did you mean"),
    ("--dataset", "imagenet", "unknown dataset 'imagenet'; valid names are"),
], ids=["model", "recipe", "dataset"])
def test_cli_unknown_name(tmp_path, capsys, flag, value, expected):
    cli_error(["train", flag, value, "--data-dir", str(tmp_path), *SMALL], capsys, expected)


# -- devices -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, expected", [
    ("gpu", "--device 'gpu' is not a valid device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("cpu:x", "--device 'cpu:x' is not a valid device"),
    ("", "--device '' is not a valid device"),
    ("mps", "--device 'mps': only 'cpu' and 'cuda' devices are supported"),
    ("cuda:7", "--device 'cuda:7': "),
], ids=["gpu", "cpu-x", "empty", "mps", "cuda-7"])
@pytest.mark.parametrize("command", ["train", "test"])
def test_cli_invalid_device(tmp_path, capsys, device, expected, command):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    argv = ["train", *SMALL] if command == "train" else ["test", "--checkpoint", str(tmp_path / "c.pt")]
    cli_error([*argv, f"--device={device}", "--data-dir", str(tmp_path)], capsys, expected)


@pytest.mark.parametrize("device, expected", [
    ("gpu", "device 'gpu' is not a valid device; expected 'cpu', 'cuda' or 'cuda:N'"),
    ("cuda:7", "device 'cuda:7': "),
    (3, "device must be a str or torch.device, got int"),
])
def test_check_device(device, expected):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    with pytest.raises((ValueError, TypeError)) as excinfo:
        check_device(device)
    raised_by_ffkit(excinfo, expected)


def test_trainer_invalid_device():
    with pytest.raises(ValueError) as excinfo:
        ffkit.LocalTrainer(tiny(), schedule="constant", device="gpu")
    raised_by_ffkit(excinfo, "device 'gpu' is not a valid device")


# -- conflicting or ignored CLI flags ----------------------------------------------------------------------------------
CONFLICTS = {
    "overlap-backprop": (["--trainer", "backprop", "--overlap"],
                         "--overlap is an option of the local trainer; it conflicts with --trainer backprop"),
    "recipe-overlap-backprop": (["--recipe", "trifecta-shallow-fmnist", "--trainer", "backprop"],
                                "--overlap (set by --recipe trifecta-shallow-fmnist; add --no-overlap)"),
    "checkpoint-every-pipeline": (["--checkpoint-every", "2", "--pipeline"],
                                  "--checkpoint-every conflicts with --pipeline"),
    "on-divergence-backprop": (["--on-divergence", "skip", "--trainer", "backprop"],
                               "--on-divergence skip is an option of the local trainer"),
    "on-divergence-pipeline": (["--on-divergence", "skip", "--pipeline"],
                               "--on-divergence skip conflicts with --pipeline: pipeline stages and ranks stop"),
    "pipeline-backprop": (["--pipeline", "--trainer", "backprop"],
                          "--pipeline trains with the local trainer; it conflicts with --trainer backprop"),
    "stages-without-pipeline": (["--stages", "3"],
                                "--stages only applies to --pipeline training; add --pipeline or drop --stages"),
    "variant-without-pipeline": (["--pipeline-variant", "federated", "--sync-every", "2"],
                                 "--pipeline-variant, --sync-every only apply to --pipeline training"),
    "variant-without-torchrun": (["--pipeline", "--pipeline-variant", "federated"],
                                 "--pipeline-variant federated runs one rank per process: launch with torchrun"),
    "baseline-local-trainer": (["--model", "bp_vgg8", "--trainer", "local"],
                               "bp_vgg8 is a single-head backprop baseline; it cannot be trained with the local"),
    "width-without-width": (["--model", "bp_resnet18", "--width-multiplier", "0.5"],
                            "--width-multiplier: model bp_resnet18 has no width_multiplier"),
    "head-lr-without-head": (["--head-lr", "0.1"],
                             "--head-lr configures a classifier head, but deeperforward_tinycnn has none"),
    "head-weight-decay-without-head": (["--head-weight-decay", "0.1"],
                                       "--head-weight-decay configures a classifier head, but deeperforward_tinycnn"),
    "final-lr-constant": (["--final-lr", "0.001", "--schedule", "constant"],
                          "--final-lr is the end of a decaying schedule; it conflicts with --schedule constant"),
    "recipe-kwargs-other-model": (["--recipe", "trifecta-shallow-fmnist", "--model", "deeperforward_tinycnn"],
                                  "recipe 'trifecta-shallow-fmnist' passes model_kwargs {'learned_label': True}"),
    "negative-workers": (["--workers", "-1"], "--workers must be >= 0, got -1"),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_cli_conflicting_flags(tmp_path, capsys, case):
    flags, expected = CONFLICTS[case]
    cli_error(["train", *flags, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *SMALL],
              capsys, expected)


def test_cli_flag_out_of_range(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["train", "--epochs", "0"])
    err = capsys.readouterr().err
    assert excinfo.value.code == 2 and "Traceback" not in err
    assert "ffkit train: error: argument --epochs: expected a positive int, got '0'" in err


# -- the page and this file agree --------------------------------------------------------------------------------------
def test_errors_page_lists_every_test():
    page = ERRORS_PAGE.read_text()
    lines = page.splitlines()

    def separator(line: str) -> bool:
        return line.startswith("|") and set(line) <= set("|-: ")

    # every table's header row (the one above its |---| line) names no test
    rows = [line for k, line in enumerate(lines) if line.startswith("|") and not separator(line)
            and not (k + 1 < len(lines) and separator(lines[k + 1]))]
    named = set()
    for row in rows:
        found = re.findall(r"`(test_\w+)", row.rsplit("|", 2)[-2])
        assert found, f"a row of docs/errors.md names no test: {row}"
        named.update(found)
    defined = set(re.findall(r"^def (test_\w+)", Path(__file__).read_text(), flags=re.M))
    anywhere = {name for f in Path(__file__).parent.glob("test_*.py")  # a few rows name engine tests (kill, resume)
                for name in re.findall(r"^def (test_\w+)", f.read_text(), flags=re.M)}
    assert named - anywhere == set(), "docs/errors.md names tests that do not exist"
    assert defined - named - {"test_errors_page_lists_every_test"} == set(), "tests missing from docs/errors.md"
    for case in CONFLICTS:  # each parametrised conflict has its own row
        assert f"test_cli_conflicting_flags[{case}]" in page, case
