"""A trained network with batch-dependent norms, evaluated three ways (docs/records.md, ``bn_eval``).

BN's test accuracy can be lost in two places: its running averages may estimate the
population statistics badly (an *estimation* problem), or statistics of any kind may be
a poor stand-in for the noisy per-batch statistics the network was trained with (a
*train/test inconsistency*). Evaluating the same final weights three ways tells them apart
(Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sec. 3-4):

1. **running**: the running averages, as every run is evaluated (the history's test accuracy);
2. **precise**: PreciseBN, population statistics recomputed with the final weights: the
   per-batch means and variances of ``images`` training images (the run's augmentation, its
   statistics batch) averaged with equal weights, as fvcore's ``update_bn_stats``;
3. **batch**: no population statistics at all: each test image normalized together with
   ``stat_batch - 1`` other test images, exactly as in training.

If precise >> running, the running averages were the problem; if batch >> precise, the
network depends on its batch noise and no population statistics can serve it.

PreciseBN here recomputes layers derived from ``nn.BatchNorm2d`` (BN, ghost BN, Sandwich BN),
whose running statistics are means and variances of the batch; the other batch-dependent
norms keep state of other kinds (BRN's running std, CBN's compensated moments, PN's
quadratic mean, SN's mixed statistics), so their ``precise`` is null (not measured).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from normbench.norms import traits

#: PreciseBN's default: training images behind the recomputed statistics (Wu & Johnson 2021
#: found ~10^3-10^4 images enough for ImageNet; fvcore's default is 200 batches).
PRECISE_IMAGES = 2048


def batch_dependent_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose output for one sample depends on the others (``batch_dependent`` trait)."""
    return [m for m in model.modules() if getattr(m, "norm_name", None) and traits(m).batch_dependent]


def stat_batch(model: nn.Module, batch_size: int) -> int | None:
    """Images behind one batch statistic in training: the ghost batch ``stat_batch`` where
    set, else the batch; None when no layer depends on the batch."""
    layers = batch_dependent_layers(model)
    if not layers:
        return None
    return min(getattr(m, "stat_batch", None) or batch_size for m in layers)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    """Top-1 accuracy of ``model`` as it is (its modes untouched) over batches of ``batch``."""
    correct = 0
    for i in range(0, len(labels), batch):
        correct += int((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(labels)


@torch.no_grad()
def batch_stat_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, b: int) -> float:
    """Test accuracy with batch statistics over groups of ``b`` test images (in test-set
    order), the batch-dependent layers in training mode and everything else (dropout) in
    evaluation mode; on a copy, so the model's running statistics stay as they are. The
    images left over after the last full group are normalized with the first test images as
    their companions and only their own predictions count: every image counts once, and
    every group has ``b`` images, as in training."""
    net = copy.deepcopy(model).eval()
    for layer in batch_dependent_layers(net):
        layer.train()
    n = len(labels)
    correct = 0
    for i in range(0, n - n % b, b):
        correct += int((net(images[i:i + b]).argmax(1) == labels[i:i + b]).sum())
    rest = n % b
    if rest:
        group = torch.arange(n - rest, n - rest + b, device=images.device) % n
        correct += int((net(images[group])[:rest].argmax(1) == labels[n - rest:]).sum())
    return correct / n


def precise_bn_supported(model: nn.Module) -> bool:
    """PreciseBN recomputes every batch-dependent layer: all must be ``nn.BatchNorm2d`` kinds."""
    layers = batch_dependent_layers(model)
    return bool(layers) and all(isinstance(m, _BatchNorm) and m.track_running_stats for m in layers)


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterable[torch.Tensor], images: int) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose BN statistics are the equal-weight averages of the per-batch
    means and (unbiased) variances over the first ``images`` images of ``batches`` (fvcore's
    ``update_bn_stats``: momentum 1 makes each forward leave its batch's statistics in the
    buffers, which are summed; a ghost BN leaves the average over its sub-batches). Returns the
    copy and the number of images used."""
    net = copy.deepcopy(model).eval()
    layers = batch_dependent_layers(net)
    sums = [(torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)) for m in layers]
    for m in layers:
        m.train()
        m.momentum = 1.0
    seen = steps = 0
    for x in batches:
        if seen >= images:
            break
        net(x)
        for m, (mean, var) in zip(layers, sums):
            mean += m.running_mean
            var += m.running_var
        seen += len(x)
        steps += 1
    for m, (mean, var) in zip(layers, sums):
        m.running_mean.copy_(mean / max(1, steps))
        m.running_var.copy_(var / max(1, steps))
        m.eval()
    return net, seen
