"""``normbench train|report|data|bench``: one console script, one module per command.

``train`` hands its arguments to Hydra unchanged (overrides, ``-m``, ``--help``,
``--cfg job``); the other commands use argparse.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

USAGE = """\
usage: normbench <command> [args]

commands:
  train [-m] [overrides]   train one config, or a sweep with -m (Hydra); --help lists groups and presets
  report [RUNS] [--out D]  tables, figures and claim verdicts from finished runs
  data check [--root D]    which datasets are found where, and their sizes
  bench [args]             training-step overhead vs a plain PyTorch loop

examples:
  normbench train norm=gn batch_size=4 data.root=~/datasets
  normbench train -m norm=bn,gn batch_size=2,8,32 seed=0,1,2
  normbench train -m experiment=gn_vs_bn
  normbench report results/runs --out results/report
"""


def data_command(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from normbench import data as datamod
    from normbench.errors import DataError

    ap = argparse.ArgumentParser(prog="normbench data", description="Inspect the datasets normbench reads.")
    ap.add_argument("action", choices=["check"])
    ap.add_argument("--root", default=os.environ.get("NORMBENCH_DATA_ROOT", "data"),
                    help="the data.root to look in (default: data, or $NORMBENCH_DATA_ROOT)")
    args = ap.parse_args(argv)
    root = Path(args.root).expanduser()
    table = Table(title=f"datasets under {root}")
    for col in ("dataset", "found at", "train", "test", "classes"):
        table.add_column(col)
    for name, spec in datamod.DATASETS.items():
        where = datamod.find(spec, root)
        if where is None:
            table.add_row(name, f"[yellow]not found[/]: expected {datamod.expected_files(spec, root)}", "-", "-", "-")
            continue
        try:
            ds = datamod.load_dataset(name, root, allow_download=False)
            table.add_row(name, where, str(len(ds.train_y)), str(len(ds.test_y)), str(ds.num_classes))
        except DataError as err:
            table.add_row(name, f"[red]unreadable[/]: {err}", "-", "-", "-")
    Console().print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from normbench import train

        sys.argv = ["normbench train", *rest]
        train.main()
        return 0
    if command == "report":
        from normbench import report

        return report.main(rest)
    if command == "data":
        return data_command(rest)
    if command == "bench":
        from normbench import bench

        return bench.main(rest)
    print(f"normbench: unknown command {command!r}; allowed: train, report, data, bench (see normbench --help)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
