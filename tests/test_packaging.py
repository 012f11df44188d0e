"""A non-editable install works from any directory: the configs and the sweeper ship in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_a_plain_install_runs_train_from_another_directory(tmp_path, cifar_root):
    target, src = tmp_path / "site", tmp_path / "src"
    # A copy of the sources: building in place would leave build/ in the work tree.
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "normbench", "hydra_plugins"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "normbench" / "configs" / "train.yaml").is_file()
    assert (target / "normbench" / "configs" / "experiment" / "ghost_bn.yaml").is_file()
    assert (target / "hydra_plugins" / "normbench_sweeper" / "packing_sweeper.py").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import sys, normbench; print(normbench.__file__, file=sys.stderr); from normbench.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--cfg", "job", "experiment=ghost_bn"], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith(str(target))  # the installed copy, not the source tree
    assert "batch_size: 32" in proc.stdout and "epochs: 30" in proc.stdout
    sweep = subprocess.run([sys.executable, "-c", code, "train", "-m", "norm=none", "seed=0,1", "epochs=1",
                            "batch_size=8", "data.train_size=64", f"data.root={cifar_root}", "data.download=false",
                            f"paths.runs={tmp_path / 'runs'}", f"paths.logs={tmp_path / 'logs'}",
                            "trainer.progress=none"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert "Sweep done: 2 runs (2 ok)" in sweep.stdout and "pack of 2 runs in one model" in sweep.stdout + sweep.stderr
