"""``normbench bench`` / ``scripts/bench_overhead.py``: normbench's training path against a
hand-written PyTorch loop, step for step.

For each norm and batch size, the same model (same seed), the same device-resident data
and augmentation (``DeviceLoader``), and the same number of SGD steps run through

  (a) a minimal loop: forward, cross-entropy, backward, optimizer and scheduler step;
  (b) ``normbench.train.run``: the Lightning Trainer with everything a user's run gets
      (checkpoint callback, TensorBoard logger, per-epoch test pass and record, the
      divergence check, and the default ``trainer.progress=auto``: the rich progress bar on
      a terminal, none when the output goes to a file).

Both are timed the same way: the training phase of epochs 2..E (the first epoch carries
one-off warm-up costs; the test pass and the checkpoint at epoch end are not training
steps, and (a) has none). (a) and (b) alternate ``--repeats`` times against machine noise;
the ratio b/a of images/s is the median over repeats. Results also go to a CSV.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_NORMS = ("bn", "gn", "lrn_within", "none")
DEFAULT_BATCHES = (2, 8, 32, 128)
TARGETS = {2: 0.80, 8: 0.80, 32: 0.90, 128: 0.90}  # issue #6, on the 2-core CPU


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(cfg: Any, epochs: int) -> float:
    """Images/s of a minimal hand-written loop over the same data, model and schedule."""
    import lightning as L
    from omegaconf import OmegaConf

    from normbench import data as datamod
    from normbench.models import build_model
    from normbench.optim import build_optimizer, build_scheduler, scaled_lr
    from normbench.splits import prepare_data

    c = OmegaConf.to_container(cfg, resolve=True)
    device = torch.device("cuda" if torch.cuda.is_available() and c["trainer"]["accelerator"] != "cpu" else "cpu")
    ds, train_x, train_y, _, _ = prepare_data(c)
    L.seed_everything(c["seed"], verbose=False)
    model = build_model(c["model"], c["norm"], ds.image_shape, ds.num_classes).to(device).train()
    mean, std = ds.channel_stats()
    loader = datamod.DeviceLoader(train_x, train_y, c["batch_size"], mean, std, augment=c["data"]["augment"],
                                  shuffle=True, drop_last=True, seed=c["seed"], device=device)
    o = c["optim"]
    opt = build_optimizer(model.parameters(), o, scaled_lr(o["base_lr"], c["batch_size"], o["base_batch"], o["lr_scaling"]))
    sched = build_scheduler(opt, o, epochs, len(loader))
    seconds, images = 0.0, 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        _sync(device)
        t0 = time.perf_counter()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        _sync(device)
        if epoch > 0:
            seconds += time.perf_counter() - t0
            images += len(loader) * c["batch_size"]
    return images / seconds


def normbench_path(cfg: Any) -> float:
    """Images/s of ``normbench.train.run`` on a fresh run directory (first epoch excluded)."""
    from normbench.derived import derive
    from normbench.train import run

    rec = run(cfg)
    if rec.get("status") != "ok":
        raise RuntimeError(f"benchmark run ended {rec.get('status')}: {rec.get('error')}")
    return derive(rec["history"])["train_images_per_s"]


def bench_config(norm: str, batch: int, steps: int, epochs: int, runs_dir: Path, data_root: str | None,
                 accelerator: str, repeat: int) -> Any:
    from hydra import compose, initialize_config_dir

    from normbench.train import CONFIG_DIR

    overrides = [f"norm={norm}", f"batch_size={batch}", f"epochs={epochs}", f"data.train_size={steps * batch}",
                 "data.test_size=200", f"paths.runs={runs_dir}", f"trainer.accelerator={accelerator}",
                 "trainer.progress=auto", f"seed={repeat}"]
    if data_root:
        overrides += [f"data.root={data_root}", "data.download=false"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def synthetic_root(folder: Path) -> str:
    """A small CIFAR-10 tree in the official format, when no data root is given (speed
    does not depend on pixel values)."""
    import pickle

    import numpy as np

    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 1000) for i in range(1, 6)), ("test_batch", 500)]:
        with open(root / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f)
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if "--pack" in argv:  # packed training vs separate runs: normbench/bench_pack.py
        from normbench.bench_pack import main as pack_main

        return pack_main([a for a in argv if a != "--pack"])
    import logging
    import os

    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(prog="normbench bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--norms", nargs="+", default=list(DEFAULT_NORMS))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps per epoch (default: 3200 / batch size, within 25..200)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is not timed (default 3)")
    ap.add_argument("--repeats", type=int, default=3, help="alternations of (a) and (b) (default 3)")
    ap.add_argument("--data-root", default=os.environ.get("NORMBENCH_CIFAR10_ROOT"),
                    help="a CIFAR-10 folder (default: $NORMBENCH_CIFAR10_ROOT, else synthetic data)")
    ap.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    ap.add_argument("--csv", default="results/bench/overhead.csv", help="where to write the results")
    args = ap.parse_args(argv)
    for name in ("normbench", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import sys

    console = Console(width=None if sys.stdout.isatty() else 120)
    device = "cuda" if args.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    from normbench.environment import device_name
    from normbench.host_memory import keep_freed_memory

    where = device_name(torch.device(device))
    # Both paths in one process: set before either runs (normbench's runner sets it too), so
    # the plain loop gets the same allocator behaviour as the runs it is compared with.
    malloc = keep_freed_memory()
    console.print(f"normbench bench: {where}; torch {torch.__version__}; freed host memory: {malloc}; "
                  f"{args.epochs - 1} timed epochs of "
                  f"{args.steps or '3200/batch'} steps, {args.repeats} alternations")
    rows = []
    with tempfile.TemporaryDirectory(prefix="normbench-bench-") as tmp:
        data_root = args.data_root or synthetic_root(Path(tmp) / "data")
        for batch in args.batch_sizes:
            for norm in args.norms:
                plain, ours = [], []
                steps = args.steps or min(200, max(25, 3200 // batch))
                for r in range(args.repeats):
                    cfg = bench_config(norm, batch, steps, args.epochs, Path(tmp) / "runs", data_root,
                                       args.accelerator, r)
                    plain.append(plain_loop(cfg, args.epochs))
                    ours.append(normbench_path(cfg))
                ratio = statistics.median(o / p for o, p in zip(ours, plain))
                rows.append({"device": where, "norm": norm, "batch_size": batch, "steps": steps * (args.epochs - 1),
                             "plain_images_per_s": statistics.median(plain),
                             "normbench_images_per_s": statistics.median(ours), "ratio": ratio,
                             "target": TARGETS.get(batch) if device == "cpu" else None})
                console.print(f"  bs {batch:>4} {norm:<11} plain {rows[-1]['plain_images_per_s']:8.0f} img/s  "
                              f"normbench {rows[-1]['normbench_images_per_s']:8.0f} img/s  ratio {ratio:.3f}")
    table = Table(title=f"training throughput, normbench vs a plain PyTorch loop ({where})")
    for col in ("batch", "norm", "plain img/s", "normbench img/s", "ratio b/a", "target"):
        table.add_column(col, justify="right")
    for r in rows:
        ok = r["target"] is None or r["ratio"] >= r["target"]
        table.add_row(str(r["batch_size"]), r["norm"], f"{r['plain_images_per_s']:.0f}", f"{r['normbench_images_per_s']:.0f}",
                      f"[{'green' if ok else 'red'}]{r['ratio']:.3f}[/]", f">= {r['target']:.2f}" if r["target"] else "–")
    console.print(table)
    out = write_rows(rows, Path(args.csv))
    console.print(f"written: {out}")
    return 0


def write_rows(rows: list[dict], path: Path) -> Path:
    """A benchmark's rows as CSV (header from the first row), its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
