"""Packing: K models of one setup (their seeds differ) trained as one, each a block of channels.

A packed model holds member k's channels at ``[k*C, (k+1)*C)`` of every layer: convs become
grouped convs (``groups=K``), per-channel norms hold the members' parameters and running
statistics side by side (BN over K*C channels is BN per member; GN with K*G groups; LN as K
groups; LRN across channels with a block-diagonal window), and the classifier is one linear
map per member (``BlockLinear``). No operation mixes two members, so one forward and one
backward give every member exactly the numbers it would get alone, up to the order of
floating-point additions (tested in float64). Each member keeps its own initial weights
(copied from its own seeded model), its own data (its inputs are stacked along channels)
and, with one SGD over the packed parameters, its own optimizer state: SGD with momentum and
weight decay is elementwise.

A norm packs when its traits say how (``NormTraits.pack``); one that cannot (SN mixes
statistics across channels with one pair of logits per layer) raises ``NotPackable``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from normbench.models import Net
from normbench.norms import NormLayer, traits
from normbench.norms.packing import NotPackable

STATELESS = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity, nn.Flatten)


class BlockLinear(nn.Module):
    """K independent linear maps: (B, K*in) or (B, K, in) -> (B, K, out), weight (K, out, in)."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.k = len(linears)
        self.weight = nn.Parameter(torch.stack([lin.weight.detach() for lin in linears]).clone())
        self.bias = nn.Parameter(torch.stack([lin.bias.detach() for lin in linears]).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.k, -1)
        return torch.einsum("bki,koi->bko", x, self.weight) + self.bias


def _pack_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    c0, k = convs[0], len(convs)
    packed = copy.deepcopy(c0)  # same class (WSConv2d stays WSConv2d: its standardization is per output channel)
    packed.in_channels, packed.out_channels, packed.groups = c0.in_channels * k, c0.out_channels * k, c0.groups * k
    packed.weight = nn.Parameter(torch.cat([c.weight.detach() for c in convs]).clone())
    if c0.bias is not None:
        packed.bias = nn.Parameter(torch.cat([c.bias.detach() for c in convs]).clone())
    packed._pack_dims = {"weight": 0, "bias": 0}
    return packed


def pack_net(nets: Sequence[Net]) -> PackedNet:
    """One model whose member k is ``nets[k]`` (same architecture, same norm; weights differ)."""
    if len({type(n) for n in nets}) != 1 or len({str(n) for n in nets}) != 1:
        raise NotPackable("the models differ in architecture")
    k = len(nets)
    features = nn.Sequential()
    last_conv: nn.Conv2d | None = None
    for name, mods in zip(nets[0].features._modules, zip(*(n.features.children() for n in nets))):
        first = mods[0]
        if isinstance(first, nn.Conv2d):
            last_conv = packed = _pack_conv(mods)
        elif isinstance(first, NormLayer):
            pack = traits(first).pack
            if pack is None:
                raise NotPackable(f"norm {getattr(first, 'norm_name', type(first).__name__)} does not pack "
                                  f"(its statistics mix channels across what would be members)")
            packed = pack(list(mods))
            packed.norm_site = first.norm_site
            if traits(first).needs_conv:
                packed.attach_conv(last_conv)
        elif isinstance(first, STATELESS):
            packed = copy.deepcopy(first)
        else:
            raise NotPackable(f"layer {name} ({type(first).__name__}) does not pack")
        features.add_module(name, packed)
    classifier = nn.Sequential()
    for i, mods in enumerate(zip(*(n.classifier.children() for n in nets))):
        first = mods[0]
        if isinstance(first, nn.Linear):
            classifier.add_module(str(i), BlockLinear(mods))
        elif isinstance(first, (nn.ReLU, nn.Flatten)):
            classifier.add_module(str(i), copy.deepcopy(first))
        else:  # dropout: its masks would come from one stream, not each member's
            raise NotPackable(f"classifier layer {type(first).__name__} does not pack exactly")
    return PackedNet(features, classifier, k)


class PackedNet(nn.Module):
    """K members as channel blocks: input (B, K*C_in, H, W), output (B, K, classes)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, k: int) -> None:
        super().__init__()
        self.features, self.classifier, self.k = features, classifier, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.classifier(self.features(x))
        return out.view(x.shape[0], self.k, -1)

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s weights and buffers, named as in its own unpacked ``Net``."""
        out = {}
        for name, tensor in self.state_dict().items():
            module_name, _, leaf = name.rpartition(".")
            module = self.get_submodule(module_name)
            if isinstance(module, BlockLinear):
                out[name] = tensor[member]
            elif hasattr(module, "_pack_cut"):  # a layout of its own (SaBN's [gammas | betas])
                out[name] = module._pack_cut(leaf, tensor, member, self.k)
            elif tensor.dim() == 0:
                out[name] = tensor
            else:
                dim = getattr(module, "_pack_dims", {}).get(leaf, 0)
                size = tensor.shape[dim] // self.k
                out[name] = tensor.narrow(dim, member * size, size)
        return out


def packed_input(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Members' batches (B, C, H, W) each -> one (B, K*C, H, W) input."""
    return torch.cat(list(xs), dim=1)


def packed_loss(logits: torch.Tensor, ys: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over members of each member's mean cross-entropy (so each member's gradient is
    its own), and the per-member losses (K,)."""
    losses = torch.stack([F.cross_entropy(logits[:, k], y) for k, y in enumerate(ys)])
    return losses.sum(), losses.detach()

