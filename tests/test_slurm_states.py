"""How normbench reads Slurm job states and outcomes (``normbench.slurm``), without a cluster:
the tests on a live one are ``tests/test_slurm.py``."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_squeue_states_and_jobs_that_left_the_queue():
    """squeue's answer for this user's jobs: a registered job it no longer lists is over."""
    from normbench.slurm import SqueueWatcher

    w = SqueueWatcher(delay_s=60)
    for job in ("12_0", "12_1", "12_2", "13"):
        w.register_job(job)
    info = w.read_info(b"12_0|RUNNING\n12_1|CONFIGURING\n13|CANCELLED by 0\n99_1|RUNNING\n")
    assert {job: info[job]["State"] for job in ("12_0", "12_1", "12_2", "13")} == {
        "12_0": "RUNNING", "12_1": "CONFIGURING", "12_2": "GONE", "13": "CANCELLED"}
    w._info_dict.update(info)
    assert [w.is_done(job, mode="cache") for job in ("12_0", "12_1", "12_2", "13")] == [False, False, True, True]
    assert "--array" in w._make_command() and "--states=all" in w._make_command()


class _FakeJob:
    """What ``outcomes`` reads of a submitit job."""

    def __init__(self, folder: Path, job_id: str, state: str, result: object = None) -> None:
        from submitit.core.utils import JobPaths

        self.job_id, self.state = job_id, state
        self.paths = JobPaths(folder, job_id=job_id)
        self.result = result
        if result is not None:
            self.paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
            self.paths.result_pickle.write_bytes(b"x")

    def done(self) -> bool:
        return True

    def results(self) -> list:
        if isinstance(self.result, Exception):
            raise self.result
        return [self.result]


def test_outcomes_wait_for_every_job_and_say_what_to_do_with_one_that_left_no_result(tmp_path, monkeypatch):
    from hydra.core.utils import JobStatus
    from submitit.core.utils import FailedJobError

    from normbench import slurm
    from normbench.slurm import outcomes

    ok = _FakeJob(tmp_path, "5_0", "COMPLETED", result="a JobReturn")
    cancelled = _FakeJob(tmp_path, "5_1", "CANCELLED")
    raised = _FakeJob(tmp_path, "5_2", "FAILED", result=FailedJobError("Traceback ...\nValueError: boom"))
    waits = []
    monkeypatch.setattr(slurm.time, "sleep", waits.append)
    got = outcomes([cancelled, ok, raised], [["norm=bn"], ["norm=gn"], ["norm=ln"]], poll_s=0.01)
    assert waits == []  # a cancelled job writes no result: no grace to wait for it
    assert got[1] == "a JobReturn"
    assert got[0].status == JobStatus.FAILED and got[0].overrides == ["norm=bn"]
    with pytest.raises(RuntimeError, match=r"^Slurm job 5_1 ended without finishing \(state CANCELLED; its log: "
                                           r".*\): launch the same command again to finish its runs$"):
        got[0].return_value
    with pytest.raises(RuntimeError, match=r"^Slurm job 5_2 raised ValueError: boom \(its log: "):
        got[2].return_value


def test_without_slurm_its_tests_skip_with_one_line_saying_how_to_enable_them(monkeypatch):
    import slurm_cluster  # tests/ is on the path, as for conftest

    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name, path=None: None)
    assert slurm_cluster.unavailable() == (
        "Slurm is not installed (munged, slurmctld, slurmd, sbatch, squeue, scontrol, sinfo missing): "
        "apt-get install slurm-wlm munge, and run the tests as root")
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name, path=None: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    assert slurm_cluster.unavailable() == ("slurmd must run as root to start jobs: apt-get install slurm-wlm munge, "
                                           "and run the tests as root")
