"""Which jobs of a sweep share a step: the plan the packing sweeper launches.

A sweep's jobs are grouped by setup (their configs equal but for the seed); each group's
seeds are cut into packs of at most K, and a pack is launched as one job whose
``trainer.pack_seeds`` lists them (``normbench.runner.run_pack``). Every launcher runs it
like any job, so packs work the same locally, in parallel and on Slurm.

K comes from ``trainer.pack``: ``auto`` packs only where it was measured to be faster
(``docs/measurements/cpu_pack.csv``, 2-core CPU: 1.4-1.9x at batch 2, 1.1-1.3x at batch 8,
0.6-1.0x at batch 32) and keeps a pack's step at most ``PACK_IMAGES`` images, the size of
one batch-32 step, so a pack needs no more activation memory than a batch-32 run (its
weights and optimizer state grow K-fold: about 1.1 MB per member for ``convnet``); ``1`` turns
packing off; ``N`` caps K at N whatever the batch size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from normbench.norms import TRAITS

PACK_MAX_BATCH = 8  # auto: batch sizes above this train unpacked (slower packed on the CPU)
PACK_IMAGES = 32  # auto: K * batch_size at most this
PACK_MAX_K = 16  # auto: the largest K measured

#: The configs of this process's sweep, one per run (set by the sweeper before it launches):
#: the sweep summary finds each run's outcome in its run directory from them, which works
#: for every launcher (a Slurm job's return value never reaches this process's callbacks).
SWEPT: list[dict[str, Any]] = []


def pack_limit(c: Mapping[str, Any]) -> int:
    """The most runs of ``c``'s setup one job may train packed (1: none)."""
    t = c.get("trainer") or {}
    norm = (c.get("norm") or {}).get("name")
    # `none` places no norm layer, so there is nothing that could fail to pack.
    if t.get("pack_seeds") or t.get("cuda_graphs") or (norm in TRAITS and norm != "none" and TRAITS[norm].pack is None):
        return 1
    setting, batch = t.get("pack", "auto"), c.get("batch_size")
    if setting == "auto":
        if not isinstance(batch, int) or batch > PACK_MAX_BATCH:
            return 1
        return max(1, min(PACK_MAX_K, PACK_IMAGES // batch))
    return setting if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1 else 1


def setup_of(c: Mapping[str, Any]) -> str:
    """What the jobs of one pack must share: the whole config but its seed."""
    rest = {key: value for key, value in c.items() if key not in ("seed", "hydra")}
    return json.dumps(rest, sort_keys=True, default=str)


def plan_packs(jobs: Sequence[Sequence[str]], configs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The jobs to launch: ``jobs[i]`` (a job's overrides, composing to ``configs[i]``) as
    they are, or several of one setup as one job with ``trainer.pack_seeds``."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        seed = c.get("seed")
        packs = pack_limit(c) > 1 and isinstance(seed, int) and not isinstance(seed, bool)
        groups.setdefault(setup_of(c) if packs else f"#{i}", []).append(i)
    planned: list[tuple[int, list[str]]] = []
    for members in groups.values():
        limit = pack_limit(configs[members[0]])
        if len(members) == 1 or limit <= 1:
            planned += [(i, list(jobs[i])) for i in members]
            continue
        by_seed: dict[int, int] = {}
        for i in members:
            by_seed.setdefault(configs[i]["seed"], i)
        duplicates = [i for i in members if i not in by_seed.values()]  # the same run twice: launched as is
        seeds = sorted(by_seed)
        for start in range(0, len(seeds), limit):
            chunk = seeds[start:start + limit]
            first = by_seed[chunk[0]]
            if len(chunk) == 1:
                planned.append((first, list(jobs[first])))
            else:
                overrides = [o for o in jobs[first] if not o.startswith("trainer.pack_seeds=")]
                planned.append((first, overrides + [f"trainer.pack_seeds=[{','.join(map(str, chunk))}]"]))
        planned += [(i, list(jobs[i])) for i in duplicates]
    return [overrides for _, overrides in sorted(planned, key=lambda p: p[0])]


def run_dir_of(raw: Mapping[str, Any], read_data: bool = True) -> Path | None:
    """The run directory of one sweep job's config (as in ``SWEPT``), or None for a config that
    cannot run (its job says why). The data's fingerprint comes from its cache; where it is
    not cached, the data are read, or with ``read_data=False`` None is returned."""
    from omegaconf import OmegaConf

    from normbench.checks import check_batch_fits, check_config
    from normbench.records import experiment_config, run_key
    from normbench.splits import data_identity

    try:
        c = OmegaConf.to_container(OmegaConf.create(dict(raw)), resolve=True)
        assert isinstance(c, dict)
        check_config(c)
        identity = data_identity(c, cached_only=not read_data)
        if identity is None:
            return None
        check_batch_fits(c, identity)
        return Path(c["paths"]["runs"]) / run_key(experiment_config(c, identity.fingerprint))
    except Exception:  # noqa: BLE001 - any config that cannot run is launched, and its job reports it
        return None


def finished_record(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of this sweep job's run when it has finished (``ok`` or ``diverged``: a launch
    would only skip it), said as a skip; else None. Never reads data: the launching process
    must not download any (an uncached fingerprint means "launch it")."""
    from normbench.records import FINISHED, read_record
    from normbench.runner import skip_finished

    run_dir = run_dir_of(raw, read_data=False)
    record = read_record(run_dir) if run_dir else None
    return skip_finished(record) if record and record.get("status") in FINISHED else None


#: What ``status_of`` says of a run that has no record yet but is not being trained elsewhere.
UNFINISHED = ("interrupted", "not finished")


def status_of(run_dir: Path) -> str:
    """What a run directory says of its run: its record's status (``ok``, ``diverged``,
    ``failed``), or without a record ``running elsewhere`` (another launch holds its lock),
    ``interrupted`` (stopped by a signal) or ``not finished``."""
    from normbench.records import INTERRUPTED, lock_holder, read_record

    record = read_record(run_dir)
    if record:
        return str(record.get("status", "?"))
    if lock_holder(run_dir):
        return "running elsewhere"
    return "interrupted" if (run_dir / INTERRUPTED).exists() else "not finished"
