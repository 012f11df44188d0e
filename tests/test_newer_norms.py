"""The newer normalization layers, each against an independent float64 reference written here
from the published formulas (docs/norms.md), plus gradcheck, train/eval, batch 1, state_dict
round trips, resume, the traits the model relies on, and every bad parameter's one line.

timm has FRN + TLU and EvoNorm, but its package imports torchvision, which cannot be installed
beside the CPU torch build here; so every reference below is written from the formulas.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from normbench.errors import ConfigError
from normbench.norms import build_norm, traits

torch.set_printoptions(precision=10)
WORST: dict[str, float] = {}


def close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float = 1e-10) -> None:
    err = float((got - want).detach().abs().max())
    WORST[name] = max(WORST.get(name, 0.0), err)
    print(f"{name}: worst abs error {err:.3g}")
    assert err <= tol, f"{name}: {err}"


def x64(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 1.5 + 0.3).requires_grad_()


def layer64(spec: dict, channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_norm(spec, channels).double()
    with torch.no_grad():  # non-trivial affines, so that the references check them too
        for name, p in m.named_parameters():
            if p.dim() >= 1 and "logit" not in name and name not in ("mean_weight", "var_weight"):
                p.add_(torch.linspace(-0.3, 0.4, p.numel(), dtype=p.dtype).view_as(p))
    return m


def per_c(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


# --- FRN + TLU ---------------------------------------------------------------------------------


def test_frn_tlu_matches_the_formula_in_train_and_eval():
    x = x64(4, 6, 5, 5)
    m = layer64({"name": "frn"}, 6)
    nu2 = (x * x).mean(dim=(2, 3), keepdim=True)
    ref = torch.maximum(per_c(m.weight) * x / torch.sqrt(nu2 + 1e-6) + per_c(m.bias), per_c(m.tau))
    close("frn", m(x), ref)
    m.eval()
    close("frn eval", m(x), ref)  # no batch statistics: the same
    close("frn batch 1", m(x[:1]), ref[:1])  # each sample alone
    no_tlu = layer64({"name": "frn", "tlu": False}, 6)
    assert no_tlu.tau is None and not traits(no_tlu).flag("replaces_activation", no_tlu)
    learned = layer64({"name": "frn", "learned_eps": True}, 6)
    want = per_c(learned.weight) * x / torch.sqrt(nu2 + 1e-6 + learned.eps_l.abs()) + per_c(learned.bias)
    close("frn learned eps", learned(x), torch.maximum(want, per_c(learned.tau)))
    assert torch.autograd.gradcheck(m, (x,))


# --- EvoNorm -----------------------------------------------------------------------------------


def test_evonorm_s0_matches_the_formula_and_decrements_groups():
    x = x64(3, 12, 4, 4)
    m = layer64({"name": "evonorm_s0", "groups": 8}, 12)
    assert m.groups == 6  # 8 does not divide 12: decremented to 6
    assert build_norm({"name": "evonorm_s0"}, 48).groups == 24  # the official example
    xg = x.view(3, 6, -1)
    sd = torch.sqrt(xg.var(dim=2, unbiased=False, keepdim=True) + 1e-5).expand_as(xg).reshape_as(x)
    ref = x * torch.sigmoid(per_c(m.v) * x) / sd * per_c(m.weight) + per_c(m.bias)
    close("evonorm_s0", m(x), ref)
    m.eval()
    close("evonorm_s0 eval", m(x), ref)
    close("evonorm_s0 batch 1", m(x[1:2]), ref[1:2])
    affine_only = layer64({"name": "evonorm_s0", "nonlinearity": False}, 12)
    close("evonorm_s0 affine", affine_only(x), x * per_c(affine_only.weight) + per_c(affine_only.bias))
    assert torch.autograd.gradcheck(m, (x,))


def test_evonorm_b0_matches_the_formula_and_keeps_a_biased_running_variance():
    x = x64(4, 5, 3, 3)
    m = layer64({"name": "evonorm_b0"}, 5)
    var_b = x.var(dim=(0, 2, 3), unbiased=False)
    inst = torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-5)
    right = per_c(m.v) * x + inst
    ref = x / torch.maximum(per_c(torch.sqrt(var_b + 1e-5)), right) * per_c(m.weight) + per_c(m.bias)
    close("evonorm_b0", m(x), ref)
    close("evonorm_b0 running var", m.running_var, 0.9 * torch.ones(5, dtype=torch.float64) + 0.1 * var_b.detach())
    m.eval()
    left = per_c(torch.sqrt(m.running_var + 1e-5))
    close("evonorm_b0 eval", m(x), x / torch.maximum(left, right) * per_c(m.weight) + per_c(m.bias))
    m.train()
    assert torch.autograd.gradcheck(m, (x,))


# --- SN ----------------------------------------------------------------------------------------


def sn_reference(x: torch.Tensor, m: torch.nn.Module, run_mean=None, run_var=None) -> torch.Tensor:
    n, c, h, w = x.shape
    m_in = x.mean(dim=(2, 3), keepdim=True)
    v_in = x.var(dim=(2, 3), keepdim=True, unbiased=True)
    m_ln = m_in.mean(dim=1, keepdim=True)
    v_ln = (v_in + m_in ** 2).mean(dim=1, keepdim=True) - m_ln ** 2
    if run_mean is None:
        m_bn = m_in.mean(dim=0, keepdim=True)
        v_bn = (v_in + m_in ** 2).mean(dim=0, keepdim=True) - m_bn ** 2
    else:
        m_bn, v_bn = run_mean.view(1, c, 1, 1), run_var.view(1, c, 1, 1)
    wm, wv = torch.softmax(m.mean_weight, 0), torch.softmax(m.var_weight, 0)
    mu = wm[0] * m_in + wm[1] * m_ln + wm[2] * m_bn
    s2 = wv[0] * v_in + wv[1] * v_ln + wv[2] * v_bn
    return (x - mu) / torch.sqrt(s2 + 1e-5) * m.weight + m.bias


def test_sn_matches_the_formula_and_its_limits():
    x = x64(4, 6, 3, 3)
    m = layer64({"name": "sn"}, 6)
    with torch.no_grad():
        m.mean_weight.copy_(torch.tensor([0.2, -0.1, 0.5]))
        m.var_weight.copy_(torch.tensor([-0.3, 0.4, 0.1]))
    close("sn", m(x), sn_reference(x, m))
    m_bn = x.mean(dim=(0, 2, 3))
    v_bn = (x.var(dim=(2, 3), unbiased=True) + x.mean(dim=(2, 3)) ** 2).mean(0) - m_bn ** 2
    close("sn running mean", m.running_mean.flatten(), 0.1 * m_bn.detach())  # starts at 0, not 1
    close("sn running var", m.running_var.flatten(), 0.1 * v_bn.detach())
    m.eval()
    close("sn eval", m(x), sn_reference(x, m, m.running_mean, m.running_var))
    close("sn eval batch 1", m(x[:1]), sn_reference(x[:1], m, m.running_mean, m.running_var))
    m.train()
    assert torch.autograd.gradcheck(m, (x,))
    with torch.no_grad():  # limiting cases: all weight on BN, or on IN
        m.mean_weight.copy_(torch.tensor([-30.0, -30.0, 30.0]))
        m.var_weight.copy_(torch.tensor([-30.0, -30.0, 30.0]))
    bn = (x - m_bn.view(1, -1, 1, 1)) / torch.sqrt(v_bn.view(1, -1, 1, 1) + 1e-5) * m.weight + m.bias
    close("sn as bn", m(x), bn, tol=1e-9)
    with torch.no_grad():
        m.mean_weight.copy_(torch.tensor([30.0, -30.0, -30.0]))
        m.var_weight.copy_(torch.tensor([30.0, -30.0, -30.0]))
    inst = (x - x.mean(dim=(2, 3), keepdim=True)) / torch.sqrt(x.var(dim=(2, 3), keepdim=True) + 1e-5)
    close("sn as in (unbiased)", m(x), inst * m.weight + m.bias, tol=1e-9)
    no_bn = layer64({"name": "sn", "using_bn": False}, 6)
    assert no_bn.mean_weight.numel() == 2 and not hasattr(no_bn, "running_mean")


# --- BGN ---------------------------------------------------------------------------------------


def test_bgn_is_bn_over_groups_of_channels():
    x = x64(4, 8, 3, 3)
    m = layer64({"name": "bgn", "groups": 2}, 8)
    xg = x.reshape(4, 2, -1)
    mean, var = xg.mean(dim=(0, 2), keepdim=True), xg.var(dim=(0, 2), unbiased=False, keepdim=True)
    ref = ((xg - mean) / torch.sqrt(var + 1e-5)).view_as(x) * per_c(m.weight) + per_c(m.bias)
    close("bgn", m(x), ref)
    n = xg.shape[0] * xg.shape[2]
    close("bgn running var", m.running_var, 0.9 + 0.1 * var.flatten().detach() * n / (n - 1))
    m.eval()
    eval_ref = ((xg - m.running_mean.view(1, 2, 1)) / torch.sqrt(m.running_var.view(1, 2, 1) + 1e-5)).view_as(x)
    close("bgn eval", m(x), eval_ref * per_c(m.weight) + per_c(m.bias))
    m.train()
    assert torch.autograd.gradcheck(m, (x,))
    full = layer64({"name": "bgn", "groups": 8}, 8)  # G = C is BN
    assert traits(full).flag("bias_dead", full) and not traits(m).flag("bias_dead", m)


# --- SaBN --------------------------------------------------------------------------------------


def test_sabn_is_bn_then_a_second_affine_and_draws_nothing_from_the_global_stream():
    x = x64(4, 5, 3, 3)
    m = layer64({"name": "sabn"}, 5)
    h = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    g1, b1 = m.embed.weight[0, :5], m.embed.weight[0, 5:]
    close("sabn", m(x), per_c(g1) * (h * per_c(m.weight) + per_c(m.bias)) + per_c(b1))
    assert torch.autograd.gradcheck(m, (x,))
    torch.manual_seed(3)
    before = torch.randn(3)
    torch.manual_seed(3)
    fresh = build_norm({"name": "sabn"}, 5)
    assert torch.equal(torch.randn(3), before)  # the global stream is untouched
    gamma_1 = fresh.embed.weight.detach()[0, :5]
    assert 0.9 < float(gamma_1.min()) and float(gamma_1.max()) < 1.1


# --- BRN ---------------------------------------------------------------------------------------


def test_brn_with_r_max_1_and_d_max_0_is_bn_in_training():
    x = x64(4, 5, 3, 3)
    brn = layer64({"name": "brn", "r_max": 1.0, "d_max": 0.0, "relax_from": 0, "r_max_at": 0, "d_max_at": 0}, 5)
    bn = layer64({"name": "bn"}, 5)
    with torch.no_grad():
        bn.weight.copy_(brn.weight)
        bn.bias.copy_(brn.bias)
    y1, y2 = brn(x), bn(x)
    close("brn = bn (r_max 1, d_max 0)", y1, y2, tol=1e-12)
    g = torch.randn_like(y1)
    (gx1,) = torch.autograd.grad(y1, x, g)
    (gx2,) = torch.autograd.grad(y2, x, g)
    close("brn = bn backward", gx1, gx2, tol=1e-12)


def test_brn_algorithm_1_and_its_schedule():
    x = x64(4, 5, 3, 3)
    m = layer64({"name": "brn", "r_max": 1.5, "d_max": 0.5, "relax_from": 0, "r_max_at": 0, "d_max_at": 0,
                 "momentum": 0.3}, 5)
    with torch.no_grad():
        m.running_mean.copy_(torch.linspace(-0.5, 0.5, 5))
        m.running_std.copy_(torch.linspace(0.5, 2.0, 5))
    mu, sig = per_c(m.running_mean.clone()), per_c(m.running_std.clone())
    mu_b = x.mean(dim=(0, 2, 3), keepdim=True)
    sig_b = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    r = (sig_b / sig).clamp(1 / 1.5, 1.5).detach()
    d = ((mu_b - mu) / sig).clamp(-0.5, 0.5).detach()
    ref = ((x - mu_b) / sig_b * r + d) * per_c(m.weight) + per_c(m.bias)
    close("brn", m(x), ref)
    close("brn running std", per_c(m.running_std), sig + 0.3 * (sig_b.detach() - sig))  # EMA of the std
    m.eval()
    close("brn eval", m(x), (x - per_c(m.running_mean)) / per_c(m.running_std) * per_c(m.weight) + per_c(m.bias))
    sched = build_norm({"name": "brn", "r_max": 3.0, "d_max": 5.0, "relax_from": 10, "r_max_at": 30,
                        "d_max_at": 20}, 2)
    for step, (r_want, d_want) in {0: (1, 0), 10: (1, 0), 20: (2, 5), 30: (3, 5), 99: (3, 5)}.items():
        sched.num_batches_tracked.fill_(step)
        r_max, d_max = sched.bounds()
        assert (float(r_max), float(d_max)) == pytest.approx((r_want, d_want)), step


def test_brn_gradient_with_r_and_d_held_fixed():
    from normbench.norms.batch_corrected import batch_renorm_train

    x = x64(3, 4, 2, 2)
    r, d = per_c(torch.tensor([0.8, 1.2, 1.0, 1.4], dtype=torch.float64)), per_c(torch.tensor([0.1, -0.2, 0.0, 0.3], dtype=torch.float64))
    w, b = torch.rand(4, dtype=torch.float64).view(1, -1, 1, 1), torch.rand(4, dtype=torch.float64).view(1, -1, 1, 1)

    def f(x: torch.Tensor) -> torch.Tensor:
        mu_b = x.mean(dim=(0, 2, 3), keepdim=True)
        sig_b = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
        return batch_renorm_train(x, mu_b, sig_b, r, d, w, b)

    assert torch.autograd.gradcheck(f, (x,))


# --- CBN ---------------------------------------------------------------------------------------


def cbn_with_conv(**params) -> tuple[torch.nn.Module, torch.nn.Conv2d]:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    m = build_norm({"name": "cbn", **params}, 4).double()
    m.attach_conv(conv)
    return m, conv


def test_cbn_without_a_buffer_is_bn_with_unbiased_std_and_eps_outside():
    m, conv = cbn_with_conv(buffer_num=0)
    x = conv(x64(4, 3, 5, 5))
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.var(dim=(0, 2, 3), unbiased=True, keepdim=True).sqrt()
    close("cbn k=0", m(x), (x - mean) / (std + 1e-5) * per_c(m.weight) + per_c(m.bias))
    close("cbn running var", m.running_var, 0.9 + 0.1 * std.flatten().detach() ** 2)
    m.eval()
    eval_ref = (x - per_c(m.running_mean)) / (per_c(m.running_var).sqrt() + 1e-5) * per_c(m.weight) + per_c(m.bias)
    close("cbn eval", m(x), eval_ref)
    m.train()
    inp = x64(2, 3, 4, 4)
    assert torch.autograd.gradcheck(lambda t: m(conv(t)), (inp,))


def test_cbn_with_unchanged_weights_pools_the_last_k_batches():
    # lr = 0: the compensation is zero, so a step's statistics are the biased BN statistics
    # of this batch and the k before it, concatenated (equal batch sizes).
    m, conv = cbn_with_conv(buffer_num=2, burnin=0)
    inputs = [x64(3, 3, 4, 4, seed=s) for s in range(4)]
    outs = [m(conv(t)) for t in inputs]
    feats = [conv(t).detach() for t in inputs]
    for step in range(4):
        pool = torch.cat(feats[max(0, step - 2):step + 1])
        mean = pool.mean(dim=(0, 2, 3), keepdim=True)
        std = pool.var(dim=(0, 2, 3), unbiased=False, keepdim=True).sqrt()
        ref = (feats[step] - mean) / (std + 1e-5) * per_c(m.weight) + per_c(m.bias)
        close("cbn pooled", outs[step].detach(), ref, tol=1e-9)
    assert int(m.filled) == 2


def test_cbn_compensates_for_weight_changes():
    # The conv is linear in W, so the first-order Taylor step is exact for the mean: batch a's
    # compensated mean is the mean of the NEW conv's output on a.
    m, conv = cbn_with_conv(buffer_num=2, burnin=0)
    a, b = x64(3, 3, 4, 4, seed=1), x64(3, 3, 4, 4, seed=2)
    m(conv(a))
    with torch.no_grad():
        conv.weight.add_(0.05 * torch.randn_like(conv.weight))
    out = m(conv(b))  # buffer now: [b, a]
    w_now = conv.weight.detach().reshape(4, -1)
    mu_a = m.pre_mu[1] + (m.pre_dmudw[1] * (w_now - m.pre_weight[1])).sum(dim=1)
    fa, fb = conv(a).detach(), conv(b).detach()
    close("cbn compensated mean", mu_a, fa.mean(dim=(0, 2, 3)), tol=1e-12)
    # ... and the output uses the mean of (b's mean, a's compensated mean).
    nu_a = m.pre_meanx2[1] + (m.pre_dmeanx2dw[1] * (w_now - m.pre_weight[1])).sum(dim=1)
    mu = (fb.mean(dim=(0, 2, 3)) + mu_a) / 2
    var = ((fb * fb).mean(dim=(0, 2, 3)) + nu_a) / 2 - mu ** 2
    ref = (fb - per_c(mu)) / (per_c(var).sqrt() + 1e-5) * per_c(m.weight) + per_c(m.bias)
    close("cbn compensated output", out.detach(), ref, tol=1e-10)


def test_cbn_burn_in_counts_iterations():
    m, conv = cbn_with_conv(buffer_num=3, burnin=2)
    for step in range(1, 5):
        m(conv(x64(2, 3, 4, 4, seed=step)))
        assert m.buffer_size() == (3 if step > 2 else 0), step
    ramp, _ = cbn_with_conv(buffer_num=4, burnin=4, two_stage=False)
    ramp.iter_count.fill_(2)
    assert ramp.buffer_size() == 2


# --- PowerNorm ---------------------------------------------------------------------------------


def gs(x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    n, c, h, w = x.shape
    xg = x.view(n, groups, c // groups, h, w)
    return (xg / torch.sqrt((xg * xg).mean(dim=2, keepdim=True) + 1e-5)).view_as(x)


def test_pn_forward_in_and_after_warm_up_and_its_running_psi():
    x = x64(4, 6, 3, 3)
    m = layer64({"name": "pn", "warmup_iters": 2, "group_num": 2}, 6)
    xs = gs(x, 2)
    s2 = per_c((xs * xs).mean(dim=(0, 2, 3)))
    close("pn warm-up", m(x), xs / torch.sqrt(s2 + 1e-5) * per_c(m.weight) + per_c(m.bias))
    psi = 0.9 * s2 + 0.1 * s2  # t = 1: psi = s2 (cumulative average), then the EMA
    close("pn psi", m.running_phi, psi.detach())
    m(x)  # t = 2 = warmup_iters: still the batch statistic; no cumulative step (t < warmup fails)
    psi = 0.9 * psi + 0.1 * s2
    close("pn psi t=2", m.running_phi, psi.detach())
    out = m(x)  # t = 3: after warm-up, psi from before this step's update
    close("pn after warm-up", out, xs / torch.sqrt(psi + 1e-5) * per_c(m.weight) + per_c(m.bias))
    m.eval()
    psi = 0.9 * psi + 0.1 * s2
    close("pn eval", m(x), xs / torch.sqrt(psi.detach() + 1e-5) * per_c(m.weight) + per_c(m.bias))


def test_pn_backward_is_the_official_approximation():
    x = x64(3, 4, 2, 2)
    m = layer64({"name": "pn", "warmup_iters": 100}, 4)
    with torch.no_grad():
        m.ema_gz.copy_(torch.linspace(-0.2, 0.3, 4).view(1, -1, 1, 1))
    ema0 = m.ema_gz.clone()
    xs = gs(x).detach().requires_grad_()
    from normbench.norms.powernorm import _PowerFunction

    y = _PowerFunction.apply(xs, m.weight, m.bias, m.running_phi, m.ema_gz, 1e-5, 0.9, 0.9, 1, 100)
    dy = torch.randn_like(y)
    y.backward(dy)
    s2 = per_c((xs * xs).mean(dim=(0, 2, 3))).detach()
    z = xs.detach() / torch.sqrt(s2 + 1e-5)
    gt = dy * per_c(m.weight).detach() - 0.1 * ema0 * z
    close("pn grad x", xs.grad, gt / torch.sqrt(s2 + 1e-5))
    close("pn ema_gz", m.ema_gz, ema0 + (gt * z).mean(dim=(0, 2, 3), keepdim=True))
    close("pn grad gamma", m.weight.grad, (dy * z).sum(dim=(0, 2, 3)))
    close("pn grad beta", m.bias.grad, dy.sum(dim=(0, 2, 3)))


# --- WS ----------------------------------------------------------------------------------------


def test_weight_standardization_is_the_official_closed_form():
    from normbench.models import WSConv2d

    torch.manual_seed(0)
    conv = WSConv2d(3, 4, 3, padding=1).double()
    x = x64(2, 3, 5, 5)
    w = conv.weight
    w_hat = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
    close("ws", conv(x), F.conv2d(x, w_hat, conv.bias, padding=1))
    assert torch.autograd.gradcheck(conv, (x,))


def test_weight_std_applies_to_convs_a_norm_follows_only():
    from normbench.models import WSConv2d, build_model

    net = build_model({"name": "convnet", "width": 1.0, "weight_std": True}, {"name": "gn", "groups": 8},
                      (3, 32, 32), 10)
    assert all(isinstance(getattr(net.features, s), WSConv2d) for s in ("conv1", "conv2", "conv3"))
    partial = build_model({"name": "convnet", "weight_std": True}, {"name": "gn", "groups": 8, "sites": ["conv2"]},
                          (3, 32, 32), 10)
    assert [type(getattr(partial.features, s)).__name__ for s in ("conv1", "conv2", "conv3")] == \
        ["Conv2d", "WSConv2d", "Conv2d"]
    with pytest.raises(ConfigError, match="model.weight_std='yes' is not valid; allowed: true or false"):
        build_model({"name": "convnet", "weight_std": "yes"}, {"name": "gn"}, (3, 32, 32), 10)


# --- traits the model relies on ----------------------------------------------------------------


def test_models_follow_each_norms_traits():
    from normbench.models import build_model

    def net(norm: dict):
        return build_model({"name": "convnet"}, norm, (3, 32, 32), 10, batch_size=2)

    frn = net({"name": "frn"})
    assert [type(getattr(frn.features, f"relu{i}")).__name__ for i in (1, 2, 3)] == ["Identity"] * 3  # TLU is the act.
    assert frn.features.conv1.bias is not None  # nothing is subtracted: the bias lives
    frn_alone = net({"name": "frn", "tlu": False})
    assert type(frn_alone.features.relu1).__name__ == "ReLU"
    for name in ("evonorm_s0", "evonorm_b0"):
        assert type(net({"name": name}).features.relu2).__name__ == "Identity"
    for name, dead in (("bn", True), ("sabn", True), ("brn", True), ("cbn", True), ("sn", False), ("pn", False)):
        assert (net({"name": name}).features.conv2.bias is None) == dead, name
    cbn = net({"name": "cbn"})
    assert cbn.features.conv1_pre_act._conv[0] is cbn.features.conv1  # handed its conv, not owning it
    assert "conv1_pre_act.pre_weight" in dict(cbn.features.named_buffers())
    # The conv's weight is the conv's: CBN holds no copy of it among its parameters.
    assert [n for n, _ in cbn.named_parameters()] == [n for n, _ in net({"name": "bn"}).named_parameters()]
    assert sorted(net({"name": "sn"}).norms()) == ["conv1.pre_act", "conv2.pre_act", "conv3.pre_act"]
    assert traits("lrn").placement == "post_act" and traits("frn").placement == "pre_act"
    assert traits("gn").batch_dependent is False and traits("brn").batch_dependent is True
    assert traits("frn").stateful is False and traits("pn").stateful is True


@pytest.mark.parametrize("name", ["frn", "evonorm_s0"])
def test_batch_independent_norms_train_at_batch_1(name):
    from normbench.models import build_model

    net = build_model({"name": "convnet"}, {"name": name}, (3, 32, 32), 10, batch_size=1)
    loss = net(torch.randn(1, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_a_statistic_over_one_value_is_refused_for_the_newer_norms():
    from normbench.models import build_model

    for name in ("frn", "sn"):  # H*W = 1 at alexnet(width 0.25) conv2 on a 3x2x2 input
        with pytest.raises(ConfigError, match=f"norm={name} at site conv2 would normalize over 1 value"):
            build_model({"name": "alexnet", "width": 0.25}, {"name": name}, (3, 2, 2), 10, batch_size=8)


# --- state --------------------------------------------------------------------------------------

STATEFUL = [{"name": "sn"}, {"name": "bgn", "groups": 2}, {"name": "sabn"}, {"name": "evonorm_b0"},
            {"name": "brn", "r_max": 1.5, "d_max": 0.5, "relax_from": 0, "r_max_at": 0, "d_max_at": 0},
            {"name": "cbn", "burnin": 1}, {"name": "pn", "warmup_iters": 2}]


@pytest.mark.parametrize("spec", STATEFUL, ids=lambda s: s["name"])
def test_running_state_survives_a_checkpoint_and_resume_matches(spec):
    """Train 3 steps, save the state_dict through a file (weights_only), load it into a fresh
    model, train 3 more: the same outputs as 6 steps without the round trip."""
    from normbench.models import build_model

    def fresh():
        torch.manual_seed(0)
        return build_model({"name": "convnet"}, spec, (3, 16, 16), 10, batch_size=4).double()

    batches = [torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
               for s in range(6)]

    def step(net, opt, x):
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    a = fresh()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.01)
    losses_a = [step(a, opt_a, x) for x in batches]
    b = fresh()
    opt_b = torch.optim.SGD(b.parameters(), lr=0.01)
    first = [step(b, opt_b, x) for x in batches[:3]]
    buf = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    c = fresh()
    c.load_state_dict(saved["model"])
    opt_c = torch.optim.SGD(c.parameters(), lr=0.01)
    opt_c.load_state_dict(saved["opt"])
    rest = [step(c, opt_c, x) for x in batches[3:]]
    assert first + rest == pytest.approx(losses_a, rel=1e-12, abs=1e-12)
    a.eval()
    c.eval()
    probe = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose(a(probe), c(probe), rtol=1e-12, atol=1e-12)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "frn", "eps": -1}, "norm.eps=-1 is not valid for norm 'frn'; allowed: a real number > 0"),
    ({"name": "frn", "tlu": "yes"}, "norm.tlu='yes' is not valid for norm 'frn'; allowed: true or false"),
    ({"name": "evonorm_s0", "groups": 0}, "norm.groups=0 is not valid for norm 'evonorm_s0'; allowed: an integer >= 1"),
    ({"name": "evonorm_b0", "momentum": 2}, "norm.momentum=2 is not valid for norm 'evonorm_b0'; allowed: a real number >= 0 and <= 1"),
    ({"name": "sn", "using_bn": 1}, "norm.using_bn=1 is not valid for norm 'sn'; allowed: true or false"),
    ({"name": "bgn", "groups": 3}, "norm.groups=3 is not valid for norm 'bgn'; allowed: a divisor of the 8 channels at this site"),
    ({"name": "bgn"}, "norm.groups=None is not valid for norm 'bgn'; allowed: a divisor of the channels"),
    ({"name": "sabn", "eps": 0}, "norm.eps=0 is not valid for norm 'sabn'; allowed: a real number > 0"),
    ({"name": "brn", "r_max": 0.5}, "norm.r_max=0.5 is not valid for norm 'brn'; allowed: a real number >= 1"),
    ({"name": "brn", "relax_from": -1}, "norm.relax_from=-1 is not valid for norm 'brn'; allowed: an integer >= 0"),
    ({"name": "cbn", "buffer_num": 1.5}, "norm.buffer_num=1.5 is not valid for norm 'cbn'; allowed: an integer >= 0"),
    ({"name": "cbn", "rho": "x"}, "norm.rho='x' is not valid for norm 'cbn'; allowed: a real number >= 0"),
    ({"name": "pn", "group_num": 3}, "norm.group_num=3 is not valid for norm 'pn'; allowed: a divisor of the 8 channels at this site"),
    ({"name": "pn", "alpha_fwd": 1.5}, "norm.alpha_fwd=1.5 is not valid for norm 'pn'; allowed: a real number >= 0 and <= 1"),
    ({"name": "sn", "groups": 2}, "norm.groups=2 is not a parameter of norm 'sn'; allowed: eps, momentum, using_bn"),
], ids=lambda v: v["name"] if isinstance(v, dict) else "")
def test_bad_parameters_fail_in_one_line(spec, message):
    with pytest.raises(ConfigError) as err:
        build_norm(spec, 8)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["sn", "pn", "bgn", "cbn", "frn", "sabn", "brn", "evonorm_b0", "evonorm_s0"])
def test_channels_last_and_bf16_autocast_run(name):
    """The GPU settings, tried on the CPU: the model converts to channels_last (no 5-D state),
    and under bf16 autocast the layers compute their statistics in float32."""
    from normbench.models import build_model

    spec = {"name": name, **({"groups": 4} if name == "bgn" else {})}
    net = build_model({"name": "convnet"}, spec, (3, 32, 32), 10, batch_size=4).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    layer = net.features.conv2_pre_act
    assert layer(torch.randn(4, 32, 16, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
