"""Backbones, where their norms go, and the check of a (model, norm, input) triple.

Each conv is a *site*. A norm at a site goes either right after the conv (``pre_act``, where
BN/LN/IN/GN go) or at the position the source paper puts LRN (``post_act``: after the ReLU,
and for Caffe's conv2/conv3 after the pool too). ``placement: auto`` picks ``post_act`` for
LRN and ``pre_act`` for everything else. Norms come from ``normbench.norms.build_norm``.

- ``convnet``: Caffe ``cifar10_full`` / cuda-convnet ``layers-18pct`` (REFERENCES.md §2):
  conv1 32 5x5 -> max pool 3/2 -> ReLU -> [LRN] -> conv2 32 5x5 -> ReLU -> avg pool 3/2 ->
  [LRN] -> conv3 64 5x5 -> ReLU -> avg pool 3/2 -> fc 10. Pools use Caffe's ceil rounding
  (32 -> 16 -> 8 -> 4).
- ``alexnet``: AlexNet's pattern (Krizhevsky et al. 2012) for 32x32 inputs: 5 convs
  (5x5, 5x5, 3x3, 3x3, 3x3, stride 1), LRN after the ReLUs of conv1 and conv2, max pools 3/2
  after conv1, conv2 and conv5, then fc-fc-fc with dropout; widths are AlexNet's
  (96, 256, 384, 384, 256, fc 4096) times ``width``.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normbench.errors import ConfigError
from normbench.norms import PLACEMENT_KEYS, build_norm

PLACEMENTS = ("auto", "pre_act", "post_act")


@dataclass(frozen=True)
class NormPlan:
    """Which norm goes at which sites, and where in each block."""

    spec: Mapping[str, Any]
    placement: str  # pre_act | post_act (resolved)
    sites: tuple[str, ...] | None  # None: every conv

    @classmethod
    def from_config(cls, norm_cfg: Mapping[str, Any], site_names: tuple[str, ...], model: str) -> NormPlan:
        name = norm_cfg.get("name")
        placement = norm_cfg.get("placement", "auto")
        if placement not in PLACEMENTS:
            raise ConfigError(f"norm.placement={placement!r} is not valid; allowed: {' | '.join(PLACEMENTS)}")
        if placement == "auto":
            placement = "post_act" if name == "lrn" else "pre_act"
        sites = norm_cfg.get("sites", "all")
        if sites in (None, "all"):
            chosen = None
        else:
            chosen = (sites,) if isinstance(sites, str) else tuple(sites)
            unknown = [s for s in chosen if s not in site_names]
            if unknown:
                raise ConfigError(
                    f"norm.sites={list(chosen)} names {unknown[0]!r}, not a conv of model '{model}'; "
                    f"allowed: all, or a list of {', '.join(site_names)}"
                )
        spec = {k: norm_cfg[k] for k in norm_cfg if k not in PLACEMENT_KEYS}
        return cls(spec, placement, chosen)

    def layer(self, site: str, position: str, channels: int) -> nn.Module:
        """The norm for ``site`` at ``position`` (pre_act | post_act), else an identity."""
        if position != self.placement or (self.sites is not None and site not in self.sites):
            return nn.Identity()
        try:
            return build_norm(self.spec, channels)
        except ConfigError as err:
            raise ConfigError(f"{err} (site {site})") from None



def removes_channel_constant(norm: nn.Module) -> bool:
    """Whether ``norm`` subtracts a per-channel mean, so that a per-channel constant before
    it (a conv's bias) is a dead parameter: BN and IN (or GN with one channel per group) do;
    GN with larger groups and LN do not (they subtract one mean per group)."""
    return isinstance(norm, nn.BatchNorm2d) or (
        isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels
    )


class Net(nn.Module):
    """Conv features, then a classifier; ``norms`` maps site names to their norm modules."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, sites: tuple[str, ...]) -> None:
        super().__init__()
        self.features, self.classifier, self.sites = features, classifier, sites
        self.placement = "pre_act"  # set by build_model to the plan's resolved placement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def norms(self) -> dict[str, nn.Module]:
        """The norm layers that are not identities, named ``<site>.<pre_act|post_act>``."""
        out = {}
        for name, m in self.features.named_children():
            if name.endswith(("_pre_act", "_post_act")) and not isinstance(m, nn.Identity):
                site, _, position = name.partition("_")
                out[f"{site}.{position}"] = m
        return out


def _conv(plan: NormPlan, site: str, cin: int, cout: int, k: int) -> list[tuple[str, nn.Module]]:
    norm = plan.layer(site, "pre_act", cout)
    return [
        (site, nn.Conv2d(cin, cout, k, padding=k // 2, bias=not removes_channel_constant(norm))),
        (f"{site}_pre_act", norm),
    ]


def _post(plan: NormPlan, site: str, channels: int) -> tuple[str, nn.Module]:
    return (f"{site}_post_act", plan.layer(site, "post_act", channels))


def _site_shapes(features: nn.Sequential, input_shape: tuple[int, int, int], model: str) -> tuple[dict[str, tuple[int, ...]], int]:
    """The input shape of every norm position, and the flattened output size, for one
    image: a pass with the norms left out (they never change shapes), so that a norm that
    cannot run on its map is reported by ``check_statistics``, not by a PyTorch error."""
    shapes: dict[str, tuple[int, ...]] = {}
    x = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad():
            for name, m in features.named_children():
                if name.endswith(("_pre_act", "_post_act")):
                    shapes[name] = tuple(x.shape)
                else:
                    was_training = m.training
                    x = m.eval()(x)
                    m.train(was_training)
    except RuntimeError as err:
        raise ConfigError(
            f"model '{model}' cannot take {input_shape[1]}x{input_shape[2]} inputs "
            f"(the maps shrink to nothing: {str(err).splitlines()[0]}); use a larger input"
        ) from None
    return shapes, x[0].numel()


CONVNET_SITES = ("conv1", "conv2", "conv3")


def convnet(plan: NormPlan, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> Net:
    """Caffe cifar10_full / cuda-convnet layers-18pct (REFERENCES.md §2)."""
    c1, c2, c3 = (max(1, round(c * width)) for c in (32, 32, 64))
    layers = [
        *_conv(plan, "conv1", input_shape[0], c1, 5),
        ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ("relu1", nn.ReLU(inplace=True)),
        _post(plan, "conv1", c1),
        *_conv(plan, "conv2", c1, c2, 5),
        ("relu2", nn.ReLU(inplace=True)),
        ("pool2", nn.AvgPool2d(3, 2, ceil_mode=True)),
        _post(plan, "conv2", c2),
        *_conv(plan, "conv3", c2, c3, 5),
        ("relu3", nn.ReLU(inplace=True)),
        ("pool3", nn.AvgPool2d(3, 2, ceil_mode=True)),
        _post(plan, "conv3", c3),
    ]
    features = nn.Sequential(OrderedDict(layers))
    _, flat = _site_shapes(features, input_shape, "convnet")
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
    return Net(features, classifier, CONVNET_SITES)


ALEXNET_SITES = ("conv1", "conv2", "conv3", "conv4", "conv5")


def alexnet(plan: NormPlan, input_shape: tuple[int, int, int], num_classes: int, width: float = 0.5,
            dropout: float = 0.5) -> Net:
    """AlexNet's layer pattern (Krizhevsky et al. 2012, Sec. 3.5) scaled to 32x32 inputs."""
    c = [max(1, round(ch * width)) for ch in (96, 256, 384, 384, 256)]
    hidden = max(1, round(4096 * width / 4))  # 4096-wide fc layers would dwarf the convs at 32x32
    layers: list[tuple[str, nn.Module]] = []
    cin = input_shape[0]
    for i, (cout, k) in enumerate(zip(c, (5, 5, 3, 3, 3)), start=1):
        site = f"conv{i}"
        layers += [*_conv(plan, site, cin, cout, k), (f"relu{i}", nn.ReLU(inplace=True)), _post(plan, site, cout)]
        if i in (1, 2, 5):
            layers.append((f"pool{i}", nn.MaxPool2d(3, 2, padding=1)))
        cin = cout
    features = nn.Sequential(OrderedDict(layers))
    _, flat = _site_shapes(features, input_shape, "alexnet")
    classifier = nn.Sequential(
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes),
    )
    return Net(features, classifier, ALEXNET_SITES)


MODELS: dict[str, tuple[Callable[..., Net], tuple[str, ...]]] = {
    "convnet": (convnet, CONVNET_SITES),
    "alexnet": (alexnet, ALEXNET_SITES),
}


def build_model(model_cfg: Mapping[str, Any], norm_cfg: Mapping[str, Any], input_shape: tuple[int, int, int],
                num_classes: int, batch_size: int | None = None) -> Net:
    """Build ``model_cfg.name`` with the norm ``norm_cfg`` describes, and check the triple.

    ``model_cfg`` holds ``name`` and the builder's keyword arguments (e.g. ``width``).
    With ``batch_size``, also checks that every norm's statistics span more than one value.
    """
    name = model_cfg.get("name")
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not a known model; allowed: {', '.join(MODELS)}")
    builder, sites = MODELS[name]
    kwargs = {k: model_cfg[k] for k in model_cfg if k != "name"}
    try:
        inspect.signature(builder).bind(None, input_shape, num_classes, **kwargs)
    except TypeError:
        allowed = list(inspect.signature(builder).parameters)[3:]
        bad = sorted(set(kwargs) - set(allowed))
        raise ConfigError(f"model.{bad[0]} is not a parameter of model '{name}'; allowed: {', '.join(allowed)}") from None
    width = kwargs.get("width", 1.0)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ConfigError(f"model.width={width!r} is not valid; allowed: a number > 0")
    plan = NormPlan.from_config(norm_cfg, sites, name)
    net = builder(plan, input_shape, num_classes, **kwargs)
    net.placement = plan.placement
    if batch_size is not None:
        check_statistics(net, input_shape, batch_size, norm_cfg.get("name"))
    return net


def check_statistics(net: Net, input_shape: tuple[int, int, int], batch_size: int, norm: str | None) -> None:
    """Fail when a norm would compute a statistic over a single value (its output would be
    the bias alone): IN on a 1x1 map, GN with one channel per group on a 1x1 map, LN with one
    channel on a 1x1 map, or BN with batch size 1 on a 1x1 map."""
    shapes, _ = _site_shapes(net.features, input_shape, type(net).__name__)
    for key, m in net.norms().items():
        _, c, h, w = shapes[key.replace(".", "_")]
        if isinstance(m, nn.BatchNorm2d):
            count, what = batch_size * h * w, f"batch_size={batch_size} x {h}x{w} map"
        elif isinstance(m, nn.GroupNorm):
            count, what = (c // m.num_groups) * h * w, f"{c // m.num_groups} channel(s) per group x {h}x{w} map"
        else:
            continue
        if count < 2:
            site = key.split(".")[0]
            raise ConfigError(
                f"norm={norm} at site {site} would normalize over 1 value ({what}): every output "
                f"would equal its bias; choose other norm.sites, a larger input or batch, or another norm"
            )
