"""How long a run trains: ``epochs`` passes over the training split, or a budget of SGD steps
or of images that is the same at every batch size (docs/designs.md, "Equal budgets").

With the same epochs at every batch size, batch 2 takes 64x the SGD steps of batch 128, and
accuracy then tracks training length as much as the norm (GN paper, Sec. 4.1 trains that
way; its claims are about the norm). ``budget.steps=N`` trains every batch size for N steps;
``budget.images=M`` for M / batch_size steps. The lr schedule spans the budget, and ``epochs``
becomes the number of equal *evaluation periods* it is cut into: after each, the test split
is evaluated and a history row written, so the record's last-5 median covers the same
fraction of training at every batch size. Data still come in passes: each pass a fresh
seeded permutation, so every image is seen once a pass (``DeviceLoader(period=...)``).
"""

from __future__ import annotations

from typing import Any

from normbench.errors import ConfigError


def budget_steps(c: dict[str, Any]) -> int | None:
    """The run's SGD steps under a budget, or None (``epochs`` passes). Checks what the keys
    must satisfy together (each key's type and range: ``normbench.schema``)."""
    b = c.get("budget") or {}
    steps, images = b.get("steps"), b.get("images")
    if steps is not None and images is not None:
        raise ConfigError(f"budget.steps={steps} and budget.images={images} are alternatives; allowed: one of them "
                          f"(or neither: train `epochs` passes)")
    batch = c["batch_size"]
    if images is not None:
        if images % batch:
            raise ConfigError(f"budget.images={images} is not valid with batch_size={batch}; allowed: a multiple of "
                              f"the batch size (every step a full batch), e.g. {images - images % batch or batch}")
        steps = images // batch
    if steps is None:
        return None
    periods = c["epochs"]
    if steps % periods:
        key, unit = ("steps", 1) if images is None else ("images", batch)
        near = max(periods, round(steps / periods) * periods) * unit
        raise ConfigError(f"budget.{key}={steps * unit} is not valid with epochs={periods} evaluation periods"
                          f"{'' if images is None else f' at batch_size={batch}'}; allowed: a multiple of "
                          f"{periods * unit} (equal periods), e.g. {near}")
    return steps


def period_steps(c: dict[str, Any]) -> int | None:
    """SGD steps per evaluation period under a budget (None: an epoch is a pass)."""
    steps = budget_steps(c)
    return None if steps is None else steps // c["epochs"]


def budget_label(flat: dict[str, Any], epochs: Any) -> str:
    """How long a table's runs trained: ``30 epochs``, or ``10,000 steps`` / ``320,000 images``
    (``flat``: a record's config as dotted keys)."""
    if flat.get("budget.steps") is not None:
        return f"{int(flat['budget.steps']):,} steps"
    if flat.get("budget.images") is not None:
        return f"{int(flat['budget.images']):,} images"
    return f"{epochs} epochs"
