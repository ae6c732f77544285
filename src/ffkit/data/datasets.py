"""Image classification datasets for ffkit, loaded with torchvision.

Every dataset yields ``(x, y)`` pairs where ``x`` is a ``float32`` tensor of
shape ``[C, 32, 32]`` with values in ``[0, 1]`` and ``y`` is a Python ``int``.
MNIST and Fashion-MNIST (``C = 1``) are resized from 28x28 to 32x32 (bilinear,
on the float image, as DeeperForward's released loaders do); CIFAR-10,
CIFAR-100 and SVHN (``C = 3``) are natively 32x32. By default no normalisation
is applied; ``normalize="standard"`` standardises each channel with the
dataset's usual mean and standard deviation (:attr:`DatasetInfo.mean`,
:attr:`DatasetInfo.std`), as the DeeperForward and The Trifecta releases do.

Each dataset is a registered :class:`DatasetSpec`: its facts (:class:`DatasetInfo`), the files torchvision reads and
where they go, how to get them, and the torchvision class that opens them. :func:`register_dataset` adds one; every
function here then serves it by name.

Nothing is ever downloaded. Missing files raise :class:`DatasetNotFoundError`
with the exact directory and file names torchvision expects and where to get
them. Fashion-MNIST is found automatically when the Debian/Ubuntu package
``dataset-fashion-mnist`` is installed (see :func:`prepare_fashion_mnist`).

Splits:
    ``"train_full"`` is the official training set and ``"test"`` the official
    test set. ``"train"`` and ``"holdout"`` partition ``"train_full"`` with a
    seeded random permutation; the holdout part is used for layer selection.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets as tv_datasets
from torchvision.datasets import VisionDataset
from torchvision.transforms import v2

from .._validation import check_int

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "NORMALIZATIONS",
    "DEBIAN_FASHION_MNIST_DIR",
    "SPLITS",
    "DatasetInfo",
    "DatasetSpec",
    "DatasetNotFoundError",
    "dataset_info",
    "dataset_spec",
    "list_datasets",
    "register_dataset",
    "dataset_tensors",
    "default_data_dir",
    "load_dataset",
    "prepare_fashion_mnist",
]

IMAGE_SIZE = 32

SPLITS: tuple[str, ...] = ("train", "holdout", "train_full", "test")
"""Valid ``split`` values for :func:`load_dataset`."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian/Ubuntu's ``dataset-fashion-mnist`` installs the gzipped IDX files."""

# File names of the un-gzipped IDX files torchvision's MNIST/FashionMNIST read
# from ``<root>/<ClassName>/raw/``.
_IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
        name: Canonical dataset name (one of :data:`DATASETS`).
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        in_channels: Image channels ``C`` of a sample ``[C, 32, 32]``.
        image_size: Side length of the (square) images ffkit yields by default, 32 (``load_dataset(...,
            image_size=28)`` keeps MNIST and Fashion-MNIST at their stored 28x28).
        train_size: Size of the full official training set (``"train_full"``).
        holdout_size: Size of the ``"holdout"`` split carved out of the
            official training set; ``"train"`` has ``train_size - holdout_size``
            samples.
        mean, std: per-channel mean and standard deviation of the training
            images in ``[0, 1]`` (the constants the authors' releases use),
            applied by ``load_dataset(..., normalize="standard")``.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int
    holdout_size: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    """Everything ffkit needs to offer a dataset (see :func:`register_dataset`).

    Attributes:
        info: its facts (name, classes, channels, sizes, mean and standard deviation).
        directory: the folder under the data directory where torchvision reads the files (``""``: the data
            directory itself).
        files: the files torchvision needs there (any split).
        how_to_get: ``how_to_get(root) -> str``: where to get the files and how to put them in place (shown, with
            the expected paths, when they are missing).
        open: ``open(train=bool, root=..., transform=..., target_transform=..., download=False)``: the torchvision
            dataset of the training or the test split.
        stored_size: the side of the stored images (28 for MNIST and Fashion-MNIST; ffkit yields ``IMAGE_SIZE`` by
            default and resizes).
        aliases: other names it answers to (compared ignoring case, ``-``, ``_``, ``.`` and spaces).
        idx_files: the files are MNIST-style IDX files, whose headers are checked against their sizes before
            torchvision reads them (torchvision checks nothing for them).
        prepare: ``prepare(root)``, run before the files are opened (Fashion-MNIST: unpack the Debian package's
            copy; SVHN: check that scipy is installed).
    """

    info: DatasetInfo
    directory: str
    files: tuple[str, ...]
    how_to_get: Callable[[Path], str]
    open: Callable[..., VisionDataset]
    stored_size: int = IMAGE_SIZE
    aliases: tuple[str, ...] = ()
    idx_files: bool = False
    prepare: Callable[[Path], None] | None = None


_SPECS: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}  # alias key -> canonical name


