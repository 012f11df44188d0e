"""Norms that are also the activation: FRN + TLU (Singh & Krishnan 2020) and EvoNorm-S0 /
EvoNorm-B0 (Liu et al. 2020). FRN and S0 never look across the batch; B0 does, through its
batch variance (docs/norms.md). Each replaces the ReLU that followed it (with its
nonlinearity on): the model drops that ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.norms.packing import concat_pack
from normbench.norms.registry import (
    NormLayer,
    NormTraits,
    boolean,
    float32_statistics,
    positive_int,
    real,
    register_norm,
)


def _hw(layer: nn.Module, shape: tuple[int, int, int, int]) -> int:
    return shape[2] * shape[3]


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


class FilterResponseNorm2d(nn.Module, NormLayer):
    """Filter Response Normalization with the Thresholded Linear Unit (Singh & Krishnan,
    CVPR 2020), as the paper's TF code::

        nu2[n, c] = mean_{H,W} x^2                  no mean subtraction, no batch statistics
        y = gamma * x / sqrt(nu2 + |eps|) + beta
        z = max(y, tau)                             TLU, tau per channel (init 0)

    Training and eval are the same. ``learned_eps=True`` is TF Addons' variant:
    ``eps_eff = |eps| + |eps_l|`` with one learned scalar eps_l per layer (init 1e-4), for
    layers on small maps where nu2 ~ x^2. ``tlu=False`` is FRN alone (the model then keeps
    the ReLU: a different, weaker method, the paper notes). Defaults: eps 1e-6, gamma 1,
    beta 0, tau 0.
    """

    def __init__(self, channels: int, eps: float = 1e-6, tlu: bool = True, learned_eps: bool = False) -> None:
        super().__init__()
        self.eps, self.tlu, self.learned_eps = eps, tlu, learned_eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.tau = nn.Parameter(torch.zeros(channels)) if tlu else None
        self.eps_l = nn.Parameter(torch.full((1,), 1e-4)) if learned_eps else None

    @float32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x
        nu2 = xf.pow(2).mean(dim=(2, 3), keepdim=True)
        eps = abs(self.eps) + (self.eps_l.abs() if self.eps_l is not None else 0.0)
        y = xf * torch.rsqrt(nu2 + eps) * _per_channel(self.weight) + _per_channel(self.bias)
        if self.tau is not None:
            y = torch.maximum(y, _per_channel(self.tau))
        return y

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps:g}, tlu={self.tlu}, learned_eps={self.learned_eps}"


@register_norm("frn", NormTraits(replaces_activation=lambda m: m.tlu, values_per_statistic=_hw,
                                 pack=concat_pack))  # a learned eps is one scalar per member: does not pack
def filter_response_norm(channels: int, eps: float = 1e-6, tlu: bool = True,
                         learned_eps: bool = False) -> FilterResponseNorm2d:
    """FRN + TLU (``tlu=false``: FRN alone)."""
    return FilterResponseNorm2d(channels, eps=real("frn", "eps", eps, low=0.0, open_low=True),
                                tlu=boolean("frn", "tlu", tlu), learned_eps=boolean("frn", "learned_eps", learned_eps))


def evonorm_groups(channels: int, groups: int) -> int:
    """The official rule: G, decremented until it divides C (C = 48, G = 32 gives 24)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class EvoNorm2dS0(nn.Module, NormLayer):
    """EvoNorm-S0 (Liu, Brock, Simonyan & Le, NeurIPS 2020), as ``tensorflow/tpu``
    ``resnet_model.py`` @139e1f4::

        sd[n, g] = sqrt(var_{C/G, H, W} x + eps)    biased, per sample and group
        y = x * sigmoid(v * x) / sd * gamma + beta

    Training and eval are the same (no batch statistics). G = ``groups`` decremented until it
    divides C (the official rule; timm instead asserts it divides). ``nonlinearity=False`` is
    the official affine-only form ``gamma * x + beta``. Defaults: G 32, eps 1e-5, v 1,
    gamma 1, beta 0.
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5, nonlinearity: bool = True) -> None:
        super().__init__()
        self.groups, self.eps, self.nonlinearity = evonorm_groups(channels, groups), eps, nonlinearity
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.v = nn.Parameter(torch.ones(channels)) if nonlinearity else None

    @float32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x
        if self.v is not None:
            n, c, h, w = xf.shape
            var = xf.reshape(n, self.groups, -1).var(dim=2, unbiased=False, keepdim=True)
            sd = (var + self.eps).sqrt().expand(n, self.groups, (c // self.groups) * h * w).reshape(n, c, h, w)
            xf = xf * torch.sigmoid(_per_channel(self.v) * xf) / sd
        return (xf * _per_channel(self.weight) + _per_channel(self.bias))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, groups={self.groups}, eps={self.eps:g}, nonlinearity={self.nonlinearity}"


def _s0_count(layer: nn.Module, shape: tuple[int, int, int, int]) -> int:
    return shape[1] // layer.groups * shape[2] * shape[3]


@register_norm("evonorm_s0", NormTraits(replaces_activation=lambda m: m.nonlinearity, values_per_statistic=_s0_count,
                                        pack=lambda layers: concat_pack(layers, ("groups",))))
def evonorm_s0(channels: int, groups: int = 32, eps: float = 1e-5, nonlinearity: bool = True) -> EvoNorm2dS0:
    """EvoNorm-S0 (``EvoNorm2dS0``)."""
    return EvoNorm2dS0(channels, groups=positive_int("evonorm_s0", "groups", groups),
                       eps=real("evonorm_s0", "eps", eps, low=0.0, open_low=True),
                       nonlinearity=boolean("evonorm_s0", "nonlinearity", nonlinearity))


class EvoNorm2dB0(nn.Module, NormLayer):
    """EvoNorm-B0 (Liu et al. 2020), as ``tensorflow/tpu`` ``resnet_model.py`` @139e1f4::

        left  = sqrt(var_{N,H,W} x + eps)           per channel, biased; eval: sqrt(mv + eps)
        right = v * x + sqrt(var_{H,W} x + eps)     per element; instance std per (n, c)
        y = x / max(left, right) * gamma + beta
        mv = EMA(0.1) of the biased batch variance, init 1 (the official decay 0.9)

    The running variance is the *biased* batch variance, as the official code (timm's
    ``EvoNorm2dB0`` multiplies it by n/(n-1) and defaults eps to 1e-3). The instance term is
    computed from the test sample at eval too. ``nonlinearity=False`` is the official
    affine-only form. Defaults: eps 1e-5, momentum 0.1, v 1, gamma 1, beta 0.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, nonlinearity: bool = True) -> None:
        super().__init__()
        self.eps, self.momentum, self.nonlinearity = eps, momentum, nonlinearity
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.v = nn.Parameter(torch.ones(channels)) if nonlinearity else None
        self.register_buffer("running_var", torch.ones(channels))

    @float32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x
        if self.v is not None:
            if self.training:
                var = xf.var(dim=(0, 2, 3), unbiased=False)
                with torch.no_grad():
                    self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
            else:
                var = self.running_var.to(xf.dtype)
            left = _per_channel((var + self.eps).sqrt())
            right = _per_channel(self.v) * xf + (xf.var(dim=(2, 3), unbiased=False, keepdim=True) + self.eps).sqrt()
            xf = xf / torch.maximum(left, right)
        return (xf * _per_channel(self.weight) + _per_channel(self.bias))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps:g}, momentum={self.momentum:g}, nonlinearity={self.nonlinearity}"


@register_norm("evonorm_b0", NormTraits(replaces_activation=lambda m: m.nonlinearity, batch_dependent=True,
                                        values_per_statistic=_hw, stateful=True, pack=concat_pack))
def evonorm_b0(channels: int, eps: float = 1e-5, momentum: float = 0.1, nonlinearity: bool = True) -> EvoNorm2dB0:
    """EvoNorm-B0 (``EvoNorm2dB0``)."""
    return EvoNorm2dB0(channels, eps=real("evonorm_b0", "eps", eps, low=0.0, open_low=True),
                       momentum=real("evonorm_b0", "momentum", momentum, low=0.0, high=1.0),
                       nonlinearity=boolean("evonorm_b0", "nonlinearity", nonlinearity))
