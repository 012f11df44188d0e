"""``normbench train``: the Hydra entry point. One config -> one run directory; with ``-m`` a
sweep, whose jobs the sweeper (``normbench.sweep``) may pack several seeds into.

The run lifecycle is ``normbench.runner``; config checks ``normbench.checks``; the data
``normbench.splits``; facts about the machine ``normbench.environment``; a pack's training
``normbench.packed``. Errors a user can fix end in one line (exit status 2) and leave nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from normbench.errors import NormbenchError
from normbench.rundir import make_run_dir  # noqa: F401 - part of this module's interface
from normbench.runner import run

log = logging.getLogger("normbench")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # inside the package: a wheel carries it


def _quiet_lightning() -> None:
    """Drop two lines of Lightning's output that say nothing about the run: an advert for a
    cloud logger, and a deprecation inside Lightning itself (its use of torch's LeafSpec)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # we log per epoch
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # resume
    # Where Slurm is installed, Lightning suggests `srun` for multi-node training; a normbench
    # run is one process on one device, launched through Slurm by hydra/launcher=slurm.
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system but is not used.*")


_quiet_lightning()


class SacctOnce(logging.Filter):
    """submitit warns ``Bypassing sacct error ...`` at every poll where ``sacct`` fails, and
    prints each of its warnings three times (two handlers of its own, and Hydra's). Where
    sacct is off for good, normbench reads squeue instead (``normbench.slurm``); for a
    cluster whose sacct fails now and then, say once what it means and drop the repeats."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in str(record.msg):
            return True
        if not SacctOnce.said:
            SacctOnce.said = True
            log.warning("Slurm's sacct did not answer (%s): job states may lag; what each run did is in its run "
                        "directory, which the sweep summary reads (said once)", str(record.msg).split("error ", 1)[-1])
        return False


logging.getLogger("submitit").addFilter(SacctOnce())


# --- entry point -----------------------------------------------------------------------------


#: Jobs of this process's sweep that ended in a user error (``normbench train`` exits 2 if any).
SWEEP_ERRORS: list[str] = []
#: Runs of this process's sweep without a record at its end: cancelled, interrupted, or a job
#: that ended without finishing (``normbench train`` exits 1 if any; a relaunch finishes them).
SWEEP_UNFINISHED: list[str] = []


class SweepSummary(Callback):
    """Hydra callback: after a sweep, count its runs (a packed job holds several) and say
    where they are and how to look at them."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.errors: list[str] = []

    def from_run_dirs(self) -> list[str]:
        """Each of the sweep's runs' status, read from its run directory (``ok``, ``diverged``,
        ``failed``; without a record ``running elsewhere`` (another launch trains it now),
        ``interrupted`` or ``not finished``; ``error`` for a config that could not run): what
        happened on any launcher, a cluster's included."""
        from normbench.sweep import SWEPT, run_dir_of, status_of

        dirs = [run_dir_of(raw) for raw in SWEPT]
        return [status_of(d) if d else "error" for d in dirs]  # a config that cannot run was reported by its job

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, dict) and isinstance(value.get("runs"), list):
            self.statuses += [r.get("status", "?") for r in value["runs"]]
        elif isinstance(value, dict) and value.get("status") == "error":
            self.statuses.append("error")
            self.errors.append(str(value.get("error")))
        else:
            self.statuses.append(value.get("status", "?") if isinstance(value, dict) else "error")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        runs = config.paths.runs
        statuses = self.from_run_dirs() or self.statuses
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(dict.fromkeys(statuses)))
        print(f"\nSweep done: {len(statuses)} runs ({counts}) under {runs}")
        for error in dict.fromkeys(self.errors):
            print(f"  error: {error}")
        from normbench.sweep import UNFINISHED

        SWEEP_UNFINISHED[:] = [s for s in statuses if s in UNFINISHED]
        if SWEEP_UNFINISHED:
            print(f"  {len(SWEEP_UNFINISHED)} runs did not finish: launch the same command again to finish them "
                  "(finished runs are skipped, the others resume from their checkpoints)")
        print(f"  curves: tensorboard --logdir {runs}\n  tables: normbench report {runs}")


#: The nearest folder at or above ``paths.logs`` that existed before this command (set by
#: ``normbench.cli``): what a config error may not remove.
LOGS_KEPT_FROM: Path | None = None


def _forget_run_logs() -> None:
    """Remove the log folder Hydra made for this run before its config was found wrong, and the
    folders above it that this command created: a config error leaves nothing behind."""
    try:
        out = Path(HydraConfig.get().runtime.output_dir).absolute()
    except ValueError:  # not under Hydra
        return
    shutil.rmtree(out, ignore_errors=True)
    if LOGS_KEPT_FROM is None:
        return
    for parent in out.parents:
        if parent == LOGS_KEPT_FROM or LOGS_KEPT_FROM not in parent.parents:
            break
        try:
            parent.rmdir()  # only an empty folder: this command made it
        except OSError:
            break


def _in_sweep() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    try:
        return run(cfg)
    except NormbenchError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # `normbench train --verbose` sets it
            raise
        print(f"error: {err}", file=sys.stderr)
        if _in_sweep():  # one bad job (a batch size too large for the data) does not stop the others
            SWEEP_ERRORS.append(str(err))
            return {"status": "error", "error": str(err)}
        _forget_run_logs()
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
