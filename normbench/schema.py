"""Every config key in one schema: its type, its range and what it means (docs/config.md).

The YAML files under ``normbench/configs/`` give the defaults; these dataclasses say what a value may be.
``validate`` checks a composed config before anything is read or created: OmegaConf merges it
into the structured schema (Hydra's structured configs), which refuses a key the schema does
not know (``+optim.lr=0.1`` would otherwise train at the old lr, silently) and a value of the
wrong type; each field's ``allowed`` text and ``check`` then bound its range. Every failure is
one line naming the key, the value and what is allowed (``ConfigError``, exit status 2).

``model`` and ``norm`` are open mappings here: their keys are the arguments of the model
builder and of the norm factory, which ``normbench.models`` and the norm registry check
against their signatures, with the same one-line errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from normbench.errors import ConfigError

Check = Callable[[Any], bool]


def key(allowed: str, check: Check | None = None, meaning: str = "") -> Any:
    """A schema field: no default of its own (normbench/configs/ holds the defaults)."""
    return field(default=MISSING, metadata={"allowed": allowed, "check": check, "meaning": meaning})


def _int(low: int, high: float = math.inf) -> Check:
    return lambda v: v is None or (not isinstance(v, bool) and low <= v <= high)


def _num(low: float, high: float = math.inf, open_low: bool = False, open_high: bool = False) -> Check:
    def check(v: Any) -> bool:
        if v is None:
            return True
        if open_low and v <= low or open_high and v >= high:
            return False
        return low <= v <= high

    return check


def _one_of(*options: Any) -> Check:
    return lambda v: v in options


def _auto_or_int(v: Any) -> bool:
    return v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


SEED_MAX = 2**32 - 1  # numpy's and Lightning's seeds are 32-bit
PRECISIONS = ("32-true", "32", "64-true", "64", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


@dataclass
class DataSchema:
    name: str = key("cifar10 | cifar100 | fashion_mnist", meaning="the dataset")
    root: str = key("a folder", meaning="where its files are, or go when downloaded")
    download: bool = key("true or false", meaning="download when the files are missing")
    augment: str = key("none | flip | crop_flip", _one_of("none", "flip", "crop_flip"),
                      "training augmentation (crop_flip: pad 4, random 32x32 crop, random flip)")
    normalize: str = key("meanstd | mean", _one_of("meanstd", "mean"),
                         "meanstd: (x/255 - mean)/std; mean: x - mean on the 0-255 scale (Caffe)")
    train_size: Optional[int] = key("null, or an integer >= 1", _int(1), "a class-balanced subset of the training split")
    test_size: Optional[int] = key("null, or an integer >= 1", _int(1), "likewise of the test split")
    val_size: Optional[int] = key("null, or an integer >= 1", _int(1), "training images held out for validation")
    subset_seed: int = key("an integer >= 0", _int(0), "the seed of those subsets")
    eval_batch_size: int = key("an integer >= 1", _int(1), "images per test batch")


@dataclass
class OptimSchema:
    name: str = key("sgd", _one_of("sgd"), "the optimizer: SGD with momentum")
    base_lr: float = key("a number > 0", _num(0, open_low=True), "the lr at base_batch")
    base_batch: int = key("an integer >= 1", _int(1), "the batch size base_lr is given for")
    lr_scaling: str = key("linear | sqrt | none", _one_of("linear", "sqrt", "none"),
                          "lr = base_lr x (batch / base_batch), its square root, or base_lr")
    momentum: float = key("a number in [0, 1)", _num(0, 1, open_high=True), "SGD momentum")
    nesterov: bool = key("true or false", meaning="Nesterov momentum")
    weight_decay: float = key("a number >= 0", _num(0), "L2 weight decay")
    schedule: str = key("cosine | multistep | constant", _one_of("cosine", "multistep", "constant"),
                        "the lr schedule, stepped every SGD step")
    milestones: list[float] = key("a list of increasing fractions of training in (0, 1)",
                                  lambda v: all(0 < m < 1 for m in v) and list(v) == sorted(v),
                                  "multistep: where the lr is multiplied by gamma")
    gamma: float = key("a number in (0, 1]", _num(0, 1, open_low=True), "multistep: the lr factor at each milestone")
    warmup_epochs: float = key("a number >= 0", _num(0), "linear lr warmup, in passes over the data")


@dataclass
class TrainerSchema:
    accelerator: str = key(" | ".join(ACCELERATORS), _one_of(*ACCELERATORS), "where to train (auto: a GPU when present)")
    devices: int = key("1 (each run trains on one device; runs are parallel across jobs)", _one_of(1),
                      "devices per run")
    precision: str = key(" | ".join(PRECISIONS), lambda v: str(v) in PRECISIONS,
                        "Lightning's precision (bf16-mixed: mixed precision on a GPU)")
    channels_last: bool = key("true or false", meaning="NHWC memory layout (often faster convs on a GPU)")
    cuda_graphs: bool = key("true or false", meaning="capture forward and backward in CUDA graphs (GPU only)")
    progress: str = key("auto | rich | none", _one_of("auto", "rich", "none"),
                       "auto: a progress bar on a terminal, epoch lines otherwise")
    check_every_n_steps: int = key("an integer >= 1", _int(1), "how often the loss is checked for divergence")
    steps_per_call: Any = key("auto, or an integer >= 1", _auto_or_int,
                              "SGD steps per Lightning call (the same steps, less overhead)")
    deterministic: bool = key("true or false", meaning="deterministic algorithms only (slower)")
    threads: Optional[int] = key("an integer >= 1, or null", _int(1),
                                 "CPU threads for torch (null: the cores idle when the process starts)")
    pack: Any = key("auto, or an integer >= 1 (1: no packing)", _auto_or_int,
                    "sweeps: at most this many seeds of one setup trained as one model")
    pack_seeds: Optional[list[int]] = key("null, or a list of integers >= 0",
                                          lambda v: v is None or (len(v) > 0 and all(0 <= s <= SEED_MAX for s in v)),
                                          "set by the sweeper: the seeds this job trains, one run each")


@dataclass
class BudgetSchema:
    steps: Optional[int] = key("null, or an integer >= 1", _int(1), "SGD steps at every batch size")
    images: Optional[int] = key("null, or an integer >= 1", _int(1), "training images at every batch size")


@dataclass
class PathsSchema:
    runs: str = key("a folder", meaning="one directory per run")
    logs: str = key("a folder", meaning="Hydra's logs and multirun folders")


@dataclass
class TrainSchema:
    batch_size: int = key("an integer >= 1", _int(1), "images per SGD step")
    epochs: int = key("an integer >= 1", _int(1), "passes over the training split (with a budget: evaluation periods)")
    seed: int = key(f"an integer in [0, {SEED_MAX}]", _int(0, SEED_MAX),
                    "initial weights, data order and augmentation")
    target_acc: float = key("a number in [0, 1]", _num(0, 1), "the accuracy epochs_to_target waits for")
    precise_bn_images: int = key("an integer >= 1", _int(1), "training images behind PreciseBN's statistics")
    budget: BudgetSchema = field(default_factory=BudgetSchema)
    data: DataSchema = field(default_factory=DataSchema)
    model: Any = key("a model group: convnet | alexnet | resnet20 and its builder's arguments",
                     meaning="the network (docs/norms.md, Backbones); its builder checks its keys")
    norm: Any = key("a norm group: a registered norm and its factory's arguments",
                    meaning="the normalization layer (docs/norms.md); the norm registry checks its keys")
    optim: OptimSchema = field(default_factory=OptimSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    paths: PathsSchema = field(default_factory=PathsSchema)


def reference_markdown() -> str:
    """The table of docs/config.md: every key with its type, range and meaning."""
    import typing

    names = {int: "int", float: "float", str: "str", bool: "bool"}
    rows = ["| key | type | allowed | meaning |", "| --- | --- | --- | --- |"]

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if is_dataclass(f.default_factory):
                walk(f.default_factory, f"{prefix}{f.name}.")
                continue
            t = hints[f.name]
            shown = names.get(t) or str(t).replace("typing.", "").replace("NoneType", "None")
            rows.append(f"| `{prefix}{f.name}` | {shown} | {f.metadata['allowed'].replace('|', chr(92) + '|')} | "
                        f"{f.metadata['meaning']} |")

    walk(TrainSchema, "")
    return "\n".join(rows) + "\n"


def _field(path: str) -> tuple[Any, Any]:
    """The schema dataclass holding ``path`` (``optim.milestones[0]`` -> OptimSchema) and its field."""
    parts = path.split("[")[0].split(".")
    node: Any = TrainSchema
    for name in parts[:-1]:
        node = next(f for f in fields(node) if f.name == name).default_factory  # type: ignore[misc]
    return node, next((f for f in fields(node) if f.name == parts[-1]), None)


def allowed(path: str) -> str:
    """What ``path`` (a dotted key) may be, as the schema says."""
    _, f = _field(path)
    return f.metadata["allowed"] if f is not None else "?"


def _keys_of(group: str) -> list[str]:
    node: Any = TrainSchema
    for name in filter(None, group.split(".")):
        node = next(f for f in fields(node) if f.name == name).default_factory
    return [f.name for f in fields(node)]


def validate(c: dict[str, Any]) -> None:
    """Fail in one line on a key the schema does not know, or a value of the wrong type or
    out of range (module docstring). ``c``: the composed config as plain containers."""
    try:
        OmegaConf.merge(OmegaConf.structured(TrainSchema), c)
    except ConfigKeyError as err:
        group = str(err.full_key).rpartition(".")[0]
        keys = ", ".join(f"{group}.{k}" if group else k for k in _keys_of(group))
        raise ConfigError(f"{err.full_key} is not a config key; allowed: {keys}") from None
    except ValidationError as err:
        path = str(err.full_key)
        raise ConfigError(f"{path.split('[')[0]}={_shown(c, path)!r} is not valid; allowed: {allowed(path)}") from None
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is missing; allowed: {allowed(str(err.full_key))}") from None
    _ranges(TrainSchema, c, "")


def _shown(c: dict[str, Any], path: str) -> Any:
    node: Any = c
    for name in path.split("[")[0].split("."):
        node = node.get(name) if isinstance(node, dict) else None
    return node


def _ranges(schema: Any, values: dict[str, Any], prefix: str) -> None:
    for f in fields(schema):
        value = values.get(f.name)
        if is_dataclass(f.default_factory):
            _ranges(f.default_factory, value or {}, f"{prefix}{f.name}.")
            continue
        check = f.metadata.get("check")
        if check is not None and not check(value):
            raise ConfigError(f"{prefix}{f.name}={value!r} is not valid; allowed: {f.metadata['allowed']}")
