"""Normalization layers and their one registry (docs/norms.md).

``build_norm(spec, channels)`` builds any registered layer from a config mapping, and
``traits(name_or_layer)`` says what the model and the harness must know about it. One module
per family, each readable on its own:

- ``registry``: the registry, ``NormTraits``, ``NormLayer`` (the type models find norms by)
  and the one-line parameter checks;
- ``classic``: none, BN, LN, IN, GN, and Sandwich BN;
- ``lrn``: Local Response Normalization, across and within channels;
- ``batch_free``: FRN + TLU and EvoNorm-S0 / -B0, norms that are also the activation;
- ``mixtures``: Switchable Norm and Batch Group Norm;
- ``batch_corrected``: Batch Renormalization and Cross-Iteration BN;
- ``powernorm``: PowerNorm, adapted to (N, C, H, W).

Adding a layer: a factory with ``@register_norm(name, NormTraits(...))`` in its family's
module (or a new module imported below) and a ``normbench/configs/norm/<name>.yaml``.
"""

# Imported for their registrations, in the order the names are listed.
from normbench.norms import classic  # noqa: F401, I001
from normbench.norms import lrn  # noqa: F401
from normbench.norms import batch_free, mixtures, batch_corrected, powernorm  # noqa: F401
from normbench.norms.lrn import LRN_PRESETS, LocalResponseNorm
from normbench.norms.registry import (NORMS, PLACEMENT_KEYS, PLACEMENTS, TRAITS, NormLayer, NormTraits, build_norm,
                                      norm_names, norm_parameters, register_norm, resolved_params, traits)

__all__ = [
    "LRN_PRESETS", "NORMS", "PLACEMENTS", "PLACEMENT_KEYS", "TRAITS", "LocalResponseNorm", "NormLayer", "NormTraits",
    "build_norm", "norm_names", "norm_parameters", "register_norm", "resolved_params", "traits",
]
