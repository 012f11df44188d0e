"""Check normbench's GPU path and measure it, in one call (a lent GPU comes for minutes).

    python scripts/gpu_check.py --data-root DIR [--out DIR] [--budget-s 480]

1. GPU path: real short runs of ``convnet`` (bn, gn) through ``normbench.train.run``, in one
   process as a sweep runs them, largest batch first, in three modes: fp32; bf16-mixed with
   channels_last; and bf16-mixed, channels_last and ``trainer.cuda_graphs=true``. Each run
   must end ``ok`` and record ``peak_mem_kind: cuda_max_allocated``; peaks that fall with the
   batch size show the counter is reset per run (without the reset every later run would
   report the first run's peak).
2. Throughput of those runs (images/s, first epoch left out: it holds the compile), from the
   records through ``normbench.derived``.
3. The overhead benchmark (``normbench.bench``): normbench vs a plain PyTorch loop, fp32.
4. ``--parts norms``: every newer norm (normbench/configs/norm) for one epoch at batch 32 in bf16-mixed
   with channels_last, then with cuda_graphs: that each runs on the GPU, and at what speed.
5. ``--parts pack``: packing on the GPU. A pack of 4 seeds (bn, batch 2, fp32 and bf16-mixed with
   channels_last; 128 steps) through ``normbench.train.run``: every member must end ``ok``, and in
   fp32 its test accuracy must equal the same seed run alone within 5 test images, as
   ``tests/test_packed_runs.py`` asks on the CPU. Then the packing
   benchmark (``normbench.bench_pack``) at batch 2, 8 and 32 with K = 1, 4 and 16 (issue #11's
   GPU target: K = 16 at batch 2 >= 8x). Packs do not capture CUDA graphs yet.

Writes ``gpu_runs.csv`` and ``overhead.csv`` (and ``gpu_newer_norms.csv``, ``gpu_pack_runs.csv``
and ``gpu_pack.csv`` for those parts) under ``--out`` and prints the tables. Each part
checks the remaining budget first and says what it skipped.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "fp32": ["trainer.precision=32-true"],
    "bf16+cl": ["trainer.precision=bf16-mixed", "trainer.channels_last=true"],
    "bf16+cl+graphs": ["trainer.precision=bf16-mixed", "trainer.channels_last=true", "trainer.cuda_graphs=true"],
}


NEWER = ["sn", "pn", "bgn", "cbn", "frn", "sabn", "brn", "evonorm_b0", "evonorm_s0", "gn_ws"]


def _run_one(overrides: list[str]) -> tuple[dict, float]:
    from hydra import compose, initialize_config_dir

    from normbench.train import CONFIG_DIR, run

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    t0 = time.perf_counter()
    try:
        rec = run(cfg)
    except Exception as err:  # noqa: BLE001 - a check script: report and go on
        rec = {"status": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return rec, time.perf_counter() - t0


def newer_norm_runs(data_root: str, runs: Path, deadline: float, modes: tuple[bool, ...] = (False, True)) -> list[dict]:
    from normbench.derived import derive

    rows = []
    for graphs in modes:
        for norm in NEWER:
            if time.monotonic() > deadline:
                print(f"skipped (budget): {norm} graphs={graphs}", flush=True)
                continue
            mode = "bf16+cl" + ("+graphs" if graphs else "")
            rec, wall = _run_one([f"norm={norm}", "batch_size=32", "epochs=2", "data.train_size=2048",
                                  f"data.root={data_root}", "data.download=false", f"paths.runs={runs / mode}",
                                  "trainer.progress=none", "trainer.accelerator=gpu", *MODES[mode]])
            d = derive(rec.get("history") or [])
            rows.append({"mode": mode, "norm": norm, "batch_size": 32, "status": rec["status"],
                         "images_per_s": d["train_images_per_s"], "test_acc": d["test_acc"],
                         "peak_mem_mb": rec.get("peak_mem_mb"), "wall_s": wall, "error": rec.get("error")})
            r = rows[-1]
            print(f"{mode:>15} {norm:<11} {r['status']:<8} {r['images_per_s'] or 0:9.0f} img/s  "
                  f"acc {r['test_acc'] or 0:.3f}  {wall:.1f} s  {r['error'] or ''}", flush=True)
    return rows


def pack_runs(data_root: str, runs: Path, accelerator: str = "gpu") -> list[dict]:
    """A pack of 4 seeds in each mode, and in fp32 each seed alone: rows per member."""
    from normbench.derived import derive

    seeds = [0, 1, 2, 3]
    rows = []
    for mode, pack in (("fp32", True), ("fp32", False), ("bf16+cl", True)):
        if accelerator != "gpu" and mode != "fp32":
            continue
        base = ["norm=bn", "batch_size=2", "epochs=1", "data.train_size=256", f"data.root={data_root}",
                "data.download=false", "trainer.progress=none", f"trainer.accelerator={accelerator}", *MODES[mode]]
        where = runs / f"{mode}-{'packed' if pack else 'alone'}"
        if pack:
            rec, wall = _run_one([*base, f"paths.runs={where}", f"trainer.pack_seeds={seeds}"])
            records = rec.get("runs") or [rec]
        else:
            records, wall = [], 0.0
            for seed in seeds:
                rec, w = _run_one([*base, f"paths.runs={where}", f"seed={seed}"])
                records.append(rec)
                wall += w
        for rec in records:
            d = derive(rec.get("history") or [])
            rows.append({"mode": mode, "packed": pack, "seed": rec.get("seed"), "status": rec["status"],
                         "packed_with": len(rec.get("packed_with") or []), "test_acc": d["test_acc"],
                         "test_images": rec.get("test_images"), "images_per_s": d["train_images_per_s"],
                         "wall_s": wall, "error": rec.get("error")})
            r = rows[-1]
            print(f"{mode:>8} {'packed' if pack else 'alone':<6} seed {r['seed']} {r['status']:<8} "
                  f"acc {r['test_acc'] or 0:.4f}  {r['images_per_s'] or 0:7.0f} img/s  {r['error'] or ''}", flush=True)
    return rows


def pack_problems(rows: list[dict]) -> list[str]:
    """What is wrong with ``pack_runs``' rows: a member not ``ok``, a packed member without
    its siblings, or an fp32 member whose test accuracy is not its alone run's (5 images)."""
    problems = [f"{r['mode']} {'packed' if r['packed'] else 'alone'} seed {r['seed']}: {r['status']} {r['error']}"
                for r in rows if r["status"] != "ok"]
    problems += [f"{r['mode']} seed {r['seed']}: packed with {r['packed_with']} runs, not 3"
                 for r in rows if r["packed"] and r["status"] == "ok" and r["packed_with"] != 3]
    alone = {r["seed"]: r for r in rows if r["mode"] == "fp32" and not r["packed"] and r["status"] == "ok"}
    for r in rows:
        if r["mode"] == "fp32" and r["packed"] and r["seed"] in alone and r["test_acc"] is not None:
            images = abs(r["test_acc"] - alone[r["seed"]]["test_acc"]) * r["test_images"]
            if images > 5 + 1e-6:
                problems.append(f"fp32 seed {r['seed']}: packed test accuracy differs from alone by "
                                f"{images:.0f} test images")
    return problems


