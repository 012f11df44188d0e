"""Hydra's basic sweeper, with two changes for normbench (``normbench/configs/hydra/default.yaml``):

- jobs that differ only in their seed are launched as packs (``normbench.sweep``): one job
  trains several runs in one model;
- a job that fails does not stop the sweep: the others run, and the summary reports it;
- runs that already finished are not launched again (on a cluster, a job that would only
  find its record would still wait in the queue for a GPU).

Hydra finds sweepers only in the ``hydra_plugins`` namespace, hence this module's place.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

log = logging.getLogger("normbench")


class PackingSweeper(BasicSweeper):
    def _configs(self, jobs: list[list[str]]) -> list[dict[str, Any]]:
        assert self.hydra_context is not None and self.config is not None
        out = []
        for overrides in jobs:
            cfg = self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                                     sweep_overrides=list(overrides))
            with_hydra = OmegaConf.to_container(cfg, resolve=False)
            assert isinstance(with_hydra, dict)
            with_hydra.pop("hydra", None)
            out.append(with_hydra)
        return out

    def sweep(self, arguments: list[str]) -> Any:
        from normbench import sweep as sweep_mod
        from normbench.sweep import finished_record, plan_packs

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        tic = time.perf_counter()
        configs = self._configs(jobs)
        sweep_mod.SWEPT[:] = configs
        todo = [i for i, c in enumerate(configs) if not finished_record(c)]
        if len(todo) < len(jobs):
            log.info("%d of %d runs already finished: not launched again", len(jobs) - len(todo), len(jobs))
        jobs, configs = [jobs[i] for i in todo], [configs[i] for i in todo]
        planned = plan_packs(jobs, configs)
        if len(planned) < len(jobs):
            log.info("%d runs in %d jobs: seeds of one setup are packed into one model (trainer.pack=1: off)",
                     len(jobs), len(planned))
        log.debug("planned %d jobs in %.2f s", len(planned), time.perf_counter() - tic)
        self.overrides = list(self.split_overrides_to_chunks(planned, self.max_batch_size)) if planned else []
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for r in results:  # a failed job is in the summary; the sweep goes on
                if r.status == JobStatus.FAILED:
                    # Read directly: JobReturn.return_value would also print Hydra's own
                    # "Error executing job with overrides" line. A plain RuntimeError carries a
                    # sentence of its own (normbench.slurm.outcomes).
                    err = r._return_value
                    said = err if type(err) is RuntimeError else f"{type(err).__name__}: {err}"
                    log.error("job %s: %s", " ".join(r.overrides or []), said)
            initial_job_idx += len(batch)
            returns.append(results)
        return returns
