"""A full disk never costs the last good checkpoint: checkpoints are written to a temporary file
in the run's own ckpt/ folder, fsynced and renamed (normbench.checkpoints.save_atomic). Tested on
a small tmpfs; skipped where this process may not mount one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from normbench.checkpoints import load_trusted_shape, save_atomic


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not permitted'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_checkpoint_that_does_not_fit_leaves_the_last_good_one(small_fs):
    ckpt = small_fs / "run" / "ckpt" / "last.ckpt"
    good = {"epoch": 1, "state_dict": {"w": torch.arange(10_000, dtype=torch.float32)}}  # ~40 kB
    save_atomic(good, ckpt)
    before = ckpt.read_bytes()
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk up, then give back ~16 kB
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 16 * 1024))
    bigger = {"epoch": 2, "state_dict": {"w": torch.zeros(60_000)}}  # ~240 kB: cannot fit
    with pytest.raises((OSError, RuntimeError)):  # torch.save reports ENOSPC as a RuntimeError
        save_atomic(bigger, ckpt)
    assert ckpt.read_bytes() == before  # the last good checkpoint, whole
    assert load_trusted_shape(ckpt)["epoch"] == 1
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]  # no fragment left behind