def gpu_runs(data_root: str, runs: Path, deadline: float, accelerator: str = "gpu") -> list[dict]:
    from hydra import compose, initialize_config_dir

    from normbench.derived import derive
    from normbench.train import CONFIG_DIR, run

    plan = [(mode, norm, b) for mode in MODES for norm in ("bn", "gn")
            for b in ((32, 2) if mode.endswith("graphs") else (128, 32, 2))
            if accelerator == "gpu" or mode == "fp32"]
    rows = []
    for mode, norm, batch in plan:
        if time.monotonic() > deadline:
            print(f"skipped (budget): {mode} {norm} bs{batch}", flush=True)
            continue
        overrides = [f"norm={norm}", f"batch_size={batch}", "epochs=2", "data.train_size=2048",
                     f"data.root={data_root}", "data.download=false", f"paths.runs={runs / mode}",
                     "trainer.progress=none", f"trainer.accelerator={accelerator}", *MODES[mode]]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        t0 = time.perf_counter()
        rec = run(cfg)
        d = derive(rec.get("history") or [])
        rows.append({"mode": mode, "norm": norm, "batch_size": batch, "status": rec["status"],
                     "images_per_s": d["train_images_per_s"], "test_acc": d["test_acc"],
                     "peak_mem_mb": rec.get("peak_mem_mb"), "peak_mem_kind": rec.get("peak_mem_kind"),
                     "wall_s": time.perf_counter() - t0, "device": rec.get("device"), "error": rec.get("error")})
        r = rows[-1]
        print(f"{mode:>15} {norm} bs{batch:<4} {r['status']:<8} {r['images_per_s'] or 0:9.0f} img/s  "
              f"acc {r['test_acc'] or 0:.3f}  peak {r['peak_mem_mb'] or 0:7.1f} MB ({r['peak_mem_kind']})  "
              f"{r['wall_s']:.1f} s", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True, help="a folder holding cifar-10-batches-py/")
    ap.add_argument("--out", default="results/bench", help="where the CSV files go")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting new parts after this many seconds")
    ap.add_argument("--parts", nargs="+", default=["path", "bench"], choices=["path", "bench", "norms", "pack"],
                    help="what to run (default: path bench)")
    ap.add_argument("--graphs-only", action="store_true", help="norms: only the cuda_graphs mode")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU here; this script checks the GPU path", file=sys.stderr)
        return 2
    logging.getLogger("normbench").setLevel(logging.WARNING)
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    if "pack" in args.parts:
        with tempfile.TemporaryDirectory(prefix="normbench-gpu-") as tmp:
            rows = pack_runs(args.data_root, Path(tmp))
        _write(rows, out / "gpu_pack_runs.csv")
        problems = pack_problems(rows)
        print(f"packs on the GPU: {'ok' if not problems else 'FAILED'}", flush=True)
        for p in problems:
            print(f"  {p}", flush=True)
        from normbench.bench_pack import main as bench_pack_main

        bench_pack_main(["--batch-sizes", "2", "8", "32", "--ks", "1", "4", "16", "--steps", "30", "--repeats", "2",
                         "--csv", str(out / "gpu_pack.csv")])
        if not ({"path", "norms"} & set(args.parts)):
            return 1 if problems else 0
    if "norms" in args.parts:
        with tempfile.TemporaryDirectory(prefix="normbench-gpu-") as tmp:
            rows = newer_norm_runs(args.data_root, Path(tmp), start + args.budget_s,
                                   (True,) if args.graphs_only else (False, True))
        _write(rows, out / "gpu_newer_norms.csv")
        bad = [r for r in rows if r["status"] != "ok"]
        print(f"newer norms on the GPU: {len(rows) - len(bad)}/{len(rows)} runs ok", flush=True)
        if "path" not in args.parts:
            return 1 if bad else 0
    with tempfile.TemporaryDirectory(prefix="normbench-gpu-") as tmp:
        rows = gpu_runs(args.data_root, Path(tmp), start + args.budget_s * 0.5)
    if rows:
        _write(rows, out / "gpu_runs.csv")
    bad = [r for r in rows if r["status"] != "ok" or r["peak_mem_kind"] != "cuda_max_allocated"]
    print(f"GPU path: {len(rows) - len(bad)}/{len(rows)} runs ok with a per-run CUDA peak", flush=True)
    for r in bad:
        print(f"  FAILED {r['mode']} {r['norm']} bs{r['batch_size']}: {r['status']} {r['error']}", flush=True)
    left = args.budget_s - (time.monotonic() - start)
    if left < 120:
        print(f"overhead benchmark skipped: {left:.0f} s of budget left", flush=True)
        return 1 if bad else 0
    from normbench.bench import main as bench_main

    bench_main(["--repeats", "2", "--data-root", args.data_root, "--csv", str(out / "overhead.csv")])
    print(f"total {time.monotonic() - start:.0f} s", flush=True)
    return 1 if bad else 0


def _write(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
