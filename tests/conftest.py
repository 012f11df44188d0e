"""Shared fixtures: synthetic datasets in the official file formats, and composed configs."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from normbench.train import CONFIG_DIR

CIFAR10_SUBSET = os.environ.get("NORMBENCH_CIFAR10_ROOT")


def synthetic_images(n: int, classes: int, seed: int, shape: tuple[int, int, int] = (3, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class has its own mean colour and a bright stripe position."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    c, h, w = shape
    x = rng.normal(110, 40, size=(n, c, h, w))
    for k in range(classes):
        sel = labels == k
        x[sel] += ((np.arange(c) * 37 + k * 53) % 90 - 45)[:, None, None]
        x[sel, :, (k * 3) % h, :] += 80
    return np.clip(x, 0, 255).astype(np.uint8), labels


def write_cifar10(root: Path, train_per_batch: int = 64, test: int = 128, seed: int = 0) -> Path:
    """A CIFAR-10 tree in the official python format (cifar-10-batches-py/)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = synthetic_images(train_per_batch, 10, seed + i)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i} of 5", "labels": y.tolist(), "data": x.reshape(len(x), -1)}, f)
    x, y = synthetic_images(test, 10, seed + 99)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": y.tolist(), "data": x.reshape(len(x), -1)}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": train_per_batch,
                     "num_vis": 3072}, f)
    return root


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_fashion_mnist(root: Path, n_train: int = 100, n_test: int = 40, compress: bool = True) -> Path:
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        x, y = synthetic_images(n, 10, seed, shape=(1, 28, 28))
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x[:, 0], compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, compress)
    return root


@pytest.fixture(autouse=True, scope="session")
def _fingerprint_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Data fingerprints are cached per user; the tests keep theirs apart (subprocesses inherit it)."""
    os.environ["NORMBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("normbench-cache"))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


def make_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture
def quick(cifar_root: Path, tmp_path: Path):
    """Compose a seconds-long training config on the synthetic data, runs under tmp_path."""

    def _make(*overrides: str) -> DictConfig:
        base = [f"data.root={cifar_root}", f"paths.runs={tmp_path / 'runs'}", "data.download=false",
                "epochs=2", "batch_size=32", "trainer.progress=none", "data.eval_batch_size=64"]
        return make_cfg(base + list(overrides))

    return _make
