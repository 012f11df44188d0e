"""Datasets in their official file formats, their download, and a device-resident loader.

Readers take the official files as they are and accept any number of rows:

- CIFAR-10 / CIFAR-100 (Krizhevsky 2009): python pickles in ``cifar-10-batches-py`` /
  ``cifar-100-python``, or the official ``.tar.gz`` read in place. Each batch is a dict with
  ``data`` (uint8, N x 3072, channel-major RGB rows) and ``labels`` (``fine_labels`` for 100).
- Fashion-MNIST (Xiao et al. 2017): IDX files (``.gz`` or raw): a big-endian header
  (magic 0x00000803 for images, 0x00000801 for labels, then the dimensions) and uint8 data.

torchvision is deliberately not used: its binary wheels are tied to CUDA builds of torch,
and these formats take a few lines each. ``DeviceLoader`` replaces ``DataLoader``: the whole
split lives on the training device as one uint8 tensor and each batch is gathered,
cropped and flipped there in one indexing op (airbench's recipe), with
no per-sample Python.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from normbench.errors import ConfigError, DataError

AUGMENTS = ("none", "flip", "crop_flip")
NORMALIZATIONS = ("meanstd", "mean")
CROP_PAD = 4  # pad-4 random crop, the standard CIFAR augmentation


@dataclass
class Dataset:
    """One dataset's two splits as uint8 images (N, C, H, W) and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str
    _stats: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the whole training split (also when a run trains on
        a ``data.train_size`` subset), in [0, 1] units, from float64 sums; computed once."""
        if self._stats is None:
            self._stats = self._channel_stats()
        return self._stats

    def _channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.train_x
        c = x.shape[1]
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        for chunk in x.split(8192):  # bounded memory on the full 50k-image split
            d = chunk.to(torch.float64).transpose(0, 1).reshape(c, -1)
            total += d.sum(1)
            total_sq += (d * d).sum(1)
        n = x.numel() // c
        mean = total / n
        std = (total_sq / n - mean * mean).clamp_min(0).sqrt()
        return (mean / 255).float(), (std / 255).clamp_min(1e-3).float()


# --- official files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    url: str
    md5: str


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's official files live and how to read them."""

    name: str
    folder: str  # the folder the official archive unpacks to (or holds the files)
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    downloads: tuple[Download, ...]
    reader: Callable[[DatasetSpec, Path], Dataset] = field(repr=False)

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


#: The only globals the official CIFAR pickles (and numpy arrays pickled by any numpy) name:
#: numpy's array reconstruction. A pickle may name any callable, and unpickling calls it, so
#: anything else is refused before it runs.
_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _Refused(Exception):
    pass


class _DataUnpickler(pickle.Unpickler):
    """Dicts, lists, strings, bytes, numbers and numpy arrays: what a CIFAR file holds."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def _unpickle(raw: bytes, where: str, key: str = "data") -> dict[str, Any]:
    try:
        obj = _DataUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except _Refused as err:
        raise DataError(f"{where} is not a CIFAR file: it asks to run {err} when read, which normbench refuses "
                        f"(data files are untrusted); delete it and download it again") from None
    except Exception as err:  # truncated files raise EOFError, UnpicklingError, ValueError...
        raise DataError(f"{where} is corrupt ({type(err).__name__}: {err}); delete it and download it again") from None
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where} is not a CIFAR file (no {key!r} key); delete it and download it again")
    return obj


def _cifar_arrays(batches: list[tuple[str, dict[str, Any]]], label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for where, b in batches:
        data = np.asarray(b["data"], dtype=np.uint8)
        labels = np.asarray(b.get(label_key, []), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{where}: 'data' has shape {data.shape}, expected (rows, 3072); the file is not CIFAR")
        if len(labels) != len(data):
            raise DataError(f"{where}: {len(data)} images but {len(labels)} labels in '{label_key}'; the file is corrupt")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{where}: labels outside 0..{num_classes - 1}; the file is corrupt")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar_location(spec: DatasetSpec, root: Path) -> Path | None:
    """The folder holding every official file, or the official archive, under ``root``.
    Only checks that files exist: opening a .tar.gz decompresses all of it, so it is read once,
    by ``_cifar_reader``."""
    for folder in (root / spec.folder, root):
        if all((folder / f).is_file() for f in spec.files):
            return folder
    archive = root / Path(spec.downloads[0].url).name
    return archive if archive.is_file() else None


def _read_bytes(path: Path) -> bytes:
    """A data file's bytes; one that exists but cannot be read is one line, not a traceback."""
    try:
        return path.read_bytes()
    except PermissionError as err:
        raise DataError(f"{path} cannot be read ({err.strerror}); give this user read permission, or set data.root "
                        f"to a copy it can read") from None


