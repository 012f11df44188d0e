"""The classic normalizations: BN, LN, IN, GN (Wu & He 2018's definitions for conv maps),
and Sandwich BN, which is BN with a second affine (docs/norms.md).

LN, IN and GN carry a per-channel affine, as in the GN paper: LN is ``GroupNorm(1, C)``
(not ``nn.LayerNorm([C, H, W])``, a per-element affine) and IN is ``GroupNorm(C, C)`` (not
``nn.InstanceNorm2d``, which has no affine by default).
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.errors import ConfigError
from normbench.norms.packing import concat_pack
from normbench.norms.registry import NormLayer, NormTraits, boolean, divisor, positive_int, real, register_norm


class BatchNorm2d(nn.BatchNorm2d, NormLayer):
    """``nn.BatchNorm2d``, marked as a norm layer (same parameters and state_dict keys).

    With ``stat_batch = b`` (ghost batch BN), training statistics come from sub-batches of b
    images of the step's batch, as BN on b-image devices in data-parallel training without
    SyncBN (the GN paper's setting) or Batch Renorm's microbatches::

        x as (N/b, b, C, H, W);  each sub-batch normalized by its own mean and biased variance
        over (b, H, W);  running statistics updated once per step, with the average over the
        sub-batches of their means and unbiased variances (n = b*H*W)

    Evaluation uses the running statistics, as BN. (PyTorch DDP without SyncBN would instead
    broadcast one device's buffers: the average has less noise.) b = N is plain BN.
    """

    stat_batch: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.stat_batch
        if not self.training or b is None or b >= x.shape[0]:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % b:
            raise ValueError(f"norm.stat_batch={b} does not divide the batch of {n} images")
        xg = x.view(n // b, b, c, h, w)
        mean = xg.mean(dim=(1, 3, 4), keepdim=True)
        var = xg.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
        y = ((xg - mean) / torch.sqrt(var + self.eps)).view(n, c, h, w)
        if self.track_running_stats:
            count = b * h * w
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.lerp_(mean.mean(dim=0).flatten().to(self.running_mean.dtype), m)
                unbiased = (var * count / max(1, count - 1)).mean(dim=0).flatten()
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


class GroupNorm(nn.GroupNorm, NormLayer):
    """``nn.GroupNorm``, marked as a norm layer (same parameters and state_dict keys)."""


def bn_count(layer: nn.Module, shape: tuple[int, int, int, int]) -> int:
    """Values behind one BN statistic at input shape (N, C, H, W): N H W, or b H W with ghost
    batches of b (BN-like layers share it)."""
    n, _, h, w = shape
    b = getattr(layer, "stat_batch", None)
    return min(n, b or n) * h * w


def _gn_count(layer: nn.Module, shape: tuple[int, int, int, int]) -> int:
    _, c, h, w = shape
    return (c // layer.num_groups) * h * w


def _pack_bn(layers: list[nn.Module]) -> nn.Module:
    return concat_pack(layers, ("num_features",))


def _pack_group(layers: list[nn.Module]) -> nn.Module:
    return concat_pack(layers, ("num_groups", "num_channels"))  # K*G groups: member blocks stay apart


BN_TRAITS = NormTraits(bias_dead=True, batch_dependent=True, values_per_statistic=bn_count, stateful=True,
                       pack=_pack_bn)
GROUP_TRAITS = NormTraits(bias_dead=lambda m: m.num_groups == m.num_channels, values_per_statistic=_gn_count,
                          pack=_pack_group)


def _eps(name: str, eps: float) -> float:
    return real(name, "eps", eps, low=0.0, open_low=True)


def _momentum(name: str, momentum: float) -> float:
    return real(name, "momentum", momentum, low=0.0, high=1.0)


@register_norm("none")
def no_norm(channels: int) -> nn.Module:
    """No normalization: the identity."""
    return nn.Identity()


@register_norm("bn", BN_TRAITS)
def batch_norm(channels: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
               stat_batch: int | None = None) -> BatchNorm2d:
    """Batch Normalization (Ioffe & Szegedy 2015): statistics over (N, H, W) per channel.

    Training normalizes with the batch's biased variance; evaluation with running
    averages updated as ``run = (1 - momentum) * run + momentum * batch`` (unbiased
    variance), PyTorch's convention. Keras' ``momentum`` is the weight of the *old* value:
    Keras 0.99 equals ``momentum=0.01`` here. ``stat_batch``: ghost batch BN (``BatchNorm2d``).
    """
    layer = BatchNorm2d(channels, eps=_eps("bn", eps), momentum=_momentum("bn", momentum),
                        affine=boolean("bn", "affine", affine))
    if stat_batch is not None:
        layer.stat_batch = positive_int("bn", "stat_batch", stat_batch)
    return layer


@register_norm("ln", GROUP_TRAITS)
def layer_norm(channels: int, eps: float = 1e-5, affine: bool = True) -> GroupNorm:
    """Layer Normalization as the GN paper defines it for conv maps: statistics over
    (C, H, W) per sample, per-channel affine; ``nn.GroupNorm(1, C)``."""
    return GroupNorm(1, channels, eps=_eps("ln", eps), affine=boolean("ln", "affine", affine))


@register_norm("in", GROUP_TRAITS)
def instance_norm(channels: int, eps: float = 1e-5, affine: bool = True) -> GroupNorm:
    """Instance Normalization with the GN paper's per-channel affine: statistics over
    (H, W) per sample and channel; ``nn.GroupNorm(C, C)``. Same numbers in train and eval
    (no running statistics), unlike ``nn.InstanceNorm2d(track_running_stats=True)``."""
    return GroupNorm(channels, channels, eps=_eps("in", eps), affine=boolean("in", "affine", affine))


@register_norm("gn", GROUP_TRAITS)
def group_norm(channels: int, groups: int | None = 32, group_size: int | None = None, eps: float = 1e-5,
               affine: bool = True) -> GroupNorm:
    """Group Normalization (Wu & He 2018): statistics over (C/G, H, W) per sample and group.

    Give ``groups`` (G, default 32 as in the paper) or ``group_size`` (channels per group,
    the paper's Table 3 variant); setting ``group_size`` overrides the default G. G = 1 is
    LN and G = C is IN.
    """
    eps = _eps("gn", eps)
    affine = boolean("gn", "affine", affine)
    if group_size is not None:
        groups = channels // divisor("gn", "group_size", group_size, channels)
    elif groups is None:
        raise ConfigError("norm 'gn': set norm.groups or norm.group_size")
    else:
        groups = divisor("gn", "groups", groups, channels)
    return GroupNorm(groups, channels, eps=eps, affine=affine)


class SandwichBatchNorm2d(nn.BatchNorm2d, NormLayer):
    """Sandwich Batch Normalization (Gong et al. 2021, arXiv 2102.11382) with one condition:

        h = BN(x) with its own affine (gamma_sa = 1, beta_sa = 0 at init)
        y = gamma_1 * h + beta_1,   (gamma_1, beta_1) = embed.weight[0]  (an Embedding(1, 2C))

    as the official ``SandwichBatchNorm2d`` (VITA-Group/Sandwich-Batch-Normalization @a446d8d)
    with K = 1: a classifier has no per-sample condition (conditioning on the true class would
    leak the label). So SaBN here is BN with a second, redundant affine: the same functions,
    another parametrization (weight decay and the lr act on both affines). gamma_1 is drawn
    from N(1, 0.02) as in the official code, but from a generator of its own seeded from
    torch's seed, so that building it draws nothing from the global stream: a SaBN arm keeps
    the conv weights of the BN arm with the same seed.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(channels, eps=eps, momentum=momentum, affine=True)
        g = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        weight = torch.cat([1 + 0.02 * torch.randn(1, channels, generator=g), torch.zeros(1, channels)], dim=1)
        self.embed = nn.Embedding(1, 2 * channels, _weight=weight)  # given weights: no draw from torch's stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.embed.weight[0].view(2, -1, 1, 1)
        return (super().forward(x) * gamma + beta).to(x.dtype)


def _pack_sabn(layers: list[nn.Module]) -> nn.Module:
    packed = concat_pack(layers, ("num_features",))
    c = layers[0].num_features
    gammas = [layer.embed.weight.detach()[:, :c] for layer in layers]
    betas = [layer.embed.weight.detach()[:, c:] for layer in layers]
    packed.embed = nn.Embedding(1, 2 * c * len(layers), _weight=torch.cat(gammas + betas, dim=1).clone())
    packed.embed._pack_cut = _cut_sabn_embed  # member k's row is [gamma_k | beta_k]
    return packed


def _cut_sabn_embed(name: str, tensor: torch.Tensor, member: int, k: int) -> torch.Tensor:
    c = tensor.shape[1] // (2 * k)
    return torch.cat([tensor[:, member * c:(member + 1) * c], tensor[:, (k + member) * c:(k + member + 1) * c]], dim=1)


@register_norm("sabn", NormTraits(bias_dead=True, batch_dependent=True, values_per_statistic=bn_count,
                                  stateful=True, pack=_pack_sabn))
def sandwich_batch_norm(channels: int, eps: float = 1e-5, momentum: float = 0.1) -> SandwichBatchNorm2d:
    """Sandwich BN with one condition (K = 1): ``SandwichBatchNorm2d``."""
    return SandwichBatchNorm2d(channels, eps=_eps("sabn", eps), momentum=_momentum("sabn", momentum))
