"""The numbers derived from a run's history, computed in one torch-free place."""

from __future__ import annotations

import subprocess
import sys

import pytest

from normbench.derived import DERIVED, derive


def rows(accs: list[float], images: int = 1000, train_s: float = 2.0) -> list[dict]:
    return [{"epoch": e, "test_acc": a, "test_loss": 1.0 - a, "train_s": train_s * (3 if e == 1 else 1),
             "epoch_s": train_s + 0.5, "train_images": images} for e, a in enumerate(accs, start=1)]


def test_summaries_of_a_history():
    d = derive(rows([0.1, 0.5, 0.3, 0.6, 0.55, 0.7, 0.65]), target_acc=0.6, batch_size=8)
    assert d["test_acc"] == 0.65 and d["test_loss"] == pytest.approx(0.35)
    assert d["test_acc_last5_median"] == 0.6  # median of 0.3, 0.6, 0.55, 0.7, 0.65
    assert d["best_test_acc"] == 0.7 and d["epochs_to_target"] == 4
    assert d["train_images_per_s"] == pytest.approx(500.0)  # the slow first epoch left out
    assert d["epoch_s"] == 2.5 and d["steps"] == 7 * 1000 // 8


def test_short_empty_and_odd_histories():
    assert derive(rows([0.2, 0.4]))["test_acc_last5_median"] == pytest.approx(0.3)  # all epochs when < 5
    assert derive(rows([0.2, 0.4]), target_acc=0.9)["epochs_to_target"] is None
    assert derive([]) == dict.fromkeys(DERIVED)
    odd = rows([0.2, 0.4]) + [{"epoch": 3, "test_acc": None}, "junk"]  # type: ignore[list-item]
    assert derive(odd)["best_test_acc"] == 0.4


def test_derived_numbers_need_no_torch():
    code = "import sys, normbench.derived, normbench.setups, normbench.stats; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
