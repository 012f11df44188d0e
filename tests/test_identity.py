"""A run's identity: the data it saw is part of it (never the path), what was placed is
recorded as it was, and relaunching a finished run reads no data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_cifar10

from normbench import data as datamod
from normbench import splits as train_mod
from normbench.fingerprint import digest
from normbench.records import experiment_config, run_key
from normbench.train import run


@pytest.fixture
def fresh_process(monkeypatch):
    """A relaunch is a new process: no dataset cached in memory."""
    train_mod._cached_dataset.cache_clear()
    yield
    train_mod._cached_dataset.cache_clear()


def test_other_data_at_the_same_config_is_another_run(quick, tmp_path, fresh_process):
    first = run(quick("norm=none", "epochs=1"))
    other_root = write_cifar10(tmp_path / "other", seed=7)  # same format and sizes, other images
    train_mod._cached_dataset.cache_clear()
    second = run(quick("norm=none", "epochs=1", f"data.root={other_root}"))
    assert second["status"] == "ok" and "history" in second  # trained, not skipped
    assert second["run_key"] != first["run_key"]
    assert second["data_fingerprint"] != first["data_fingerprint"]
    assert (second["train_images"], second["test_images"]) == (first["train_images"], first["test_images"])
    # ... and the report keeps the two apart: two tables, never one pooled cell.
    from normbench.records import load_records
    from normbench.setups import annotate

    df, problems = load_records(Path(str(quick().paths.runs)))
    df = annotate(df)[0]
    assert problems == [] and len(df) == 2 and df.table.nunique() == 2 and df.setup_id.nunique() == 2


def test_the_same_data_at_another_path_is_the_same_run(quick, cifar_root, tmp_path, fresh_process, caplog):
    first = run(quick("norm=none", "epochs=1"))
    moved = tmp_path / "moved"
    shutil.copytree(cifar_root, moved)
    train_mod._cached_dataset.cache_clear()
    with caplog.at_level("INFO", logger="normbench"):
        again = run(quick("norm=none", "epochs=1", f"data.root={moved}"))
    assert again == first
    assert any(m.startswith(f"skip {first['run_key']}: already finished") for m in caplog.messages)


def test_relaunching_a_finished_run_reads_no_data(quick, fresh_process, monkeypatch):
    cfg = quick("norm=none", "epochs=1")
    first = run(cfg)
    train_mod._cached_dataset.cache_clear()

    def no_reading(*args, **kwargs):
        raise AssertionError("the data were read to relaunch a finished run")

    monkeypatch.setattr(datamod, "load_dataset", no_reading)
    assert run(cfg)["run_key"] == first["run_key"]


def test_a_changed_file_is_hashed_again(quick, cifar_root, tmp_path, fresh_process):
    root = tmp_path / "copy"
    shutil.copytree(cifar_root, root)
    first = run(quick("norm=none", "epochs=1", f"data.root={root}"))
    write_cifar10(root, seed=11)  # the same paths, new contents (and new sizes or times)
    train_mod._cached_dataset.cache_clear()
    second = run(quick("norm=none", "epochs=1", f"data.root={root}"))
    assert second["data_fingerprint"] != first["data_fingerprint"] and second["run_key"] != first["run_key"]


def test_subsetting_is_part_of_the_fingerprint(quick, fresh_process):
    a = run(quick("norm=none", "epochs=1", "data.train_size=100"))
    b = run(quick("norm=none", "epochs=1", "data.train_size=100", "data.subset_seed=1"))
    assert a["train_images"] == b["train_images"] == 100 and a["test_images"] == 128
    assert a["data_fingerprint"] != b["data_fingerprint"]


def test_digest_covers_images_labels_and_their_order():
    import torch

    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(6) % 3
    base = digest(x, y, x[:2], y[:2])
    x2 = x.clone()
    x2[3, 1, 2, 2] ^= 1  # one bit of one pixel
    assert digest(x2, y, x[:2], y[:2]).fingerprint != base.fingerprint
    assert digest(x, y.roll(1), x[:2], y[:2]).fingerprint != base.fingerprint
    assert digest(x[:2], y[:2], x, y).fingerprint != base.fingerprint  # splits are not interchangeable
    assert digest(x, y, x[:2], y[:2]) == base and (base.train_images, base.test_images) == (6, 2)


def test_no_norm_site_is_recorded_and_keyed_as_none(quick):
    rec = run(quick("norm=bn", "norm.sites=[]", "epochs=1"))
    plain = run(quick("norm=none", "epochs=1"))
    assert rec["norm_tag"] == "none" and rec["norm"] == "none" and rec["norm_sites"] == []
    assert rec["run_key"] == plain["run_key"]  # the same network: the same run
    assert "/none/bs32/" in rec["run_key"]


def test_hash_covers_listed_keys_only():
    cfg = {"batch_size": 2, "epochs": 1, "seed": 0, "target_acc": 0.6,
           "data": {"name": "cifar10", "root": "/a", "download": True, "augment": "none", "train_size": None,
                    "test_size": None, "subset_seed": 0, "eval_batch_size": 1000},
           "model": {"name": "convnet", "width": 1.0}, "norm": {"name": "bn", "tag": "bn", "sites": "all"},
           "optim": {"base_lr": 0.02}, "trainer": {"precision": "32-true", "progress": "none", "threads": 2},
           "paths": {"runs": "x"}}
    base = run_key(experiment_config(cfg, "f" * 16))
    moved = json.loads(json.dumps(cfg))
    moved["data"]["root"], moved["trainer"]["progress"], moved["paths"]["runs"] = "/b", "rich", "y"
    moved["target_acc"], moved["trainer"]["some_new_display_key"] = 0.9, True
    assert run_key(experiment_config(moved, "f" * 16)) == base
    for change in (("optim", "base_lr", 0.05), ("data", "augment", "flip"), ("trainer", "precision", "bf16-mixed")):
        changed = json.loads(json.dumps(cfg))
        changed[change[0]][change[1]] = change[2]
        assert run_key(experiment_config(changed, "f" * 16)) != base, change
    assert run_key(experiment_config(cfg, "e" * 16)) != base
