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
    packed = PackedNet(features, classifier, k, copy.deepcopy(nets[0]).cpu())
    names = [n for n, _ in packed.named_parameters()]
    if names != [n for n, _ in nets[0].named_parameters()]:  # optimizer state is matched by position
        raise NotPackable("the packed model's parameters are not in its members' order")
    return packed


class PackedNet(nn.Module):
    """K members as channel blocks: input (B, K*C_in, H, W), output (B, K, classes).

    Keeps a copy of one member's unpacked network (``template``, outside the module tree) so
    that members' states can be packed again (``pack_states``) and a member's share of any
    packed tensor found (``member_mask``): the layout is whatever ``pack_net`` makes it, in
    one place."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, k: int, template: Net) -> None:
        super().__init__()
        self.features, self.classifier, self.k = features, classifier, k
        self._template = (template,)  # a tuple: not a submodule, so not in state_dict or parameters()
        self._masks: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def template(self) -> Net:
        return self._template[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.classifier(self.features(x))
        return out.view(x.shape[0], self.k, -1)

    def cut(self, name: str, tensor: torch.Tensor, member: int) -> torch.Tensor:
        """Member ``member``'s part of ``tensor``, a packed tensor named ``name`` in
        ``state_dict()`` (or of the same shape: a gradient, a momentum buffer)."""
        module_name, _, leaf = name.rpartition(".")
        module = self.get_submodule(module_name)
        if isinstance(module, BlockLinear):
            return tensor[member]
        if hasattr(module, "_pack_cut"):  # a layout of its own (SaBN's [gammas | betas])
            return module._pack_cut(leaf, tensor, member, self.k)
        if tensor.dim() == 0:
            return tensor
        dim = getattr(module, "_pack_dims", {}).get(leaf, 0)
        size = tensor.shape[dim] // self.k
        return tensor.narrow(dim, member * size, size)

    def member_state(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s weights and buffers, named as in its own unpacked ``Net``."""
        return {name: self.cut(name, tensor, member) for name, tensor in self.state_dict().items()}

    def member_mask(self, member: int) -> dict[str, torch.Tensor]:
        """For every entry of ``state_dict()``, a bool tensor of its shape that is True on
        member ``member``'s elements (False on shared scalars such as step counters). Made by
        packing indicator copies of the template, so it follows every layer's own layout."""
        if member not in self._masks:
            nets = []
            for k in range(self.k):
                net = copy.deepcopy(self.template)
                with torch.no_grad():
                    for tensor in net.state_dict().values():
                        if tensor.dim():
                            tensor.fill_(1 if k == member else 0)
                nets.append(net)
            state = pack_net(nets).state_dict()
            self._masks[member] = {name: t.bool() if t.dim() else torch.zeros((), dtype=torch.bool)
                                   for name, t in state.items()}
        return self._masks[member]


def pack_states(template: Net, states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The packed ``state_dict`` of members whose own states are ``states`` (as saved by an
    unpacked run, or cut by ``PackedNet.member_state``)."""
    nets = []
    for state in states:
        net = copy.deepcopy(template)
        net.load_state_dict(state)
        nets.append(net)
    return pack_net(nets).state_dict()


def pack_parameter_tensors(template: Net, per_member: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Tensors shaped like each member's parameters (momentum buffers), in ``parameters()``
    order, packed as the parameters themselves are."""
    nets = []
    for tensors in per_member:
        net = copy.deepcopy(template)
        with torch.no_grad():
            for p, t in zip(net.parameters(), tensors, strict=True):
                p.copy_(t)
        nets.append(net)
    return [p.detach() for p in pack_net(nets).parameters()]


def packed_input(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Members' batches (B, C, H, W) each -> one (B, K*C, H, W) input."""
    return torch.cat(list(xs), dim=1)


def packed_loss(logits: torch.Tensor, ys: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over members of each member's mean cross-entropy (so each member's gradient is
    its own), and the per-member losses (K,)."""
    losses = torch.stack([F.cross_entropy(logits[:, k], y) for k, y in enumerate(ys)])
    return losses.sum(), losses.detach()

