"""Data files and checkpoints are untrusted input: nothing in them ever runs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from normbench import splits as train_mod
from normbench.errors import DataError
from normbench.train import run


class Payload:
    """Unpickling this calls ``open(target, "w")``: it creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_crafted_data_file_never_runs(quick, cifar_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    good = pickle.loads(batch.read_bytes())
    batch.write_bytes(pickle.dumps({**good, "extra": Payload(marker)}))
    train_mod._cached_dataset.cache_clear()
    with pytest.raises(DataError) as err:
        run(quick(f"data.root={root}"))
    assert not marker.exists()
    assert "data_batch_1 is not a CIFAR file: it asks to run io.open when read" in str(err.value)
    assert "\n" not in str(err.value)
    train_mod._cached_dataset.cache_clear()


def test_a_crafted_checkpoint_never_runs_and_is_moved_aside(quick, tmp_path, caplog):
    cfg = quick("norm=none", "epochs=1")
    first = run(cfg)
    run_dir = Path(cfg.paths.runs) / first["run_key"]
    (run_dir / "record.json").unlink()  # unfinished: the next launch resumes from the checkpoint
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, run_dir / "ckpt" / "last.ckpt")
    with caplog.at_level("WARNING", logger="normbench"):
        again = run(cfg)
    assert not marker.exists()
    assert again["status"] == "ok" and len(again["history"]) == 1  # started over, trained to the end
    aside = list((run_dir / "ckpt").glob("last.ckpt.bad-*"))
    assert len(aside) == 1 and (run_dir / "ckpt" / "last.ckpt").is_file()
    assert any("cannot be loaded safely (UnpicklingError): moved aside to last.ckpt.bad-" in m for m in caplog.messages)
