"""BN evaluated three ways (normbench.bn_eval): each number against a computation written
out here, and the record fields a run writes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench import bn_eval
from normbench.norms import build_norm
from normbench.train import run


def tiny_net(stat_batch: int | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    bn = build_norm({"name": "bn", "stat_batch": stat_batch}, 3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_mean.copy_(torch.tensor([5.0, -5.0, 0.0]))  # far off: running differs from batch
    head = nn.Linear(3, 4)
    return nn.Sequential(bn, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def by_hand(net: nn.Sequential, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    bn, head = net[0], net[3]
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
    y = y * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return head(y.mean(dim=(2, 3)))


@torch.no_grad()
def test_batch_statistics_group_test_images_as_training_did_every_image_once():
    net = tiny_net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, 4, 4, generator=gen) * 2 + 1
    y = torch.randint(0, 4, (7,), generator=gen)
    groups = [[0, 1, 2], [3, 4, 5], [6, 0, 1]]  # the leftover image 6 borrows images 0 and 1
    preds = []
    for g in groups:
        xg = x[g]
        logits = by_hand(net, xg, xg.mean(dim=(0, 2, 3)), xg.var(dim=(0, 2, 3), unbiased=False))
        preds.append(logits.argmax(1) if g[0] != 6 else logits[:1].argmax(1))
    expected = (torch.cat(preds) == y).float().mean().item()
    before = net[0].running_mean.clone()
    assert bn_eval.batch_stat_accuracy(net, x, y, 3) == pytest.approx(expected)
    assert torch.equal(net[0].running_mean, before)  # evaluated on a copy: the model is untouched


@torch.no_grad()
def test_precise_bn_averages_per_batch_means_and_unbiased_variances():
    for stat_batch in (None, 2):
        net = tiny_net(stat_batch)
        gen = torch.Generator().manual_seed(2)
        batches = [torch.randn(4, 3, 2, 2, generator=gen) * (1 + i) + i for i in range(5)]
        sub = stat_batch or 4
        chunks = [b[i:i + sub] for b in batches[:3] for i in range(0, 4, sub)]  # 12 images asked: 3 batches
        mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
        var = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in chunks]).mean(0)
        precise, seen = bn_eval.precise_bn(net, iter(batches), 12)
        assert seen == 12
        assert torch.allclose(precise[0].running_mean, mean, atol=1e-6)
        assert torch.allclose(precise[0].running_var, var, atol=1e-6)
        assert net[0].running_mean[0] == 5.0 and not precise[0].training  # a copy, in evaluation mode
        x = batches[4]
        assert torch.allclose(precise(x), by_hand(net, x, mean, var), atol=1e-5)


def test_which_layers_precise_bn_recomputes():
    net = nn.Sequential(build_norm({"name": "bn"}, 3), build_norm({"name": "gn", "groups": 1}, 3))
    assert bn_eval.precise_bn_supported(net) and bn_eval.stat_batch(net, 32) == 32
    assert bn_eval.stat_batch(nn.Sequential(build_norm({"name": "bn", "stat_batch": 4}, 3)), 32) == 4
    assert not bn_eval.precise_bn_supported(nn.Sequential(build_norm({"name": "brn"}, 3)))
    assert bn_eval.stat_batch(nn.Sequential(build_norm({"name": "gn", "groups": 1}, 3)), 32) is None


def test_a_run_records_its_three_evaluations(quick):
    rec = run(quick("norm=ghost_bn4", "batch_size=16", "epochs=1", "precise_bn_images=64"))
    assert rec["stat_batch"] == 4
    ev = rec["bn_eval"]
    assert ev["stat_batch"] == 4 and ev["precise_images"] == 64
    assert 0 <= ev["precise_acc"] <= 1 and 0 <= ev["batch_acc"] <= 1
    gn = run(quick("norm=gn", "batch_size=16", "epochs=1"))
    assert gn["stat_batch"] is None and gn["bn_eval"] is None
    brn = run(quick("norm=brn", "batch_size=16", "epochs=1"))
    assert brn["bn_eval"]["precise_acc"] is None and brn["bn_eval"]["batch_acc"] is not None


@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "bf16-mixed"])
def test_bn_eval_runs_in_the_runs_own_precision(quick, precision):
    """A `*-true` run's weights are float64 or bfloat16: evaluated with float32 images, bn_eval
    raised after training and the run was lost. Now it evaluates as the run did."""
    rec = run(quick("norm=bn", "batch_size=16", "epochs=1", "precise_bn_images=32", f"trainer.precision={precision}"))
    assert rec["status"] == "ok" and rec["precision"] == precision
    assert 0 <= rec["bn_eval"]["batch_acc"] <= 1 and 0 <= rec["bn_eval"]["precise_acc"] <= 1


def test_packed_members_are_evaluated_in_the_packs_precision(quick):
    out = run(quick("norm=bn", "batch_size=4", "epochs=1", "precise_bn_images=16", "trainer.precision=64-true",
                    "trainer.pack_seeds=[0,1]"))
    assert [r["status"] for r in out["runs"]] == ["ok", "ok"] and all(r["packed_with"] for r in out["runs"])
    assert all(r["bn_eval"]["precise_images"] == 16 for r in out["runs"])


def test_a_failing_extra_evaluation_never_loses_the_run(quick, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("no memory left")

    monkeypatch.setattr(bn_eval, "batch_stat_accuracy", boom)
    with caplog.at_level("WARNING", logger="normbench"):
        rec = run(quick("norm=bn", "batch_size=16", "epochs=1"))
    assert rec["status"] == "ok" and rec["bn_eval"] is None and rec["history"]
    assert "bn_eval failed (RuntimeError: no memory left): the record's bn_eval is null" in caplog.messages