def _alias_key(name: str) -> str:
    return re.sub(r"[-_.\s]", "", name.lower())


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make a dataset known to :func:`load_dataset`, :func:`dataset_info` and ``ffkit train --dataset``.

    Raises:
        TypeError: ``spec`` is not a :class:`DatasetSpec`.
        ValueError: its name, or one of its aliases, is taken.
    """
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"spec must be a DatasetSpec, got {type(spec).__name__}")
    name = spec.info.name
    for given in (name, *spec.aliases):
        key = _alias_key(given)
        if key in _ALIASES:  # names are compared as aliases are: "Fashion_MNIST" is "fashion-mnist"
            raise ValueError(f"dataset {name!r}: the name {given!r} is taken (by {_ALIASES[key]!r})")
    _SPECS[name] = spec
    for given in (name, *spec.aliases):
        _ALIASES[_alias_key(given)] = name
    return spec


def list_datasets() -> list[str]:
    """Canonical names of the registered datasets, in registration order."""
    return list(_SPECS)


def _canonical_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(
            f"dataset name must be a str, got {type(name).__name__}: {name!r}"
        )
    key = _alias_key(name)
    if key not in _ALIASES:
        raise ValueError(
            f"unknown dataset {name!r}; valid names are {', '.join(_SPECS)} "
            "(case-insensitive; aliases like 'fmnist', 'cifar-10', 'cifar_100' work)"
        )
    return _ALIASES[key]


def dataset_spec(name: str) -> DatasetSpec:
    """The registered :class:`DatasetSpec` of ``name`` (canonical or an alias, as :func:`dataset_info`)."""
    return _SPECS[_canonical_name(name)]


def dataset_info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` of a dataset.

    Args:
        name: Dataset name, canonical or an alias, case-insensitive (e.g.
            ``"fmnist"``, ``"Fashion_MNIST"``, ``"CIFAR-10"``).

    Returns:
        The dataset's :class:`DatasetInfo`; ``info.name`` is canonical.

    Raises:
        TypeError: If ``name`` is not a ``str``.
        ValueError: If ``name`` is not a known dataset.
    """
    return dataset_spec(name).info


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are missing (or corrupted) under the data directory.

    The message names the dataset, the exact directory and file names that are
    expected, and how to obtain the files. Nothing is ever downloaded.
    """


def default_data_dir() -> Path:
    """Return the default data directory.

    Returns:
        ``$FFKIT_DATA_DIR`` if that variable is set and non-empty, else
        ``~/.cache/ffkit/data``.
    """
    env = os.environ.get("FFKIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ffkit" / "data"


def prepare_fashion_mnist(
    root: str | os.PathLike[str],
    source: str | os.PathLike[str] = DEBIAN_FASHION_MNIST_DIR,
) -> bool:
    """Put Fashion-MNIST where torchvision looks for it, from a local copy.

    torchvision's ``FashionMNIST(download=False)`` only accepts the four
    *un-gzipped* IDX files in ``<root>/FashionMNIST/raw/`` (all four, whichever
    split is loaded). If any is missing there and ``source`` holds all the
    missing ones as ``.gz`` files (as the Debian package
    ``dataset-fashion-mnist`` installs them), they are decompressed into place.
    Each file is written to a temporary file in the target directory and then
    renamed, so an interrupted run never leaves a truncated file behind.

    Args:
        root: ffkit data directory (the torchvision ``root``).
        source: Directory holding ``train-images-idx3-ubyte.gz`` etc.

    Returns:
        True if all four raw files are (now) in place, False otherwise (in
        which case nothing was written).

    Raises:
        gzip.BadGzipFile, EOFError: A ``.gz`` file in ``source`` is corrupt
            or truncated (nothing is left behind for it).
    """
    raw = Path(root) / "FashionMNIST" / "raw"
    if raw.exists() and not raw.is_dir() or any((raw / f).is_dir() for f in _IDX_FILES):
        return False  # a file where a directory belongs, or the reverse: the loader's error says which
    missing = [f for f in _IDX_FILES if not (raw / f).is_file()]
    if not missing:
        return True
    src = Path(source)
    if not all((src / f"{f}.gz").is_file() for f in missing):
        return False
    try:
        raw.mkdir(parents=True, exist_ok=True)
        probe_fd, probe = tempfile.mkstemp(dir=raw, prefix=".write-test.", suffix=".tmp")
        os.close(probe_fd)
        os.unlink(probe)
    except OSError as e:
        raise DatasetNotFoundError(
            f"Dataset 'fashion-mnist' cannot be unpacked into {raw}{os.sep}: {e.strerror or e}. The data directory "
            f"must be writable the first time (the four IDX files are decompressed there once): pass --data-dir DIR "
            f"(or set FFKIT_DATA_DIR) with a writable DIR, or put the four un-gzipped files there yourself"
        ) from None
    for f in missing:
        fd, tmp_name = tempfile.mkstemp(dir=raw, prefix=f".{f}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(src / f"{f}.gz", "rb") as inp:
                shutil.copyfileobj(inp, out, length=1 << 20)
            os.replace(tmp_name, raw / f)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return True


# ---------------------------------------------------------------------------
# Per-dataset loading


AUGMENTATIONS: tuple[str, ...] = ("crop-rotate", "crop-flip", "dtg")
"""Training-time augmentations: The Trifecta's random crop (padding 4) then random
rotation (15 degrees); the usual crop + flip; DTG-FF's crop + flip + colour jitter
+ Cutout."""

NORMALIZATIONS: tuple[str, ...] = ("standard",)
"""Input normalisations of :func:`load_dataset`: ``"standard"`` standardises each
channel with :attr:`DatasetInfo.mean` and :attr:`DatasetInfo.std`."""


def _augmentation(name: str, channels: int, size: int = IMAGE_SIZE) -> list[Callable]:
    crop = v2.RandomCrop(size, padding=4)
    if name == "crop-rotate":
        # The Trifecta's released training transform: RandomCrop(padding=4), then RandomRotation(15).
        return [crop, v2.RandomRotation(15)]
    if name == "crop-flip":
        return [crop, v2.RandomHorizontalFlip()]
    steps: list[Callable] = [crop, v2.RandomHorizontalFlip()]
    if channels == 3:
        steps.append(v2.ColorJitter(0.4, 0.4, 0.4))
    return steps


def _transform(
    resize: bool,
    augment: str | None = None,
    channels: int = 1,
    normalize: DatasetInfo | None = None,
    size: int = IMAGE_SIZE,
) -> v2.Compose:
    steps: list[Callable] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if resize:
        # On the float image, as DeeperForward's released loaders (ToTensor, Normalize, Resize): bilinear
        # upsampling takes convex combinations, so values stay in [0, 1], and none is rounded to 1/255.
        steps.append(v2.Resize((size, size), antialias=True))
    if augment is not None:
        steps += _augmentation(augment, channels, size)
    if normalize is not None:
        # After the augmentations, so a rotation's or crop's fill is black (0) before normalising, as in the
        # releases' PIL-image transforms.
        steps.append(v2.Normalize(list(normalize.mean), list(normalize.std)))
    steps.append(v2.ToPureTensor())
    if augment == "dtg":
        # Cutout: erase one 8x8 patch (DeVries & Taylor 2017), as RandomErasing with a fixed-size box.
        steps.append(v2.RandomErasing(p=1.0, scale=(1 / 16, 1 / 16), ratio=(1.0, 1.0), value=0.0))
    return v2.Compose(steps)


def _expected_files(name: str, root: Path) -> tuple[Path, list[str]]:
    """Directory and file names torchvision requires for ``name`` (any split)."""
    spec = _SPECS[name]
    return (root / spec.directory if spec.directory else root), list(spec.files)


# Bytes per element of each IDX element type (the third byte of the magic number).
_IDX_ITEM_SIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def _idx_problem(path: Path) -> str | None:
    """Why the IDX file at ``path`` cannot be read (its header is invalid or disagrees with its size), or None.

    torchvision reads MNIST-style files without any checksum, so a truncated or corrupt file otherwise surfaces as an
    ``AssertionError`` or a reshape error from inside it.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_ITEM_SIZE or not 1 <= magic[3] <= 4:
            return f"CORRUPT: not an IDX file (bad header), {size} bytes"
        dims_bytes = f.read(4 * magic[3])
    if len(dims_bytes) < 4 * magic[3]:
        return f"CORRUPT: truncated inside its header, {size} bytes"
    dims = [int.from_bytes(dims_bytes[i : i + 4], "big") for i in range(0, len(dims_bytes), 4)]
    expected = 4 + 4 * len(dims) + _IDX_ITEM_SIZE[magic[2]] * math.prod(dims)
    if size < expected:
        return f"CORRUPT: truncated, {size} bytes where its header says {expected}"
    if size > expected:
        return f"CORRUPT: {size} bytes where its header says {expected}"
    return None


