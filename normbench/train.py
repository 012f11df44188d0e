"""``normbench train``: the Hydra entry point. One config -> one run directory; with ``-m`` a
sweep, whose jobs the sweeper (``normbench.sweep``) may pack several seeds into.

The run lifecycle is ``normbench.runner``; config checks ``normbench.checks``; the data
``normbench.splits``; facts about the machine ``normbench.environment``; a pack's training
``normbench.packed``. Errors a user can fix end in one line (exit status 2) and leave nothing.
"""

from __future__ import annotations

import logging
import os
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


_quiet_lightning()


class SacctOnce(logging.Filter):
    """submitit polls Slurm's ``sacct`` and, on a cluster without job accounting, warns
    ``Bypassing sacct error ...`` at every poll (three copies each time were seen). Say once
    what it means, then drop the repeats."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in str(record.msg):
            return True
        if SacctOnce.said:
            return False
        SacctOnce.said = True
        record.msg = ("submitit cannot read job states from sacct (no Slurm accounting on this cluster?): it goes on "
                      "polling, and what each run did is in its run directory (the sweep summary reads them); "
                      "this is said once")
        record.args = ()
        return True


logging.getLogger("submitit").addFilter(SacctOnce())


# --- entry point -----------------------------------------------------------------------------


#: Jobs of this process's sweep that ended in a user error (``normbench train`` exits 2 if any).
SWEEP_ERRORS: list[str] = []


class SweepSummary(Callback):
    """Hydra callback: after a sweep, count its runs (a packed job holds several) and say
    where they are and how to look at them."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.errors: list[str] = []

    def from_run_dirs(self) -> list[str]:
        """Each of the sweep's runs' status, read from its run directory (``ok``, ``diverged``,
        ``failed``; ``interrupted`` or ``not finished`` without a record; ``error`` for a config
        that could not run): what happened on any launcher, a cluster's included."""
        from omegaconf import OmegaConf

        from normbench.checks import check_batch_fits, check_config
        from normbench.records import experiment_config, read_record, run_key
        from normbench.splits import data_identity
        from normbench.sweep import SWEPT

        out = []
        for raw in SWEPT:
            try:
                c = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
                assert isinstance(c, dict)
                check_config(c)
                identity = data_identity(c)
                check_batch_fits(c, identity)
                run_dir = Path(c["paths"]["runs"]) / run_key(experiment_config(c, identity.fingerprint))
            except Exception:  # noqa: BLE001 - a config that cannot run was reported by its job
                out.append("error")
                continue
            rec = read_record(run_dir)
            out.append(rec.get("status", "?") if rec else
                       "interrupted" if (run_dir / "interrupted").exists() else "not finished")
        return out

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
        print(f"  curves: tensorboard --logdir {runs}\n  tables: normbench report {runs}")


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
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
