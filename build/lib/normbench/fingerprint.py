"""The identity of the data a run saw: a digest of the images and labels it used.

A run's hash covers this fingerprint, never a path: the same config on other data is
another run, and the same data under another path is the same run. The digest is SHA-256
over each split's shape, its uint8 images and its int64 labels, *after* ``train_size`` /
``test_size`` subsetting, so it names exactly what trained and what was tested.

Hashing the full CIFAR-10 training split takes about a second, and a relaunch must decide
"already finished, skip" without reading the data at all; so each fingerprint is cached in
one small JSON file, keyed by the source files' paths, sizes and modification times and by
the subsetting keys. A changed file (new size or time) misses the cache and is hashed anew.
The cache lives in ``$NORMBENCH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/normbench``, i.e.
``~/.cache/normbench``); deleting it only costs one re-hash per dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from normbench.records import write_json_atomic

CACHE_FILE = "fingerprints.json"
DIGITS = 16  # 64 bits of SHA-256: collisions between real datasets are not a concern


@dataclass(frozen=True)
class DataIdentity:
    """What the record says about the data: ``data_fingerprint``, ``train_images``, ``test_images``."""

    fingerprint: str
    train_images: int
    test_images: int


def digest(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> DataIdentity:
    """SHA-256 over (shape, images as uint8, labels as int64) of both splits, in that order."""
    h = hashlib.sha256()
    for x, y in ((train_x, train_y), (test_x, test_y)):
        h.update(json.dumps(list(x.shape)).encode())
        h.update(x.to(torch.uint8).contiguous().numpy().tobytes())
        h.update(y.to(torch.int64).contiguous().numpy().tobytes())
    return DataIdentity(h.hexdigest()[:DIGITS], len(train_y), len(test_y))


def cache_dir() -> Path:
    if os.environ.get("NORMBENCH_CACHE_DIR"):
        return Path(os.environ["NORMBENCH_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "normbench"


def cache_key(name: str, files: list[Path], train_size: int | None, test_size: int | None, subset_seed: int) -> str:
    """The files' resolved paths, sizes and modification times, and the subsetting keys."""
    stats = []
    for f in files:
        st = f.stat()
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return json.dumps([name, stats, train_size, test_size, subset_seed], separators=(",", ":"))


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # missing or damaged: it is only a cache
        return {}


def lookup(key: str) -> DataIdentity | None:
    entry = _read_cache(cache_dir() / CACHE_FILE).get(key)
    try:
        return DataIdentity(str(entry["fingerprint"]), int(entry["train_images"]), int(entry["test_images"]))
    except (TypeError, KeyError, ValueError):
        return None


def store(key: str, identity: DataIdentity) -> None:
    """Add one entry; a cache that cannot be written is skipped (the next launch re-hashes)."""
    path = cache_dir() / CACHE_FILE
    try:
        entries = _read_cache(path)
        entries[key] = asdict(identity)
        write_json_atomic(path, entries)
    except OSError:
        pass
