"""ResNet-20 (He et al. 2016, Sec. 4.2) with the norm registry: its size, its shortcuts, a
norm after every conv, and a run end to end."""

from __future__ import annotations

import logging

import pytest
import torch

from normbench.errors import ConfigError
from normbench.models import ShortcutA, build_model
from normbench.train import run


def conv_params() -> int:
    """3x3 convs without bias: stem 3->16, then per stage 6 convs (the first from the previous width)."""
    total, cin = 3 * 16 * 9, 16
    for cout in (16, 32, 64):
        total += cin * cout * 9 + 5 * cout * cout * 9
        cin = cout
    return total


def test_size_and_sites_match_the_paper():
    bn_affine = 2 * (16 + 6 * (16 + 32 + 64))
    fc = 64 * 10 + 10
    net = build_model({"name": "resnet20"}, {"name": "bn"}, (3, 32, 32), 10)
    assert sum(p.numel() for p in net.parameters()) == conv_params() + bn_affine + fc == 269_722  # "0.27M"
    assert len(net.norms()) == 19 and all(k.endswith(".pre_act") for k in net.norms())  # a norm after every conv
    projections = 16 * 32 + 32 * 64 + 2 * (32 + 64)
    b = build_model({"name": "resnet20", "shortcut": "B"}, {"name": "bn"}, (3, 32, 32), 10)
    assert sum(p.numel() for p in b.parameters()) == 269_722 + projections and len(b.norms()) == 21
    none = build_model({"name": "resnet20"}, {"name": "none"}, (3, 32, 32), 10)
    assert not none.norms() and sum(p.numel() for p in none.parameters()) == conv_params() + 688 + fc  # each conv keeps its bias


def test_stages_halve_the_map_and_option_a_pads_with_zeros():
    net = build_model({"name": "resnet20"}, {"name": "gn", "groups": 8}, (3, 32, 32), 10).eval()
    shapes = {}
    for name in ("s1b3", "s2b1", "s3b3"):
        net.features.get_submodule(name).register_forward_hook(lambda m, a, out, n=name: shapes.__setitem__(n, out.shape))
    net(torch.randn(2, 3, 32, 32))
    assert shapes == {"s1b3": (2, 16, 32, 32), "s2b1": (2, 32, 16, 16), "s3b3": (2, 64, 8, 8)}
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()


def test_resnet20_trains_and_falls_back_from_packing(quick, caplog):
    rec = run(quick("model=resnet20", "norm=gn", "epochs=1", "batch_size=16"))
    assert rec["status"] == "ok" and rec["params"] == 270_410 and rec["model"] == "resnet20"
    with caplog.at_level(logging.INFO, logger="normbench"):
        out = run(quick("model=resnet20", "norm=bn", "epochs=1", "batch_size=8", "trainer.pack_seeds=[0,1]",
                        "data.train_size=64"))
    assert [r["status"] for r in out["runs"]] == ["ok", "ok"] and not out["runs"][0]["packed_with"]
    assert "train one after the other, not packed" in caplog.text and "BasicBlock" in caplog.text


def test_a_bad_shortcut_is_one_line():
    with pytest.raises(ConfigError, match=r"^model.shortcut='C' is not valid; allowed: A \| B$"):
        build_model({"name": "resnet20", "shortcut": "C"}, {"name": "bn"}, (3, 32, 32), 10)


def test_projection_sites_exist_only_with_option_b():
    with pytest.raises(ConfigError, match=r"names 's2b1sc', not a conv of model 'resnet20'"):
        build_model({"name": "resnet20"}, {"name": "bn", "sites": ["s2b1sc"]}, (3, 32, 32), 10)
    b = build_model({"name": "resnet20", "shortcut": "B"}, {"name": "bn", "sites": ["s2b1sc"]}, (3, 32, 32), 10)
    assert list(b.norms()) == ["s2b1sc.pre_act"]
