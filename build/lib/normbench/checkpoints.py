"""How checkpoints reach the disk: atomically, and for a pack, one ordinary checkpoint per member.

``AtomicCheckpointIO`` writes ``ckpt/last.ckpt`` as a temporary file in the same folder,
fsyncs it and renames it over the old one, so that a full disk or a kill mid-write leaves the
last good checkpoint in place (a rename within one filesystem is atomic; a copy across
filesystems, which a temporary file under ``$TMPDIR`` needs, is not).

``PackCheckpointIO`` serves a pack of runs (``normbench.packed``): Lightning hands it the
pack's checkpoint and it writes each member's share as that member's own ``last.ckpt``,
exactly the checkpoint the member would have written training alone. Loading goes the other
way: the members' checkpoints are packed again. So a killed pack resumes packed, or, member
by member, unpacked (``trainer.pack=1``): the checkpoint format does not depend on how a run
was trained. Lightning offers no per-member checkpointing, hence this plug-in.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from normbench.pack import PackedNet, pack_parameter_tensors, pack_states

PREFIX = "model."  # the LightningModule holds the network as ``self.model``
PER_MEMBER = ("state_dict", "optimizer_states", "callbacks", "normbench_history", "normbench_histories")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` through a fsynced temporary file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def load_trusted_shape(path: Path) -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True``: tensors and plain containers only."""
    return torch.load(path, map_location="cpu", weights_only=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with an atomic save (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_atomic(checkpoint, Path(path))


def member_checkpoint(checkpoint: dict[str, Any], net: PackedNet, member: int) -> dict[str, Any]:
    """Member ``member``'s checkpoint cut from a pack's: its weights, buffers, momentum and
    history; the trainer's progress and lr schedule are the pack's (every member's)."""
    out = {key: value for key, value in checkpoint.items() if key not in PER_MEMBER}
    out["state_dict"] = {name: net.cut(name[len(PREFIX):], tensor, member).clone()
                         for name, tensor in checkpoint["state_dict"].items()}
    names = [name for name, _ in net.named_parameters()]
    optimizers = []
    for opt in checkpoint.get("optimizer_states", []):
        state = {i: {key: net.cut(names[i], v, member).clone() if torch.is_tensor(v) and v.dim() else v
                     for key, v in s.items()} for i, s in opt["state"].items()}
        optimizers.append({"state": state, "param_groups": copy.deepcopy(opt["param_groups"])})
    out["optimizer_states"] = optimizers
    out["normbench_history"] = list(checkpoint.get("normbench_histories", [[]] * net.k)[member])
    return out


def pack_checkpoints(members: Sequence[dict[str, Any]], net: PackedNet) -> dict[str, Any]:
    """The pack's checkpoint from its members' (all saved at the same step)."""
    steps = {(m.get("epoch"), m.get("global_step")) for m in members}
    if len(steps) != 1:
        raise ValueError(f"the members' checkpoints are at different steps: {sorted(steps, key=str)}")
    out = {key: value for key, value in members[0].items() if key not in PER_MEMBER}
    strip = [{name[len(PREFIX):]: t for name, t in m["state_dict"].items()} for m in members]
    out["state_dict"] = {PREFIX + name: t for name, t in pack_states(net.template, strip).items()}
    optimizers = []
    for j, opt in enumerate(members[0].get("optimizer_states", [])):
        n_params = sum(len(g["params"]) for g in opt["param_groups"])
        states = [m["optimizer_states"][j]["state"] for m in members]
        state: dict[int, dict[str, Any]] = {}
        if all(len(s) == n_params and all("momentum_buffer" in s[i] for i in range(n_params)) for s in states):
            buffers = pack_parameter_tensors(net.template, [[s[i]["momentum_buffer"] for i in range(n_params)]
                                                            for s in states])
            state = {i: {"momentum_buffer": b} for i, b in enumerate(buffers)}
        elif any(states):
            raise ValueError("the members' optimizer states differ in which parameters have momentum")
        optimizers.append({"state": state, "param_groups": copy.deepcopy(opt["param_groups"])})
    out["optimizer_states"] = optimizers
    out["normbench_histories"] = [list(m.get("normbench_history", [])) for m in members]
    return out


class PackCheckpointIO(AtomicCheckpointIO):
    """Writes a pack's checkpoint as its members' own ``last.ckpt`` files (module docstring).

    ``paths[k]`` is member k's checkpoint file; ``writes(k)`` says whether member k still
    trains (a member that diverged has its record and keeps its last checkpoint)."""

    def __init__(self, net: PackedNet, paths: Sequence[Path], writes: Callable[[int], bool]) -> None:
        super().__init__()
        self.net, self.paths, self.writes = net, list(paths), writes

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        for k, member_path in enumerate(self.paths):
            if self.writes(k):
                save_atomic(member_checkpoint(checkpoint, self.net, k), member_path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return pack_checkpoints([load_trusted_shape(p) for p in self.paths], self.net)
