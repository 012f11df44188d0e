"""Each normalization layer against an independent reference (docs/norms.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normbench.norms import LRN_PRESETS, LocalResponseNorm, build_norm, norm_names


@pytest.fixture(autouse=True)
def float64_default():
    """Exactness tests run in float64; restore the default for other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 8, 5, 6, generator=g) * 3 + 1


def randomize_affine(m: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g))


def np_group_norm(x: np.ndarray, groups: int, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    n, c, h, wd = x.shape
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = xg.var(axis=2, keepdims=True)  # biased, as in the GN paper
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(n, c, h, wd)
    return y * w[None, :, None, None] + b[None, :, None, None]


# --- BN ---------------------------------------------------------------------------------------


def test_bn_train_eval_and_running_statistics_match_numpy(x):
    bn = build_norm({"name": "bn", "momentum": 0.1}, 8).double()
    randomize_affine(bn)
    w, b = bn.weight.detach().numpy(), bn.bias.detach().numpy()
    run_mean, run_var = np.zeros(8), np.ones(8)
    bn.train()
    for step in range(3):
        xs = (x + step).numpy()
        y = bn(torch.from_numpy(xs)).detach().numpy()
        mean = xs.mean(axis=(0, 2, 3))
        var_b = xs.var(axis=(0, 2, 3))
        var_u = xs.var(axis=(0, 2, 3), ddof=1)
        ref = (xs - mean[None, :, None, None]) / np.sqrt(var_b[None, :, None, None] + 1e-5)
        np.testing.assert_allclose(y, ref * w[None, :, None, None] + b[None, :, None, None], atol=1e-10)
        run_mean = 0.9 * run_mean + 0.1 * mean
        run_var = 0.9 * run_var + 0.1 * var_u
    np.testing.assert_allclose(bn.running_mean.numpy(), run_mean, atol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), run_var, atol=1e-12)
    bn.eval()
    y = bn(x).detach().numpy()
    ref = (x.numpy() - run_mean[None, :, None, None]) / np.sqrt(run_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y, ref * w[None, :, None, None] + b[None, :, None, None], atol=1e-10)


def test_bn_keras_momentum_convention():
    # Keras momentum=0.99 (weight of the old value) is PyTorch momentum=0.01.
    bn = build_norm({"name": "bn", "momentum": 0.01}, 3).double().train()
    xs = torch.ones(2, 3, 2, 2) * 5
    bn(xs)
    assert torch.allclose(bn.running_mean, torch.full((3,), 0.99 * 0 + 0.01 * 5))


# --- LN, IN, GN -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "groups"),
    [
        ({"name": "ln"}, 1),
        ({"name": "in"}, 8),
        ({"name": "gn", "groups": 4}, 4),
        ({"name": "gn", "groups": 2}, 2),
        ({"name": "gn", "group_size": 4}, 2),
        ({"name": "gn", "groups": 8}, 8),
    ],
)
def test_group_statistics_norms_match_numpy(x, spec, groups):
    m = build_norm(spec, 8).double()
    randomize_affine(m)
    w, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    ref = np_group_norm(x.numpy(), groups, w, b)
    for mode in (m.train(), m.eval()):  # no running statistics: same in both modes
        np.testing.assert_allclose(mode(x).detach().numpy(), ref, atol=1e-10)


def test_ln_and_in_have_per_channel_affine_not_per_element():
    ln, inorm = build_norm("ln", 8), build_norm("in", 8)
    assert ln.weight.shape == (8,) and inorm.weight.shape == (8,)


def test_gn_default_is_32_groups():
    assert build_norm("gn", 64).num_groups == 32


def test_none_is_identity(x):
    assert torch.equal(build_norm("none", 8)(x), x)


# --- LRN: plain loops over the formula --------------------------------------------------------


def lrn_loops(x: np.ndarray, region: str, n: int, alpha: float, beta: float, k: float, scaling: str) -> np.ndarray:
    """docs/norms.md, written as literally as possible."""
    N, C, H, W = x.shape
    r = n // 2
    if scaling == "paper":
        A = alpha
    else:
        A = alpha / n if region == "across" else alpha / (n * n)
    out = np.empty_like(x)
    for b in range(N):
        for i in range(C):
            for h in range(H):
                for w in range(W):
                    s = 0.0
                    if region == "across":
                        for j in range(max(0, i - r), min(C - 1, i + r) + 1):
                            s += x[b, j, h, w] ** 2
                    else:
                        for hh in range(max(0, h - r), min(H - 1, h + r) + 1):
                            for ww in range(max(0, w - r), min(W - 1, w + r) + 1):
                                s += x[b, i, hh, ww] ** 2
                    out[b, i, h, w] = x[b, i, h, w] / (k + A * s) ** beta
    return out


