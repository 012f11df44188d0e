"""The data a config trains and tests on: its identity (fingerprint and split sizes, from a
cache when the files are unchanged) and its tensors. A sweep runs its jobs in one process, so
a dataset is read once per process."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from normbench import data as datamod
from normbench import fingerprint


@functools.lru_cache(maxsize=1)
def _cached_dataset(name: str, root: str, download: bool) -> datamod.Dataset:
    # A sweep runs its jobs in one process: read the files once, not once per run.
    return datamod.load_dataset(name, root, allow_download=download)


def data_identity(c: dict[str, Any], cached_only: bool = False) -> fingerprint.DataIdentity | None:
    """The fingerprint and split sizes of the data this config trains and tests on, from the
    cache when the source files are unchanged (no data read), else computed and cached; with
    ``cached_only``, None instead of reading (or downloading) the data."""
    d = c["data"]
    spec, root = datamod.dataset_spec(d["name"]), Path(str(d["root"])).expanduser()
    subsetting = (d.get("train_size"), d.get("test_size"), d["subset_seed"])
    files = datamod.source_files(spec, root)
    if files:
        known = fingerprint.lookup(fingerprint.cache_key(d["name"], files, *subsetting))
        if known:
            return known
    if cached_only:
        return None
    ds = _cached_dataset(d["name"], str(d["root"]), bool(d["download"]))
    identity = fingerprint.digest(*datamod.select(ds, *subsetting))
    files = datamod.source_files(spec, root)  # present now, also after a download
    if files:
        fingerprint.store(fingerprint.cache_key(d["name"], files, *subsetting), identity)
    return identity


def prepare_data(c: dict[str, Any]) -> tuple[datamod.Dataset, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dataset, train images, train labels, test images, test labels) the run uses: the
    training split without its validation part (``validation_split``)."""
    d = c["data"]
    ds = _cached_dataset(d["name"], str(d["root"]), bool(d["download"]))
    train_x, train_y, test_x, test_y = datamod.select(ds, d.get("train_size"), d.get("test_size"), d["subset_seed"])
    if d.get("val_size"):
        train_x, train_y, _, _ = datamod.split_validation(train_x, train_y, d["val_size"], ds.num_classes,
                                                          d["subset_seed"])
    return ds, train_x, train_y, test_x, test_y


def validation_split(c: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The held-out validation images and labels (``data.val_size``), or None."""
    d = c["data"]
    if not d.get("val_size"):
        return None
    ds = _cached_dataset(d["name"], str(d["root"]), bool(d["download"]))
    train_x, train_y, _, _ = datamod.select(ds, d.get("train_size"), d.get("test_size"), d["subset_seed"])
    _, _, val_x, val_y = datamod.split_validation(train_x, train_y, d["val_size"], ds.num_classes, d["subset_seed"])
    return val_x, val_y
