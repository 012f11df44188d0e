"""A run's folder: created with a write probe, and its checkpoint, checked before a resume."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path

import torch

from normbench.errors import ConfigError

log = logging.getLogger("normbench")


def resume_checkpoint(path: Path) -> str | None:
    """``path`` when it is a checkpoint that loads with ``weights_only=True`` (tensors and plain
    containers only: a checkpoint is untrusted input, and a full unpickle would run whatever
    it names). Anything else is moved aside as ``last.ckpt.bad-<time>``, said in one line,
    and the run starts over."""
    if not path.is_file():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any checkpoint that cannot be loaded safely means: start over
        aside = path.with_name(f"{path.name}.bad-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
        path.replace(aside)
        log.warning("%s cannot be loaded safely (%s): moved aside to %s; starting this run from scratch", path,
                    type(err).__name__, aside.name)
        return None
    return str(path)


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