def _idx_dims(path: Path) -> list[int]:
    """The dimensions in a (valid) IDX header."""
    with open(path, "rb") as f:
        magic = f.read(4)
        dims = f.read(4 * magic[3])
    return [int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4)]


def _file_status(name: str, path: Path) -> str:
    if path.is_dir():
        return "CORRUPT: a directory where a file is expected"
    if not path.is_file():
        return "MISSING"
    if _SPECS[name].idx_files:
        problem = _idx_problem(path)
        if problem is not None:
            return problem
        dims, side = _idx_dims(path), _SPECS[name].stored_size
        if "images" in path.name and dims[1:] != [side, side]:
            return (f"CORRUPT: holds images of shape {'x'.join(map(str, dims[1:])) or '(none)'}, where {name} "
                    f"has {side}x{side}")
        if "labels" in path.name and len(dims) != 1:
            return f"CORRUPT: holds a {len(dims)}-D array where labels are 1-D"
    return "ok"


def _statuses(name: str, directory: Path, files: list[str]) -> dict[str, str]:
    """Each expected file's status; for IDX datasets, an images file and its labels file must agree in count."""
    status = {f: _file_status(name, directory / f) for f in files}
    if _SPECS[name].idx_files:
        for f in files:
            partner = f.replace("images-idx3", "labels-idx1")
            if "images" not in f or partner not in status or status[f] != "ok" or status[partner] != "ok":
                continue
            n_images, n_labels = _idx_dims(directory / f)[0], _idx_dims(directory / partner)[0]
            if n_images != n_labels:
                status[f] = f"CORRUPT: {n_images} images, but {partner} holds {n_labels} labels"
                status[partner] = f"CORRUPT: {n_labels} labels, but {f} holds {n_images} images"
    return status


