"""Backbones, where their norms go, and the check of a (model, norm, input) triple.

Each conv is a *site*. A norm at a site goes either right after the conv (``pre_act``, where
BN/LN/IN/GN go) or at the position the source paper puts LRN (``post_act``: after the ReLU,
and for Caffe's conv2/conv3 after the pool too). ``placement: auto`` picks ``post_act`` for
LRN and ``pre_act`` for everything else. Norms come from ``normbench.norms.build_norm``.

- ``convnet``: Caffe ``cifar10_full`` / cuda-convnet ``layers-18pct`` (docs/norms.md, "Backbones"):
  conv1 32 5x5 -> max pool 3/2 -> ReLU -> [LRN] -> conv2 32 5x5 -> ReLU -> avg pool 3/2 ->
  [LRN] -> conv3 64 5x5 -> ReLU -> avg pool 3/2 -> fc 10. Pools use Caffe's ceil rounding
  (32 -> 16 -> 8 -> 4).
- ``alexnet``: AlexNet's pattern (Krizhevsky et al. 2012) for 32x32 inputs: 5 convs
  (5x5, 5x5, 3x3, 3x3, 3x3, stride 1), LRN after the ReLUs of conv1 and conv2, max pools 3/2
  after conv1, conv2 and conv5, then fc-fc-fc with dropout; widths are AlexNet's
  (96, 256, 384, 384, 256, fc 4096) times ``width``.
- ``resnet20``: He et al. 2016's CIFAR ResNet-20 (``resnet20``): a norm after every conv,
  option A (parameter-free) or B (projection) shortcuts.
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
from normbench.norms import PLACEMENT_KEYS, NormLayer, build_norm, traits

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
            placement = traits(name).placement if isinstance(name, str) and name in _known_norms() else "pre_act"
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
        """The norm for ``site`` at ``position`` (pre_act | post_act), else an identity. The
        layer learns its ``norm_site`` (``conv1.pre_act``): what records and checks call it."""
        if position != self.placement or (self.sites is not None and site not in self.sites):
            return nn.Identity()
        try:
            layer = build_norm(self.spec, channels)
        except ConfigError as err:
            raise ConfigError(f"{err} (site {site})") from None
        layer.norm_site = f"{site}.{position}"
        return layer

    def has_norm(self, site: str) -> bool:
        return self.spec.get("name") != "none" and (self.sites is None or site in self.sites)


def _known_norms() -> list[str]:
    from normbench.norms import norm_names

    return norm_names()


class WSConv2d(nn.Conv2d):
    """A conv with Weight Standardization (Qiao et al. 2019, the official PyTorch layer)::

        W_hat[o] = (W[o] - mean W[o]) / (std1 W[o] + 1e-5)   over (C_in, kh, kw); std1 UNBIASED,
                                                              eps outside the sqrt
        out = conv(x, W_hat, bias)

    in training and eval. Used only on convs followed by a norm (``model.weight_std``), as
    the official README says. timm's ``StdConv2d`` uses the biased variance with eps inside
    the sqrt: close, not identical."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)



