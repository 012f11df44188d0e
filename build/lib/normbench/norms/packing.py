"""How a norm layer packs: K members' layers as one over K times the channels (``normbench.pack``).

Each norm's traits name its pack function (``NormTraits.pack``); most are ``concat_pack`` with
the attributes that count channels or groups.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


class NotPackable(Exception):
    """These models cannot share a step; the reason is the message (one line)."""


def channels_of(layer: nn.Module) -> int:
    for attr in ("num_features", "num_channels", "channels"):
        if isinstance(getattr(layer, attr, None), int):
            return getattr(layer, attr)
    for name in ("weight", "running_mean"):
        t = getattr(layer, name, None)
        if isinstance(t, torch.Tensor):
            return t.numel()
    raise NotPackable(f"cannot tell the channels of {type(layer).__name__}")


def concat_pack(layers: Sequence[nn.Module], scale: Sequence[str] = (), group_attr: str | None = None) -> nn.Module:
    """A copy of ``layers[0]`` whose per-channel parameters and buffers (and per-group ones,
    when ``group_attr`` names the group count) hold every member's side by side, and whose
    ``scale`` attributes (channel and group counts) are multiplied by K. Scalars (step
    counters) must agree across members. The axis each tensor was joined on is kept in
    ``_pack_dims``, so a member's own tensors can be cut out again."""
    k, c = len(layers), channels_of(layers[0])
    sizes = {c} | ({getattr(layers[0], group_attr)} if group_attr else set())
    packed = copy.deepcopy(layers[0])
    for attr in scale:
        setattr(packed, attr, getattr(packed, attr) * k)
    packed._pack_dims = {}
    own = dict(packed.named_parameters(recurse=False)) | dict(packed.named_buffers(recurse=False))
    for name, tensor in own.items():
        if tensor is None:
            continue
        parts = [getattr(layer, name) for layer in layers]
        if tensor.dim() == 0:
            if any(not torch.equal(p, parts[0]) for p in parts):
                raise NotPackable(f"{type(layers[0]).__name__}.{name} differs between members")
            continue
        dims = [d for d, size in enumerate(tensor.shape) if size in sizes]
        if not dims:
            raise NotPackable(f"{type(layers[0]).__name__}.{name} {tuple(tensor.shape)} has no axis of its {c} channels")
        dim = next((d for d in dims if tensor.shape[d] == c and d > 0), dims[0]) if tensor.dim() > 1 else 0
        joined = torch.cat([p.detach() for p in parts], dim=dim).clone()
        packed._pack_dims[name] = dim
        if isinstance(tensor, nn.Parameter):
            setattr(packed, name, nn.Parameter(joined, requires_grad=tensor.requires_grad))
        else:
            packed.register_buffer(name, joined)
    return packed
