"""Normalization layers and their registry: ``build_norm(spec, channels) -> nn.Module``.

Every layer computes exactly the definition in ``shared/REFERENCES.md`` §1 (input of shape
(N, C, H, W), eps = 1e-5 unless given):

==========  ==============================================  =============================
name        statistics / formula                            source
==========  ==============================================  =============================
``none``    identity                                        --
``bn``      mean/var over (N, H, W) per channel             Ioffe & Szegedy 2015
``ln``      mean/var over (C, H, W) per sample              Wu & He 2018, Sec. 3
``in``      mean/var over (H, W) per sample and channel     Wu & He 2018 (Ulyanov 2016)
``gn``      mean/var over (C/G, H, W) per sample and group  Wu & He 2018
``lrn``     b = a / (k + A * sum_window a^2) ^ beta         Krizhevsky et al. 2012, Caffe
==========  ==============================================  =============================

LN, IN and GN all carry a per-channel affine, as in the GN paper; this is why LN is
``nn.GroupNorm(1, C)`` and not ``nn.LayerNorm([C, H, W])`` (per-element affine), and IN is
``nn.GroupNorm(C, C)`` and not ``nn.InstanceNorm2d(C)`` (no affine by default).

Adding a layer is one factory (or class) and one ``@register_norm("name")`` line: the
factory's keyword arguments *are* the layer's parameters, so ``build_norm`` validates
spec keys against the signature and the factory validates the values.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from normbench.errors import ConfigError

__all__ = [
    "LRN_PRESETS",
    "NORMS",
    "PLACEMENT_KEYS",
    "LocalResponseNorm",
    "build_norm",
    "norm_names",
    "resolved_params",
    "register_norm",
]

#: Keys of a norm config that say *where* the layer goes, not what it computes; the model
#: reads them (see ``normbench.models``) and ``build_norm`` ignores them.
PLACEMENT_KEYS = frozenset({"tag", "placement", "sites"})

NORMS: dict[str, Callable[..., nn.Module]] = {}


def register_norm(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``factory(channels, **params) -> nn.Module`` under ``name``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in NORMS:
            raise KeyError(f"norm {name!r} is registered twice")
        NORMS[name] = factory
        return factory

    return deco


def norm_names() -> list[str]:
    """Registered norm names, in registration order."""
    return list(NORMS)


def norm_parameters(name: str) -> dict[str, Any]:
    """The parameters norm ``name`` accepts, with their defaults."""
    params = list(inspect.signature(NORMS[name]).parameters.values())[1:]  # skip `channels`
    return {p.name: p.default for p in params}


def build_norm(spec: Mapping[str, Any] | str, channels: int) -> nn.Module:
    """Build the normalization layer ``spec`` describes for ``channels`` channels.

    ``spec`` is a mapping (a dict or an OmegaConf node, e.g. Hydra's ``cfg.norm``) with
    ``name`` and the layer's parameters, or just a name. Placement keys (``tag``,
    ``placement``, ``sites``) are ignored: they are the model's business.

    Raises ``ConfigError`` (a ``ValueError``) with one line naming the key, the value given
    and what is allowed.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"norm: expected a mapping with 'name', got {type(spec).__name__} {spec!r}")
    name = spec.get("name")
    if name not in NORMS:
        raise ConfigError(f"norm.name={name!r} is not a known normalization; allowed: {', '.join(NORMS)}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"norm '{name}': channels={channels!r} must be a positive integer")
    allowed = norm_parameters(name)
    params = {k: spec[k] for k in spec if k != "name" and k not in PLACEMENT_KEYS}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"norm.{unknown[0]}={params[unknown[0]]!r} is not a parameter of norm '{name}'; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    return NORMS[name](channels, **params)


# --- value checks --------------------------------------------------------------------------


def _fail(name: str, key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"norm.{key}={value!r} is not valid for norm '{name}'; allowed: {allowed}")


def _real(name: str, key: str, value: Any, *, low: float = -math.inf, open_low: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low)
    if not ok:
        bound = f"> {low:g}" if open_low else (f">= {low:g}" if low > -math.inf else "finite")
        raise _fail(name, key, value, f"a real number {bound}")
    return float(value)


def _positive_int(name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(name, key, value, "an integer >= 1")
    return value


def _boolean(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, key, value, "true or false")
    return value


def _choice(name: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(name, key, value, " | ".join(choices))
    return value


# --- BN, LN, IN, GN ------------------------------------------------------------------------


@register_norm("none")
def no_norm(channels: int) -> nn.Module:
    """No normalization: the identity."""
    return nn.Identity()


@register_norm("bn")
def batch_norm(
    channels: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
) -> nn.BatchNorm2d:
    """Batch Normalization (Ioffe & Szegedy 2015): statistics over (N, H, W) per channel.

    Training normalizes with the batch's biased variance; evaluation with running
    averages updated as ``run = (1 - momentum) * run + momentum * batch`` (unbiased
    variance), PyTorch's convention. Keras' ``momentum`` is the weight of the *old* value:
    Keras 0.99 equals ``momentum=0.01`` here.
    """
    eps = _real("bn", "eps", eps, low=0.0, open_low=True)
    momentum = _real("bn", "momentum", momentum, low=0.0)
    if momentum > 1:
        raise _fail("bn", "momentum", momentum, "a real number in [0, 1] (PyTorch convention)")
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=_boolean("bn", "affine", affine))


@register_norm("ln")
def layer_norm(channels: int, eps: float = 1e-5, affine: bool = True) -> nn.GroupNorm:
    """Layer Normalization as the GN paper defines it for conv maps: statistics over
    (C, H, W) per sample, per-channel affine; ``nn.GroupNorm(1, C)``."""
    eps = _real("ln", "eps", eps, low=0.0, open_low=True)
    return nn.GroupNorm(1, channels, eps=eps, affine=_boolean("ln", "affine", affine))


@register_norm("in")
def instance_norm(channels: int, eps: float = 1e-5, affine: bool = True) -> nn.GroupNorm:
    """Instance Normalization with the GN paper's per-channel affine: statistics over
    (H, W) per sample and channel; ``nn.GroupNorm(C, C)``. Same numbers in train and eval
    (no running statistics), unlike ``nn.InstanceNorm2d(track_running_stats=True)``."""
    eps = _real("in", "eps", eps, low=0.0, open_low=True)
    return nn.GroupNorm(channels, channels, eps=eps, affine=_boolean("in", "affine", affine))


@register_norm("gn")
def group_norm(
    channels: int,
    groups: int | None = 32,
    group_size: int | None = None,
    eps: float = 1e-5,
    affine: bool = True,
) -> nn.GroupNorm:
    """Group Normalization (Wu & He 2018): statistics over (C/G, H, W) per sample and group.

    Give ``groups`` (G, default 32 as in the paper) or ``group_size`` (channels per group,
    the paper's Table 3 variant); setting ``group_size`` overrides the default G. G = 1 is
    LN and G = C is IN.
    """
    eps = _real("gn", "eps", eps, low=0.0, open_low=True)
    affine = _boolean("gn", "affine", affine)
    if group_size is not None:
        group_size = _positive_int("gn", "group_size", group_size)
        if channels % group_size:
            raise _fail("gn", "group_size", group_size, f"a divisor of the {channels} channels at this site")
        groups = channels // group_size
    elif groups is None:
        raise ConfigError("norm 'gn': set norm.groups or norm.group_size")
    else:
        groups = _positive_int("gn", "groups", groups)
        if channels % groups:
            raise _fail("gn", "groups", groups, f"a divisor of the {channels} channels at this site")
    return nn.GroupNorm(groups, channels, eps=eps, affine=affine)


# --- LRN -----------------------------------------------------------------------------------

#: Named LRN settings, each as published. ``alpha_scaling="paper"`` uses alpha as given
#: (AlexNet paper, TensorFlow); ``"per_window"`` divides it by the window's size (n across,
#: n^2 within), as Caffe, cuda-convnet and PyTorch do. REFERENCES.md §1-§2.
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
    n, c = sq.shape[:2]
    return torch.matmul(band, sq.reshape(n, c, -1)).view(sq.shape)


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


class LocalResponseNorm(nn.Module):
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
        self.region = _choice("lrn", "region", region, ("across", "within"))
        self.alpha_scaling = _choice("lrn", "alpha_scaling", alpha_scaling, ("paper", "per_window"))
        self.size = _positive_int("lrn", "size", size)
        if self.alpha_scaling == "per_window" and size % 2 == 0:
            raise _fail("lrn", "size", size, "an odd integer with alpha_scaling=per_window (as Caffe requires)")
        self.alpha = _real("lrn", "alpha", alpha, low=0.0)
        self.beta = _real("lrn", "beta", beta, low=0.0)
        self.k = _real("lrn", "k", k, low=0.0)
        self.radius = size // 2
        divisor = 1 if alpha_scaling == "paper" else (size if region == "across" else size * size)
        self.scale = self.alpha / divisor  # A in the formula
        self._kernel: torch.Tensor | None = None  # window-sum weights, built per (C, dtype, device)

    def _window(self, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        c, kernel = like.shape[1], self._kernel
        if kernel is None or kernel.shape[0] != c or kernel.dtype != like.dtype or kernel.device != like.device:
            if self.region == "across":
                idx = torch.arange(c, device=like.device)
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


@register_norm("lrn")
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
        _choice("lrn", "preset", preset, tuple(LRN_PRESETS))
    else:
        region = given.get("region") or "across"
        preset = _LRN_REGION_DEFAULT_PRESET[_choice("lrn", "region", region, ("across", "within"))]
    return {**LRN_PRESETS[preset], **{key: v for key, v in given.items() if v is not None}}


def resolved_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a spec actually runs with: its own values over the layer's defaults,
    LRN presets expanded (what a run record stores as ``norm_params``)."""
    name = spec["name"]
    params = {**norm_parameters(name), **{k: spec[k] for k in spec if k != "name" and k not in PLACEMENT_KEYS}}
    if name == "lrn":
        params = _lrn_params(params.pop("preset"), params)
    return {k: v for k, v in params.items() if v is not None}
