"""Hydra's submitit Slurm launcher, with the two changes of ``normbench.slurm``: job states
from squeue where the cluster has no accounting, and a wait for every job of a batch (a job
that ended without a result is reported in one line, not raised).

Hydra finds launchers only in the ``hydra_plugins`` namespace, hence this module's place;
``normbench/configs/hydra/launcher/slurm.yaml`` names it. Without the ``launchers`` extra
(hydra-submitit-launcher) there is nothing to extend and this module defines nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import OmegaConf

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _HydraSlurmLauncher
except ImportError:  # the `launchers` extra is not installed
    _HydraSlurmLauncher = None

log = logging.getLogger(__name__)

if _HydraSlurmLauncher is not None:

    class SlurmLauncher(_HydraSlurmLauncher):  # type: ignore[misc, valid-type]
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            # Hydra's SlurmLauncher.launch (hydra-submitit-launcher 1.2), line for line up to
            # its last line, which waits with `[j.results()[0] for j in jobs]`: it cannot be
            # reached without copying the lines before it.
            import submitit

            from normbench.slurm import outcomes, use_squeue_if_no_accounting

            assert self.config is not None
            assert len(job_overrides) > 0
            use_squeue_if_no_accounting()
            params = self.params
            init_params = {"folder": self.params["submitit_folder"]}
            specific_init_keys = {"max_num_timeout"}
            init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
            init_keys = specific_init_keys | {"submitit_folder"}
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
            baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
            params = {x if x in baseparams else f"{self._EXECUTOR}_{x}": y for x, y in params.items()
                      if x not in init_keys}
            executor.update_parameters(**params)
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            job_params: list[Any] = []
            for idx, overrides in enumerate(job_overrides):
                idx = initial_job_idx + idx
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                   Singleton.get_state()))
            jobs = executor.map_array(self, *zip(*job_params))
            return outcomes(jobs, job_overrides)
