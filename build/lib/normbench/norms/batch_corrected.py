"""BN corrected for small batches: Batch Renormalization (Ioffe 2017) and Cross-Iteration
BN (Yao et al. 2021), docs/norms.md."""

from __future__ import annotations

import torch
from torch import nn

from normbench.norms.classic import bn_count
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


def batch_renorm_train(x: torch.Tensor, mu_b: torch.Tensor, sig_b: torch.Tensor, r: torch.Tensor, d: torch.Tensor,
                       weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Algorithm 1's training output ``gamma * ((x - mu_B) / sig_B * r + d) + beta`` for given
    batch statistics and corrections (all per channel, shaped (1, C, 1, 1)); r and d enter as
    constants, so the backward differentiates through mu_B and sig_B only."""
    return ((x - mu_b) / sig_b * r + d) * weight + bias


class BatchRenorm2d(nn.Module, NormLayer):
    """Batch Renormalization (Ioffe, NeurIPS 2017), Algorithm 1::

        mu_B = mean_{N,H,W} x;   sig_B = sqrt(var_{N,H,W} x + eps)     (biased)
        r = stop_grad(clip(sig_B / sig, 1/r_max, r_max))
        d = stop_grad(clip((mu_B - mu) / sig, -d_max, d_max))
        y = gamma * ((x - mu_B) / sig_B * r + d) + beta
        then mu += momentum * (mu_B - mu);  sig += momentum * (sig_B - sig)   (EMA of the STD)

    Eval: ``gamma * (x - mu) / sig + beta``; mu starts at 0, sig at 1 (as Keras). No official
    code exists; this is the algorithm as Keras 3 implements it with equal momenta. r and d
    use mu and sig from before the step's update. With r_max = 1 and d_max = 0 training is
    exactly BN.

    The clip bounds follow a schedule in SGD steps (the layer counts its training steps):
    r_max = 1 and d_max = 0 until ``relax_from``, then linear ramps that reach ``r_max`` at
    step ``r_max_at`` and ``d_max`` at ``d_max_at`` (the paper's Inception run: 5,000, 40,000
    and 25,000 steps, r_max 3, d_max 5; the ramp's shape is not published: linear here).
    Short runs must rescale the breakpoints; normbench/configs/norm/brn.yaml holds the GN paper's
    fixed r_max 1.5, d_max 0.5. The paper calls the update rate "relatively fast" without a
    value: ``momentum`` 0.01 is Keras' default (its ``renorm_momentum`` 0.99).
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.01, r_max: float = 3.0,
                 d_max: float = 5.0, relax_from: int = 5000, r_max_at: int = 40000, d_max_at: int = 25000) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.r_max, self.d_max, self.relax_from, self.r_max_at, self.d_max_at = r_max, d_max, relax_from, r_max_at, d_max_at
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_std", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _progress(self, at: int) -> torch.Tensor:
        """How far the relaxation has gone at this step, 0..1: 0 before ``relax_from``, 1 from
        ``at`` on, linear between. A tensor expression of the step counter: no host sync."""
        step = self.num_batches_tracked.to(self.running_std.dtype)
        if at <= self.relax_from:
            return (step >= self.relax_from).to(step.dtype)
        return ((step - self.relax_from) / (at - self.relax_from)).clamp(0.0, 1.0)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_max, d_max) at the current step."""
        return 1.0 + (self.r_max - 1.0) * self._progress(self.r_max_at), self.d_max * self._progress(self.d_max_at)

    @float32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        w, b = self.weight.view(shape), self.bias.view(shape)
        mu, sig = self.running_mean.view(shape), self.running_std.view(shape)
        if not self.training:
            return (x - mu) / sig * w + b
        mu_b = x.mean(dim=(0, 2, 3), keepdim=True)
        sig_b = (x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + self.eps).sqrt()
        with torch.no_grad():
            r_max, d_max = self.bounds()
            r = torch.maximum(torch.minimum(sig_b / sig, r_max), 1.0 / r_max)
            d = torch.maximum(torch.minimum((mu_b - mu) / sig, d_max), -d_max)
            self.running_mean.add_(self.momentum * (mu_b.flatten() - self.running_mean))
            self.running_std.add_(self.momentum * (sig_b.flatten() - self.running_std))
            self.num_batches_tracked.add_(1)
        return batch_renorm_train(x, mu_b, sig_b, r, d, w, b)

    def extra_repr(self) -> str:
        return (f"{self.weight.numel()}, eps={self.eps:g}, momentum={self.momentum:g}, r_max={self.r_max:g}, "
                f"d_max={self.d_max:g}, relax_from={self.relax_from}, r_max_at={self.r_max_at}, d_max_at={self.d_max_at}")


@register_norm("brn", NormTraits(bias_dead=True, batch_dependent=True, values_per_statistic=bn_count, stateful=True,
                                 pack=concat_pack))
def batch_renorm(channels: int, eps: float = 1e-5, momentum: float = 0.01, r_max: float = 3.0, d_max: float = 5.0,
                 relax_from: int = 5000, r_max_at: int = 40000, d_max_at: int = 25000) -> BatchRenorm2d:
    """Batch Renormalization (``BatchRenorm2d``)."""
    name = "brn"
    return BatchRenorm2d(channels, eps=real(name, "eps", eps, low=0.0, open_low=True),
                         momentum=real(name, "momentum", momentum, low=0.0, high=1.0),
                         r_max=real(name, "r_max", r_max, low=1.0), d_max=real(name, "d_max", d_max, low=0.0),
                         relax_from=positive_int(name, "relax_from", relax_from, low=0),
                         r_max_at=positive_int(name, "r_max_at", r_max_at, low=0),
                         d_max_at=positive_int(name, "d_max_at", d_max_at, low=0))


class CrossIterationBatchNorm2d(nn.Module, NormLayer):
    """Cross-Iteration Batch Normalization (Yao, Cao, Zheng, Huang & Lin, CVPR 2021), as the
    official ``CBatchNorm2d`` (Howal/Cross-iterationBatchNorm @f6d3530), with its state in
    registered buffers (the official Python lists are lost on resume)::

        mu_t = mean x,  nu_t = mean x^2  per channel over (N, H, W); dmu_t, dnu_t = their
               gradients with respect to W, the weight of the conv feeding this layer
        for each of the last k steps s:  mu_s' = mu_s + rho * sum dmu_s * (W_t - W_s)  (per
               output channel; nu likewise): Taylor-compensated to today's weights
        keep the entries with nu - mu^2 >= 0;  mu = mean kept mu;  s2 = mean kept nu - mu^2
        y = gamma * (x - mu) / (sqrt(s2) + eps) + beta         (eps OUTSIDE the sqrt)

    Gradients flow through mu_t and nu_t only. Without a buffer (k = 0, during burn-in) it is
    BN with the unbiased variance and eps outside the sqrt. Running statistics: EMA(0.1) of
    the current batch's mean and unbiased variance, never the compensated ones; eval:
    ``gamma * (x - run_mean) / (sqrt(run_var) + eps) + beta``.

    Burn-in, as shipped: ``burnin`` counts training forwards (*iterations*: the released
    configs' "burnin8" is 8 iterations, since only ``norm_cfg`` is converted from epochs);
    with ``two_stage`` k = ``buffer_num`` once the count exceeds ``burnin``, else 0; without,
    k ramps as ``int(buffer_num * min(count / burnin, 1))``. Defaults are the released
    configs': buffer_num 3, rho 1, burnin 8, two_stage true, momentum 0.1, eps 1e-5.

    The model hands it the conv (``attach_conv``), whose weight it reads each step: nothing
    in the training loop knows about CBN.
    """

    def __init__(self, channels: int, buffer_num: int = 3, rho: float = 1.0, burnin: int = 8,
                 two_stage: bool = True, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels, self.max_buffer, self.rho, self.burnin, self.two_stage = channels, buffer_num, rho, burnin, two_stage
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("iter_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # buffered steps held
        self._conv: tuple[nn.Conv2d, ...] = ()

    def attach_conv(self, conv: nn.Conv2d) -> None:
        """Read ``conv.weight`` each step (kept outside the module tree: the conv's parameters
        stay the conv's) and size the buffers of past steps to it."""
        if conv.out_channels != self.channels:
            raise ValueError(f"CBN has {self.channels} channels but the conv it follows has {conv.out_channels}")
        self._conv = (conv,)
        # Weight-shaped history is kept flat, (k, C, C_in * kh * kw): a 5-D buffer would break
        # ``model.to(memory_format=torch.channels_last)``, which converts every 4-D and 5-D tensor.
        k, flat = max(1, self.max_buffer), (self.channels, conv.weight[0].numel())
        for name, shape in (("pre_mu", (k, self.channels)), ("pre_meanx2", (k, self.channels)),
                            ("pre_dmudw", (k, *flat)), ("pre_dmeanx2dw", (k, *flat)), ("pre_weight", (k, *flat))):
            held = getattr(self, name, None)
            if isinstance(held, torch.Tensor) and tuple(held.shape) == shape:
                continue  # a packed layer keeps its members' history
            self.register_buffer(name, torch.zeros(shape, dtype=conv.weight.dtype, device=conv.weight.device))

    def buffer_size(self) -> int:
        """k for this step (the official ``_update_buffer_num``)."""
        if self.burnin <= 0:
            return self.max_buffer
        count = int(self.iter_count)
        if self.two_stage:
            return self.max_buffer if count > self.burnin else 0
        return int(self.max_buffer * min(count / self.burnin, 1.0))

    @float32_statistics
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        y = x.transpose(0, 1).reshape(c, -1)
        if not self.training:
            out = (y - self.running_mean.view(-1, 1)) / (self.running_var.view(-1, 1).sqrt() + self.eps)
            return self._affine(out, x)
        if self.burnin > 0:
            self.iter_count.add_(1)
        k = self.buffer_size()
        if k > 0 and x.requires_grad:
            if not self._conv:
                raise RuntimeError("CBN needs the conv it follows: build it through normbench.models (attach_conv)")
            weight = self._conv[0].weight
            cur_mu, cur_meanx2 = y.mean(dim=1), y.pow(2).mean(dim=1)
            cur_var = y.var(dim=1)
            ones = torch.ones_like(cur_mu)
            dmudw = torch.autograd.grad(cur_mu, weight, ones, retain_graph=True)[0].reshape(c, -1)
            dmeanx2dw = torch.autograd.grad(cur_meanx2, weight, ones, retain_graph=True)[0].reshape(c, -1)
            held = min(int(self.filled), k)  # earlier steps in the buffer (one host read a step)
            w_now = weight.detach().reshape(c, -1)
            mus, meanx2s = [cur_mu], [cur_meanx2]
            for s in range(held):
                delta = w_now - self.pre_weight[s]
                mus.append(self.pre_mu[s] + self.rho * (self.pre_dmudw[s] * delta).sum(dim=1))
                meanx2s.append(self.pre_meanx2[s] + self.rho * (self.pre_dmeanx2dw[s] * delta).sum(dim=1))
            mu_all, meanx2_all = torch.stack(mus), torch.stack(meanx2s)
            keep = (meanx2_all - mu_all.pow(2)) >= 0
            count = keep.sum(dim=0).to(y.dtype)
            mu = (mu_all * keep).sum(dim=0) / count
            var = (meanx2_all * keep).sum(dim=0) / count - mu.pow(2)
            with torch.no_grad():  # push this step to the front; the oldest falls off
                for name, value in (("pre_mu", cur_mu), ("pre_meanx2", cur_meanx2), ("pre_dmudw", dmudw),
                                    ("pre_dmeanx2dw", dmeanx2dw), ("pre_weight", w_now)):
                    buf = getattr(self, name)
                    buf.copy_(torch.cat([value.detach().unsqueeze(0), buf[:-1]]))
                self.filled.fill_(min(held + 1, k))
        else:
            mu, var = y.mean(dim=1), y.var(dim=1)
            cur_mu, cur_var = mu, var
            if k == 0:
                self.filled.zero_()  # the official lists are emptied when the buffer switches off
        with torch.no_grad():
            self.running_mean.lerp_(cur_mu.detach(), self.momentum)
            self.running_var.lerp_(cur_var.detach(), self.momentum)
        out = (y - mu.view(-1, 1)) / (var.view(-1, 1).sqrt() + self.eps)
        return self._affine(out, x)

    def _affine(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.weight.view(-1, 1) * out + self.bias.view(-1, 1)
        n, c, h, w = x.shape
        return out.view(c, n, h, w).transpose(0, 1)

    def extra_repr(self) -> str:
        return (f"{self.channels}, buffer_num={self.max_buffer}, rho={self.rho:g}, burnin={self.burnin} iterations, "
                f"two_stage={self.two_stage}, momentum={self.momentum:g}, eps={self.eps:g}")


@register_norm("cbn", NormTraits(bias_dead=True, batch_dependent=True, values_per_statistic=bn_count,
                                 stateful=True, needs_conv=True, cuda_graphs=False,
                                 pack=lambda layers: concat_pack(layers, ("channels",))))
def cross_iteration_batch_norm(channels: int, buffer_num: int = 3, rho: float = 1.0, burnin: int = 8,
                               two_stage: bool = True, momentum: float = 0.1,
                               eps: float = 1e-5) -> CrossIterationBatchNorm2d:
    """Cross-Iteration BN (``CrossIterationBatchNorm2d``)."""
    name = "cbn"
    return CrossIterationBatchNorm2d(channels, buffer_num=positive_int(name, "buffer_num", buffer_num, low=0),
                                     rho=real(name, "rho", rho, low=0.0), burnin=positive_int(name, "burnin", burnin, low=0),
                                     two_stage=boolean(name, "two_stage", two_stage),
                                     momentum=real(name, "momentum", momentum, low=0.0, high=1.0),
                                     eps=real(name, "eps", eps, low=0.0, open_low=True))
