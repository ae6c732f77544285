"""Tests for ffkit.data.datasets.

The datasets cannot be downloaded here, so most tests write a handful of
samples in each dataset's real on-disk format (IDX files, CIFAR pickles, SVHN
.mat files) and load them through the real torchvision classes.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from torchvision.transforms.v2 import functional as F

from ffkit.data import datasets as ds
from ffkit.data.datasets import (
    DATASETS,
    DatasetInfo,
    DatasetNotFoundError,
    dataset_info,
    dataset_tensors,
    default_data_dir,
    load_dataset,
    prepare_fashion_mnist,
)

N_TRAIN, N_TEST = 12, 6
rng = np.random.default_rng(1234)


# ---------------------------------------------------------------------------
# Writers for the real on-disk formats


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 0x0000 0x08 ndim, big-endian dims)."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.tobytes())


def fake_images(n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Random uint8 images; image 0 is all 255 and image 1 all 0."""
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images[0] = 255
    images[1] = 0
    return images


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_mnist_like(raw: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw.mkdir(parents=True)
    data = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images = fake_images(n, (28, 28))
        labels = (np.arange(n) * 7 % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        data["train" if prefix == "train" else "test"] = (images, labels)
    return data


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """HWC images -> CIFAR rows of 3072 bytes (all R, then all G, then all B)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj))


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    images = fake_images(N_TRAIN, (32, 32, 3))
    labels = [int(v) for v in np.arange(N_TRAIN) * 3 % 10]
    chunks = np.array_split(
        np.arange(N_TRAIN), 5
    )  # torchvision concatenates data_batch_1..5
    for i, idx in enumerate(chunks, start=1):
        write_pickle(
            base / f"data_batch_{i}",
            {
                "batch_label": f"batch {i}",
                "data": cifar_rows(images[idx]),
                "labels": [labels[j] for j in idx],
            },
        )
    test_images = fake_images(N_TEST, (32, 32, 3))
    test_labels = [int(v) for v in np.arange(N_TEST) % 10]
    write_pickle(
        base / "test_batch", {"data": cifar_rows(test_images), "labels": test_labels}
    )
    write_pickle(
        base / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]}
    )
    # torchvision verifies the MD5 of every file against the official archive.
    # Point its checksum table at our files so the real check still runs.
    monkeypatch.setattr(
        tvd.CIFAR10,
        "train_list",
        [[f"data_batch_{i}", md5(base / f"data_batch_{i}")] for i in range(1, 6)],
    )
    monkeypatch.setattr(
        tvd.CIFAR10, "test_list", [["test_batch", md5(base / "test_batch")]]
    )
    monkeypatch.setattr(
        tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": md5(base / "batches.meta")}
    )
    return {
        "train": (images, np.array(labels)),
        "test": (test_images, np.array(test_labels)),
    }


def write_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    data = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images = fake_images(n, (32, 32, 3))
        fine = [int(v) for v in np.arange(n) * 37 % 100]
        write_pickle(
            base / split,
            {
                "data": cifar_rows(images),
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
            },
        )
        data[split] = (images, np.array(fine))
    write_pickle(
        base / "meta",
        {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", md5(base / "train")]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", md5(base / "test")]])
    monkeypatch.setattr(
        tvd.CIFAR100, "meta", {**tvd.CIFAR100.meta, "md5": md5(base / "meta")}
    )
    return data


def write_svhn(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    sio = pytest.importorskip("scipy.io")
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    split_list = {k: list(v) for k, v in tvd.SVHN.split_list.items()}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images = fake_images(n, (32, 32, 3))
        raw_labels = (np.arange(n) % 10 + 1).astype(
            np.uint8
        )  # SVHN stores digit 0 as 10
        path = root / f"{split}_32x32.mat"
        sio.savemat(
            path, {"X": images.transpose(1, 2, 3, 0), "y": raw_labels[:, None]}
        )  # X is [H, W, C, N]
        split_list[split][2] = md5(path)
        data[split] = (images, raw_labels.astype(np.int64) % 10)
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    return data


def write_fashion(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    return write_mnist_like(root / "FashionMNIST" / "raw")


def write_mnist(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    return write_mnist_like(root / "MNIST" / "raw")


WRITERS: dict[str, Callable[[Path, pytest.MonkeyPatch], dict]] = {
    "mnist": write_mnist,
    "fashion-mnist": write_fashion,
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "svhn": write_svhn,
}


def expected_x(name: str, image: np.ndarray) -> torch.Tensor:
    """Expected ffkit sample for a stored uint8 image (HW for MNIST-like, else HWC): MNIST-like images are scaled to
    [0, 1], then resized (bilinear, on the float image, as DeeperForward's released loaders)."""
    if image.ndim == 2:
        t = torch.from_numpy(image)[None].float() / 255
        return F.resize(t, [32, 32], antialias=True)
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


@pytest.fixture(autouse=True)
def no_debian_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the installed Debian Fashion-MNIST out of tests that do not ask for it."""
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")


# ---------------------------------------------------------------------------
# Loading fake datasets


@pytest.mark.parametrize("name", DATASETS)
def test_load_fake_dataset(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = WRITERS[name](tmp_path, monkeypatch)
    info = dataset_info(name)
    for split in ("train_full", "test"):
        images, labels = data["train" if split == "train_full" else "test"]
        dataset = load_dataset(name, split, tmp_path)
        assert len(dataset) == len(images)
        for i in range(len(dataset)):
            x, y = dataset[i]
            assert type(x) is torch.Tensor
            assert x.shape == (info.in_channels, 32, 32)
            assert x.dtype == torch.float32
            assert 0.0 <= x.min() and x.max() <= 1.0
            assert type(y) is int and y == labels[i]
            torch.testing.assert_close(
                x, expected_x(name, images[i]), atol=1e-6, rtol=0
            )
        # Constant images survive the resize exactly.
        assert torch.equal(dataset[0][0], torch.ones(info.in_channels, 32, 32))
        assert torch.equal(dataset[1][0], torch.zeros(info.in_channels, 32, 32))


@pytest.mark.parametrize("name", DATASETS)
def test_train_holdout_split(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    WRITERS[name](tmp_path, monkeypatch)
    full = load_dataset(name, "train_full", tmp_path)
    train = load_dataset(name, "train", tmp_path)
    holdout = load_dataset(name, "holdout", tmp_path)
    assert isinstance(train, torch.utils.data.Subset) and isinstance(
        holdout, torch.utils.data.Subset
    )
    n_holdout = min(dataset_info(name).holdout_size, N_TRAIN // 5)
    assert len(holdout) == n_holdout and len(train) == N_TRAIN - n_holdout
    assert set(train.indices).isdisjoint(holdout.indices)
    assert sorted([*train.indices, *holdout.indices]) == list(range(N_TRAIN))
    x, y = holdout[0]
    x_full, y_full = full[holdout.indices[0]]
    assert y == y_full and torch.equal(x, x_full)

    again = load_dataset(name, "holdout", tmp_path, holdout_seed=0)
    assert list(again.indices) == list(holdout.indices)
    other = load_dataset(name, "train", tmp_path, holdout_seed=1)
    assert list(other.indices) != list(train.indices)


def test_holdout_size_is_official_for_full_size_sets() -> None:
    for name in DATASETS:
        info = dataset_info(name)
        assert ds._holdout_count(info, info.train_size) == info.holdout_size


def test_dataset_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, labels = write_mnist(tmp_path, monkeypatch)["train"]
    dataset = load_dataset("mnist", "train_full", tmp_path)
    x, y = dataset_tensors(dataset)
    assert x.shape == (N_TRAIN, 1, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    torch.testing.assert_close(x[5], dataset[5][0])

    x, y = dataset_tensors(dataset, limit=5)
    assert x.shape == (5, 1, 32, 32) and y.tolist() == labels[:5].tolist()
    assert dataset_tensors(dataset, limit=100)[0].shape[0] == N_TRAIN
    with pytest.raises(ValueError):
        dataset_tensors(dataset, limit=0)


# ---------------------------------------------------------------------------
# Missing / corrupted files


@pytest.mark.parametrize(
    ("name", "subdir", "url"),
    [
        ("mnist", "MNIST/raw", "http://yann.lecun.com/exdb/mnist/"),
        (
            "fashion-mnist",
            "FashionMNIST/raw",
            "https://github.com/zalandoresearch/fashion-mnist",
        ),
        (
            "cifar10",
            "cifar-10-batches-py",
            "https://www.cs.toronto.edu/~kriz/cifar.html",
        ),
        ("cifar100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar.html"),
        ("svhn", "", "http://ufldl.stanford.edu/housenumbers/"),
    ],
)
@pytest.mark.parametrize("split", ["test", "train"])
def test_missing_files(
    name: str, subdir: str, url: str, split: str, tmp_path: Path
) -> None:
    if name == "svhn":
        pytest.importorskip("scipy")
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset(name, split, root)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, FileNotFoundError)
    assert repr(name) in message
    assert str(root / subdir) in message
    assert url in message and "--data-dir" in message
    assert "Traceback" not in message and excinfo.value.__cause__ is None
    expected_file = {
        "svhn": "test_32x32.mat",
        "cifar10": "test_batch",
        "cifar100": "meta",
    }.get(name, "t10k-images-idx3-ubyte")
    assert expected_file in message
    if name == "fashion-mnist":
        assert "sudo apt-get install dataset-fashion-mnist" in message


def test_missing_single_mnist_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist(tmp_path, monkeypatch)
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    # torchvision wants all four files even for the test split.
    with pytest.raises(
        DatasetNotFoundError, match=r"train-labels-idx1-ubyte  \(MISSING\)"
    ):
        load_dataset("mnist", "test", tmp_path)


def test_corrupted_cifar_reports_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path, monkeypatch)
    monkeypatch.undo()  # restore the official MD5s: our fake files no longer match
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        load_dataset("cifar10", "test", tmp_path)


def test_svhn_without_scipy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        load_dataset("svhn", "test", tmp_path)


# ---------------------------------------------------------------------------
# Fashion-MNIST from a local (Debian-style) copy


def test_prepare_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = write_mnist_like(tmp_path / "plain")
    source = tmp_path / "source"
    source.mkdir()
    for f in (tmp_path / "plain").iterdir():
        (source / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    root = tmp_path / "data"

    assert prepare_fashion_mnist(root, source) is True
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        p.name for p in (tmp_path / "plain").iterdir()
    )
    for f in (tmp_path / "plain").iterdir():
        assert (raw / f.name).read_bytes() == f.read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare_fashion_mnist decompressed again")

    monkeypatch.setattr(gzip, "open", fail)
    assert prepare_fashion_mnist(root, source) is True
    monkeypatch.undo()

    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", source)
    root2 = tmp_path / "data2"
    dataset = load_dataset("fmnist", "test", root2)  # found automatically
    assert len(dataset) == N_TEST and dataset[2][1] == fake["test"][1][2]


def test_prepare_fashion_mnist_without_source(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"partial"))
    root = tmp_path / "data"
    assert prepare_fashion_mnist(root, source) is False
    assert not (root / "FashionMNIST").exists()


def test_prepare_fashion_mnist_interrupted_leaves_no_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for f in ds._IDX_FILES:
        (source / f"{f}.gz").write_bytes(b"this is not gzip data")
    root = tmp_path / "data"
    with pytest.raises(gzip.BadGzipFile):
        prepare_fashion_mnist(root, source)
    assert list((root / "FashionMNIST" / "raw").iterdir()) == []


@pytest.fixture(scope="module")
def real_fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real-fmnist")
    assert prepare_fashion_mnist(root, Path("/usr/share/datasets/fashion-mnist"))
    return root


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist(
    real_fmnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        ds, "DEBIAN_FASHION_MNIST_DIR", Path("/usr/share/datasets/fashion-mnist")
    )
    test = load_dataset("fashion-mnist", "test", real_fmnist_root)
    assert len(test) == 10_000
    x, y = test[0]
    assert (
        x.shape == (1, 32, 32)
        and x.dtype == torch.float32
        and 0 <= x.min()
        and x.max() <= 1
    )
    assert y == 9  # the first Fashion-MNIST test image is an ankle boot
    xs, ys = dataset_tensors(test, limit=256)
    assert xs.shape == (256, 1, 32, 32) and set(ys.tolist()) <= set(range(10))

    sizes = {
        s: len(load_dataset("fmnist", s, real_fmnist_root))
        for s in ("train_full", "train", "holdout")
    }
    assert sizes == {"train_full": 60_000, "train": 50_000, "holdout": 10_000}
    holdout = load_dataset("fmnist", "holdout", real_fmnist_root)
    assert holdout[0][0].shape == (1, 32, 32) and holdout[-1][0].shape == (1, 32, 32)


# ---------------------------------------------------------------------------
# Names, infos and defaults


def test_dataset_info_values() -> None:
    assert dataset_info("mnist") == DatasetInfo("mnist", 10, 1, 32, 60_000, 10_000, (0.1307,), (0.3081,))
    assert dataset_info("fashion-mnist").holdout_size == 10_000
    assert (
        dataset_info("cifar10").holdout_size == 5_000
        and dataset_info("cifar10").in_channels == 3
    )
    assert (
        dataset_info("cifar100").num_classes == 100
        and dataset_info("cifar100").holdout_size == 5_000
    )
    assert (dataset_info("svhn").train_size, dataset_info("svhn").holdout_size) == (
        73_257,
        7_326,
    )
    assert all(
        dataset_info(n).name == n and dataset_info(n).image_size == 32 for n in DATASETS
    )
    with pytest.raises(AttributeError):
        dataset_info("mnist").num_classes = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("MNIST", "mnist"),
        ("fmnist", "fashion-mnist"),
        ("Fashion_MNIST", "fashion-mnist"),
        ("fashionmnist", "fashion-mnist"),
        ("cifar-10", "cifar10"),
        ("CIFAR_10", "cifar10"),
        ("cifar-100", "cifar100"),
        ("Cifar_100", "cifar100"),
        ("SVHN", "svhn"),
    ],
)
def test_dataset_aliases(alias: str, canonical: str) -> None:
    assert dataset_info(alias).name == canonical


def test_bad_names_and_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'imagenet'") as excinfo:
        dataset_info("imagenet")
    assert all(n in str(excinfo.value) for n in DATASETS)
    with pytest.raises(ValueError, match="'cifar1000'"):
        load_dataset("cifar1000", "train", tmp_path)
    with pytest.raises(ValueError, match="'validation'") as excinfo:
        load_dataset("mnist", "validation", tmp_path)
    assert all(
        s in str(excinfo.value) for s in ("train", "holdout", "train_full", "test")
    )
    with pytest.raises(TypeError):
        dataset_info(10)  # type: ignore[arg-type]


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FFKIT_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("FFKIT_DATA_DIR")
    assert default_data_dir() == Path.home() / ".cache" / "ffkit" / "data"


def test_load_uses_default_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_mnist(tmp_path, monkeypatch)
    monkeypatch.setenv("FFKIT_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist", "test")) == N_TEST


@pytest.mark.parametrize("name", DATASETS)
def test_standard_normalisation_uses_the_dataset_constants(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = WRITERS[name](tmp_path, monkeypatch)
    info = dataset_info(name)
    images, _ = data["test"]
    dataset = load_dataset(name, "test", tmp_path, normalize="standard")
    mean = torch.tensor(info.mean).view(-1, 1, 1)
    std = torch.tensor(info.std).view(-1, 1, 1)
    assert len(info.mean) == len(info.std) == info.in_channels
    for i in range(3):
        torch.testing.assert_close(dataset[i][0], (expected_x(name, images[i]) - mean) / std, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown normalize 'zscore'"):
        load_dataset(name, "test", tmp_path, normalize="zscore")


def test_release_normalisation_constants() -> None:
    # The constants of the DeeperForward and The Trifecta releases' loaders.
    assert dataset_info("fashion-mnist").mean == (0.2860,) and dataset_info("fashion-mnist").std == (0.3530,)
    assert dataset_info("mnist").mean == (0.1307,) and dataset_info("mnist").std == (0.3081,)
    assert dataset_info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_info("cifar10").std == (0.2023, 0.1994, 0.2010)
    assert dataset_info("svhn").mean == (0.4377, 0.4438, 0.4728)
    assert dataset_info("svhn").std == (0.1980, 0.2010, 0.1970)


@pytest.mark.parametrize("augment", ["crop-rotate", "crop-flip", "dtg"])
def test_augmentations_keep_shape_and_range_and_vary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, augment: str
) -> None:
    write_cifar10(tmp_path, monkeypatch)
    plain = load_dataset("cifar10", "train_full", tmp_path)
    aug = load_dataset("cifar10", "train_full", tmp_path, augment=augment)
    torch.manual_seed(0)
    draws = [aug[0][0] for _ in range(4)]
    for x in draws:
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # random: not every draw equals the un-augmented image, and the draws differ from each other
    assert any(not torch.equal(x, plain[0][0]) for x in draws)
    assert any(not torch.equal(draws[0], x) for x in draws[1:])
    assert aug[0][1] == plain[0][1]


def test_augment_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="unknown augment 'mixup'"):
        load_dataset("cifar10", "train", tmp_path, augment="mixup")
    with pytest.raises(ValueError, match="training splits only"):
        load_dataset("cifar10", "test", tmp_path, augment="crop-flip")


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_image_size_keeps_or_resizes_the_stored_images(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = WRITERS[name](tmp_path, monkeypatch)
    image = data["test"][0][2]
    x28, _ = load_dataset(name, "test", tmp_path, image_size=28)[2]
    if name == "fashion-mnist":  # as stored: the bytes / 255, nothing interpolated
        assert torch.allclose(x28, torch.from_numpy(image)[None].float() / 255, rtol=0, atol=1e-7)
    else:  # 32x32 stored: resized down, bilinearly on the float image
        stored = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        assert torch.allclose(x28, F.resize(stored, [28, 28], antialias=True))
    augmented, _ = load_dataset(name, "train_full", tmp_path, image_size=28, augment="crop-flip")[0]
    assert augmented.shape[-2:] == (28, 28)
    with pytest.raises(ValueError, match="image_size must be an int >= 8"):
        load_dataset(name, "test", tmp_path, image_size=4)


def test_in_memory_batches_equal_the_streamed_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data import DataLoader

    from ffkit.data import InMemory, WithIndex

    write_fashion(tmp_path, monkeypatch)
    ds = load_dataset("fashion-mnist", "train_full", tmp_path, normalize="standard")
    memory = InMemory(ds, with_index=True)
    assert len(memory) == len(ds)
    streamed = DataLoader(WithIndex(ds), batch_size=7, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(3))
    fetched = DataLoader(memory, batch_size=7, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(3),
                         collate_fn=InMemory.collate)
    for _ in range(2):  # the sampler draws a new order each epoch from the same generator on both sides
        pairs = list(zip(streamed, fetched, strict=True))
        assert pairs
        for (xs, ys, idx_s), (xf, yf, idx_f) in pairs:
            assert torch.equal(xs, xf) and torch.equal(ys, yf) and torch.equal(idx_s, idx_f)
            assert xf.dtype == torch.float32 and yf.dtype == torch.int64
    x, y, i = memory[3]
    assert torch.equal(x, ds[3][0]) and y == ds[3][1] and i == 3
    assert len(InMemory(ds)[0]) == 2


# ---------------------------------------------------------------------------
# DeviceDataset: the stored images on the training device, batches made there


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "svhn"])
@pytest.mark.parametrize(("size", "normalize"), [(32, "standard"), (None, None)])
def test_device_batches_equal_the_dataloader_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, size: int | None, normalize: str | None
) -> None:
    from torch.utils.data import DataLoader

    from ffkit.data import DeviceDataset, WithIndex, dataset_info

    if name == "svhn":
        pytest.importorskip("scipy")
    WRITERS[name](tmp_path, monkeypatch)
    info = dataset_info(name)
    stored = 28 if name == "fashion-mnist" else 32
    side = size or stored
    for split in ("train", "test"):  # "train" is a Subset (the held-out split removed), "test" the whole set
        streamed_ds = load_dataset(name, split, tmp_path, normalize=normalize, image_size=side)
        device_ds = DeviceDataset.from_dataset(
            streamed_ds, size=side, with_index=True,
            **({"mean": info.mean, "std": info.std} if normalize else {}),
        )
        assert len(device_ds) == len(streamed_ds)
        streamed = DataLoader(WithIndex(streamed_ds), batch_size=3, shuffle=True,
                              generator=torch.Generator().manual_seed(5))
        fetched = DataLoader(device_ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(5),
                             collate_fn=DeviceDataset.collate)
        for _ in range(2):  # a new order each epoch, the same on both sides
            pairs = list(zip(streamed, fetched, strict=True))
            assert pairs
            for (xs, ys, idx_s), (xd, yd, idx_d) in pairs:
                assert xd.shape == (len(ys), info.in_channels, side, side) and xd.dtype == torch.float32
                assert torch.equal(xd, xs)  # bit for bit: the same float operations in the same order
                assert torch.equal(yd, ys) and torch.equal(idx_d, idx_s)


def test_stored_images_and_bad_device_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ffkit.data import DeviceDataset, stored_images

    images, labels = write_fashion(tmp_path, monkeypatch)["train"]
    full = load_dataset("fashion-mnist", "train_full", tmp_path)
    x, y = stored_images(torch.utils.data.Subset(torch.utils.data.Subset(full, [5, 1, 3]), [2, 0]))
    assert x.dtype == torch.uint8 and x.shape == (2, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.from_numpy(images[[3, 5]])) and y.tolist() == labels[[3, 5]].tolist()
    with pytest.raises(TypeError, match="torchvision MNIST"):
        stored_images(torch.utils.data.TensorDataset(torch.zeros(2, 1, 4, 4)))
    good = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8 tensor"):
        DeviceDataset(good.float(), torch.zeros(4))
    with pytest.raises(ValueError, match="labels must be"):
        DeviceDataset(good, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="augment must be"):
        DeviceDataset(good, torch.zeros(4, dtype=torch.long), augment="mixup")
    with pytest.raises(ValueError, match="together"):
        DeviceDataset(good, torch.zeros(4, dtype=torch.long), mean=(0.5,))
    with pytest.raises(ValueError, match="one value per channel"):
        DeviceDataset(good, torch.zeros(4, dtype=torch.long), mean=(0.5, 0.5), std=(1.0, 1.0))
    one = DeviceDataset(good, torch.arange(4), size=16)
    x0, y0 = one[2]
    assert x0.shape == (1, 16, 16) and y0 == 2


def test_device_augmentations_match_torchvision_given_the_same_draws() -> None:
    from ffkit.data import device as dev

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=g)
    top, left = torch.tensor([0, 8, 3, 5, 1, 7]), torch.tensor([8, 0, 2, 6, 4, 0])
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    crops = dev.crop_at(padded, top, left, 32, 32)
    for b in range(6):  # RandomCrop(32, padding=4) at the same offsets
        assert torch.equal(crops[b], F.crop(F.pad(x[b], [4]), int(top[b]), int(left[b]), 32, 32))
    # Cutout = RandomErasing(p=1, scale=(1/16, 1/16), ratio=(1, 1), value=0): an 8x8 box of zeros
    torch.manual_seed(1)
    erased = dev.cutout(x, 8)
    for b in range(6):
        zero = erased[b].eq(0).all(dim=0)
        rows, cols = zero.nonzero(as_tuple=True)
        i, j = int(rows.min()), int(cols.min())
        assert zero.sum() == 64 and torch.equal(erased[b], F.erase(x[b], i, j, 8, 8, torch.zeros(1)))
    # ColorJitter's three adjustments in a given order per image
    factors = torch.tensor([[0.7, 1.3, 1.1, 0.6, 1.4, 1.0], [1.2, 0.8, 0.6, 1.4, 1.0, 0.9], [0.9, 1.1, 1.3, 0.7,
                                                                                              0.6, 1.2]])
    order = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1]])
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation]
    out = dev.jitter(x, factors, order)
    for b in range(6):
        expected = x[b]
        for op in order[b].tolist():
            expected = ops[op](expected, float(factors[op, b]))
        torch.testing.assert_close(out[b], expected, atol=1e-6, rtol=1e-5)
    # rotation: nearest neighbour, zero fill, counter-clockwise for positive angles
    angles = torch.tensor([90.0, -90.0, 15.0, -15.0, 7.5, 0.0])
    rotated = dev.rotate(x, angles)
    for b in range(6):
        expected = F.rotate(x[b], float(angles[b]), interpolation=F.InterpolationMode.NEAREST)
        agree = (rotated[b] == expected).float().mean()
        assert agree > (0.999 if b in (0, 1, 5) else 0.98), (float(angles[b]), float(agree))


def test_device_augmentations_draw_per_image() -> None:
    from ffkit.data import DeviceDataset

    torch.manual_seed(0)
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    plain = DeviceDataset(images, torch.zeros(512, dtype=torch.long))
    base = plain.__getitems__(list(range(512)))[0]
    for augment in ("crop-flip", "crop-rotate", "dtg"):
        ds = DeviceDataset(images, torch.zeros(512, dtype=torch.long), augment=augment, mean=(0.5,) * 3,
                           std=(0.25,) * 3)
        x, y = ds.__getitems__(list(range(512)))
        assert x.shape == (512, 3, 32, 32) and torch.isfinite(x).all()
        unchanged = ((x * 0.25 + 0.5) - base).abs().amax(dim=(1, 2, 3)) < 1e-5
        assert unchanged.float().mean() < 0.2  # almost every image is moved, flipped, rotated or jittered
        if augment == "dtg":  # one Cutout square per image: at least 64 pixels of exactly 0 in every image
            assert (x.eq(0).all(dim=1).sum(dim=(1, 2)) >= 64).all()
    # horizontal flips: about half of the images
    from ffkit.data.device import random_crop, random_hflip

    flipped = (random_hflip(base) != base).flatten(1).any(dim=1).float().mean()
    assert 0.4 < flipped < 0.6
    # crop offsets cover all 9 x 9 positions of a 4-pixel padding
    marker = torch.zeros(2000, 1, 32, 32)
    marker[:, :, 0, 0] = 1.0
    pos = random_crop(marker, padding=4).flatten(1).argmax(dim=1)
    assert len(set(pos.tolist())) >= 25  # positions of the marker inside the window (the rest cut it off)


# ---------------------------------------------------------------------------
# Datasets as registered specs


@pytest.fixture
def own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test leave with it."""
    monkeypatch.setattr(ds, "_SPECS", dict(ds._SPECS))
    monkeypatch.setattr(ds, "_ALIASES", dict(ds._ALIASES))


def kmnist_spec(name: str = "kmnist", aliases: tuple[str, ...] = ("kuzushiji-mnist",)) -> ds.DatasetSpec:
    return ds.DatasetSpec(
        ds.DatasetInfo(name, 10, 1, 32, N_TRAIN, N_TRAIN // 5),
        directory="KMNIST/raw", files=ds._IDX_FILES, stored_size=28, idx_files=True, aliases=aliases,
        how_to_get=lambda root: f"KMNIST: gunzip the four files into {root}/KMNIST/raw.",
        open=lambda train, **kw: tvd.KMNIST(train=train, **kw),
    )


def test_a_registered_dataset_loads_from_its_real_files(tmp_path: Path, own_registry) -> None:
    ds.register_dataset(kmnist_spec())
    data = write_mnist_like(tmp_path / "KMNIST" / "raw")
    assert ds.dataset_info("Kuzushiji_MNIST").name == "kmnist" and "kmnist" in ds.list_datasets()
    test = load_dataset("kmnist", "test", tmp_path, image_size=28)
    x, y = test[3]
    images, labels = data["test"]
    assert x.shape == (1, 28, 28) and y == int(labels[3])
    torch.testing.assert_close(x, torch.from_numpy(images[3]).float().div(255).unsqueeze(0), rtol=0, atol=1e-7)
    train = load_dataset("kmnist", "train", tmp_path)  # resized to 32 and split as the built-in datasets
    assert len(train) == N_TRAIN - N_TRAIN // 5 and train[0][0].shape == (1, 32, 32)


def test_a_registered_dataset_says_which_files_are_missing(tmp_path: Path, own_registry) -> None:
    ds.register_dataset(kmnist_spec())
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("kmnist", "test", tmp_path)
    text = str(excinfo.value)
    assert str(tmp_path / "KMNIST" / "raw") in text and "train-images-idx3-ubyte  (MISSING)" in text
    assert f"KMNIST: gunzip the four files into {tmp_path}/KMNIST/raw." in text


def test_register_dataset_refuses_a_taken_name_or_alias(own_registry) -> None:
    with pytest.raises(ValueError, match="'fashion-mnist' is taken"):
        ds.register_dataset(kmnist_spec(name="fashion-mnist", aliases=()))
    with pytest.raises(ValueError, match=r"the name 'CIFAR-10' is taken \(by 'cifar10'\)"):
        ds.register_dataset(kmnist_spec(aliases=("CIFAR-10",)))
    assert "kmnist" not in ds.list_datasets()  # a refused spec leaves nothing behind
    with pytest.raises(TypeError, match="spec must be a DatasetSpec"):
        ds.register_dataset(ds.dataset_info("mnist"))  # type: ignore[arg-type]


def test_the_built_in_specs_are_the_documented_datasets() -> None:
    assert ds.list_datasets() == list(DATASETS) == ["mnist", "fashion-mnist", "cifar10", "cifar100", "svhn"]
    assert [ds.dataset_spec(n).stored_size for n in DATASETS] == [28, 28, 32, 32, 32]
    assert ds.dataset_spec("fmnist").directory == "FashionMNIST/raw"
