"""PowerNorm (Shen, Yao, Gholami, Mahoney & Keutzer, ICML 2020), adapted from transformers to
(N, C, H, W) maps: a pixel (n, h, w) plays the part of a token (docs/norms.md).

This is an ADAPTATION: the official layer (``MaskPowerNorm`` in sIncerass/powernorm @9ea6226)
takes (T, B, C) sequences with a padding mask; here every position counts. The authors
publish no CNN recipe. The formulas are the official code's, including its backward, which
is deliberately not the gradient of its forward (so ``gradcheck`` cannot pass by design).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from normbench.norms.packing import concat_pack
from normbench.norms.registry import (
    NormLayer,
    NormTraits,
    divisor,
    float32_statistics,
    positive_int,
    real,
    register_norm,
)

GROUP_SCALING_EPS = 1e-5  # GroupScaling1D's own eps in the official code


def group_scaling(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x / sqrt(mean_{c in group} x^2 + 1e-5)`` per (n, h, w) and group of C / ``groups``
    channels (the official ``GroupScaling1D``), in training and eval alike."""
    n, c, h, w = x.shape
    moment2 = x.view(n, groups, c // groups, h, w).pow(2).mean(dim=2, keepdim=True)
    return (x.view(n, groups, c // groups, h, w) / (moment2 + GROUP_SCALING_EPS).sqrt()).view(n, c, h, w)


class _PowerFunction(torch.autograd.Function):
    """The official ``PowerFunction``, step t (1-based)::

        s2[c] = mean_{N,H,W} xs^2                    quadratic mean, no mean subtraction
        z = xs / sqrt(s2 + eps)   if t <= warmup, else xs / sqrt(psi + eps)
        y = gamma * z + beta
        psi: cumulative average of s2 while t < warmup, then always psi = a_f psi + (1 - a_f) s2

    backward:  g = gamma * dy;  gt = g - (1 - a_b) * ema_gz * z;  ema_gz += mean_{N,H,W}(gt * z);
               dxs = gt / sqrt(s2 + eps)   (the BATCH s2, after warm-up too);  dgamma, dbeta as usual.
    """

    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_phi: torch.Tensor,
                ema_gz: torch.Tensor, eps: float, alpha_fwd: float, alpha_bkw: float, t: int,
                warmup_iters: int) -> torch.Tensor:
        c = xs.shape[1]
        var = xs.pow(2).mean(dim=(0, 2, 3)).view(1, c, 1, 1)
        z = xs / (var + eps).sqrt() if t <= warmup_iters else xs / (running_phi + eps).sqrt()
        ctx.save_for_backward(z, var, weight, ema_gz)
        ctx.eps, ctx.alpha_bkw = eps, alpha_bkw
        if t < warmup_iters:
            running_phi.copy_(running_phi * (t - 1) / t + var / t)
        running_phi.copy_(alpha_fwd * running_phi + (1 - alpha_fwd) * var)
        return weight.view(1, c, 1, 1) * z + bias.view(1, c, 1, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        z, var, weight, ema_gz = ctx.saved_tensors
        c = grad_output.shape[1]
        g = grad_output * weight.view(1, c, 1, 1)
        approx = g - (1 - ctx.alpha_bkw) * ema_gz * z
        ema_gz.add_((approx * z).mean(dim=(0, 2, 3), keepdim=True))  # state changed in backward, as official
        gx = approx / (var + ctx.eps).sqrt()
        return (gx, (grad_output * z).sum(dim=(0, 2, 3)), grad_output.sum(dim=(0, 2, 3)),
                None, None, None, None, None, None, None)


class PowerNorm2d(nn.Module, NormLayer):
    """PowerNorm for (N, C, H, W), the official ``MaskPowerNorm`` with every position kept.

    State (buffers, so checkpoints hold them): ``running_phi`` (psi, init 1), ``ema_gz``
    (init 0, changed inside backward: a second backward or gradient accumulation drifts
    it), ``iters`` (t, counted at the start of each training forward). Eval:
    ``gamma * xs / sqrt(psi + eps) + beta``. Defaults are the official class's: eps 1e-5,
    alpha_fwd = alpha_bkw = 0.9, warmup_iters 10,000 (the paper's scripts pass 8,000; about
    60 epochs of a 5,000-image set at batch 32, so a short run never leaves warm-up: set it
    for your budget, it is recorded), group_num 1. The affine is always on (the official
    flag is ignored). Reading t each step is a host sync, as in the official code.
    """

    def __init__(self, channels: int, eps: float = 1e-5, alpha_fwd: float = 0.9, alpha_bkw: float = 0.9,
                 warmup_iters: int = 10000, group_num: int = 1) -> None:
        super().__init__()
        self.eps, self.alpha_fwd, self.alpha_bkw = eps, alpha_fwd, alpha_bkw
        self.warmup_iters, self.group_num = warmup_iters, group_num
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_phi", torch.ones(1, channels, 1, 1))
        self.register_buffer("ema_gz", torch.zeros(1, channels, 1, 1))
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))

    @float32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = group_scaling(x, self.group_num)
        if not self.training:
            c = x.shape[1]
            return self.weight.view(1, c, 1, 1) * xs / (self.running_phi + self.eps).sqrt() + self.bias.view(1, c, 1, 1)
        self.iters.add_(1)
        return _PowerFunction.apply(xs, self.weight, self.bias, self.running_phi, self.ema_gz, self.eps,
                                    self.alpha_fwd, self.alpha_bkw, int(self.iters), self.warmup_iters)

    def extra_repr(self) -> str:
        return (f"{self.weight.numel()}, eps={self.eps:g}, alpha_fwd={self.alpha_fwd:g}, alpha_bkw={self.alpha_bkw:g}, "
                f"warmup_iters={self.warmup_iters}, group_num={self.group_num} (NCHW adaptation)")


def _pn_count(layer: nn.Module, shape: tuple[int, int, int, int]) -> int:
    n, c, h, w = shape
    return min(n * h * w, c // layer.group_num)


@register_norm("pn", NormTraits(batch_dependent=True, values_per_statistic=_pn_count, stateful=True,
                                cuda_graphs=False, pack=lambda layers: concat_pack(layers, ("group_num",))))
def power_norm(channels: int, eps: float = 1e-5, alpha_fwd: float = 0.9, alpha_bkw: float = 0.9,
               warmup_iters: int = 10000, group_num: int = 1) -> PowerNorm2d:
    """PowerNorm, NCHW adaptation (``PowerNorm2d``)."""
    name = "pn"
    return PowerNorm2d(channels, eps=real(name, "eps", eps, low=0.0, open_low=True),
                       alpha_fwd=real(name, "alpha_fwd", alpha_fwd, low=0.0, high=1.0),
                       alpha_bkw=real(name, "alpha_bkw", alpha_bkw, low=0.0, high=1.0),
                       warmup_iters=positive_int(name, "warmup_iters", warmup_iters, low=0),
                       group_num=divisor(name, "group_num", group_num, channels))
