"""Facts about where a run ran, for its record: code revision, device, CPU threads, peak memory
and the time."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig

from normbench.errors import ConfigError

log = logging.getLogger("normbench")

@functools.lru_cache(maxsize=1)
def git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class PeakMemory:
    """This run's peak memory: on CUDA, torch's peak allocation, its counter reset when the
    run starts (runs of one sweep share a process); on CPU, how much the process's peak
    resident size grew during the run. The CPU figure is a lower bound when an earlier run
    in the same process already reached a higher peak (the OS keeps one peak per process)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.start_rss = _peak_rss_mb()

    def read(self) -> tuple[float, str]:
        """(megabytes, ``peak_mem_kind``)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        return _peak_rss_mb() - self.start_rss, "cpu_peak_rss_growth"


def scheduler_job() -> str | None:
    """This process's Slurm job: ``<array job>_<task>`` for a task of an array (as squeue and
    scontrol name it), else the job id; None outside Slurm."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def idle_cores() -> int:
    """Cores this process may use that no other process keeps busy, decided once a process
    (a sweep's later runs would otherwise see the load of its earlier ones): the cores in its
    affinity mask minus the 1-minute load average, at least 1.

    Why not torch's default (one thread per core): when other processes share the cores, its
    threads wait on each other. Measured on the 2-core VM while another 2-thread training ran
    (scripts/bench_threads.py): 1 thread 928-974 img/s, 2 threads 59-467 (up to 16x slower)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads = max(1, min(cores, round(cores - busy)))
    if threads < cores:
        log.info("torch threads: %d of %d cores (the load average, %.1f, says other processes use the rest; "
                 "trainer.threads=N overrides)", threads, cores, busy)
    return threads


def cpu_threads(configured: Any) -> int | None:
    """torch's CPU threads for this run: ``trainer.threads``, else the launcher's
    ``cpus_per_task`` (each parallel job gets its share), else Slurm's, else the idle cores
    (``idle_cores``)."""
    if configured is not None:
        if isinstance(configured, bool) or not isinstance(configured, int) or configured < 1:
            raise ConfigError(f"trainer.threads={configured!r} is not valid; allowed: an integer >= 1, or null")
        return configured
    try:
        launcher = HydraConfig.get().launcher
        if launcher.get("cpus_per_task"):
            return int(launcher.cpus_per_task)
    except ValueError:  # not running under Hydra (a test or a library call)
        pass
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(slurm) if slurm and slurm.isdigit() else idle_cores()
