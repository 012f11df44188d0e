"""Facts about where a run ran, for its record: code revision, device, CPU threads, peak memory
and the time."""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig

from normbench.errors import ConfigError


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


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def cpu_threads(configured: Any) -> int | None:
    """torch's CPU threads for this run: ``trainer.threads``, else the launcher's
    ``cpus_per_task`` (each parallel job gets its share), else Slurm's, else torch's default."""
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
    return int(slurm) if slurm and slurm.isdigit() else None
