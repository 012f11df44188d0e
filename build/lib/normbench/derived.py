"""Numbers derived from a run's per-epoch history: the one place they are computed.

A record holds facts (what ran and what each epoch measured, ``history``); the report and the
training log ask ``derive`` for everything computed from them, so that a new metric, or a
fix to one, applies to every record ever written without re-running anything. Torch-free:
the report imports it. The metric definitions are in docs/records.md.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

#: What ``derive`` returns, in this order (each None when the history cannot give it).
DERIVED = ("test_acc", "test_loss", "test_acc_last5_median", "best_test_acc", "epochs_to_target",
           "train_images_per_s", "epoch_s", "steps", "precise_bn_test_acc", "batch_stats_test_acc")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def derive(history: Sequence[Mapping[str, Any]], target_acc: float | None = None,
           batch_size: int | None = None) -> dict[str, Any]:
    """Summaries of one run's ``history`` (a list of per-epoch dicts).

    - ``test_acc``, ``test_loss``: after the last epoch.
    - ``test_acc_last5_median``: median test accuracy of the final 5 epochs, the GN paper's
      protocol (Wu & He 2018, Sec. 4.1); with fewer epochs, of all of them.
    - ``best_test_acc``: a curve summary, never used to choose anything.
    - ``epochs_to_target``: the first epoch whose test accuracy is >= ``target_acc`` (validation
      accuracy, for a run with a validation split).
    - ``train_images_per_s``: training images over training seconds, the first epoch left
      out (it carries warm-up: allocator, kernel selection) when there is more than one.
    - ``epoch_s``: median wall time of an epoch (training + test pass), same epochs.
    - ``steps``: SGD steps taken: training images / ``batch_size`` (every batch is full).
    """
    out: dict[str, Any] = dict.fromkeys(DERIVED)
    rows = [h for h in history if isinstance(h, Mapping)]
    accs = [a for a in (_num(h.get("test_acc")) for h in rows) if a is not None]
    if not rows or not accs:
        return out
    last = rows[-1]
    out["test_acc"] = _num(last.get("test_acc"))
    out["test_loss"] = _num(last.get("test_loss"))
    out["test_acc_last5_median"] = statistics.median(accs[-5:])
    out["best_test_acc"] = max(accs)
    if target_acc is not None:
        # With a validation split (data.val_size) the target is read on it: the test split chooses nothing.
        key = "val_acc" if any(_num(h.get("val_acc")) is not None for h in rows) else "test_acc"
        out["epochs_to_target"] = next((int(h["epoch"]) for h in rows
                                        if (_num(h.get(key)) or -1.0) >= target_acc), None)
    later = rows[1:] or rows
    train_s = sum(_num(h.get("train_s")) or 0.0 for h in later)
    images = sum(_num(h.get("train_images")) or 0.0 for h in later)
    out["train_images_per_s"] = images / train_s if train_s > 0 and images > 0 else None
    epoch_s = [s for s in (_num(h.get("epoch_s")) for h in later) if s is not None]
    out["epoch_s"] = statistics.median(epoch_s) if epoch_s else None
    all_images = sum(_num(h.get("train_images")) or 0.0 for h in rows)
    out["steps"] = round(all_images / batch_size) if batch_size and all_images else None
    return out


def derive_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """``derive`` with a record's own target accuracy and batch size, and the final weights'
    test accuracy evaluated two more ways (``bn_eval``, docs/records.md): with PreciseBN
    statistics (``precise_bn_test_acc``) and with batch statistics at the training statistics
    batch (``batch_stats_test_acc``); None where not measured. They pair with ``test_acc``
    (the same final weights with running averages), not with the last-5 median."""
    target = _num(rec.get("target_acc"))
    batch = rec.get("batch_size") if isinstance(rec.get("batch_size"), int) else None
    history = rec.get("history") if isinstance(rec.get("history"), list) else []
    out = derive(history, target, batch)
    bn = rec.get("bn_eval") if isinstance(rec.get("bn_eval"), Mapping) else {}
    out["precise_bn_test_acc"] = _num(bn.get("precise_acc"))
    out["batch_stats_test_acc"] = _num(bn.get("batch_acc"))
    return out