LRN_CASES = [
    ("across", 5, 0.3, 0.75, 2.0, "paper"),
    ("across", 4, 0.3, 0.75, 2.0, "paper"),  # even n: window i-2..i+2 (n+1 channels)
    ("across", 2, 0.5, 0.5, 1.0, "paper"),
    ("across", 3, 0.3, 0.75, 1.0, "per_window"),
    ("across", 9, 1.0, 0.75, 1.0, "per_window"),  # window wider than C: clipped at edges
    ("within", 3, 0.3, 0.75, 1.0, "per_window"),
    ("within", 5, 0.3, 0.75, 1.0, "per_window"),
    ("within", 2, 0.2, 0.75, 1.0, "paper"),  # even n: a 3x3 window, alpha not divided
    ("within", 3, 0.2, 1.0, 0.5, "paper"),
]


@pytest.mark.parametrize(("region", "n", "alpha", "beta", "k", "scaling"), LRN_CASES)
def test_lrn_matches_plain_loops(region, n, alpha, beta, k, scaling):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 4, 5, generator=g) * 2
    m = LocalResponseNorm(size=n, alpha=alpha, beta=beta, k=k, region=region, alpha_scaling=scaling)
    ref = lrn_loops(x.numpy(), region, n, alpha, beta, k, scaling)
    np.testing.assert_allclose(m(x).numpy(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_lrn_equals_torch_where_conventions_coincide(x, n):
    ref = F.local_response_norm(x, n, alpha=0.4, beta=0.75, k=1.5)
    per_window = LocalResponseNorm(n, alpha=0.4, beta=0.75, k=1.5, alpha_scaling="per_window")
    paper = LocalResponseNorm(n, alpha=0.4 / n, beta=0.75, k=1.5, alpha_scaling="paper")
    torch.testing.assert_close(per_window(x), ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(paper(x), ref, rtol=1e-12, atol=1e-14)


def test_alexnet_preset_is_torch_lrn_with_alpha_times_n(x):
    # docs/norms.md: AlexNet paper = PyTorch LRN(5, alpha=5e-4, beta=0.75, k=2).
    m = build_norm({"name": "lrn", "preset": "alexnet"}, 8)
    torch.testing.assert_close(m(x * 30), F.local_response_norm(x * 30, 5, 5e-4, 0.75, 2.0), rtol=1e-12, atol=0)


def test_worked_example_gives_one_half():
    # docs/norms.md: C=4, (k, alpha, beta, n) = (0, 1, 1, 2), alpha not divided.
    x = torch.zeros(1, 4, 1, 1)
    x[0, 0] = 1.0
    x[0, 1] = 1.0
    m = build_norm({"name": "lrn", "region": "across", "size": 2, "alpha": 1.0, "beta": 1.0, "k": 0.0,
                    "alpha_scaling": "paper"}, 4)
    assert m(x)[0, 0, 0, 0].item() == 0.5


@pytest.mark.parametrize("region", ["across", "within"])
@pytest.mark.parametrize("scaling,n", [("paper", 4), ("per_window", 3)])
def test_lrn_gradcheck(region, scaling, n):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 5, 4, 4, generator=g) * 2).requires_grad_()
    m = LocalResponseNorm(n, alpha=0.7, beta=0.75, k=1.0, region=region, alpha_scaling=scaling)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-8)


def test_lrn_gradient_matches_autograd_of_torch_lrn(x):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    gy = torch.randn_like(x)
    LocalResponseNorm(5, 0.5, 0.75, 2.0, alpha_scaling="per_window")(xa).backward(gy)
    F.local_response_norm(xb, 5, 0.5, 0.75, 2.0).backward(gy)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)


def test_lrn_runs_under_deterministic_algorithms(x):
    torch.use_deterministic_algorithms(True)
    try:
        for region in ("across", "within"):
            xr = x.clone().requires_grad_()
            LocalResponseNorm(3, region=region, alpha_scaling="per_window")(xr).sum().backward()
            assert torch.isfinite(xr.grad).all()
    finally:
        torch.use_deterministic_algorithms(False)


def test_lrn_bf16_input_is_computed_in_float32(x):
    m = build_norm({"name": "lrn", "preset": "caffe_cifar10_full"}, 8)
    y = m(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), m(x.to(torch.bfloat16).double()), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("alexnet", ("across", 5, 1e-4, 0.75, 2.0, "paper")),
        ("caffe_cifar10_full", ("within", 3, 5e-5, 0.75, 1.0, "per_window")),
        ("caffe_bvlc_alexnet", ("across", 5, 1e-4, 0.75, 1.0, "per_window")),
        ("tensorflow", ("across", 11, 1.0, 0.5, 1.0, "paper")),
    ],
)
def test_lrn_presets(preset, expected):
    m = build_norm({"name": "lrn", "preset": preset}, 16)
    assert (m.region, m.size, m.alpha, m.beta, m.k, m.alpha_scaling) == expected


