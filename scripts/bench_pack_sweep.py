"""Wall time of one 8-seed sweep at batch 2, packed (``trainer.pack=auto``) against one run at a
time (``trainer.pack=1``): what a user waits for, start-up, test passes and checkpoints included.

    python scripts/bench_pack_sweep.py --data-root /path/with/cifar-10-batches-py [--norm bn]

Each variant runs ``--repeats`` times, alternating, into fresh folders; the ratio is the median
of the per-repeat ratios. Numbers go to stdout and ``--csv``. Both variants get ``--threads``
torch threads (default: every core): left to ``trainer.threads=null``, a sweep would take the
cores left idle by the load average, which the previous variant has just raised, so the two
would run with different thread counts.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(root: str, runs: Path, norm: str, seeds: int, epochs: int, train_size: int, pack: str,
          threads: int) -> float:
    cmd = [sys.executable, "-m", "normbench.cli", "train", "-m", f"norm={norm}", "batch_size=2",
           f"seed={','.join(map(str, range(seeds)))}", f"epochs={epochs}", f"data.train_size={train_size}",
           f"data.root={root}", "data.download=false", f"paths.runs={runs}", f"paths.logs={runs}/logs",
           "trainer.progress=none", f"trainer.pack={pack}", f"trainer.threads={threads}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or f"Sweep done: {seeds} runs ({seeds} ok)" not in done.stdout:
        raise SystemExit(f"sweep failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--norm", default="bn")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads of every sweep (default: this process's cores)")
    ap.add_argument("--csv", default="results/bench/pack_sweep.csv")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            times = {}
            for pack in ("1", "auto"):
                times[pack] = sweep(args.data_root, Path(tmp) / f"{pack}-{r}", args.norm, args.seeds, args.epochs,
                                    args.train_size, pack, args.threads)
            rows.append({"repeat": r, "norm": args.norm, "seeds": args.seeds, "epochs": args.epochs, "threads": args.threads,
                         "train_size": args.train_size, "alone_s": times["1"], "packed_s": times["auto"],
                         "speedup": times["1"] / times["auto"]})
            print(f"repeat {r}: one at a time {times['1']:.1f} s, packed {times['auto']:.1f} s, "
                  f"{rows[-1]['speedup']:.2f}x", flush=True)
    print(f"median speedup: {statistics.median(r['speedup'] for r in rows):.2f}x")
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
