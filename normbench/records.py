"""Run identity, the run record (``record.json``, schema 2), its atomic write, and loading.

The run directory is ``<runs>/<dataset>/<model>/<norm_tag>/bs<B>/seed<S>-<hash8>/``, where
``hash8`` hashes the experiment config: everything that changes the numbers, the data's
fingerprint included, not where files go or how the run is launched (docs/records.md).
The report reads nothing from training but these records, so this module imports neither
torch nor Lightning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.derived import DERIVED, derive_record

SCHEMA = 2
RECORD = "record.json"
CONFIG = "config.yaml"
INTERRUPTED = "interrupted"  # the marker file of a run stopped by a signal (docs/records.md)
#: Outcomes that are final: launching the config again skips it. `failed` runs are retried
#: (their cause may be transient: out of memory, a full disk).
FINISHED = ("ok", "diverged")
STATUSES = ("ok", "diverged", "failed")

#: Every field of a schema-2 record (docs/records.md). Facts only: what ran, on which data,
#: what each epoch measured, where and how long. Numbers computed from the history
#: (final and last-5 accuracy, epochs to target, throughput) come from ``normbench.derived``.
FIELDS = (
    "schema", "run_key", "config_hash", "status",
    "config", "dataset", "data_fingerprint", "train_images", "test_images",
    "model", "norm", "norm_tag", "norm_params", "norm_sites", "placement",
    "batch_size", "lr", "base_lr", "epochs", "seed", "augment", "target_acc", "params",
    "history", "total_s", "peak_mem_mb", "peak_mem_kind",
    "device", "accelerator", "precision", "torch", "lightning", "normbench", "git_rev", "started_at", "finished_at",
    "error", "diverged_at_step", "packed_with", "stat_batch", "bn_eval", "val_images", "attempts",
)
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_s", "train_s",
                  "train_images", "attempt")

_NUMBER = (int, float)
#: The type each field must have when present (None is always allowed: a record of an older
#: schema, or a failed run, may lack a value). A record that breaks this is left out.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "schema": (int,), "run_key": (str,), "config_hash": (str,), "status": (str,),
    "config": (dict,), "dataset": (str,), "data_fingerprint": (str,), "train_images": (int,), "test_images": (int,),
    "model": (str,), "norm": (str,), "norm_tag": (str,), "norm_params": (dict,), "norm_sites": (list,),
    "placement": (str,), "batch_size": (int,), "lr": _NUMBER, "base_lr": _NUMBER, "epochs": (int,), "seed": (int,),
    "augment": (str,), "target_acc": _NUMBER, "params": (int,), "history": (list,), "total_s": _NUMBER,
    "peak_mem_mb": _NUMBER, "peak_mem_kind": (str,), "diverged_at_step": (int,), "packed_with": (list,),
    "stat_batch": (int,), "bn_eval": (dict,), "val_images": (int,), "attempts": (list,),
}
#: Fields a record of any schema must have for the report to place it.
REQUIRED = ("run_key", "status", "dataset", "model", "norm_tag", "batch_size", "epochs", "seed", "history")

#: What a run's hash covers: every config value that changes its numbers, *listed* (True: the
#: whole group), rather than "every key except these", so that adding a key that changes no
#: number (a display option, a launcher setting) leaves every existing run key as it is.
#: ``model``, ``norm`` and ``optim`` are whole groups: each of their keys is an argument of
#: the network, the layer or the optimizer. The data enter as their fingerprint
#: (``normbench.fingerprint``), never as a path.
HASHED: dict[str, bool | tuple[str, ...]] = {
    "batch_size": True, "epochs": True, "seed": True,
    "data": ("name", "augment", "normalize", "train_size", "test_size", "val_size", "subset_seed", "fingerprint"),
    "model": True, "norm": True, "optim": True, "budget": True,
    "trainer": ("precision", "deterministic", "channels_last"),
}
#: Keys added after runs were recorded, at the value that reproduces those runs exactly: left
#: out of the hash at that value, so existing run keys stay valid (and such runs skip).
NEUTRAL: dict[tuple[str, str], Any] = {("model", "weight_std"): False, ("norm", "stat_batch"): None,
                                       ("data", "normalize"): "meanstd", ("data", "val_size"): None,
                                       ("budget", "steps"): None, ("budget", "images"): None}
#: The norm group of a run that places no norm layer (``norm=none``, or ``norm.sites=[]``):
#: whatever else the config said, it trains the same network as ``norm=none``.
NO_NORM = {"name": "none", "tag": "none"}


def places_no_norm(norm: Mapping[str, Any]) -> bool:
    """True when ``norm`` (a config's norm group) puts no layer anywhere."""
    sites = norm.get("sites", "all")
    return norm.get("name") == "none" or (isinstance(sites, (list, tuple)) and len(sites) == 0)


def experiment_config(cfg: Mapping[str, Any], data_fingerprint: str | None = None) -> dict[str, Any]:
    """The part of a resolved config that defines the experiment (what ``hash8`` covers),
    with the data's fingerprint under ``data.fingerprint`` and a norm group that places no
    layer written as ``NO_NORM``. This is the ``config`` field of the record."""
    out: dict[str, Any] = {}
    for key, keep in HASHED.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if keep is True:
            out[key] = value
        else:
            out[key] = {k: value[k] for k in keep if k in value}
    for (group, key), value in NEUTRAL.items():
        if isinstance(out.get(group), dict) and key in out[group] and out[group][key] == value:
            out[group] = {k: v for k, v in out[group].items() if k != key}
    if out.get("budget") == {}:
        del out["budget"]  # no budget: `epochs` passes, as every run before budgets existed
    if "data" in out:
        out["data"] = {**out["data"], "fingerprint": data_fingerprint}
    if "norm" in out and places_no_norm(out["norm"]):
        out["norm"] = dict(NO_NORM)
    return json.loads(json.dumps(out, default=str))  # plain JSON types, as the record will hold them


def config_hash(experiment: Mapping[str, Any]) -> str:
    """8 hex digits of SHA-256 over the canonical JSON of an ``experiment_config``."""
    text = json.dumps(experiment, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def norm_tag(norm: Mapping[str, Any]) -> str:
    return str(norm.get("tag") or norm["name"])


def run_key(experiment: Mapping[str, Any]) -> str:
    """``<dataset>/<model>/<norm_tag>/bs<B>/seed<S>-<hash8>`` of an ``experiment_config``."""
    return (f"{experiment['data']['name']}/{experiment['model']['name']}/{norm_tag(experiment['norm'])}/"
            f"bs{experiment['batch_size']}/seed{experiment['seed']}-{config_hash(experiment)}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never a part: a temp
    file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True, default=str))


LOCK = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[str | None]:
    """Own ``run_dir`` while training it: yields None when this process holds the lock, or
    the holder's ``pid@host`` when another live process does.

    An exclusive ``flock`` on ``run_dir/.lock``: the kernel drops it when its process dies,
    however it dies, so a lock left by a killed run never blocks a relaunch.
    """
    fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for wait in (0.05, 0.1, 0.2, None):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait is None:  # held for longer than a look (``lock_holder``) takes: a run trains there
                    yield _holder(fd)
                    return
                time.sleep(wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}".encode(), 0)
        yield None
    finally:
        os.close(fd)


def lock_holder(run_dir: Path) -> str | None:
    """Who trains ``run_dir`` now (``pid@host``), or None when no live process holds its lock.
    Only looks: the lock file is neither created nor written, and the shared lock it takes to
    look lasts microseconds, which ``run_lock`` waits out."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)  # drops the shared lock, if taken


def _holder(fd: int) -> str:
    """The ``pid@host`` the lock's holder wrote into the lock file."""
    return os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"


def write_record(run_dir: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Complete ``record`` to every schema field (missing ones as null), write it atomically,
    and return it as written."""
    full = {f: record.get(f) for f in FIELDS}
    full["schema"] = SCHEMA
    extra = set(record) - set(FIELDS)
    if extra:
        raise KeyError(f"record fields not in schema {SCHEMA}: {sorted(extra)}")
    if full["status"] not in STATUSES:
        raise ValueError(f"record status {full['status']!r} is not one of {STATUSES}")
    path = Path(run_dir) / RECORD
    write_json_atomic(path, full)
    for stale in Path(run_dir).glob(f".{RECORD}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    return full


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when it has none or it cannot be read."""
    try:
        with open(Path(run_dir) / RECORD) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object", list: "a list"}
    return " or ".join(dict.fromkeys("a number" if t is float else names[t] for t in types))


def check_record(rec: Any) -> str | None:
    """Why ``rec`` cannot be used by the report, or None when it can. Records of schema 1
    (release 1) are read: the fields they lack are null."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("schema") not in (1, SCHEMA):
        return f"schema {rec.get('schema')!r}, expected 1 or {SCHEMA}"
    missing = [f for f in REQUIRED if f not in rec]
    if missing:
        return f"partial record: missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
    for name, types in FIELD_TYPES.items():
        value = rec.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            return f"field {name!r} is not {_type_name(types)}"
    if rec["status"] not in STATUSES:
        return f"unknown status {rec['status']!r}"
    for i, row in enumerate(rec["history"]):
        if not isinstance(row, dict):
            return f"field 'history' item {i} is not an object"
        for name in ("epoch", "test_acc", "test_loss", "train_loss", "train_s", "train_images"):
            v = row.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, _NUMBER)):
                return f"field 'history' item {i}: {name!r} is not a number"
    return None


def load_records(runs_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[str]]:
    """Every usable ``record.json`` under ``runs_dir`` as one DataFrame (one row a run, the
    derived numbers of ``normbench.derived`` added as columns), and one line for each record
    left out (unreadable, partial, wrong types, unfinished) saying why.

    A run directory with a ``config.yaml`` and no record is unfinished (running, or killed):
    it is listed, not loaded. Temp files of an atomic write in progress are never read.
    """
    root = Path(runs_dir)
    rows, problems = [], []
    for path in sorted(root.rglob(RECORD)):
        where = path.parent.relative_to(root)
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError) as err:
            problems.append(f"{where}: unreadable record.json ({type(err).__name__}: {err})")
            continue
        why = check_record(rec)
        if why:
            problems.append(f"{where}: {why}")
            continue
        row = {f: rec.get(f) for f in FIELDS}
        row["schema"] = rec.get("schema")
        row.update(derive_record(rec))
        row["run_dir"] = str(where)
        rows.append(row)
    for cfg_path in sorted(root.rglob(CONFIG)):
        if not (cfg_path.parent / RECORD).exists():
            problems.append(f"{cfg_path.parent.relative_to(root)}: unfinished (no record.json yet)")
    columns = [*FIELDS, *DERIVED, "run_dir"]
    frame = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    return frame, problems
