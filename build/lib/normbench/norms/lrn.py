"""Local Response Normalization (Krizhevsky et al. 2012), across or within channels, with
the published presets and a closed-form backward (docs/norms.md, "LRN")."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from normbench.norms.registry import NormLayer, NormTraits, choice, fail, positive_int, real, register_norm


def _pack_lrn(layers: list[nn.Module]) -> nn.Module:
    """K members' LRN: within a channel nothing changes; across channels the window is cut
    at each member's block (block-diagonal)."""
    packed = copy.deepcopy(layers[0])
    packed.blocks *= len(layers)
    packed._kernel = None
    return packed


#: After the ReLU, where AlexNet and Caffe put it; it keeps no state and sees no batch.
LRN_TRAITS = NormTraits(placement="post_act", pack=_pack_lrn)

#: Named LRN settings, each as published. ``alpha_scaling="paper"`` uses alpha as given
#: (AlexNet paper, TensorFlow); ``"per_window"`` divides it by the window's size (n across,
#: n^2 within), as Caffe, cuda-convnet and PyTorch do (docs/norms.md).
LRN_PRESETS: dict[str, dict[str, Any]] = {
    # Krizhevsky et al. 2012, Sec. 3.3: k=2, n=5, alpha=1e-4, beta=0.75, alpha not divided.
    "alexnet": dict(region="across", size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_scaling="paper"),
    # Caffe examples/cifar10/cifar10_full_train_test.prototxt: WITHIN_CHANNEL, local_size 3,
    # alpha 5e-5, beta 0.75 (= cuda-convnet layers-18pct `rnorm`); Caffe fixes k = 1.
    "caffe_cifar10_full": dict(region="within", size=3, alpha=5e-5, beta=0.75, k=1.0, alpha_scaling="per_window"),
    # Caffe models/bvlc_alexnet: ACROSS_CHANNELS, local_size 5, alpha 1e-4, k 1 (NOT the paper's).
    "caffe_bvlc_alexnet": dict(region="across", size=5, alpha=1e-4, beta=0.75, k=1.0, alpha_scaling="per_window"),
    # cuda-convnet conv-local-11pct: `cmrnorm` size 9, scale 0.001, pow 0.75 (alpha / n).
    "cuda_convnet_11pct": dict(region="across", size=9, alpha=1e-3, beta=0.75, k=1.0, alpha_scaling="per_window"),
    # tf.nn.local_response_normalization defaults: depth_radius 5, bias 1, alpha 1, beta 0.5.
    "tensorflow": dict(region="across", size=11, alpha=1.0, beta=0.5, k=1.0, alpha_scaling="paper"),
}
_LRN_REGION_DEFAULT_PRESET = {"across": "alexnet", "within": "caffe_cifar10_full"}