def _not_found(name: str, root: Path, cause: str) -> DatasetNotFoundError:
    directory, files = _expected_files(name, root)
    if directory.exists() and not directory.is_dir():
        return DatasetNotFoundError(
            f"Dataset {name!r} not found: {directory} is a file, where torchvision expects a directory holding "
            f"{', '.join(files)}. Move the file away, or pass --data-dir DIR (or set FFKIT_DATA_DIR) to another "
            f"data directory."
        )
    status = _statuses(name, directory, files)
    corrupt = [f for f, s in status.items() if s.startswith("CORRUPT")]
    if corrupt:
        header = f"Dataset {name!r} is corrupt: {', '.join(corrupt)} cannot be read. torchvision needs these files in "
    else:
        header = f"Dataset {name!r} not found. torchvision needs these files in "
    lines = [f"{header}{directory}{os.sep}"]
    lines += [f"  {directory / f}  ({s})" for f, s in status.items()]
    if corrupt:
        lines.append("Delete the corrupt file(s) and put intact copies in their place.")
    elif "MISSING" not in status.values():
        # torchvision also fails on MD5 mismatches (CIFAR, SVHN).
        lines.append(f"All are present but torchvision rejected them ({cause});")
        lines.append("they are probably corrupted or incompletely downloaded.")
    lines += [
        _SPECS[name].how_to_get(root),
        "Files are never downloaded automatically. To use another data directory,",
        "pass --data-dir DIR (or set FFKIT_DATA_DIR) with the layout above under DIR.",
    ]
    return DatasetNotFoundError("\n".join(lines))


