"""A validation split (data.val_size): held out of training, class-balanced, evaluated every
epoch beside the test split; curves and epochs to target read it."""

from __future__ import annotations

import pytest
import torch

from normbench import data as datamod
from normbench.derived import derive
from normbench.errors import ConfigError
from normbench.train import run


def test_the_split_is_class_balanced_disjoint_and_seeded():
    labels = torch.arange(100) % 10
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)  # each image names itself
    tx, ty, vx, vy = datamod.split_validation(images, labels, 20, 10, subset_seed=0)
    assert len(ty) == 80 and len(vy) == 20
    assert torch.bincount(vy, minlength=10).tolist() == [2] * 10
    assert not set(tx.flatten().tolist()) & set(vx.flatten().tolist())
    again = datamod.split_validation(images, labels, 20, 10, subset_seed=0)[2]
    other = datamod.split_validation(images, labels, 20, 10, subset_seed=1)[2]
    assert torch.equal(vx, again) and not torch.equal(vx, other)
    with pytest.raises(ConfigError, match=r"^data.val_size=100 is not valid with 100 training images; allowed: "
                                          r"fewer than the training images"):
        datamod.split_validation(images, labels, 100, 10, 0)


def test_a_run_evaluates_validation_and_test_and_targets_on_validation(quick):
    rec = run(quick("data.val_size=64", "norm=gn", "target_acc=0.0"))
    assert rec["train_images"] == 320 - 64 and rec["val_images"] == 64 and rec["test_images"] == 128
    assert all({"val_acc", "val_loss", "test_acc", "test_loss"} <= set(h) for h in rec["history"])
    assert all(h["train_images"] == (256 // 32) * 32 for h in rec["history"])
    plain = run(quick("norm=gn"))
    assert "val_size" not in plain["config"]["data"] and plain["config"]["data"] != rec["config"]["data"]
    assert "val_acc" not in plain["history"][0]
    # epochs to target: the first epoch whose *validation* accuracy reaches it
    hist = [{"epoch": 1, "val_acc": 0.3, "test_acc": 0.9}, {"epoch": 2, "val_acc": 0.7, "test_acc": 0.1}]
    assert derive(hist, target_acc=0.6)["epochs_to_target"] == 2
    assert derive([{k: v for k, v in h.items() if k != "val_acc"} for h in hist], 0.6)["epochs_to_target"] == 1


def test_packed_members_evaluate_validation_too(quick):
    from normbench.runner import run_pack  # noqa: F401 - the pack path through run()

    out = run(quick("data.val_size=64", "norm=bn", "batch_size=8", "epochs=1", "trainer.pack_seeds=[0,1]"))
    recs = out["runs"]
    assert len(recs) == 2 and all(r["status"] == "ok" and r["packed_with"] for r in recs)
    assert all("val_acc" in r["history"][0] and r["val_images"] == 64 for r in recs)


def test_a_validation_split_too_large_is_one_line_and_leaves_nothing(quick, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(quick("data.val_size=320"))
    assert str(err.value).startswith("data.val_size=320 is not valid with 320 training images")
    with pytest.raises(ConfigError, match=r"^data.val_size=0 is not valid; allowed: null, or an integer >= 1"):
        run(quick("data.val_size=0"))
    with pytest.raises(ConfigError, match=r"^batch_size=300 is larger than the training split \(256 images"):
        run(quick("data.val_size=64", "batch_size=300"))
    assert not (tmp_path / "runs").exists()
