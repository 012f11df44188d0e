"""Run identity, the run record (``record.json``, schema 1), its atomic write, and loading.

The run directory is ``<runs>/<dataset>/<model>/<norm_tag>/bs<B>/seed<S>-<hash8>/``, where
``hash8`` hashes the experiment config: everything that changes the numbers, not where
files go or how the run is launched. The report reads nothing from training but these
records, so this module imports neither torch nor Lightning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA = 1
RECORD = "record.json"
CONFIG = "config.yaml"
#: Outcomes that are final: launching the config again skips it. `failed` runs are retried
#: (their cause may be transient: out of memory, a full disk).
FINISHED = ("ok", "diverged")
STATUSES = ("ok", "diverged", "failed")

#: Every field of a schema-1 record (DESIGN.md, "Run record").
FIELDS = (
    "schema", "run_key", "config_hash", "status",
    "dataset", "model", "norm", "norm_tag", "norm_params", "placement", "batch_size", "lr", "base_lr",
    "epochs", "seed", "augment",
    "test_acc", "test_loss", "test_acc_last5_median", "best_test_acc", "epochs_to_target", "target_acc",
    "history", "train_images_per_s", "epoch_s", "total_s", "peak_mem_mb", "params",
    "device", "accelerator", "precision", "torch", "lightning", "normbench", "git_rev", "started_at", "finished_at",
    "error", "diverged_at_step",
)
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_s")

# Keys of the composed config that do not change a run's numbers: where data and results
# live, how the run is shown or launched. Everything else is hashed.
_NOT_HASHED = {
    "paths": None, "hydra": None,
    "data": ("root", "download", "eval_batch_size"),
    "trainer": ("accelerator", "devices", "progress", "check_every_n_steps", "threads", "cuda_graphs",
                "steps_per_call"),
}


def experiment_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that defines the experiment (what ``hash8`` covers)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        drop = _NOT_HASHED.get(key, ())
        if drop is None:
            continue
        if isinstance(value, Mapping) and drop:
            value = {k: v for k, v in value.items() if k not in drop}
        out[key] = value
    return out


def config_hash(cfg: Mapping[str, Any]) -> str:
    """8 hex digits of SHA-256 over the canonical JSON of ``experiment_config(cfg)``."""
    text = json.dumps(experiment_config(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_key(cfg: Mapping[str, Any]) -> str:
    """``<dataset>/<model>/<norm_tag>/bs<B>/seed<S>-<hash8>``: readable and stable."""
    norm = cfg["norm"]
    tag = norm.get("tag") or norm["name"]
    return f"{cfg['data']['name']}/{cfg['model']['name']}/{tag}/bs{cfg['batch_size']}/seed{cfg['seed']}-{config_hash(cfg)}"


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
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}".encode(), 0)
        yield None
    finally:
        os.close(fd)


def write_record(run_dir: Path, record: Mapping[str, Any]) -> Path:
    """Complete ``record`` to every schema field (missing ones as null) and write it atomically."""
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
    return path


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when it has none or it cannot be read."""
    try:
        with open(Path(run_dir) / RECORD) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def check_record(rec: Any) -> str | None:
    """Why ``rec`` cannot be used by the report, or None when it can."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("schema") != SCHEMA:
        return f"schema {rec.get('schema')!r}, expected {SCHEMA}"
    missing = [f for f in FIELDS if f not in rec]
    if missing:
        return f"partial record: missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
    if rec["status"] not in STATUSES:
        return f"unknown status {rec['status']!r}"
    return None


def load_records(runs_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[str]]:
    """Every usable ``record.json`` under ``runs_dir`` as one DataFrame (one row a run), and
    one line for each record left out (unreadable, partial, unfinished) saying why.

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
        rec["run_dir"] = str(where)
        rows.append(rec)
    for cfg_path in sorted(root.rglob(CONFIG)):
        if not (cfg_path.parent / RECORD).exists():
            problems.append(f"{cfg_path.parent.relative_to(root)}: unfinished (no record.json yet)")
    frame = pd.DataFrame(rows, columns=[*FIELDS, "run_dir"]) if rows else pd.DataFrame(columns=[*FIELDS, "run_dir"])
    return frame, problems
