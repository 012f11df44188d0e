"""Packed sweeps: seeds of one setup train as one model and each still gets its own run.

The layer-level exactness (every norm, float64, 200 steps) is ``tests/test_pack.py``; here the
whole path: the sweeper's plan, run folders, records, checkpoints, resume (packed and
alone), a member diverging, a layer that cannot pack, SIGKILL and relaunch."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import CIFAR10_SUBSET, make_cfg
from test_robustness import ENV, records, train_cmd, wait_for

from normbench import packed as packed_mod
from normbench.records import read_record
from normbench.sweep import plan_packs
from normbench.train import run


def _cfg(norm="bn", batch=2, seed=0, pack="auto", **extra):
    c = {"norm": {"name": norm}, "batch_size": batch, "seed": seed, "trainer": {"pack": pack}}
    c.update(extra)
    return c


def test_the_plan_packs_seeds_of_one_setup_where_packing_is_faster():
    cfgs = [_cfg(n, seed=s) for n in ("bn", "gn") for s in range(4)]
    jobs = [[f"norm={c['norm']['name']}", f"seed={c['seed']}"] for c in cfgs]
    assert plan_packs(jobs, cfgs) == [["norm=bn", "seed=0", "trainer.pack_seeds=[0,1,2,3]"],
                                      ["norm=gn", "seed=0", "trainer.pack_seeds=[0,1,2,3]"]]
    # auto: K * batch <= 32 (batch 8: packs of 4); batch 32 never packs; pack=1 never; pack=N caps K
    eight = [_cfg(batch=8, seed=s) for s in range(6)]
    assert [j[-1] for j in plan_packs([[f"seed={s}"] for s in range(6)], eight)] == [
        "trainer.pack_seeds=[0,1,2,3]", "trainer.pack_seeds=[4,5]"]
    for cfgs in ([_cfg(batch=32, seed=s) for s in range(4)], [_cfg(pack=1, seed=s) for s in range(4)],
                 [_cfg("sn", seed=s) for s in range(4)]):
        jobs = [[f"seed={s}"] for s in range(4)]
        assert plan_packs(jobs, cfgs) == jobs
    capped = plan_packs([[f"seed={s}"] for s in range(5)], [_cfg(batch=32, pack=2, seed=s) for s in range(5)])
    assert capped == [["seed=0", "trainer.pack_seeds=[0,1]"], ["seed=2", "trainer.pack_seeds=[2,3]"], ["seed=4"]]
    # `none` has no layer that could fail to pack: its seeds pack too
    nones = [_cfg("none", seed=s) for s in range(3)]
    assert plan_packs([[f"seed={s}"] for s in range(3)], nones) == [["seed=0", "trainer.pack_seeds=[0,1,2]"]]
    # different setups never share a pack, and the same run asked twice is not packed with itself
    mixed = [_cfg(seed=0), _cfg(seed=1, epochs=3), _cfg(seed=0)]
    assert plan_packs([["a"], ["b"], ["c"]], mixed) == [["a"], ["b"], ["c"]]


def _history(rec):
    return [(h["train_loss"], h["test_acc"], h["test_loss"]) for h in rec["history"]]


def test_a_packed_sweep_writes_ordinary_runs_that_match_unpacked_ones(cifar_root, tmp_path):
    sweep = ["-m", "norm=bn,gn", "batch_size=2", "seed=0,1,2,3", "epochs=1", "data.train_size=96"]
    packed = subprocess.run(train_cmd(cifar_root, tmp_path / "packed", *sweep), env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert packed.returncode == 0, packed.stderr[-2000:]
    assert "8 runs in 2 jobs" in packed.stdout + packed.stderr and "Sweep done: 8 runs (8 ok)" in packed.stdout
    alone = subprocess.run(train_cmd(cifar_root, tmp_path / "alone", *sweep, "trainer.pack=1"), env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    got, want = records(tmp_path / "packed"), records(tmp_path / "alone")
    assert [r["run_key"] for r in got] == [r["run_key"] for r in want] and len(got) == 8
    for p, a in zip(got, want):
        run_dir = tmp_path / "packed" / "runs" / p["run_key"]
        assert (run_dir / "config.yaml").is_file() and (run_dir / "ckpt" / "last.ckpt").is_file()
        assert list((run_dir / "tb").glob("events.out.tfevents.*"))
        siblings = {r["run_key"] for r in got if r["norm"] == p["norm"]} - {p["run_key"]}
        assert set(p["packed_with"]) == siblings and a["packed_with"] is None
        assert p["status"] == a["status"] == "ok"
        # float32, 48 steps: equal up to the order of additions
        for (pl, pacc, ptl), (al, aacc, atl) in zip(_history(p), _history(a), strict=True):
            assert abs(pl - al) <= 1e-3 * abs(al) and abs(pacc - aacc) <= 2 / p["test_images"]
            assert abs(ptl - atl) <= 1e-3 * abs(atl)


class Interrupt(Exception):
    pass


def test_an_interrupted_pack_resumes_packed_or_alone_to_the_same_numbers(quick, monkeypatch, tmp_path):
    base = ("norm=gn", "batch_size=4", "epochs=3", "data.train_size=64", "trainer.pack_seeds=[0,1,2]")
    reference = run(quick(*base, f"paths.runs={tmp_path / 'ref'}"))["runs"]
    original = packed_mod.PackedModule.on_train_epoch_start

    def crash_in_epoch_two(self):
        if self.current_epoch == 1:
            raise Interrupt()
        original(self)

    monkeypatch.setattr(packed_mod.PackedModule, "on_train_epoch_start", crash_in_epoch_two)
    for runs in ("packed", "alone"):
        out = run(quick(*base, f"paths.runs={tmp_path / runs}"))["runs"]
        assert [r["status"] for r in out] == ["failed"] * 3  # failed runs are retried
    monkeypatch.setattr(packed_mod.PackedModule, "on_train_epoch_start", original)
    resumed = run(quick(*base, f"paths.runs={tmp_path / 'packed'}"))["runs"]
    alone = [run(quick(*base[:-1], f"seed={s}", f"paths.runs={tmp_path / 'alone'}")) for s in range(3)]
    for r, p, a in zip(reference, resumed, alone, strict=True):
        assert r["run_key"] == p["run_key"] == a["run_key"] and p["status"] == a["status"] == "ok"
        assert [h["epoch"] for h in p["history"]] == [1, 2, 3]
        assert _history(p) == _history(r)  # resumed packed: the same steps, the same numbers
        assert a["packed_with"] is None
        for x, y in zip(_history(a), _history(r)):  # resumed alone from its share of the pack
            assert x[0] == pytest.approx(y[0], rel=1e-3) and abs(x[1] - y[1]) <= 2 / r["test_images"]


def test_a_diverging_member_is_recorded_and_the_others_go_on(quick, monkeypatch):
    base = ("norm=bn", "batch_size=4", "epochs=2", "data.train_size=64", "trainer.check_every_n_steps=4")
    clean = run(quick(*base, "trainer.pack_seeds=[0,1,2]", "paths.runs=" + str(Path(quick().paths.runs) / "c")))
    original = packed_mod.PackedModule.member_losses

    def poison(self, logits, y):
        losses = original(self, logits, y)
        if self.global_step == 5:  # member 1's loss turns NaN at step 5, and its weights after it
            losses = losses * torch.tensor([1.0, float("nan"), 1.0], device=losses.device)
        return losses

    monkeypatch.setattr(packed_mod.PackedModule, "member_losses", poison)
    out = run(quick(*base, "trainer.pack_seeds=[0,1,2]"))["runs"]
    assert [r["status"] for r in out] == ["ok", "diverged", "ok"]
    assert out[1]["diverged_at_step"] == 5 and out[1]["history"] == []
    for k in (0, 2):  # the others never saw it: the same numbers as a pack where nobody diverged
        for x, y in zip(_history(out[k]), _history(clean["runs"][k]), strict=True):
            assert x == pytest.approx(y, rel=1e-5)


def test_a_norm_that_cannot_pack_trains_its_runs_one_after_the_other(quick, caplog):
    caplog.set_level(logging.INFO, logger="normbench")
    out = run(quick("norm=frn", "norm.learned_eps=true", "batch_size=4", "epochs=1", "data.train_size=32",
                    "trainer.pack_seeds=[0,1]"))["runs"]
    assert [r["status"] for r in out] == ["ok", "ok"] and [r["packed_with"] for r in out] == [None, None]
    assert "2 runs of norm frn train one after the other, not packed: " in caplog.text and "eps_l" in caplog.text


def test_a_packed_sweep_killed_mid_epoch_finishes_every_member_exactly_once(cifar_root, tmp_path):
    sweep = ["-m", "norm=gn", "batch_size=2", "seed=0,1,2,3", "epochs=3"]  # 160 steps an epoch: ~1 s
    cmd = train_cmd(cifar_root, tmp_path, *sweep)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts: list[Path] = []
    wait_for(lambda: len(ckpts.extend((tmp_path / "runs").rglob("last.ckpt")) or ckpts) >= 4, proc=proc)
    time.sleep(0.2)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "runs").rglob("record.json"))
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resume a pack of 4" in done.stdout + done.stderr
    recs = records(tmp_path)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert all([h["epoch"] for h in r["history"]] == [1, 2, 3] for r in recs)  # none lost, none twice
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("skip ") == 4  # finished members never retrain
    assert json.loads((tmp_path / "runs" / recs[0]["run_key"] / "record.json").read_text()) == read_record(
        tmp_path / "runs" / recs[0]["run_key"])


def test_one_failing_job_does_not_stop_the_sweep(cifar_root, tmp_path):
    done = subprocess.run(train_cmd(cifar_root, tmp_path, "-m", "batch_size=100000,32", "epochs=1", "norm=none"),
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Sweep done: 2 runs (1 error, 1 ok)" in done.stdout and "error: batch_size=100000 is larger" in done.stdout
    assert "Traceback" not in done.stderr
    assert [r["batch_size"] for r in records(tmp_path)] == [32]


@pytest.mark.skipif(not CIFAR10_SUBSET, reason="NORMBENCH_CIFAR10_ROOT is not set (real CIFAR-10 data)")
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_on_real_data_a_pack_of_four_matches_its_seeds_run_alone_in_float32(norm, tmp_path):
    """Issue #11's float32 check on the real subset: one epoch of 256 images, 128 SGD steps at
    batch 2. A pack adds its sums in another order than a run alone, and SGD at batch 2
    amplifies that, so equal means: train loss within 0.2% (at most 0.03% measured, 1 or 2
    threads) and test accuracy within 5 of the 1,017 test images (0-2 measured; the seeds
    themselves spread over about 60). A wrong member's data, weights or statistics would
    move both far more. At 512 images the differences grow (up to 9 images measured)."""
    base = [f"data.root={CIFAR10_SUBSET}", "data.download=false", f"norm={norm}", "batch_size=2", "epochs=1",
            "data.train_size=256", "trainer.progress=none", "trainer.threads=2"]
    out = run(make_cfg([*base, f"paths.runs={tmp_path / 'packed'}", "trainer.pack_seeds=[0,1,2,3]"]))
    packed = {r["seed"]: r for r in out["runs"]}
    assert sorted(packed) == [0, 1, 2, 3] and all(len(r["packed_with"]) == 3 for r in packed.values())
    for seed, p in packed.items():
        a = run(make_cfg([*base, f"paths.runs={tmp_path / 'alone'}", f"seed={seed}"]))
        assert p["status"] == a["status"] == "ok" and a["packed_with"] is None
        for hp, ha in zip(p["history"], a["history"], strict=True):
            assert abs(hp["train_loss"] - ha["train_loss"]) <= 2e-3 * ha["train_loss"], (seed, hp, ha)
            assert abs(hp["test_acc"] - ha["test_acc"]) * p["test_images"] <= 5 + 1e-6, (seed, hp, ha)
