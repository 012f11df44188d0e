"""Setups and studies: which runs may be averaged, and which may be compared.

- A **setup** is everything that changes a run's numbers except its seed: the record's
  ``config`` (the hashed experiment config, the data's fingerprint included) without
  ``seed``. Only runs of one setup are averaged as seeds.
- A **study** is a set of setups that differ only in the norm and/or the batch size (and
  what those imply: the lr under linear scaling follows from ``optim``, which is shared).
  Claims compare setups of one study, never across studies.
- A **table** shows the setups of one dataset (by fingerprint), model and budget; its rows
  are labelled by norm tag plus any other key that varies between them and that the row
  sets (plain BN beside ghost-batch BN is ``bn``, not ``bn · norm.stat_batch=null``), so two
  setups are never one row.

Torch-free: the report imports it. Records of schema 1 have no ``config``; their setup is
rebuilt from the flat fields they do have, and their data are "not recorded".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from normbench.budget import budget_label

#: Keys that tell setups of one study apart (besides the seed, which tells runs apart).
STUDY_VARIES = ("batch_size",)
NORM_PREFIX = "norm."
UNKNOWN_DATA = "not recorded"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"base_lr": 0.02}}`` -> ``{"optim.base_lr": 0.02}``; lists as JSON text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def flat_config(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A record's experiment config as dotted keys: its ``config`` (schema 2), or what a
    schema-1 record says of itself."""
    if isinstance(rec.get("config"), Mapping):
        flat = flatten(rec["config"])
        flat.setdefault("norm.tag", flat.get("norm.name"))
        return flat
    params = rec.get("norm_params") if isinstance(rec.get("norm_params"), Mapping) else {}
    flat = {"data.name": rec.get("dataset"), "data.fingerprint": None, "data.augment": rec.get("augment"),
            "model.name": rec.get("model"), "norm.name": rec.get("norm"), "norm.tag": rec.get("norm_tag"),
            "norm.placement": rec.get("placement"), "optim.base_lr": rec.get("base_lr"),
            "batch_size": rec.get("batch_size"), "epochs": rec.get("epochs"), "seed": rec.get("seed")}
    flat.update({f"norm.{k}": (json.dumps(v) if isinstance(v, list) else v) for k, v in params.items()})
    return flat


def _digest(flat: Mapping[str, Any], drop: set[str], prefixes: tuple[str, ...] = ()) -> str:
    kept = {k: v for k, v in flat.items() if k not in drop and not k.startswith(prefixes)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def setup_id(flat: Mapping[str, Any]) -> str:
    return _digest(flat, {"seed"})


def study_id(flat: Mapping[str, Any]) -> str:
    return _digest(flat, {"seed", *STUDY_VARIES}, (NORM_PREFIX,))


def data_label(row: Mapping[str, Any]) -> str:
    """``cifar10 (data 1a2b3c4d, 5170 train / 1017 test)``."""
    fp = row.get("data_fingerprint")
    if not isinstance(fp, str):
        return f"{row['dataset']} (data {UNKNOWN_DATA})"
    sizes = ""
    if pd.notna(row.get("train_images")) and pd.notna(row.get("test_images")):
        sizes = f", {int(row['train_images'])} train / {int(row['test_images'])} test"
    return f"{row['dataset']} (data {fp[:8]}{sizes})"


def _fmt(value: Any) -> str:
    """A config value as the user wrote it in YAML: null, true/false, numbers, text."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "null"
    return json.dumps(value) if isinstance(value, bool) else str(value)


def annotate(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Add ``setup_id``, ``study_id``, ``data_label``, ``table``, ``row_label`` and
    ``study_label`` columns to a frame of records; return it and, per table, the keys that
    vary between its setups."""
    df = df.copy()
    flats = [flat_config(rec) for rec in df.to_dict("records")]
    df["setup_id"] = [setup_id(f) for f in flats]
    df["study_id"] = [study_id(f) for f in flats]
    df["data_label"] = [data_label(rec) for rec in df.to_dict("records")]
    df["table"] = [f"{d} / {m}, {budget_label(f, e)}" for d, m, e, f in zip(df.data_label, df.model, df.epochs, flats)]
    labels: list[str] = [""] * len(df)
    study_labels: list[str] = [""] * len(df)
    varying_by_table: dict[str, list[str]] = {}
    for table, idx in df.groupby("table", sort=True).groups.items():
        rows = [(i, flats[df.index.get_loc(i)]) for i in idx]
        keys = sorted({k for _, f in rows for k in f} - {"seed"})
        varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for _, f in rows}) > 1]
        varying_by_table[table] = varying
        for i, f in rows:
            tag = str(f.get("norm.tag"))
            same_tag = [g for _, g in rows if str(g.get("norm.tag")) == tag]
            extras = []
            for k in varying:
                if k in ("batch_size", "norm.tag") or k.startswith("data.fingerprint"):
                    continue
                if k.startswith(NORM_PREFIX) and len({json.dumps(g.get(k), default=str) for g in same_tag}) == 1:
                    continue  # a norm parameter that only differs between different norms
                if k not in f:
                    continue  # not set: records leave a key out at its default (records.NEUTRAL), e.g. plain BN
                extras.append(f"{k}={_fmt(f.get(k))}")
            labels[df.index.get_loc(i)] = tag + (f" · {', '.join(extras)}" if extras else "")
            others = [e for e in extras if not e.startswith(NORM_PREFIX)]
            study_labels[df.index.get_loc(i)] = table + (f" · {', '.join(others)}" if others else "")
    df["row_label"] = labels
    df["study_label"] = study_labels
    return df, varying_by_table


def varying_summary(varying: list[str]) -> str:
    """``norm, batch_size, optim.base_lr``: the varying keys, norm keys folded into ``norm``."""
    names = {"norm" if k.startswith(NORM_PREFIX) else k for k in varying}
    first = [k for k in ("norm", "batch_size") if k in names]
    return ", ".join(first + sorted(names - set(first))) or "nothing (one setup)"


def fixed_summary(flat: Mapping[str, Any]) -> str:
    """The keys a study's setups share (every key but seed, batch size and norm): the setup
    a verdict holds for."""
    kept = {k: v for k, v in flat.items() if k not in {"seed", *STUDY_VARIES} and not k.startswith(NORM_PREFIX)}
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(kept.items()))
