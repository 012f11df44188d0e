"""A run's folder: created with a write probe; its checkpoint, checked before a resume; and its
attempts, one line per launch that trained it (``attempts.jsonl``, docs/records.md)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from normbench.environment import now, scheduler_job
from normbench.errors import ConfigError

log = logging.getLogger("normbench")


@dataclass(frozen=True)
class Resume:
    """A checkpoint a run resumes from: its path, where it stands, and how many epochs
    (history rows) it holds."""

    path: str
    step: tuple[Any, Any]  # (epoch, global_step): members of a pack resume together only at the same step
    epochs_done: int


def resume_checkpoint(path: Path) -> Resume | None:
    """The checkpoint at ``path`` when it loads with ``weights_only=True`` (tensors and plain
    containers only: a checkpoint is untrusted input, and a full unpickle would run whatever
    it names). Anything else is moved aside as ``last.ckpt.bad-<time>``, said in one line,
    and the run starts over (None)."""
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any checkpoint that cannot be loaded safely means: start over
        aside = path.with_name(f"{path.name}.bad-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
        path.replace(aside)
        log.warning("%s cannot be loaded safely (%s): moved aside to %s; starting this run from scratch", path,
                    type(err).__name__, aside.name)
        return None
    return Resume(str(path), (ck.get("epoch"), ck.get("global_step")), len(ck.get("normbench_history", [])))


def make_run_dir(runs: Path, key: str) -> Path:
    run_dir = runs / key
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A probe of its own: with one shared name, two launches of a sweep deleted each
        # other's probe and one failed as "cannot be written".
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"paths.runs={str(runs)!r} cannot be written ({err.strerror}); set paths.runs to a writable folder"
        ) from None
    return run_dir


ATTEMPTS = "attempts.jsonl"


def read_attempts(run_dir: Path) -> list[dict]:
    """The launches that trained this run, oldest first (a line cut short by a kill is skipped)."""
    try:
        lines = (Path(run_dir) / ATTEMPTS).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def start_attempt(run_dir: Path, from_epoch: int) -> int:
    """Append this launch to the run's attempts and return its number (1 for the first).

    ``from_epoch`` is the number of epochs its checkpoint holds (0: from scratch). With the
    ``attempt`` each history row names, the record shows where every epoch was trained: a
    preempted or timed-out run that resumed lost no epoch and trained none twice."""
    path = Path(run_dir) / ATTEMPTS
    number = len(read_attempts(run_dir)) + 1
    entry = {"attempt": number, "from_epoch": from_epoch, "started_at": now(), "host": socket.gethostname(),
             "pid": os.getpid(), "slurm_job": scheduler_job()}
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line cut short by a kill: end it, so this one stands alone
                f.write(b"\n")
        f.write(json.dumps(entry).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return number
