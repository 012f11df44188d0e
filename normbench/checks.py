"""Config checks that need no data and no model: a bad value fails in one line (exit status 2)
before anything is read or created. Each message names the key, the value and what is allowed."""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from normbench import data as datamod
from normbench import fingerprint, schema
from normbench.budget import budget_steps
from normbench.errors import ConfigError
from normbench.norms import TRAITS

log = logging.getLogger("normbench")

#: What a norm tag (a folder name in every run's path) may be.
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_config(c: dict[str, Any]) -> None:
    """Checks that need no data or model: fail in one line before anything is loaded. Every
    key's type and range first (``normbench.schema``), then what depends on several keys."""
    schema.validate(c)
    o = c["optim"]
    if o["nesterov"] and o["momentum"] == 0:
        raise ConfigError("optim.nesterov=true is not valid with optim.momentum=0; allowed: optim.nesterov=false, "
                          "or a momentum > 0 (Nesterov momentum needs a momentum)")
    if c["trainer"]["accelerator"] in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={c['trainer']['accelerator']} is not valid on this machine (no CUDA "
                          f"GPU found); allowed: auto or cpu")
    sites = c["norm"].get("sites")
    if isinstance(sites, list) and not sites and c["norm"].get("name") != "none":
        log.info("norm.sites=[] places no norm layer: this run is norm=none (tag none), whatever norm.name says")
    budget_steps(c)
    datamod.dataset_spec(c["data"]["name"])
    if c["trainer"].get("cuda_graphs"):
        norm = c["norm"].get("name")
        if norm in TRAITS and not TRAITS[norm].cuda_graphs:
            raise ConfigError(f"trainer.cuda_graphs=true does not work with norm={norm}: it reads a step counter on "
                              f"the host every step, which breaks the graphs (2-3x slower than eager, measured); "
                              f"drop trainer.cuda_graphs")
        on_cpu = c["trainer"]["accelerator"] == "cpu" or not torch.cuda.is_available()
        if on_cpu:
            raise ConfigError("trainer.cuda_graphs=true needs a CUDA GPU and this run would be on the CPU; "
                              "drop trainer.cuda_graphs or run on a GPU")
    stat_batch = c["norm"].get("stat_batch")
    if isinstance(stat_batch, int) and not isinstance(stat_batch, bool) and stat_batch >= 1 \
            and c["batch_size"] % stat_batch:
        raise ConfigError(f"norm.stat_batch={stat_batch} is not valid with batch_size={c['batch_size']}; allowed: "
                          f"a divisor of the batch size")
    tag = c["norm"].get("tag")
    if tag is not None and not (isinstance(tag, str) and TAG.fullmatch(tag)):
        # The tag names a folder of the run's path: it must not climb out of paths.runs.
        raise ConfigError(f"norm.tag={tag!r} is not valid; allowed: letters, digits and . _ + = - "
                          f"(not starting with . or -), or null")


def steps_per_call(configured: Any, batch_size: int) -> int:
    """SGD steps per Lightning ``training_step`` call: ``auto`` takes enough batches to make
    128 images a call (batch 2: 64 steps, 32: 4, 128 and up: 1), which keeps Lightning's
    per-call cost (1-1.5 ms on a 2-core CPU) off the steps; the steps are the same either way."""
    if configured == "auto":
        return max(1, -(-128 // batch_size))
    if isinstance(configured, bool) or not isinstance(configured, int) or configured < 1:
        raise ConfigError(f"trainer.steps_per_call={configured!r} is not valid; allowed: auto, or an integer >= 1")
    return configured


def check_batch_fits(c: dict[str, Any], identity: fingerprint.DataIdentity) -> None:
    val = c["data"].get("val_size") or 0
    if val >= identity.train_images:
        raise ConfigError(f"data.val_size={val} is not valid with {identity.train_images} training images; allowed: "
                          f"fewer than the training images (some must remain to train on)")
    train = identity.train_images - val
    if c["batch_size"] > train:
        raise ConfigError(
            f"batch_size={c['batch_size']} is larger than the training split ({train} images "
            f"of data.name={c['data']['name']} under data.root={c['data']['root']}); use a smaller batch_size "
            f"or a larger data.train_size"
        )
