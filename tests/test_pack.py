"""Packed training equals running each member alone, in float64, for every norm that packs."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg

from normbench.models import build_model
from normbench.norms.packing import NotPackable
from normbench.pack import pack_net, packed_input, packed_loss

PACKABLE = ["none", "bn", "ln", "in", "gn", "lrn", "lrn_within", "sabn", "frn", "evonorm_s0", "evonorm_b0", "bgn",
            "brn", "cbn", "pn", "gn_ws"]
K, STEPS, BATCH, SHAPE = 2, 200, 4, (3, 12, 12)


def member(norm: str, seed: int) -> torch.nn.Module:
    cfg = make_cfg([f"norm={norm}"])
    norm_cfg = dict(cfg.norm)
    if norm == "cbn":
        norm_cfg["burnin"] = 2  # let the cross-iteration buffer switch on within the test
    if norm == "pn":
        norm_cfg["warmup_iters"] = 50  # and PN leave its warm-up
    torch.manual_seed(seed)
    return build_model(dict(cfg.model), norm_cfg, SHAPE, 10, batch_size=BATCH).double()


def batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + seed)  # each member its own data
    return [(torch.randn(BATCH, *SHAPE, generator=g, dtype=torch.float64), torch.randint(0, 10, (BATCH,), generator=g))
            for _ in range(STEPS)]


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize("norm", PACKABLE)
def test_packed_members_train_exactly_as_alone(norm):
    alone = [member(norm, s) for s in range(K)]
    packed = pack_net([member(norm, s) for s in range(K)])  # the same initial weights, copied
    data = [batches(s) for s in range(K)]
    opt_p = sgd(packed.parameters())
    opts = [sgd(m.parameters()) for m in alone]
    worst = 0.0
    for step in range(STEPS):
        loss, per_member = packed_loss(packed(packed_input([d[step][0] for d in data])), [d[step][1] for d in data])
        opt_p.zero_grad()
        loss.backward()
        opt_p.step()
        for k, (m, opt) in enumerate(zip(alone, opts)):
            x, y = data[k][step]
            own = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            own.backward()
            opt.step()
            worst = max(worst, abs(float(per_member[k]) - float(own.detach())) / max(1e-12, abs(float(own.detach()))))
    print(f"{norm}: worst relative loss error over {STEPS} steps x {K} members: {worst:.3g}")
    assert worst <= 1e-6
    for k, m in enumerate(alone):
        mine = packed.member_state(k)
        for name, tensor in m.state_dict().items():
            assert torch.allclose(mine[name].reshape(tensor.shape).to(tensor.dtype), tensor, rtol=1e-6, atol=1e-9), name
    packed.eval()
    for m in alone:
        m.eval()
    x = [torch.randn(2, *SHAPE, dtype=torch.float64) for _ in range(K)]
    out = packed(packed_input(x))
    for k, m in enumerate(alone):
        assert torch.allclose(out[:, k], m(x[k]), rtol=1e-6, atol=1e-9)  # eval, running statistics included


def test_norms_that_cannot_pack_say_why():
    with pytest.raises(NotPackable, match="norm sn does not pack"):
        pack_net([member("sn", s) for s in range(2)])
    torch.manual_seed(0)
    learned = [build_model({"name": "convnet"}, {"name": "frn", "learned_eps": True}, SHAPE, 10) for _ in range(2)]
    with pytest.raises(NotPackable, match="eps_l"):
        pack_net(learned)
    drop = [build_model({"name": "alexnet", "width": 0.1}, {"name": "bn"}, (3, 32, 32), 10) for _ in range(2)]
    with pytest.raises(NotPackable, match="Dropout does not pack exactly"):
        pack_net(drop)


@pytest.mark.parametrize("norm", PACKABLE)
def test_a_diverged_member_cannot_reach_the_others(norm):
    """NaN weights in member 1 (what divergence leaves) give member 0 the same finite loss and
    gradients as before: no packed operation mixes members, not even as 0 * NaN."""
    x = [torch.randn(4, *SHAPE, dtype=torch.float64) for _ in range(2)]
    y = [torch.randint(0, 10, (4,)) for _ in range(2)]
    results = []
    for poison in (False, True):
        packed = pack_net([member(norm, s) for s in range(2)])
        if poison:
            ones = packed.member_mask(1)
            with torch.no_grad():
                for name, t in packed.state_dict(keep_vars=True).items():
                    if t.is_floating_point() and t.dim():
                        t.masked_fill_(ones[name], float("nan"))
        loss, per_member = packed_loss(packed(packed_input(x)), y)
        loss.backward()
        mine = packed.member_mask(0)
        results.append((per_member[0], {n: p.grad[mine[n]] for n, p in packed.named_parameters() if p.grad is not None}))
    (clean_loss, clean_grads), (loss0, grads0) = results
    assert torch.isnan(packed_loss(packed(packed_input(x)), y)[1][1])  # member 1 is NaN indeed
    assert torch.equal(loss0, clean_loss)
    for name, g in grads0.items():
        assert torch.isfinite(g).all() and torch.allclose(g, clean_grads[name], rtol=1e-12, atol=0), name