def _torchvision_dataset(
    name: str,
    root: Path,
    train: bool,
    augment: str | None = None,
    normalize: str | None = None,
    image_size: int = IMAGE_SIZE,
) -> VisionDataset:
    """Build the torchvision dataset, turning its 'not found' errors into ours."""
    spec = _SPECS[name]
    if spec.prepare is not None:
        spec.prepare(root)
    info = spec.info
    transform = _transform(
        resize=image_size != spec.stored_size, augment=augment, channels=info.in_channels,
        normalize=info if normalize == "standard" else None, size=image_size,
    )
    directory, files = _expected_files(name, root)
    if directory.exists() and not directory.is_dir():
        raise _not_found(name, root, "not a directory")
    if spec.idx_files and directory.is_dir():
        if any(v.startswith("CORRUPT") for v in _statuses(name, directory, files).values()):
            raise _not_found(name, root, "corrupt IDX file")
    try:
        return spec.open(train=train, root=root, transform=transform, target_transform=int, download=False)
    except RuntimeError as err:
        # torchvision signals missing *and* MD5-mismatched files with a bare
        # RuntimeError ("Dataset not found or corrupted. You can use download=True").
        if "not found" not in str(err).lower():
            raise
        raise _not_found(name, root, str(err)) from None
    except (AssertionError, ValueError, EOFError) as err:
        # Files that pass the checks above but still do not parse (e.g. image and label counts that disagree).
        raise _not_found(name, root, f"{type(err).__name__}: {err}") from None


# ---------------------------------------------------------------------------
# The built-in datasets


def _unpack_debian_fashion_mnist(root: Path) -> None:
    # Read the module global at call time so it can be redirected (e.g. in tests).
    try:
        prepare_fashion_mnist(root, DEBIAN_FASHION_MNIST_DIR)
    except (EOFError, gzip.BadGzipFile) as err:
        raise DatasetNotFoundError(
            f"Dataset 'fashion-mnist': a .gz file in {DEBIAN_FASHION_MNIST_DIR} is corrupt ({err}), so it cannot "
            f"be unpacked into {Path(root) / 'FashionMNIST' / 'raw'}{os.sep}. Reinstall the package "
            "(`sudo apt-get install --reinstall dataset-fashion-mnist`) or put the four un-gzipped IDX files "
            "there yourself (pass --data-dir DIR, or set FFKIT_DATA_DIR)."
        ) from None


def _require_scipy(root: Path) -> None:
    try:
        # torchvision imports scipy only after hashing the whole .mat file.
        import scipy.io  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "SVHN needs scipy to read its .mat files: `pip install scipy` "
            "(in an ffkit checkout: `pip install -e \".[svhn]\"`)."
        ) from err


