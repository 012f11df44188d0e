"""What a sweep on Slurm needs beyond Hydra's submitit launcher (README "Running at scale").

- **Job states without accounting.** submitit learns a job's state from ``sacct``. On a
  cluster without job accounting (common on small clusters) every poll fails, submitit prints
  ``Bypassing sacct error`` three times a poll, and, worse, never learns that a job which
  left no result (cancelled, killed) is over: the sweep waits forever. ``use_squeue_if_no_accounting``
  checks once and then reads states from ``squeue``, which every cluster has; a job that is no
  longer in the queue is over.
- **Every job waited for.** Hydra's launcher stops waiting at the first job that ended
  without a result, while later jobs still run. ``outcomes`` waits for all of them and turns
  one that left no result into a failed ``JobReturn`` with one line that says what to do; the
  sweep summary then counts its runs from their run directories (``normbench.train``).
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger("normbench")

#: squeue states of a job that may still run (a requeued job is PENDING again). submitit's own
#: list misses some (a job on a cloud node that boots is CONFIGURING; a suspended one, SUSPENDED).
ACTIVE = {"READY", "UNKNOWN", "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "COMPLETING",
          "CONFIGURING", "PREEMPTED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def accounting_works() -> bool:
    """Whether ``sacct`` answers on this cluster (it exits non-zero with "Slurm accounting
    storage is disabled" where there is no accounting)."""
    try:
        return subprocess.run(["sacct", "--noheader", "-X", "--starttime", "now"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class SqueueWatcher(SlurmInfoWatcher):
    """submitit's job-state watcher, reading ``squeue`` instead of ``sacct``.

    All of this user's jobs, every state, one line per array task: asking for job ids that
    Slurm has already forgotten (after ``MinJobAge``) would make squeue fail. A registered
    job missing from the answer has left the queue: it is over (state ``GONE``)."""

    def _make_command(self) -> list[str] | None:
        if not self._registered - self._finished:
            return None
        return ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", f"--user={_user()}"]

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return self.get_state(job_id, mode=mode).upper() not in ACTIVE

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        text = string.decode() if isinstance(string, bytes) else string
        seen = {}
        for line in text.splitlines():
            job_id, _, state = line.strip().partition("|")
            if job_id:
                seen[job_id] = {"JobID": job_id, "State": state.split()[0] if state else "UNKNOWN"}
        for job_id in self._registered - self._finished:
            seen.setdefault(job_id, {"JobID": job_id, "State": "GONE"})
        return seen


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a name (containers): squeue takes the number
        return str(os.getuid())


def use_squeue_if_no_accounting() -> None:
    """Make submitit read job states from squeue when sacct does not answer (said once)."""
    if isinstance(SlurmJob.watcher, SqueueWatcher) or accounting_works():
        return
    # submitit keeps one watcher for all Slurm jobs, as a class attribute: replacing it is
    # how its states come from elsewhere. 60 s: squeue is cheap, and a cancelled job is
    # noticed within a minute (sacct's watcher waits up to 10).
    SlurmJob.watcher = SqueueWatcher(delay_s=60)
    log.info("Slurm accounting (sacct) is off on this cluster: job states are read from squeue")


#: How long a job that ended may take to show its result file (a shared filesystem shows new
#: files late); submitit's own wait, spent once for all the jobs of a batch, not once each.
RESULT_GRACE_S = 15.0


def outcomes(jobs: Sequence[Any], overrides: Sequence[Sequence[str]], poll_s: float = 1.0) -> list[JobReturn]:
    """Each job's ``JobReturn``, after waiting for every one of them (module docstring). A job
    that left no result is a failed return whose error is one line saying what to do."""
    while not all(job.done() for job in jobs):  # done: its result is there, or Slurm says it is over
        time.sleep(poll_s)
    # A cancelled job never writes a result; any other may still be on its way to this machine.
    late = [job for job in jobs if not job.paths.result_pickle.exists() and job.state.upper() != "CANCELLED"]
    deadline = time.monotonic() + RESULT_GRACE_S
    while late and time.monotonic() < deadline:
        time.sleep(poll_s)
        late = [job for job in late if not job.paths.result_pickle.exists()]
    out = []
    for job, job_overrides in zip(jobs, overrides):
        if job.paths.result_pickle.exists():
            try:
                out.append(job.results()[0])
                continue
            except FailedJobError as err:  # the job raised: a bug, since a run records its own failures
                last = (str(err).strip().splitlines() or ["?"])[-1]
                error = RuntimeError(f"Slurm job {job.job_id} raised {last} (its log: {job.paths.stderr})")
            except UncompletedJobError as err:  # submitit's own verdict, e.g. "timed-out too many times"
                last = (str(err).strip().splitlines() or ["?"])[-1]
                error = RuntimeError(f"Slurm job {job.job_id} did not finish: {last} (its log: {job.paths.stderr}); "
                                     "launch the same command again to finish its runs")
        else:
            error = RuntimeError(f"Slurm job {job.job_id} ended without finishing (state {job.state}; its log: "
                                 f"{job.paths.stderr}): launch the same command again to finish its runs")
        out.append(JobReturn(overrides=list(job_overrides), status=JobStatus.FAILED, _return_value=error))
    return out
