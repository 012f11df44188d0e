"""Norms that mix or regroup the classic statistics: Switchable Normalization (Luo et al.
2019) and Batch Group Normalization (Zhou et al. 2020), docs/norms.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normbench.errors import ConfigError
from normbench.norms.packing import concat_pack
from normbench.norms.registry import NormLayer, NormTraits, boolean, divisor, float32_statistics, real, register_norm


class SwitchNorm2d(nn.Module, NormLayer):
    """Switchable Normalization (Luo, Ren, Peng, Zhang & Li, ICLR 2019), as the official
    ``SwitchNorm2d`` (switchablenorms/Switchable-Normalization @5472286)::

        m_in = mean_{H,W} x,  v_in = var1_{H,W} x      (UNBIASED, as torch.var)
        m_ln = mean_C m_in,   v_ln = mean_C (v_in + m_in^2) - m_ln^2
        m_bn = mean_N m_in,   v_bn = mean_N (v_in + m_in^2) - m_bn^2   (eval: running values)
        mu = softmax(mean_weight) . (m_in, m_ln, m_bn);  s2 = softmax(var_weight) . (v_in, v_ln, v_bn)
        y  = (x - mu) / sqrt(s2 + eps) * gamma + beta

    One pair of 3 logits per layer (init 1: weights 1/3 each). Running mean and variance start
    at 0 (not BN's 1) and follow EMA(``momentum``) of m_bn, v_bn with no n/(n-1) factor; the
    official ``momentum=0.9`` is a keep factor, i.e. ``momentum=0.1`` here (PyTorch's
    convention, as every normbench norm). ``using_bn=False`` drops the BN branch (2 + 2
    logits, no buffers). The IN and LN terms come from the test sample at eval too.

    Not offered: the official ``using_moving_average=False`` ("batch average") only sums
    statistics and never divides by the count, so it is unusable as shipped; the paper's
    batch average is population statistics recomputed after training, what PreciseBN does.
    The IN variance is unbiased, so a 1x1 map gives NaN: the model refuses SN where H*W = 1.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, using_bn: bool = True) -> None:
        super().__init__()
        self.eps, self.momentum, self.using_bn = eps, momentum, using_bn
        branches = 3 if using_bn else 2
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.mean_weight = nn.Parameter(torch.ones(branches))
        self.var_weight = nn.Parameter(torch.ones(branches))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(1, channels, 1))
            self.register_buffer("running_var", torch.zeros(1, channels, 1))

    @float32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        xv = x.view(n, c, -1)
        mean_in = xv.mean(-1, keepdim=True)
        var_in = xv.var(-1, keepdim=True)
        temp = var_in + mean_in ** 2
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = temp.mean(1, keepdim=True) - mean_ln ** 2
        means, variances = [mean_in, mean_ln], [var_in, var_ln]
        if self.using_bn:
            if self.training:
                mean_bn = mean_in.mean(0, keepdim=True)
                var_bn = temp.mean(0, keepdim=True) - mean_bn ** 2
                with torch.no_grad():
                    self.running_mean.lerp_(mean_bn.detach(), self.momentum)
                    self.running_var.lerp_(var_bn.detach(), self.momentum)
            else:
                mean_bn, var_bn = self.running_mean, self.running_var
            means.append(mean_bn)
            variances.append(var_bn)
        mw, vw = F.softmax(self.mean_weight, 0), F.softmax(self.var_weight, 0)
        mean = sum(wt * m for wt, m in zip(mw, means))
        var = sum(wt * v for wt, v in zip(vw, variances))
        xn = ((xv - mean) / (var + self.eps).sqrt()).view(n, c, h, w)
        return xn * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, eps={self.eps:g}, momentum={self.momentum:g}, using_bn={self.using_bn}"


def _sn_count(layer: nn.Module, shape: tuple[int, int, int, int]) -> int:
    return shape[2] * shape[3]  # the IN branch's H*W values (unbiased: needs >= 2)


@register_norm("sn", NormTraits(batch_dependent=True, values_per_statistic=_sn_count, stateful=True))
def switch_norm(channels: int, eps: float = 1e-5, momentum: float = 0.1, using_bn: bool = True) -> SwitchNorm2d:
    """Switchable Normalization (``SwitchNorm2d``)."""
    return SwitchNorm2d(channels, eps=real("sn", "eps", eps, low=0.0, open_low=True),
                        momentum=real("sn", "momentum", momentum, low=0.0, high=1.0),
                        using_bn=boolean("sn", "using_bn", using_bn))


class BatchGroupNorm2d(nn.Module, NormLayer):
    """Batch Group Normalization (Zhou et al. 2020, arXiv 2012.02782), as the one published
    class (``BatchGroupNorm`` in Howal/Cross-iterationBatchNorm @f6d3530)::

        xg = x.view(N, G, (C/G) * H * W)
        y = BN1d(G channels, no affine)(xg).view(N, C, H, W) * gamma + beta   (gamma, beta per channel)

    i.e. mean and (biased) variance over (N, C/G, H, W) per group, running statistics per
    group as BN's (EMA(0.1), unbiased running variance). G = C is BN; G = 1 one statistic for
    the whole layer. Fewer groups mean more values per statistic (the opposite of GN's G).
    gamma starts at 1 like every normbench norm (the reference class draws it from U(0, 1)).
    """

    def __init__(self, channels: int, groups: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.groups, self.eps, self.momentum = groups, eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(groups))
        self.register_buffer("running_var", torch.ones(groups))

    @float32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        xg = F.batch_norm(x.reshape(n, self.groups, -1), self.running_mean, self.running_var, None, None,
                          self.training, self.momentum, self.eps)
        return xg.view(n, c, h, w) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, groups={self.groups}, eps={self.eps:g}, momentum={self.momentum:g}"


def _bgn_count(layer: nn.Module, shape: tuple[int, int, int, int]) -> int:
    n, c, h, w = shape
    return n * (c // layer.groups) * h * w


@register_norm("bgn", NormTraits(bias_dead=lambda m: m.groups == m.weight.numel(), batch_dependent=True,
                                 values_per_statistic=_bgn_count, stateful=True,
                                 pack=lambda layers: concat_pack(layers, ("groups",), group_attr="groups")))
def batch_group_norm(channels: int, groups: int | None = None, eps: float = 1e-5,
                     momentum: float = 0.1) -> BatchGroupNorm2d:
    """Batch Group Normalization (``BatchGroupNorm2d``); ``groups`` has no default, as in the
    reference class (normbench/configs/norm/bgn.yaml sets one)."""
    if groups is None:
        raise ConfigError("norm.groups=None is not valid for norm 'bgn'; allowed: a divisor of the channels "
                          "at each site (BGN has no default number of groups)")
    return BatchGroupNorm2d(channels, divisor("bgn", "groups", groups, channels),
                            eps=real("bgn", "eps", eps, low=0.0, open_low=True),
                            momentum=real("bgn", "momentum", momentum, low=0.0, high=1.0))
