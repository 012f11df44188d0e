"""Records in the schema-2 format with chosen numbers, for report, claim and calibration tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from normbench.records import write_record

FINGERPRINT = "0123456789abcdef"


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:8]


def record(tag: str, bs: int, seed: int, acc: float | None, status: str = "ok", norm: str | None = None,
           epochs: int = 5, to_target: int | None = 2, model: str = "convnet", base_lr: float = 0.02,
           augment: str = "crop_flip", fingerprint: str = FINGERPRINT, steps_per_epoch: int | None = 100,
           images_per_epoch: int | None = None, norm_extra: dict | None = None, target_acc: float = 0.6,
           stat_batch: int | None = None) -> dict:
    """One run. Every epoch's test accuracy is ``acc`` (so the last-5 median is ``acc``) except
    before ``to_target``, where it is below the 0.6 target. By default every batch size takes
    ``steps_per_epoch`` steps an epoch (an equal-step design); ``images_per_epoch`` fixes the
    images instead (a fixed-epoch design: steps = images / bs)."""
    norm = norm or tag.split("_")[0]
    images = images_per_epoch if images_per_epoch is not None else bs * steps_per_epoch
    history = []
    if acc is not None:
        for e in range(1, epochs + 1):
            # Below the target before epoch `to_target`; `acc` from then on (and always, when
            # `to_target` is None: then `acc` should be below the target).
            early = to_target is not None and e < to_target
            history.append({"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
                            "test_acc": min(acc, target_acc - 0.05) if early else acc,
                            "lr": 0.1, "epoch_s": 2.0, "train_s": 1.5, "train_images": images})
    norm_cfg = {"name": norm, "tag": tag, "eps": 1e-5, **(norm_extra or {})}
    if stat_batch is not None and stat_batch != bs:
        norm_cfg["stat_batch"] = stat_batch
    config = {"batch_size": bs, "epochs": epochs, "seed": seed,
              "data": {"name": "cifar10", "augment": augment, "train_size": None, "test_size": None,
                       "subset_seed": 0, "fingerprint": fingerprint},
              "model": {"name": model, "width": 1.0}, "norm": norm_cfg,
              "optim": {"name": "sgd", "base_lr": base_lr, "base_batch": 32, "lr_scaling": "linear"},
              "trainer": {"precision": "32-true", "deterministic": False, "channels_last": False}}
    return {
        "run_key": f"cifar10/{model}/{tag}/bs{bs}/seed{seed}-{_key(tag, bs, seed, base_lr, augment, epochs, fingerprint, norm_extra, stat_batch)}",
        "config_hash": "00000000", "config": config, "status": status, "dataset": "cifar10",
        "data_fingerprint": fingerprint, "train_images": 5000, "test_images": 1000, "model": model, "norm": norm,
        "norm_tag": tag, "norm_params": {"eps": 1e-5}, "norm_sites": ["conv1.pre_act"], "placement": "pre_act",
        "batch_size": bs, "lr": base_lr * bs / 32, "base_lr": base_lr, "epochs": epochs, "seed": seed,
        "augment": augment, "target_acc": target_acc, "params": 89706, "history": history, "total_s": 10.0,
        "peak_mem_mb": 100.0, "peak_mem_kind": "cpu_peak_rss_growth", "device": "test", "accelerator": "cpu",
        "precision": "32-true", "torch": "x", "lightning": "x", "normbench": "x", "git_rev": None,
        "started_at": None, "finished_at": None,
        "error": None if status == "ok" else "boom", "diverged_at_step": 7 if status == "diverged" else None,
        "stat_batch": stat_batch,
    }


def seeds(tag: str, bs: int, accs: list[float], **kw) -> list[dict]:
    return [record(tag, bs, s, a, **kw) for s, a in enumerate(accs)]


def write_runs(root: Path, recs: list[dict]) -> Path:
    for rec in recs:
        write_record(root / rec["run_key"], rec)
    return root
