"""normbench.host_memory: freed memory stays in the process (no page faults a step), and a
user's own allocator settings win. Each measurement runs in a fresh interpreter: mallopt is
process-wide and cannot be undone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from normbench import host_memory

# A packed training step's forward and backward (convnet, K=8, batch 2, one thread), as in
# scripts/bench_pack.py: with glibc's defaults its freed activations go back to the OS and
# are faulted in again every step (about 1,500-1,900 minor faults a step measured here).
STEPS = """
import json, resource, sys, torch
from normbench.host_memory import keep_freed_memory
said = keep_freed_memory() if sys.argv[1] == "keep" else "default"
torch.set_num_threads(1)
from normbench.bench_pack import _models
from normbench.pack import pack_net
model = pack_net(_models(8, {"name": "bn"}, torch.device("cpu"))).to(memory_format=torch.channels_last)
x = torch.randn(2, 24, 32, 32).contiguous(memory_format=torch.channels_last)
def step():
    model(x).sum().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(json.dumps({"said": said, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20}))
"""

CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in host_memory.USER_SETTINGS}


def _faults(mode: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], env=env or CLEAN_ENV, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_kept_memory_is_reused_without_page_faults():
    default, kept = _faults("default"), _faults("keep")
    assert kept["said"] == "kept"
    assert kept["faults"] < 100, kept  # 17-26 measured
    assert default["faults"] > 10 * kept["faults"], (default, kept)


def test_a_users_allocator_choice_is_kept():
    said = _faults("keep", {**CLEAN_ENV, "MALLOC_TRIM_THRESHOLD_": "131072"})["said"]
    assert said == "user's MALLOC_TRIM_THRESHOLD_"


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    for name in host_memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    host_memory.keep_freed_memory.cache_clear()
    try:
        assert host_memory.keep_freed_memory() == "not glibc"
    finally:
        host_memory.keep_freed_memory.cache_clear()


@pytest.mark.parametrize("seeds", [None, "[0,1]"])
def test_runs_and_packs_keep_freed_memory_before_training(quick, monkeypatch, seeds):
    from normbench import runner
    from normbench.train import run

    calls = []
    monkeypatch.setattr(runner, "keep_freed_memory", lambda: calls.append("kept") or "kept")
    out = run(quick("epochs=1", *([f"trainer.pack_seeds={seeds}"] if seeds else [])))
    records = out.get("runs", [out])
    assert [r["status"] for r in records] == ["ok"] * len(records) and calls == ["kept"]