def _cifar_how_to_get(name: str) -> Callable[[Path], str]:
    archive = f"{'cifar-10' if name == 'cifar10' else 'cifar-100'}-python.tar.gz"
    return lambda root: (
        f"Download {archive} (python version) from\n"
        "https://www.cs.toronto.edu/~kriz/cifar.html and extract it with\n"
        f"`tar -xzf {archive} -C {root}`."
    )


# Means and standard deviations as in the DeeperForward and The Trifecta releases (CIFAR-10's std is the widely
# copied (0.2023, 0.1994, 0.2010)); CIFAR-100's are the usual ones of its training set. The torchvision classes are
# looked up when a dataset is opened.
register_dataset(DatasetSpec(
    DatasetInfo("mnist", 10, 1, IMAGE_SIZE, 60_000, 10_000, (0.1307,), (0.3081,)),
    directory="MNIST/raw", files=_IDX_FILES, stored_size=28, idx_files=True,
    how_to_get=lambda root: (
        "Download the four .gz files from http://yann.lecun.com/exdb/mnist/\n"
        "(mirror: https://ossci-datasets.s3.amazonaws.com/mnist/) and gunzip them\n"
        "into that directory."
    ),
    open=lambda train, **kw: tv_datasets.MNIST(train=train, **kw),
))
register_dataset(DatasetSpec(
    DatasetInfo("fashion-mnist", 10, 1, IMAGE_SIZE, 60_000, 10_000, (0.2860,), (0.3530,)),
    directory="FashionMNIST/raw", files=_IDX_FILES, stored_size=28, idx_files=True, aliases=("fmnist",),
    how_to_get=lambda root: (
        "Easiest: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu):\n"
        f"ffkit finds its files in {DEBIAN_FASHION_MNIST_DIR} automatically\n"
        "and unpacks them into the directory above. "
        "Or download the four .gz files from\n"
        "https://github.com/zalandoresearch/fashion-mnist and gunzip them there."
    ),
    open=lambda train, **kw: tv_datasets.FashionMNIST(train=train, **kw),
    prepare=_unpack_debian_fashion_mnist,
))
register_dataset(DatasetSpec(
    DatasetInfo("cifar10", 10, 3, IMAGE_SIZE, 50_000, 5_000, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    directory="cifar-10-batches-py", files=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
    how_to_get=_cifar_how_to_get("cifar10"),
    open=lambda train, **kw: tv_datasets.CIFAR10(train=train, **kw),
))
register_dataset(DatasetSpec(
    DatasetInfo("cifar100", 100, 3, IMAGE_SIZE, 50_000, 5_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    directory="cifar-100-python", files=("train", "test", "meta"),
    how_to_get=_cifar_how_to_get("cifar100"),
    open=lambda train, **kw: tv_datasets.CIFAR100(train=train, **kw),
))
register_dataset(DatasetSpec(
    DatasetInfo("svhn", 10, 3, IMAGE_SIZE, 73_257, 7_326, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    directory="", files=("train_32x32.mat", "test_32x32.mat"),
    how_to_get=lambda root: (
        "Download train_32x32.mat and test_32x32.mat (format 2: cropped digits) from\n"
        "http://ufldl.stanford.edu/housenumbers/ into that directory."
    ),
    open=lambda train, **kw: tv_datasets.SVHN(split="train" if train else "test", **kw),
    prepare=_require_scipy,
))

DATASETS: tuple[str, ...] = tuple(_SPECS)
"""Canonical names of the built-in datasets (:func:`list_datasets` also lists any registered later)."""


def _holdout_count(info: DatasetInfo, n: int) -> int:
    # For the real datasets n == info.train_size and n // 5 >= info.holdout_size,
    # so this is exactly info.holdout_size; the cap only matters for smaller
    # (e.g. synthetic test) copies, which still get a proper 80/20-ish split.
    return min(info.holdout_size, n // 5)


def load_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    *,
    holdout_seed: int = 0,
    augment: str | None = None,
    normalize: str | None = None,
    image_size: int = IMAGE_SIZE,
) -> Dataset:
    """Load a split of a dataset from local files (never downloads).

    Samples are ``(x, y)`` with ``x`` a ``float32`` tensor ``[C, S, S]`` (``S = image_size``, 32 by default) in
    ``[0, 1]`` (standardised per channel with ``normalize="standard"``;
    ``C`` = ``dataset_info(name).in_channels``) and ``y`` an ``int``
    in ``[0, num_classes)``. For SVHN the digit 0 (stored as label 10) is
    label 0.

    The ``"train"``/``"holdout"`` partition of the official training set of
    size ``n`` is a random permutation from
    ``torch.Generator().manual_seed(holdout_seed)``: ``"train"`` is its first
    ``n - h`` indices, ``"holdout"`` the last ``h``, with
    ``h = min(info.holdout_size, n // 5)``. For the real datasets this is
    exactly ``info.holdout_size``; the cap only applies to smaller copies
    (e.g. synthetic data in tests).

    Args:
        name: Dataset name or alias (see :func:`dataset_info`).
        split: One of ``"train"``, ``"holdout"``, ``"train_full"``, ``"test"``.
        root: Data directory; ``None`` means :func:`default_data_dir`.
        holdout_seed: Seed of the train/holdout permutation.
        augment: Training-time augmentation, one of :data:`AUGMENTATIONS`
            (only for the ``"train"`` and ``"train_full"`` splits).
        normalize: ``None`` (values in ``[0, 1]``) or ``"standard"``: subtract
            :attr:`DatasetInfo.mean` and divide by :attr:`DatasetInfo.std`,
            per channel.
        image_size: side length of the images yielded. Images stored at
            another size (MNIST and Fashion-MNIST: 28) are resized
            bilinearly on the float image; ``28`` keeps those as stored.

    Returns:
        The torchvision dataset (``"train_full"``, ``"test"``) or a
        :class:`torch.utils.data.Subset` of it (``"train"``, ``"holdout"``).

    Raises:
        ValueError: Unknown dataset name or split.
        TypeError: ``name`` is not a ``str``.
        DatasetNotFoundError: The dataset files are missing or corrupted.
        ImportError: SVHN was requested but scipy is not installed.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(
            f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}"
        )
    if augment is not None and augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; expected None or one of {', '.join(AUGMENTATIONS)}")
    if augment is not None and split in ("holdout", "test"):
        raise ValueError(f"augment is for training splits only, not split={split!r}")
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; expected None or one of {', '.join(NORMALIZATIONS)}")
    check_int(image_size, "image_size", minimum=8, what="the side of the square images")
    root_path = Path(root).expanduser() if root is not None else default_data_dir()

    dataset = _torchvision_dataset(
        info.name, root_path, train=split != "test", augment=augment, normalize=normalize, image_size=image_size
    )
    if split in ("train_full", "test"):
        return dataset

    n = len(dataset)
    n_holdout = _holdout_count(info, n)
    perm = torch.randperm(
        n, generator=torch.Generator().manual_seed(holdout_seed)
    ).tolist()
    indices = perm[: n - n_holdout] if split == "train" else perm[n - n_holdout :]
    return Subset(dataset, indices)


def dataset_tensors(
    dataset: Dataset, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialise a dataset (or its first ``limit`` samples) as two tensors.

    Meant for holding small datasets in memory; loads in the current process
    with large batches.

    Args:
        dataset: A map-style dataset of ``(x [C, H, W], y int)`` samples, such
            as one returned by :func:`load_dataset`.
        limit: If given, only the first ``limit`` samples are used.

    Returns:
        ``(x, y)`` with ``x`` ``float32`` of shape ``[N, C, H, W]`` and ``y``
        ``int64`` of shape ``[N]``, ``N = min(len(dataset), limit)``.

    Raises:
        ValueError: If ``limit`` is negative or no samples would be loaded.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        n = min(n, limit)
        dataset = Subset(dataset, range(n))
    if n == 0:
        raise ValueError("cannot materialise an empty dataset")
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=4096, shuffle=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs).to(torch.float32), torch.cat(ys).to(torch.int64)
