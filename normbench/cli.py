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
usage: normbench <command> [args]   (normbench --version: the installed version)

commands:
  train [-m] [overrides]   train one config, or a sweep with -m (Hydra); --help lists groups and presets;
                           --verbose shows full tracebacks
  report [RUNS] [--out D]  tables, figures and claim verdicts from finished runs
  data check [--root D]    which datasets are found where, and their sizes
  bench [args]             training-step overhead vs a plain PyTorch loop

examples:
  normbench train norm=gn batch_size=4 data.root=~/datasets
  normbench train -m norm=bn,gn batch_size=2,8,32 seed=0,1,2
  normbench train -m experiment=gn_vs_bn
  normbench report results/runs --out results/report
"""


CONFIG_GROUPS = ("data", "model", "norm", "optim", "trainer", "paths", "experiment", "hydra/launcher")
# Launchers that come from Hydra and its submitit plugin rather than from normbench/configs/.
PLUGIN_LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")


def unknown_group_option(overrides: list[str]) -> str | None:
    """One line for the first ``group=option`` naming an option that does not exist.

    Hydra would say it too, over several lines with a hint about a stack trace; this names
    the valid options on one line. Sweep lists (``norm=bn,gn``) are checked item by item;
    Hydra's sweep functions (``choice(...)``, ``glob(...)``) are left to Hydra.
    """
    from normbench.train import CONFIG_DIR

    for item in overrides:
        group, sep, value = item.lstrip("+~").partition("=")
        if not sep or group not in CONFIG_GROUPS or "(" in value:
            continue
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        if group == "hydra/launcher":
            options = sorted({*options, *PLUGIN_LAUNCHERS})
        for option in value.split(","):
            if option not in options and option not in ("null", ""):
                name = group.split("/")[-1]
                return f"{group}={option} is not a known {name}; allowed: {', '.join(options)}"
    return None


def _logs_override(overrides: list[str]) -> str | None:
    """The value a ``paths.logs=`` override gives, or None without one."""
    return next((o.partition("=")[2] for o in overrides if o.lstrip("+").startswith("paths.logs=")), None)


def logs_path(overrides: list[str]) -> Path | None:
    """``paths.logs`` as these overrides set it (default ``results/logs`` under the working
    directory); None for an interpolation, which only Hydra resolves."""
    value = _logs_override(overrides)
    value = "results/logs" if value is None else value
    return None if "$" in value else Path(value).expanduser()


def existing_part(path: Path | None) -> Path | None:
    """The nearest folder at or above ``path`` that exists now."""
    if path is None:
        return None
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def unwritable_logs(overrides: list[str]) -> str | None:
    """One line when ``paths.logs`` (Hydra creates it before a run starts) cannot be created or
    written, checked on its nearest existing folder so that nothing is created here; Hydra
    itself would fail with status 1 and a hint about stack traces."""
    value = _logs_override(overrides)
    if value is None or "$" in value:
        return None  # the default (results/logs under the working directory), or an interpolation
    probe = existing_part(Path(value).expanduser())
    assert probe is not None
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return None
    why = "not a folder" if probe.exists() and not probe.is_dir() else "not writable"
    return f"paths.logs={value!r} cannot be written ({probe} is {why}); set paths.logs to a writable folder"


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
        table.add_column(col, overflow="fold")
    for name, spec in datamod.DATASETS.items():
        where = datamod.find(spec, root)
        if where is None:
            archives = " or ".join(Path(d.url).name for d in spec.downloads[:1])
            hint = f"{spec.folder}/ or {archives}" if len(spec.downloads) == 1 else f"{spec.folder}/ (IDX files)"
            table.add_row(name, f"[yellow]not found[/] (needs {hint})", "-", "-", "-")
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
    if argv[0] in ("--version", "-V"):
        import normbench

        print(f"normbench {normbench.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        if "--verbose" in rest:  # full tracebacks, as Hydra's own HYDRA_FULL_ERROR=1 gives
            rest = [a for a in rest if a != "--verbose"]
            os.environ["HYDRA_FULL_ERROR"] = "1"
        overrides = [a for a in rest if not a.startswith("-")]
        problem = unknown_group_option(overrides) or unwritable_logs(overrides)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        from normbench import train

        train.LOGS_KEPT_FROM = existing_part(logs_path(overrides))
        # Hydra's parser takes -m only before the overrides; accept it anywhere.
        flags = [a for a in rest if a in ("-m", "--multirun")]
        sys.argv = ["normbench train", *flags, *[a for a in rest if a not in flags]]
        train.main()
        return 2 if train.SWEEP_ERRORS else 1 if train.SWEEP_UNFINISHED else 0
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
