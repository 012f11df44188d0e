"""The one norm registry: names, factories, parameter checks, and each norm's traits.

``build_norm(spec, channels)`` builds a layer from a config mapping; ``traits(name)`` says
what the model and the harness must know about it (``NormTraits``). Adding a layer is one
factory with ``@register_norm(name, traits=...)`` in its family's module and one file in
``normbench/configs/norm/``: the factory's keyword arguments *are* the layer's parameters, so
``build_norm`` checks spec keys against its signature and the factory checks the values,
each failure one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normbench.errors import ConfigError

#: Keys of a norm config that say *where* the layer goes, not what it computes; the model
#: reads them (see ``normbench.models``) and ``build_norm`` ignores them.
PLACEMENT_KEYS = frozenset({"tag", "placement", "sites"})
PLACEMENTS = ("pre_act", "post_act")

ModuleFlag = bool | Callable[[nn.Module], bool]


class NormLayer:
    """Marker base of every normalization layer the registry builds: models find their
    norm sites by this type (``isinstance``), whatever the module is called or where it sits."""


@dataclass(frozen=True)
class NormTraits:
    """What a norm declares about itself (docs/norms.md, "Traits").

    - ``placement``: where it goes by default, ``pre_act`` (right after the conv) or
      ``post_act`` (after the activation, as LRN);
    - ``replaces_activation``: it *is* the activation too (FRN + TLU, EvoNorm): the ReLU
      after it goes. A bool, or a function of the built layer (FRN without TLU does not);
    - ``bias_dead``: it removes any per-channel constant, so the preceding conv's bias is a
      dead parameter and is left out. A bool or a function of the built layer;
    - ``batch_dependent``: its training output for one sample depends on the others;
    - ``values_per_statistic``: ``f(layer, (N, C, H, W)) -> int``, the fewest values behind
      one of its means or variances at a site (a norm over 1 value outputs its bias alone);
    - ``stateful``: it carries state across steps (running statistics, counters, buffers),
      which a checkpoint must hold;
    - ``needs_conv``: it reads the weight of the conv feeding it (CBN): the model hands it
      the conv with ``layer.attach_conv(conv)``;
    - ``pack``: how K members' layers become one over K times the channels
      (``normbench.pack``), or None where the statistics mix channels (SN);
    - ``cuda_graphs``: it can be captured in CUDA graphs. PN and CBN read a step counter on
      the host every step: captured, they break the graph and ran 2-3x slower than eager
      (H200, docs/measurements), so ``trainer.cuda_graphs=true`` refuses them.
    """

    placement: str = "pre_act"
    replaces_activation: ModuleFlag = False
    bias_dead: ModuleFlag = False
    batch_dependent: bool = False
    values_per_statistic: Callable[[nn.Module, tuple[int, int, int, int]], int] | None = None
    stateful: bool = False
    needs_conv: bool = False
    pack: Callable[[list[nn.Module]], nn.Module] | None = None
    cuda_graphs: bool = True

    def flag(self, name: str, layer: nn.Module) -> bool:
        value = getattr(self, name)
        return bool(value(layer)) if callable(value) else bool(value)


def float32_statistics(forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]
                       ) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Run a layer's ``forward`` in float32 for float16/bfloat16 input, autocast off inside,
    and cast the output back: means of squares and their roots lose too much in half
    precision (torch's own BN is kept in float32 under autocast for the same reason)."""

    @functools.wraps(forward)
    def wrapped(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16):
            return forward(self, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return forward(self, x.float()).to(x.dtype)

    return wrapped


NO_TRAITS = NormTraits()
NORMS: dict[str, Callable[..., nn.Module]] = {}
TRAITS: dict[str, NormTraits] = {}
_RESOLVERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def register_norm(name: str, traits: NormTraits = NO_TRAITS,
                  resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                  ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``factory(channels, **params) -> nn.Module`` under ``name`` with its traits;
    ``resolve`` expands a spec's parameters to what the layer runs with (LRN presets)."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in NORMS:
            raise KeyError(f"norm {name!r} is registered twice")
        NORMS[name], TRAITS[name] = factory, traits
        if resolve is not None:
            _RESOLVERS[name] = resolve
        return factory

    return deco


def norm_names() -> list[str]:
    """Registered norm names, in registration order."""
    return list(NORMS)


def traits(name_or_layer: str | nn.Module) -> NormTraits:
    """The traits of a registered norm, by name or by a layer ``build_norm`` made."""
    if isinstance(name_or_layer, str):
        return TRAITS[name_or_layer]
    return TRAITS.get(getattr(name_or_layer, "norm_name", "none"), NO_TRAITS)


def norm_parameters(name: str) -> dict[str, Any]:
    """The parameters norm ``name`` accepts, with their defaults."""
    params = list(inspect.signature(NORMS[name]).parameters.values())[1:]  # skip `channels`
    return {p.name: p.default for p in params}


def build_norm(spec: Mapping[str, Any] | str, channels: int) -> nn.Module:
    """Build the normalization layer ``spec`` describes for ``channels`` channels.

    ``spec`` is a mapping (a dict or an OmegaConf node, e.g. Hydra's ``cfg.norm``) with
    ``name`` and the layer's parameters, or just a name. Placement keys (``tag``,
    ``placement``, ``sites``) are ignored: they are the model's business. The layer gets
    ``norm_name``, so ``traits(layer)`` finds its traits.

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
    layer = NORMS[name](channels, **params)
    layer.norm_name = name
    return layer


def resolved_params(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a spec actually runs with: its own values over the layer's defaults,
    presets expanded (what a run record stores as ``norm_params``)."""
    name = spec["name"]
    params = {**norm_parameters(name), **{k: spec[k] for k in spec if k != "name" and k not in PLACEMENT_KEYS}}
    if name in _RESOLVERS:
        params = _RESOLVERS[name](params)
    return {k: v for k, v in params.items() if v is not None}


# --- value checks: one line naming the key, the value and what is allowed --------------------


def fail(name: str, key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"norm.{key}={value!r} is not valid for norm '{name}'; allowed: {allowed}")


def real(name: str, key: str, value: Any, *, low: float = -math.inf, open_low: bool = False,
         high: float = math.inf) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bound = f"> {low:g}" if open_low else (f">= {low:g}" if low > -math.inf else "finite")
        if high < math.inf:
            bound += f" and <= {high:g}"
        raise fail(name, key, value, f"a real number {bound}")
    return float(value)


def positive_int(name: str, key: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise fail(name, key, value, f"an integer >= {low}")
    return value


def boolean(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(name, key, value, "true or false")
    return value


def choice(name: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise fail(name, key, value, " | ".join(choices))
    return value


def divisor(name: str, key: str, value: Any, channels: int) -> int:
    value = positive_int(name, key, value)
    if channels % value:
        raise fail(name, key, value, f"a divisor of the {channels} channels at this site")
    return value
