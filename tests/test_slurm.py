"""Sweeps on a real Slurm cluster (``tests/slurm_cluster.py``): ``normbench train -m
hydra/launcher=slurm_cpu`` end to end, with preemption (``scontrol requeue``), a real time limit,
``scancel`` and a relaunch, and a packed job; each checked from the run records.

Skipped, with one line saying how to enable them, where Slurm is not installed or the tests
do not run as root (``.ci/run`` installs it when it can)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_cifar10  # tests/ is on the path (pytest's rootdir-relative import)
from slurm_cluster import SlurmCluster, SlurmError, unavailable

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=f"Slurm tests: {unavailable()}")

#: What the numbers of a run are (its costs and attempts are not: they differ between launches).
NUMBERS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "train_images")
COMMON = ("trainer.threads=1", "trainer.progress=none", "data.download=false", "data.eval_batch_size=128")
SLURM = ("hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"), memory_mb=4000)
    try:
        c.start()
    except SlurmError as err:
        pytest.skip(f"Slurm tests: the test cluster did not start: {err}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def data_1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 training images: an epoch at batch 2 takes about a second on one core."""
    return write_cifar10(tmp_path_factory.mktemp("data1k"), train_per_batch=200, test=128)


def train(cluster: SlurmCluster, data: Path, tmp: Path, *overrides: str, slurm: bool = True,
          wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "normbench.cli", "train", "-m", *(SLURM if slurm else ()), *COMMON,
           f"data.root={data}", f"paths.runs={tmp / 'runs'}", f"paths.logs={tmp / 'logs'}", *overrides]
    env = {**cluster.env, "PYTHONUNBUFFERED": "1"}
    tmp.mkdir(parents=True, exist_ok=True)
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)


def records(runs: Path) -> dict[str, dict]:
    found = [json.loads(p.read_text()) for p in sorted(runs.rglob("record.json"))]
    return {r["run_key"]: r for r in found}


def numbers(record: dict) -> list[dict]:
    return [{k: row[k] for k in NUMBERS} for row in record["history"]]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)


def first_attempt_job(runs: Path) -> str:
    """The Slurm job that trains the (only) run under ``runs``, from its attempts file."""
    lines = next(runs.rglob("attempts.jsonl")).read_text().splitlines()
    return json.loads(lines[0])["slurm_job"]


def assert_resumed(record: dict, epochs: int) -> None:
    """The record shows a run trained in two attempts: every epoch once, the second attempt
    starting where the first one's checkpoint ended."""
    attempts = record["attempts"]
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1)) and len(attempts) >= 2, attempts
    assert [row["epoch"] for row in record["history"]] == list(range(1, epochs + 1))  # no epoch lost, none twice
    for previous, attempt in zip(attempts, attempts[1:]):
        assert attempt["from_epoch"] >= previous["from_epoch"]
    by_row = [row["attempt"] for row in record["history"]]
    for a in attempts:  # the epochs an attempt trained are exactly those after its checkpoint
        trained = [i + 1 for i, n in enumerate(by_row) if n == a["attempt"]]
        assert not trained or trained[0] == a["from_epoch"] + 1, (a, by_row)
    assert by_row == sorted(by_row) and by_row[0] == 1 and by_row[-1] == attempts[-1]["attempt"]
    assert any(a["from_epoch"] > 0 for a in attempts[1:])  # it resumed from a checkpoint, not from scratch
    assert all(a["slurm_job"] == attempts[0]["slurm_job"] for a in attempts)  # the same job, requeued


# --- tests -------------------------------------------------------------------------------------


TIME_LIMITED_EPOCHS = 18  # about 70 s of training on one core: more than one job's time limit


@pytest.fixture(scope="module", autouse=True)
def time_limited(cluster, tmp_path_factory: pytest.TempPathFactory):
    """A sweep whose one run needs more than its job's one-minute time limit: started before
    the other tests, so that its minute overlaps with them, and checked by the last test."""
    tmp = tmp_path_factory.mktemp("time_limited")
    data = write_cifar10(tmp / "data", train_per_batch=1000, test=128)
    proc = train(cluster, data, tmp, "norm=gn", "batch_size=8", f"epochs={TIME_LIMITED_EPOCHS}",
                 "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=8",
                 wait=False)
    yield tmp, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_sweep_trains_every_run_and_its_summary_counts_them(cluster, cifar_root, tmp_path):
    done = train(cluster, cifar_root, tmp_path, "norm=bn,gn", "seed=0,1", "epochs=1")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    recs = records(tmp_path / "runs")
    assert len(recs) == 4 and {r["status"] for r in recs.values()} == {"ok"}
    assert all(r["attempts"][0]["slurm_job"] for r in recs.values())  # each trained in a Slurm job
    assert "Sweep done: 4 runs (4 ok)" in out
    # No accounting on this cluster: said once, never submitit's per-poll warning.
    assert "Bypassing" not in out and out.count("accounting") == 1, out[-3000:]