def _across_channel_sum(sq: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    # A banded (C x C) matmul sums each channel window in one BLAS call: on the 2-core CPU
    # it is as fast as n shifted adds and, unlike avg_pool3d (PyTorch's LRN), it needs no
    # nondeterministic CUDA kernel -- and we never differentiate through it, see below.
    # A packed layer (K members' channels side by side) holds one member's band and sums
    # each member's block apart: no product ever mixes two members, so a member that
    # diverges (NaN) cannot leak into the others through 0 * NaN.
    n, c, cb = *sq.shape[:2], band.shape[0]
    if cb == c:
        return torch.matmul(band, sq.reshape(n, c, -1)).view(sq.shape)
    return torch.matmul(band, sq.reshape(n, c // cb, cb, -1)).view(sq.shape)


def _within_channel_sum(sq: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    # Zero-padded (2r+1)^2 box sum as a depthwise conv with a ones kernel: exact, and ~9x
    # faster on CPU than avg_pool2d(divisor_override=1) (measured at 128x32x16x16).
    return nn.functional.conv2d(sq, box, padding=box.shape[-1] // 2, groups=sq.shape[1])


class _LRNFunction(torch.autograd.Function):
    """b = a * S^-beta with S = k + A * W(a^2), W a symmetric window sum (W^T = W).

    Closed-form backward: da_j = g_j S_j^-beta - 2 A beta a_j W(g b / S)_j. Writing it by
    hand saves autograd from storing and replaying the ~8 intermediate ops, which is what
    makes ``F.local_response_norm`` slow (see scripts/bench_norms.py).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, window: Callable[[torch.Tensor], torch.Tensor],
                scale: float, beta: float, k: float) -> torch.Tensor:
        s = window(x * x).mul_(scale).add_(k)
        s_pow = s.pow(-beta)
        y = x * s_pow
        ctx.window, ctx.scale, ctx.beta = window, scale, beta
        ctx.save_for_backward(x, s, s_pow, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        x, s, s_pow, y = ctx.saved_tensors
        back = ctx.window(g * y / s).mul_(x).mul_(-2.0 * ctx.scale * ctx.beta)
        return back.addcmul_(g, s_pow), None, None, None, None


class LocalResponseNorm(nn.Module, NormLayer):
    r"""Local Response Normalization, across channels or within a channel.

    ``b = a / (k + A * sum_{window} a^2) ^ beta``, the window centred on each element with
    half-width ``r = size // 2`` (so ``2r + 1`` wide) and zero padded at the borders:

    - ``region="across"``: channels ``max(0, i-r) .. min(C-1, i+r)`` at the same (x, y),
      AlexNet's formula (Krizhevsky et al. 2012, Sec. 3.3). An even ``size`` follows that
      formula literally: its window holds ``size + 1`` channels.
    - ``region="within"``: a ``(2r+1) x (2r+1)`` spatial window in the same channel, zero
      padded, the padding counted (Caffe ``WITHIN_CHANNEL``, cuda-convnet ``rnorm``).

    ``alpha_scaling`` fixes A:

    - ``"paper"``: A = alpha, as in the AlexNet paper and TensorFlow;
    - ``"per_window"``: A = alpha / n across and alpha / n^2 within, as in Caffe,
      cuda-convnet and PyTorch. Like Caffe, it requires an odd ``size``.

    Mapping to other libraries (n odd):

    - ``torch.nn.LocalResponseNorm(size=n, alpha=a, beta=b, k=k)`` equals
      ``LocalResponseNorm(size=n, alpha=a, beta=b, k=k, alpha_scaling="per_window")`` and
      ``LocalResponseNorm(size=n, alpha=a / n, beta=b, k=k, alpha_scaling="paper")``.
      (PyTorch's even sizes pad asymmetrically and match neither.)
    - ``tf.nn.local_response_normalization(depth_radius=r, bias=k, alpha=a, beta=b)``
      equals ``LocalResponseNorm(size=2r+1, alpha=a, beta=b, k=k, alpha_scaling="paper")``.
    - The AlexNet paper's setting is TF(r=2, bias=2, alpha=1e-4, beta=0.75) and
      PyTorch LRN(5, alpha=5e-4, beta=0.75, k=2): the ``"alexnet"`` preset.

    The backward is written in closed form (no ``avg_pool3d``, whose CUDA backward is
    nondeterministic), so the layer works under ``torch.use_deterministic_algorithms``.
    Half-precision inputs are computed in float32: ``pow`` of a sum of squares loses too
    much in bf16.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 region: str = "across", alpha_scaling: str = "paper") -> None:
        super().__init__()
        self.region = choice("lrn", "region", region, ("across", "within"))
        self.alpha_scaling = choice("lrn", "alpha_scaling", alpha_scaling, ("paper", "per_window"))
        self.size = positive_int("lrn", "size", size)
        if self.alpha_scaling == "per_window" and size % 2 == 0:
            raise fail("lrn", "size", size, "an odd integer with alpha_scaling=per_window (as Caffe requires)")
        self.alpha = real("lrn", "alpha", alpha, low=0.0)
        self.beta = real("lrn", "beta", beta, low=0.0)
        self.k = real("lrn", "k", k, low=0.0)
        self.radius = size // 2
        divisor = 1 if alpha_scaling == "paper" else (size if region == "across" else size * size)
        self.scale = self.alpha / divisor  # A in the formula
        self._kernel: torch.Tensor | None = None  # window-sum weights, built per (C, dtype, device)
        self.blocks = 1  # a packed layer: K members' channels side by side, windows never cross them

    def _window(self, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        c, kernel = like.shape[1], self._kernel
        size = c // self.blocks if self.region == "across" else c  # across: one member's band
        if kernel is None or kernel.shape[0] != size or kernel.dtype != like.dtype or kernel.device != like.device:
            if self.region == "across":
                idx = torch.arange(size, device=like.device)
                kernel = ((idx[:, None] - idx[None, :]).abs() <= self.radius).to(like.dtype)
            else:
                w = 2 * self.radius + 1
                kernel = torch.ones(c, 1, w, w, dtype=like.dtype, device=like.device)
            self._kernel = kernel
        window_sum = _across_channel_sum if self.region == "across" else _within_channel_sum
        return lambda sq: window_sum(sq, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"LocalResponseNorm expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        low_precision = x.dtype in (torch.float16, torch.bfloat16)
        xin = x.float() if low_precision else x
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = _LRNFunction.apply(xin, self._window(xin), self.scale, self.beta, self.k)
        return y.to(x.dtype) if low_precision else y

    def extra_repr(self) -> str:
        return (f"region={self.region}, size={self.size}, alpha={self.alpha:g}, beta={self.beta:g}, "
                f"k={self.k:g}, alpha_scaling={self.alpha_scaling}")


@register_norm("lrn", LRN_TRAITS, resolve=lambda p: _lrn_params(p.pop("preset"), p))
def local_response_norm(
    channels: int,
    preset: str | None = None,
    region: str | None = None,
    size: int | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    k: float | None = None,
    alpha_scaling: str | None = None,
) -> LocalResponseNorm:
    """LRN from a preset (``LRN_PRESETS``) with any parameter overridden.

    Without ``preset``, the defaults are the AlexNet paper's for ``region="across"`` (the
    default region) and Caffe cifar10_full's for ``region="within"`` (where k = 1, the
    value Caffe fixes).
    """
    return LocalResponseNorm(**_lrn_params(preset, dict(region=region, size=size, alpha=alpha, beta=beta, k=k,
                                                         alpha_scaling=alpha_scaling)))


def _lrn_params(preset: str | None, given: dict[str, Any]) -> dict[str, Any]:
    if preset is not None:
        choice("lrn", "preset", preset, tuple(LRN_PRESETS))
    else:
        region = given.get("region") or "across"
        preset = _LRN_REGION_DEFAULT_PRESET[choice("lrn", "region", region, ("across", "within"))]
    return {**LRN_PRESETS[preset], **{key: v for key, v in given.items() if v is not None}}
