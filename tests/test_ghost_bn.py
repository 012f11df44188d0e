"""Ghost batch BN (``norm.stat_batch``): BN statistics over sub-batches of the step's batch."""

from __future__ import annotations

import pytest
import torch

from normbench.errors import ConfigError
from normbench.norms import build_norm
from normbench.train import run


def test_ghost_bn_equals_bn_on_each_chunk_forward_and_backward():
    torch.manual_seed(0)
    x = torch.randn(8, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    ghost = build_norm({"name": "bn", "stat_batch": 2}, 5).double()
    with torch.no_grad():
        ghost.weight.copy_(torch.linspace(0.5, 1.5, 5))
        ghost.bias.copy_(torch.linspace(-0.2, 0.3, 5))
    y = ghost(x)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, ghost.weight, ghost.bias), g)
    xr = x.detach().clone().requires_grad_()
    w = ghost.weight.detach().clone().requires_grad_()
    b = ghost.bias.detach().clone().requires_grad_()
    chunks = [torch.nn.functional.batch_norm(c, None, None, w, b, training=True, eps=1e-5) for c in xr.split(2)]
    ref = torch.cat(chunks)
    rx, rw, rb = torch.autograd.grad(ref, (xr, w, b), g)
    for got, want in ((y, ref), (gx, rx), (gw, rw), (gb, rb)):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    # Running statistics: one EMA step with the sub-batches' average mean and unbiased variance.
    means = torch.stack([c.mean(dim=(0, 2, 3)) for c in x.detach().split(2)])
    variances = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in x.detach().split(2)])
    assert torch.allclose(ghost.running_mean, 0.1 * means.mean(0), rtol=1e-12)
    assert torch.allclose(ghost.running_var, 0.9 + 0.1 * variances.mean(0), rtol=1e-12)
    ghost.eval()
    want = (x - ghost.running_mean.view(1, -1, 1, 1)) / torch.sqrt(ghost.running_var.view(1, -1, 1, 1) + 1e-5)
    assert torch.allclose(ghost(x), want * ghost.weight.view(1, -1, 1, 1) + ghost.bias.view(1, -1, 1, 1), rtol=1e-12)


def test_stat_batch_of_the_whole_batch_is_plain_bn():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2)
    a, b = build_norm({"name": "bn", "stat_batch": 4}, 3), build_norm({"name": "bn"}, 3)
    assert torch.allclose(a(x), b(x)) and torch.allclose(a.running_var, b.running_var)


def test_ghost_bn_trains_and_a_stat_batch_that_does_not_divide_is_one_line(quick):
    rec = run(quick("norm=bn", "norm.stat_batch=2", "batch_size=8", "epochs=1", "data.train_size=64"))
    assert rec["status"] == "ok" and rec["config"]["norm"]["stat_batch"] == 2
    assert rec["norm_params"]["stat_batch"] == 2
    plain = run(quick("norm=bn", "batch_size=8", "epochs=1", "data.train_size=64"))
    assert "stat_batch" not in plain["config"]["norm"]  # null is left out of the hash: old bn keys stay valid
    with pytest.raises(ConfigError) as err:
        run(quick("norm=bn", "norm.stat_batch=3", "batch_size=8"))
    assert str(err.value) == "norm.stat_batch=3 is not valid with batch_size=8; allowed: a divisor of the batch size"
    with pytest.raises(ConfigError, match="norm.stat_batch=0 is not valid for norm 'bn'; allowed: an integer >= 1"):
        run(quick("norm=bn", "norm.stat_batch=0"))