class Net(nn.Module):
    """Conv features, then a classifier; ``norms`` maps site names to their norm modules."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, sites: tuple[str, ...]) -> None:
        super().__init__()
        self.features, self.classifier, self.sites = features, classifier, sites
        self.placement = "pre_act"  # set by build_model to the plan's resolved placement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def norms(self) -> dict[str, nn.Module]:
        """The norm layers, found by type (``NormLayer``) wherever they sit, named by their
        ``<site>.<pre_act|post_act>``."""
        return {m.norm_site: m for m in self.modules() if isinstance(m, NormLayer)}


def _conv(plan: NormPlan, site: str, cin: int, cout: int, k: int, weight_std: bool = False, stride: int = 1
          ) -> list[tuple[str, nn.Module]]:
    """The conv of ``site`` and the norm right after it (an identity when the norm goes
    elsewhere). The norm's traits decide the conv's bias (left out where the norm makes it
    dead) and whether the norm reads the conv's weight (CBN)."""
    norm = plan.layer(site, "pre_act", cout)
    norm_traits = traits(norm)
    conv_cls = WSConv2d if weight_std and plan.has_norm(site) else nn.Conv2d
    conv = conv_cls(cin, cout, k, stride=stride, padding=k // 2, bias=not norm_traits.flag("bias_dead", norm))
    if norm_traits.needs_conv:
        norm.attach_conv(conv)
    return [(site, conv), (f"{site}_pre_act", norm)]


def _act(norm: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The ReLU of ``site``, or an identity where the norm right after the conv is the
    activation too (FRN + TLU, EvoNorm)."""
    replaced = traits(norm).flag("replaces_activation", norm)
    return (name, nn.Identity() if replaced else nn.ReLU(inplace=True))


def _post(plan: NormPlan, site: str, channels: int) -> tuple[str, nn.Module]:
    return (f"{site}_post_act", plan.layer(site, "post_act", channels))


def _site_shapes(features: nn.Module, input_shape: tuple[int, int, int], model: str) -> tuple[dict[str, tuple[int, ...]], int]:
    """The input shape of every norm position, and the flattened output size, for one
    image: a pass with the norms left out (they never change shapes), so that a norm that
    cannot run on its map is reported by ``check_statistics``, not by a PyTorch error. Works
    for any topology (residual blocks included): each norm is an identity for the pass."""
    shapes: dict[str, tuple[int, ...]] = {}
    norms = [m for m in features.modules() if isinstance(m, NormLayer)]
    modes = {m: m.training for m in features.modules()}

    def skip(m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        shapes[m.norm_site] = tuple(args[0].shape)
        return args[0]

    def identity(x: torch.Tensor) -> torch.Tensor:
        return x

    saved = [(m, m.forward) for m in norms]
    for m in norms:
        m.forward = identity  # an instance attribute: the class's forward is untouched
    hooks = [m.register_forward_hook(skip) for m in norms]
    try:
        with torch.no_grad():
            x = features.eval()(torch.zeros(1, *input_shape))
    except RuntimeError as err:
        raise ConfigError(
            f"model '{model}' cannot take {input_shape[1]}x{input_shape[2]} inputs "
            f"(the maps shrink to nothing: {str(err).splitlines()[0]}); use a larger input"
        ) from None
    finally:
        for h in hooks:
            h.remove()
        for m, _ in saved:
            del m.forward
        for m, mode in modes.items():
            m.training = mode
    return shapes, x[0].numel()


CONVNET_SITES = ("conv1", "conv2", "conv3")


def convnet(plan: NormPlan, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
            weight_std: bool = False) -> Net:
    """Caffe cifar10_full / cuda-convnet layers-18pct (docs/norms.md, "Backbones")."""
    c1, c2, c3 = (max(1, round(c * width)) for c in (32, 32, 64))
    conv1 = _conv(plan, "conv1", input_shape[0], c1, 5, weight_std)
    conv2 = _conv(plan, "conv2", c1, c2, 5, weight_std)
    conv3 = _conv(plan, "conv3", c2, c3, 5, weight_std)
    layers = [
        *conv1,
        ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
        _act(conv1[1][1], "relu1"),
        _post(plan, "conv1", c1),
        *conv2,
        _act(conv2[1][1], "relu2"),
        ("pool2", nn.AvgPool2d(3, 2, ceil_mode=True)),
        _post(plan, "conv2", c2),
        *conv3,
        _act(conv3[1][1], "relu3"),
        ("pool3", nn.AvgPool2d(3, 2, ceil_mode=True)),
        _post(plan, "conv3", c3),
    ]
    features = nn.Sequential(OrderedDict(layers))
    _, flat = _site_shapes(features, input_shape, "convnet")
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
    return Net(features, classifier, CONVNET_SITES)


ALEXNET_SITES = ("conv1", "conv2", "conv3", "conv4", "conv5")


def alexnet(plan: NormPlan, input_shape: tuple[int, int, int], num_classes: int, width: float = 0.5,
            dropout: float = 0.5, weight_std: bool = False) -> Net:
    """AlexNet's layer pattern (Krizhevsky et al. 2012, Sec. 3.5) scaled to 32x32 inputs."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout={dropout!r} is not valid; allowed: a number in [0, 1)")
    c = [max(1, round(ch * width)) for ch in (96, 256, 384, 384, 256)]
    hidden = max(1, round(4096 * width / 4))  # 4096-wide fc layers would dwarf the convs at 32x32
    layers: list[tuple[str, nn.Module]] = []
    cin = input_shape[0]
    for i, (cout, k) in enumerate(zip(c, (5, 5, 3, 3, 3)), start=1):
        site = f"conv{i}"
        conv = _conv(plan, site, cin, cout, k, weight_std)
        layers += [*conv, _act(conv[1][1], f"relu{i}"), _post(plan, site, cout)]
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


class ShortcutA(nn.Module):
    """He et al. 2016's option A shortcut: the identity where shapes agree; across a stage
    boundary, every second pixel and the new channels zero (half on each side), no parameter."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            x = nn.functional.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut, then ReLU (He et al. 2016,
    Fig. 2 left); a norm that is its own activation (FRN + TLU, EvoNorm) takes the ReLUs' places."""

    def __init__(self, plan: NormPlan, site: str, cin: int, cout: int, stride: int, shortcut: str,
                 weight_std: bool) -> None:
        super().__init__()
        conv1 = _conv(plan, f"{site}c1", cin, cout, 3, weight_std, stride)
        conv2 = _conv(plan, f"{site}c2", cout, cout, 3, weight_std)
        self.body = nn.Sequential(OrderedDict([*conv1, _act(conv1[1][1], "relu1"), _post(plan, f"{site}c1", cout),
                                               *conv2]))
        if shortcut == "B" and (stride > 1 or cin != cout):
            self.shortcut: nn.Module = nn.Sequential(OrderedDict(_conv(plan, f"{site}sc", cin, cout, 1, weight_std,
                                                                       stride)))
        else:
            self.shortcut = ShortcutA(cin, cout, stride)
        self.relu = _act(conv2[1][1], "relu2")[1]
        self.post = _post(plan, f"{site}c2", cout)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.relu(self.body(x) + self.shortcut(x)))


SHORTCUTS = ("A", "B")


def resnet20_sites(shortcut: str = "A") -> tuple[str, ...]:
    """``stem``, then ``s<stage>b<block>c<1|2>`` (and ``s<stage>b1sc``, option B's projections)."""
    sites = ["stem"]
    for s in (1, 2, 3):
        for b in (1, 2, 3):
            sites += [f"s{s}b{b}c1", f"s{s}b{b}c2"] + ([f"s{s}b{b}sc"] if shortcut == "B" and s > 1 and b == 1 else [])
    return tuple(sites)


def resnet20(plan: NormPlan, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
             shortcut: str = "A", weight_std: bool = False) -> Net:
    """ResNet-20 for CIFAR (He et al. 2016, Sec. 4.2): a 3x3 conv of 16, then 3 stages of 3
    basic blocks with 16, 32, 64 channels (stride 2 entering stages 2 and 3), global average
    pooling, fc. 0.27M parameters with BN and option A shortcuts (the paper's CIFAR choice,
    no projection); option B projects with a 1x1 conv and a norm where the shape changes.
    Convs and the fc start from He initialization (kaiming normal), as in the paper."""
    if shortcut not in SHORTCUTS:
        raise ConfigError(f"model.shortcut={shortcut!r} is not valid; allowed: {' | '.join(SHORTCUTS)}")
    widths = [max(1, round(c * width)) for c in (16, 32, 64)]
    stem = _conv(plan, "stem", input_shape[0], widths[0], 3, weight_std)
    layers: list[tuple[str, nn.Module]] = [*stem, _act(stem[1][1], "relu"), _post(plan, "stem", widths[0])]
    cin = widths[0]
    for s, cout in enumerate(widths, start=1):
        for b in (1, 2, 3):
            stride = 2 if s > 1 and b == 1 else 1
            layers.append((f"s{s}b{b}", BasicBlock(plan, f"s{s}b{b}", cin, cout, stride, shortcut, weight_std)))
            cin = cout
    layers += [("pool", nn.AdaptiveAvgPool2d(1))]
    features = nn.Sequential(OrderedDict(layers))
    _, flat = _site_shapes(features, input_shape, "resnet20")
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
    for m in [*features.modules(), *classifier.modules()]:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
    return Net(features, classifier, resnet20_sites(shortcut))


#: Each model's builder and its conv sites (a function of the model's config: ResNet-20's
#: projection shortcuts exist only with option B).
MODELS: dict[str, tuple[Callable[..., Net], Callable[[Mapping[str, Any]], tuple[str, ...]]]] = {
    "convnet": (convnet, lambda kw: CONVNET_SITES),
    "alexnet": (alexnet, lambda kw: ALEXNET_SITES),
    "resnet20": (resnet20, lambda kw: resnet20_sites(kw.get("shortcut", "A"))),
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
    if not isinstance(kwargs.get("weight_std", False), bool):
        raise ConfigError(f"model.weight_std={kwargs['weight_std']!r} is not valid; allowed: true or false")
    plan = NormPlan.from_config(norm_cfg, sites(kwargs), name)
    net = builder(plan, input_shape, num_classes, **kwargs)
    net.placement = plan.placement
    if batch_size is not None:
        check_statistics(net, input_shape, batch_size, norm_cfg.get("name"))
    return net


def check_statistics(net: Net, input_shape: tuple[int, int, int], batch_size: int, norm: str | None) -> None:
    """Fail when a norm would compute a statistic over a single value (its output would be
    the bias alone, or undefined for an unbiased variance): each norm's trait
    ``values_per_statistic`` counts them at its site, e.g. IN on a 1x1 map, GN with one
    channel per group on a 1x1 map, BN at batch size 1 on a 1x1 map, FRN on a 1x1 map."""
    shapes, _ = _site_shapes(net.features, input_shape, type(net).__name__)
    for key, m in net.norms().items():
        count_fn = traits(m).values_per_statistic
        if count_fn is None:
            continue
        _, c, h, w = shapes[key]
        count = count_fn(m, (batch_size, c, h, w))
        if count < 2:
            site = key.split(".")[0]
            raise ConfigError(
                f"norm={norm} at site {site} would normalize over {count} value (batch_size={batch_size}, "
                f"{c} channels, {h}x{w} map): every output would equal its bias; choose other norm.sites, a larger "
                f"input or batch, or another norm"
            )