def _cifar_reader(spec: DatasetSpec, location: Path) -> Callable[[str], bytes]:
    """A function reading ``<folder>/<file>`` from the extracted folder or the official tar."""
    if location.is_dir():
        return lambda f: _read_bytes(location / f)
    try:
        tar = tarfile.open(location, "r:gz")
        members = {m.name: m for m in tar.getmembers()}
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{location} is corrupt ({err}); delete it and download it again") from None

    def read(f: str) -> bytes:
        member = members.get(f"{spec.folder}/{f}")
        if member is None:
            raise DataError(f"{location} has no {spec.folder}/{f}; delete it and download it again")
        return tar.extractfile(member).read()  # type: ignore[union-attr]

    return read


def _read_cifar(spec: DatasetSpec, root: Path) -> Dataset:
    location = _cifar_location(spec, root)
    assert location is not None
    read, where = _cifar_reader(spec, location), str(location)
    label_key, meta_file, names_key = (
        ("labels", "batches.meta", "label_names") if spec.name == "cifar10" else ("fine_labels", "meta", "fine_label_names")
    )
    try:  # the meta file only names the classes: a subset without it still reads
        classes = list(_unpickle(read(meta_file), f"{where}/{meta_file}", names_key)[names_key])
    except (DataError, FileNotFoundError):
        classes = [str(i) for i in range(10 if spec.name == "cifar10" else 100)]

    def load(files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [(f"{where}/{f}", _unpickle(read(f), f"{where}/{f}")) for f in files]
        return _cifar_arrays(batches, label_key, len(classes))

    train_x, train_y = load(spec.train_files)
    test_x, test_y = load(spec.test_files)
    for split, labels in (("training", train_y), ("test", test_y)):
        if len(labels) == 0:
            raise DataError(f"{where}: the {split} split holds no images; the files are incomplete: download them "
                            f"again, or set data.root to a complete copy")
    return Dataset(spec.name, train_x, train_y, test_x, test_y, classes, where)


def _read_idx(path: Path) -> np.ndarray:
    raw = _read_bytes(path)
    try:
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        magic, = struct.unpack(">I", raw[:4])
        if magic >> 8 != 0x08:  # 0x08: unsigned byte data, the only type Fashion-MNIST uses
            raise ValueError(f"magic number {magic:#010x} is not uint8 IDX")
        ndim = magic & 0xFF
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except Exception as err:
        raise DataError(f"{path} is corrupt ({type(err).__name__}: {err}); delete it and download it again") from None


FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _idx_path(spec: DatasetSpec, root: Path, name: str) -> Path | None:
    for folder in (root / spec.folder, root):
        for candidate in (folder / name, folder / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    return None


def _read_fashion_mnist(spec: DatasetSpec, root: Path) -> Dataset:
    paths = [_idx_path(spec, root, f) for f in spec.files]
    arrays = [_read_idx(p) for p in paths]  # type: ignore[arg-type]
    out = []
    for (images, labels), (pi, pl) in zip((arrays[0:2], arrays[2:4]), (paths[0:2], paths[2:4])):
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{pi}: expected images (N, 28, 28) and labels (N,), got {images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{pi} has {len(images)} images but {pl} has {len(labels)} labels; one file is corrupt")
        if len(labels) and labels.max() >= 10:
            raise DataError(f"{pl}: labels outside 0..9; the file is corrupt")
        out += [torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))]
    return Dataset(spec.name, *out, FMNIST_CLASSES, str(paths[0].parent))  # type: ignore[union-attr]


_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        (Download(_CIFAR10_URL, "c58f30108f718f92721af3b95e74349a"),), _read_cifar,
    ),
    "cifar100": DatasetSpec(
        "cifar100", "cifar-100-python", ("train",), ("test",),
        (Download(_CIFAR100_URL, "eb9058c3a382ffc7106e4002c42a8d85"),), _read_cifar,
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", "fashion-mnist",
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        (
            Download(_FMNIST_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            Download(_FMNIST_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            Download(_FMNIST_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            Download(_FMNIST_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        _read_fashion_mnist,
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"data.name={name!r} is not a known dataset; allowed: {', '.join(DATASETS)}")
    return DATASETS[name]


def find(spec: DatasetSpec, root: Path) -> str | None:
    """Where the dataset's files are under ``root`` (a folder or archive), or None."""
    if spec.reader is _read_cifar:
        location = _cifar_location(spec, root)
        return str(location) if location else None
    paths = [_idx_path(spec, root, f) for f in spec.files]
    return str(paths[0].parent) if all(paths) else None  # type: ignore[union-attr]


def source_files(spec: DatasetSpec, root: Path) -> list[Path] | None:
    """The files the reader takes the images and labels from (the folder's official files,
    or the archive), or None when they are not all there. Their paths, sizes and times key
    the data fingerprint's cache (``normbench.fingerprint``)."""
    if spec.reader is _read_cifar:
        location = _cifar_location(spec, root)
        if location is None:
            return None
        return [location] if location.is_file() else [location / f for f in spec.files]
    paths = [_idx_path(spec, root, f) for f in spec.files]
    return paths if all(paths) else None  # type: ignore[return-value]


def expected_files(spec: DatasetSpec, root: Path) -> str:
    names = ", ".join(spec.files)
    archives = ", ".join(Path(d.url).name for d in spec.downloads)
    return f"{root / spec.folder}/{{{names}}} or {root}/{archives}"


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(spec: DatasetSpec, root: Path, timeout: float = 30.0) -> None:
    """Download the official files into ``root``, each checked against its official MD5."""
    target_dir = root if spec.reader is _read_cifar else root / spec.folder
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{spec.name}: cannot create {target_dir} ({err.strerror}); set data.root to a writable folder") from None
    for d in spec.downloads:
        dest = target_dir / Path(d.url).name
        if dest.is_file() and md5sum(dest) == d.md5:
            continue
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(d.url, timeout=timeout) as resp:
                while block := resp.read(1 << 20):
                    out.write(block)
            got = md5sum(Path(tmp))
            if got != d.md5:
                raise DataError(f"{spec.name}: {d.url} downloaded with MD5 {got}, expected {d.md5}; try again later")
            os.replace(tmp, dest)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = getattr(err, "reason", None) or err
            raise DataError(
                f"{spec.name}: files not found and the download from {d.url} failed ({reason}); "
                f"expected {expected_files(spec, root)}: put them there or set data.root=<folder that has them>"
            ) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def load_dataset(name: str, root: str | os.PathLike[str], allow_download: bool = True) -> Dataset:
    """Read dataset ``name`` from ``root``, downloading the official files if missing."""
    spec = dataset_spec(name)
    root = Path(root).expanduser()
    if find(spec, root) is None:
        if not allow_download:
            raise DataError(
                f"{name}: files not found; expected {expected_files(spec, root)} "
                f"(set data.root=<folder that has them>, or data.download=true)"
            )
        download(spec, root)
    return spec.reader(spec, root)


def balanced_subset(labels: torch.Tensor, size: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of a seeded subset with (as near as possible) ``size / num_classes`` per class."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    shuffled = labels[order]
    # Rank of each sample within its class, in shuffled order: take the lowest ranks first,
    # which spreads `size` evenly over classes (rounding picks classes in shuffled order).
    onehot = torch.nn.functional.one_hot(shuffled, num_classes)
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1
    chosen = order[torch.argsort(rank * len(labels) + torch.arange(len(labels)))[:size]]
    return chosen.sort().values


def select(ds: Dataset, train_size: int | None, test_size: int | None,
           subset_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images and labels a run uses: each split whole, or the seeded class-balanced
    subset of ``train_size`` / ``test_size`` (``balanced_subset``) when that is smaller."""
    train_x, train_y, test_x, test_y = ds.train_x, ds.train_y, ds.test_x, ds.test_y
    for key, size, have in (("train_size", train_size, len(train_y)), ("test_size", test_size, len(test_y))):
        if size and size > have:
            raise ConfigError(f"data.{key}={size} is larger than the split ({have} images); allowed: at most {have}, "
                              f"or null for all of them")
    if train_size and train_size < len(train_y):
        idx = balanced_subset(train_y, train_size, ds.num_classes, subset_seed)
        train_x, train_y = train_x[idx], train_y[idx]
    if test_size and test_size < len(test_y):
        idx = balanced_subset(test_y, test_size, ds.num_classes, subset_seed)
        test_x, test_y = test_x[idx], test_y[idx]
    return train_x, train_y, test_x, test_y


def split_validation(train_x: torch.Tensor, train_y: torch.Tensor, val_size: int, num_classes: int,
                     subset_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, val x, val y): a seeded class-balanced ``val_size`` of the training
    images held out (``balanced_subset``, its own seed stream: ``subset_seed`` + 1), the rest
    kept for training in their order. ``data.val_size``: curves and epochs to target read it,
    so the test split chooses nothing."""
    if val_size >= len(train_y):
        raise ConfigError(f"data.val_size={val_size} is not valid with {len(train_y)} training images; allowed: "
                          f"fewer than the training images (some must remain to train on)")
    held = balanced_subset(train_y, val_size, num_classes, subset_seed + 1)
    keep = torch.ones(len(train_y), dtype=torch.bool)
    keep[held] = False
    return train_x[keep], train_y[keep], train_x[held], train_y[held]


# --- the device-resident loader --------------------------------------------------------------


class EpochSampler:
    """A seeded permutation per epoch. Lightning calls ``set_epoch`` before every epoch
    (also after a resume), so epoch e always sees the same order for the same seed."""

    def __init__(self, size: int, seed: int, shuffle: bool) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, device: torch.device, epoch: int | None = None) -> torch.Generator:
        """The generator of pass ``epoch`` (default: the current epoch)."""
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + (self.epoch if epoch is None
                                                                                    else epoch))

    def __len__(self) -> int:
        return self.size


class DeviceLoader:
    """Batches of normalized float images and int64 labels, made on the training device.

    The split is held as one uint8 tensor (padded by 4 once for ``crop_flip``); each batch is
    a single gather that crops and flips every image with offsets drawn for the whole epoch
    at its start, then one fused scale-and-shift to ``(x / 255 - mean) / std``.

    With ``batches_per_item=k > 1`` each item stacks k consecutive batches, shaped
    (k, B, C, H, W) and (k, B) (the last item may hold fewer), so that a training loop can
    take k SGD steps per call; the batches are exactly those of ``batches_per_item=1``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: torch.Tensor,
                 std: torch.Tensor, *, augment: str = "none", shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, device: torch.device | str = "cpu",
                 memory_format: torch.memory_format = torch.contiguous_format, batches_per_item: int = 1,
                 period: int | None = None) -> None:
        if augment not in AUGMENTS:
            raise ConfigError(f"data.augment={augment!r} is not valid; allowed: {' | '.join(AUGMENTS)}")
        self.device = torch.device(device)
        self.batch_size, self.augment, self.drop_last = batch_size, augment, drop_last
        if batches_per_item < 1 or (batches_per_item > 1 and not drop_last):
            raise ValueError("batches_per_item > 1 needs drop_last=True (every stacked batch full)")
        self.batches_per_item = batches_per_item
        if period is not None and (period < 1 or not drop_last or not shuffle):
            raise ValueError("period needs period >= 1, shuffle=True and drop_last=True")
        self.period = period
        self.memory_format = memory_format
        self.pad = CROP_PAD if augment == "crop_flip" else 0
        x = images.to(self.device)
        self.images = torch.nn.functional.pad(x, (self.pad,) * 4) if self.pad else x
        self.labels = labels.to(self.device)
        self.height, self.width = images.shape[-2:]
        self.scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(self.device)
        self.shift = (-mean / std).view(1, -1, 1, 1).to(self.device)
        self.sampler = EpochSampler(len(labels), seed, shuffle)
        self.batch_sampler = None  # Lightning probes DataLoader's attributes; batching is ours

    @property
    def batches_per_pass(self) -> int:
        """Batches in one pass over the split (one data epoch)."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_batches(self) -> int:
        """Batches per iteration (per Lightning epoch): a pass, or ``period`` batches."""
        return self.period if self.period is not None else self.batches_per_pass

    def __len__(self) -> int:
        return -(-self.num_batches // self.batches_per_item)

    def _epoch_plan(self, epoch: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        n, dev = len(self.sampler), self.device
        g = self.sampler.generator(dev, epoch)
        order = torch.randperm(n, generator=g, device=dev) if self.sampler.shuffle else torch.arange(n, device=dev)
        if self.augment == "none":
            return order, None, None, None
        flip = torch.randint(0, 2, (n,), generator=g, device=dev, dtype=torch.bool)
        if not self.pad:
            return order, flip, None, None
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g, device=dev)
        return order, flip, dy, dx

    def _plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """This iteration's order, flips and crop offsets. With ``period = P`` (a step budget,
        ``normbench.budget``) iteration e is batches e*P .. (e+1)*P - 1 of the endless run of
        passes, each pass its own seeded permutation (as an epoch without a period), its last
        incomplete batch dropped: so a run sees each image once a pass, whatever P is, and
        iteration e is the same after a resume."""
        if self.period is None:
            return self._epoch_plan()
        per_pass, b = self.batches_per_pass, self.batch_size
        first, last = self.sampler.epoch * self.period, (self.sampler.epoch + 1) * self.period  # batch indices
        parts = []
        for p in range(first // per_pass, (last - 1) // per_pass + 1):
            lo, hi = max(first, p * per_pass) - p * per_pass, min(last, (p + 1) * per_pass) - p * per_pass
            parts.append([None if t is None else t[lo * b:hi * b] for t in self._epoch_plan(p)])
        return tuple(None if parts[0][i] is None else torch.cat([q[i] for q in parts])  # type: ignore[return-value]
                     for i in range(4))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, flip, dy, dx = self._plan()
        rows = torch.arange(self.height, device=self.device)
        cols = torch.arange(self.width, device=self.device)
        channels = torch.arange(self.images.shape[1], device=self.device).view(1, -1, 1, 1)
        b, k = self.batch_size, self.batches_per_item
        for first in range(0, self.num_batches, k):
            steps = min(k, self.num_batches - first)
            sl = slice(first * b, min((first + steps) * b, len(order)))
            idx = order[sl]
            if flip is None:
                x = self.images[idx]
            else:
                r = rows.expand(len(idx), -1) + (dy[sl, None] if dy is not None else 0)
                c = torch.where(flip[sl, None], cols.flip(0), cols) + (dx[sl, None] if dx is not None else 0)
                x = self.images[idx.view(-1, 1, 1, 1), channels, r[:, None, :, None], c[:, None, None, :]]
            x = torch.addcmul(self.shift, x.float(), self.scale)
            y = self.labels[idx]
            if k == 1:
                yield x.contiguous(memory_format=self.memory_format), y
            else:
                yield x.view(steps, -1, *x.shape[1:]), y.view(steps, -1)