def test_lrn_defaults_follow_region_and_overrides_win():
    within = build_norm({"name": "lrn", "region": "within"}, 8)
    assert (within.size, within.alpha, within.k, within.alpha_scaling) == (3, 5e-5, 1.0, "per_window")
    across = build_norm({"name": "lrn", "preset": "alexnet", "k": 1.0}, 8)
    assert (across.k, across.alpha, across.alpha_scaling) == (1.0, 1e-4, "paper")
    assert set(LRN_PRESETS) >= {"alexnet", "caffe_cifar10_full", "caffe_bvlc_alexnet", "tensorflow"}


def test_placement_keys_are_ignored():
    m = build_norm({"name": "gn", "groups": 4, "placement": "pre_act", "sites": ["conv1"], "tag": "gn4"}, 8)
    assert m.num_groups == 4


# --- errors a user sees -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "channels", "message"),
    [
        ({"name": "batchnorm"}, 8, "norm.name='batchnorm' is not a known normalization; allowed: none, bn, ln, in, gn, sabn, lrn, frn, evonorm_s0, evonorm_b0, sn, bgn, brn, cbn, pn"),
        ({}, 8, "norm.name=None is not a known normalization"),
        ({"name": "gn", "groups": 3}, 8, "norm.groups=3 is not valid for norm 'gn'; allowed: a divisor of the 8 channels"),
        ({"name": "gn", "group_size": 3}, 8, "norm.group_size=3 is not valid for norm 'gn'; allowed: a divisor of the 8"),
        ({"name": "gn", "groups": 0}, 8, "norm.groups=0 is not valid for norm 'gn'; allowed: an integer >= 1"),
        ({"name": "gn", "groups": None}, 8, "set norm.groups or norm.group_size"),
        ({"name": "gn", "num_groups": 4}, 8, "norm.num_groups=4 is not a parameter of norm 'gn'; allowed: groups, group_size, eps, affine"),
        ({"name": "bn", "momentum": 1.5}, 8, "norm.momentum=1.5 is not valid for norm 'bn'"),
        ({"name": "bn", "eps": 0}, 8, "norm.eps=0 is not valid for norm 'bn'; allowed: a real number > 0"),
        ({"name": "bn", "affine": "yes"}, 8, "norm.affine='yes' is not valid for norm 'bn'; allowed: true or false"),
        ({"name": "ln", "eps": "1e-5"}, 8, "norm.eps='1e-5' is not valid for norm 'ln'"),
        ({"name": "none", "eps": 1e-5}, 8, "norm.eps=1e-05 is not a parameter of norm 'none'; allowed: none"),
        ({"name": "lrn", "region": "spatial"}, 8, "norm.region='spatial' is not valid for norm 'lrn'; allowed: across | within"),
        ({"name": "lrn", "size": 4, "alpha_scaling": "per_window"}, 8, "norm.size=4 is not valid for norm 'lrn'; allowed: an odd integer with alpha_scaling=per_window"),
        ({"name": "lrn", "size": 0}, 8, "norm.size=0 is not valid for norm 'lrn'; allowed: an integer >= 1"),
        ({"name": "lrn", "size": 2.5}, 8, "norm.size=2.5 is not valid"),
        ({"name": "lrn", "alpha": -1.0}, 8, "norm.alpha=-1.0 is not valid for norm 'lrn'; allowed: a real number >= 0"),
        ({"name": "lrn", "alpha_scaling": "caffe"}, 8, "norm.alpha_scaling='caffe' is not valid for norm 'lrn'; allowed: paper | per_window"),
        ({"name": "lrn", "preset": "vgg"}, 8, "norm.preset='vgg' is not valid for norm 'lrn'; allowed: alexnet | caffe_cifar10_full"),
        ({"name": "bn"}, 0, "channels=0 must be a positive integer"),
    ],
)
def test_bad_spec_raises_one_clear_line(spec, channels, message):
    with pytest.raises(ValueError) as err:
        build_norm(spec, channels)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_registry_names():
    assert norm_names() == ["none", "bn", "ln", "in", "gn", "sabn", "lrn", "frn", "evonorm_s0", "evonorm_b0", "sn",
                            "bgn", "brn", "cbn", "pn"]


def test_build_norm_accepts_omegaconf_node():
    from omegaconf import OmegaConf

    spec = OmegaConf.create({"name": "gn", "groups": 2, "sites": ["conv1", "conv2"], "placement": "pre_act"})
    assert build_norm(spec, 8).num_groups == 2