def test_a_preempted_job_resumes_from_its_checkpoint_to_the_same_numbers(cluster, data_1k, tmp_path):
    """``scontrol requeue`` mid-epoch, for an unpacked run and for a packed job of two seeds."""
    alone, packed = tmp_path / "alone", tmp_path / "packed"
    args = {alone: ("norm=bn", "batch_size=4", "seed=0", "epochs=3"),
            packed: ("norm=gn", "batch_size=2", "seed=0,1", "epochs=3")}
    procs = {where: train(cluster, data_1k, where, *a, wait=False) for where, a in args.items()}
    waiting = set(procs)
    end = time.monotonic() + 180
    while waiting:  # each job is requeued as soon as its first epoch is checkpointed: mid-epoch 2
        for where in list(waiting):
            if any((where / "runs").rglob("last.ckpt")):
                cluster.run("scontrol", "requeue", first_attempt_job(where / "runs"))
                waiting.discard(where)
            assert procs[where].poll() is None, procs[where].stdout.read()
        assert time.monotonic() < end, "timed out waiting for the first epoch's checkpoints"
        time.sleep(0.05)
    for where, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out[-3000:]
        assert "Sweep done: " + ("1 runs (1 ok)" if where == alone else "2 runs (2 ok)") in out, out[-2000:]
    # The same sweeps, uninterrupted, on this machine without Slurm.
    for where, a in args.items():
        ref = train(cluster, data_1k, where / "ref", *a, slurm=False)
        assert ref.returncode == 0, ref.stderr[-3000:]
        got, want = records(where / "runs"), records(where / "ref" / "runs")
        assert sorted(got) == sorted(want)
        for key, record in got.items():
            assert_resumed(record, epochs=3)
            assert numbers(record) == numbers(want[key]), key
            assert record["bn_eval"] == want[key]["bn_eval"]
            if where == packed:
                assert record["packed_with"] and record["packed_with"] == want[key]["packed_with"]


def test_a_cancelled_sweep_relaunched_finishes_the_missing_runs_and_retrains_none(cluster, cifar_root, tmp_path):
    args = ("norm=bn,gn,none,ln", "epochs=2")
    proc = train(cluster, cifar_root, tmp_path, *args, wait=False)
    runs = tmp_path / "runs"
    wait_for(lambda: len(list(runs.rglob("record.json"))) >= 2, 180, "two finished runs", proc)
    job = first_attempt_job(runs).split("_")[0]
    cluster.run("scancel", job)  # the whole array
    out = proc.communicate(timeout=300)[0]
    finished = records(runs)
    assert proc.returncode == 1, out[-3000:]  # runs left unfinished
    summary = out[out.index("Sweep done: "):].splitlines()[0]
    assert summary.startswith("Sweep done: 4 runs (") and f"{len(finished)} ok" in summary, summary
    assert "did not finish" in out
    assert "ended without finishing" in out
    before = {p: p.read_bytes() for p in runs.rglob("record.json")}
    again = train(cluster, cifar_root, tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Sweep done: 4 runs (4 ok)" in again.stdout
    # Finished runs are not even submitted: on a cluster they would wait in the queue for nothing.
    assert f"{len(finished)} of 4 runs already finished: not launched again" in again.stdout + again.stderr
    assert all(p.read_bytes() == b for p, b in before.items())  # not retrained
    recs = records(runs)
    assert len(recs) == 4 and {r["status"] for r in recs.values()} == {"ok"}
    for key, record in recs.items():  # the runs finished before the cancel, in its job; the rest, by the relaunch
        assert [row["epoch"] for row in record["history"]] == [1, 2]
        last_job = record["attempts"][-1]["slurm_job"].split("_")[0]
        assert (last_job == job) == (key in finished), (key, record["attempts"])


def test_a_job_that_hits_its_time_limit_is_requeued_and_finishes(time_limited):
    """A real time limit: one minute, with submitit's USR2 30 s before it (Slurm checks limits
    every 30 s, so the signal comes 0-30 s early). Runs last: the sweep started with the module."""
    tmp, proc = time_limited
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "Sweep done: 1 runs (1 ok)" in out, out[-3000:]
    (record,) = records(tmp / "runs").values()
    assert record["status"] == "ok"
    assert_resumed(record, epochs=TIME_LIMITED_EPOCHS)
    logs = "".join(p.read_text() for p in sorted((tmp / "logs").rglob("*_log.*")))  # submitit's, of the job
    assert "this job is timed-out" in logs and "Requeued job" in logs, logs[-3000:]

