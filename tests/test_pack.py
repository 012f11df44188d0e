"""Packed training equals running each member alone, in float64, for every norm that packs."""

from __future__ import annotations

import pytest
import torch

from normbench.models import build_model
from normbench.norms.packing import NotPackable
from normbench.pack import pack_net, packed_input, packed_loss

from conftest import make_cfg

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
