"""The optimizer and learning-rate schedule that every training path builds: a run, a pack
of runs (``normbench.packed``) and the benchmarks' plain loops, so that they cannot drift apart.

SGD with momentum and weight decay (``normbench/configs/optim/sgd.yaml``); the peak lr scales with the
batch size (GN paper, Sec. 4.1; Goyal et al. 2017) and follows a per-step schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from normbench.errors import ConfigError

LR_SCALINGS = ("linear", "sqrt", "none")
SCHEDULES = ("cosine", "multistep", "constant")


def scaled_lr(base_lr: float, batch_size: int, base_batch: int, scaling: str) -> float:
    """The learning rate for ``batch_size``: ``base_lr * (N / base_batch)`` for ``linear``
    (GN paper, Sec. 4.1; Goyal et al. 2017), ``* sqrt(N / base_batch)`` for ``sqrt``."""
    if scaling not in LR_SCALINGS:
        raise ConfigError(f"optim.lr_scaling={scaling!r} is not valid; allowed: {' | '.join(LR_SCALINGS)}")
    ratio = batch_size / base_batch
    return base_lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[scaling]


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: tuple[float, ...], gamma: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` of ``total``: linear warmup over
    ``warmup`` steps, then cosine to 0, steps of ``gamma`` at ``milestones`` (fractions of
    ``total``), or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    if schedule == "multistep":
        return gamma ** sum(step >= m * total for m in milestones)
    return 1.0


def check_optim(optim: Mapping[str, Any]) -> None:
    """Fail before training on an optimizer config that cannot run."""
    if optim.get("name", "sgd") != "sgd":
        raise ConfigError(f"optim.name={optim.get('name')!r} is not valid; allowed: sgd")
    if optim["schedule"] not in SCHEDULES:
        raise ConfigError(f"optim.schedule={optim['schedule']!r} is not valid; allowed: {' | '.join(SCHEDULES)}")
    for key in ("base_lr", "momentum", "weight_decay", "warmup_epochs"):
        v = optim[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "base_lr" and v == 0):
            raise ConfigError(f"optim.{key}={v!r} is not valid; allowed: a number {'> 0' if key == 'base_lr' else '>= 0'}")
    if isinstance(optim["base_batch"], bool) or not isinstance(optim["base_batch"], int) or optim["base_batch"] < 1:
        raise ConfigError(f"optim.base_batch={optim['base_batch']!r} is not valid; allowed: an integer >= 1")
    scaled_lr(1.0, 1, 1, optim["lr_scaling"])


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: Mapping[str, Any], lr: float) -> torch.optim.SGD:
    """SGD at peak ``lr`` with the config's momentum, weight decay and Nesterov flag. Every
    term of its update is elementwise, which is what lets packed members share one."""
    return torch.optim.SGD(params, lr=lr, momentum=optim["momentum"], weight_decay=optim["weight_decay"],
                           nesterov=bool(optim.get("nesterov", False)))


def build_scheduler(opt: torch.optim.Optimizer, optim: Mapping[str, Any], epochs: int,
                    steps_per_epoch: int, steps_per_pass: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule (``lr_factor``) over ``epochs * steps_per_epoch`` steps, with
    ``optim.warmup_epochs`` passes over the data (``steps_per_pass`` steps each; under a budget
    an epoch is an evaluation period, ``normbench.budget``) of linear warmup."""
    total = epochs * steps_per_epoch
    warmup = round(optim["warmup_epochs"] * (steps_per_pass or steps_per_epoch))
    milestones = tuple(optim.get("milestones") or ())
    schedule, gamma = optim["schedule"], optim.get("gamma", 0.1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total, warmup, schedule, milestones, gamma)
    )
