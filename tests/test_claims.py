"""Every claim on constructed supported / not reproduced / inconclusive / out-of-scope cases,
the validity gates with their measured reasons, and the calibration of the verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from records_factory import record, seeds

from normbench import claims, setups
from normbench.derived import derive_record
from normbench.records import FIELDS

PLAN = claims.Plan()


def frame(recs: list[dict]) -> pd.DataFrame:
    rows = [{**{f: r.get(f) for f in FIELDS}, **derive_record(r), "run_dir": r["run_key"]} for r in recs]
    return setups.annotate(pd.DataFrame(rows))[0]


def verdict(claim_fn, recs: list[dict]) -> claims.Verdict:
    claim = next(c for c in claims.CLAIMS if c.check is claim_fn)
    return claims.check(claim, frame(recs), PLAN)


def reference(bn=(0.70, 0.71, 0.72), gn=(0.70, 0.705, 0.71), **kw) -> list[dict]:
    return seeds("bn", 32, list(bn), **kw) + seeds("gn", 32, list(gn), **kw)


def test_gn_beats_bn_small_batch_four_ways():
    supported = seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.68, 0.69, 0.70]) + reference()
    v = verdict(claims.gn_beats_bn_small_batch, supported)
    assert v.verdict == "supported", v
    assert v.numbers[0].startswith("gn - bn at batch 2: +17.00 points, 95% CI [")
    assert "df = " in v.numbers[0] and "(Holm " in v.numbers[0] and "gn@2 69.00 ± 1.00 (n=3)" in v.numbers[0]
    assert "passed training length: every compared batch (2, 32) took 500 SGD steps (1.0x), within 2x" in v.gates
    against = seeds("bn", 4, [0.70, 0.71, 0.72]) + seeds("gn", 4, [0.60, 0.61, 0.62]) + reference()
    v = verdict(claims.gn_beats_bn_small_batch, against)
    assert v.verdict == "not reproduced" and v.why.startswith("in this setup, gn - bn at batch 4 went significantly")
    noisy = seeds("bn", 2, [0.50, 0.60, 0.55]) + seeds("gn", 2, [0.52, 0.58, 0.57]) + reference()
    v = verdict(claims.gn_beats_bn_small_batch, noisy)
    assert v.verdict == "inconclusive" and "within noise" in v.why
    one_seed = seeds("bn", 2, [0.5]) + seeds("gn", 2, [0.6]) + reference()
    v = verdict(claims.gn_beats_bn_small_batch, one_seed)
    assert v.verdict == "inconclusive" and "only 1 seed of" in v.why
    no_reference = seeds("bn", 2, [0.5, 0.6]) + seeds("gn", 2, [0.6, 0.7])
    v = verdict(claims.gn_beats_bn_small_batch, no_reference)
    assert v.verdict == "inconclusive" and "at the reference batch 32" in v.why
    diverged = (seeds("bn", 2, [0.5, 0.52]) + [record("bn", 2, 2, None, status="diverged")]
                + seeds("gn", 2, [0.6, 0.61]) + reference())
    v = verdict(claims.gn_beats_bn_small_batch, diverged)
    assert v.verdict == "inconclusive" and "1 run(s) of bn@2 diverged" in v.why


def test_zero_spread_is_inconclusive_not_significant():
    # Two seeds per arm, every one the same accuracy, one test image apart between arms.
    recs = seeds("bn", 2, [0.500, 0.500]) + seeds("gn", 2, [0.501, 0.501]) + reference()
    v = verdict(claims.gn_beats_bn_small_batch, recs)
    assert v.verdict == "inconclusive" and v.why.startswith("no spread over seeds in gn - bn at batch 2")


def test_fixed_epoch_sweep_is_out_of_scope_with_the_measured_reason():
    # As release 1's example: the same images per epoch at every batch size, so batch 2 takes
    # 16x the steps of batch 32, and GN (batch-blind) moves with it.
    fixed = dict(images_per_epoch=5000)
    recs = (seeds("bn", 2, [0.49, 0.50, 0.51], **fixed) + seeds("gn", 2, [0.44, 0.45, 0.46], **fixed)
            + seeds("bn", 32, [0.48, 0.49, 0.50], **fixed) + seeds("gn", 32, [0.40, 0.41, 0.42], **fixed))
    for claim_fn in (claims.gn_beats_bn_small_batch, claims.bn_degrades_gn_flat):
        v = verdict(claim_fn, recs)
        assert v.verdict == "out of scope" and "training length" in v.why
        assert v.gates[1].startswith("failed training length: batch 32 took 781 SGD steps, batch 2 took 12,500 "
                                     "(16.0x), and gn, which does not see the batch, moved 4.00 points across batch 2, 32")
    # The same design where the batch-blind baseline stays put is converged enough to judge.
    flat_none = recs + seeds("none", 2, [0.30, 0.31, 0.32], **fixed) + seeds("none", 32, [0.30, 0.31, 0.32], **fixed)
    v = verdict(claims.gn_beats_bn_small_batch, flat_none)
    assert any("but none, which does not see the batch, moved 0.00 points" in g for g in v.gates)


def test_metric_and_domain_gates():
    short = (seeds("bn", 2, [0.50, 0.52, 0.54], epochs=4) + seeds("gn", 2, [0.68, 0.69, 0.70], epochs=4)
             + reference(epochs=4))
    v = verdict(claims.gn_beats_bn_small_batch, short)
    assert v.verdict == "out of scope" and v.why.startswith("validity gate failed: metric")
    assert any("these runs have 4" in g for g in v.gates)
    far = seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.68, 0.69, 0.70]) + reference(gn=(0.60, 0.61, 0.62))
    v = verdict(claims.gn_beats_bn_small_batch, far)
    assert v.verdict == "out of scope" and v.why.startswith("validity gate failed: domain")
    assert "failed domain: at batch 32 GN - BN = -10.00 points" in v.gates[-1]


def test_bn_degrades_gn_flat_needs_gn_to_stay_flat():
    base = seeds("bn", 2, [0.50, 0.51, 0.52]) + reference(bn=(0.70, 0.71, 0.72), gn=(0.700, 0.705, 0.710))
    flat = base + seeds("gn", 2, [0.700, 0.703, 0.706])
    v = verdict(claims.bn_degrades_gn_flat, flat)
    assert v.verdict == "supported", v
    assert v.numbers[1].startswith("gn@2 - gn@32: -0.20 points") and "claimed within ±1" in v.numbers[1]
    assert v.numbers[-1].startswith("context, not part of the verdict: the BN - GN gap grows by")
    moves = base + seeds("gn", 2, [0.60, 0.605, 0.61])  # GN moves 10 points: not flat
    v = verdict(claims.bn_degrades_gn_flat, moves)
    assert v.verdict == "not reproduced" and "gn@2 - gn@32" in v.why
    bn_gains = seeds("bn", 2, [0.80, 0.81, 0.82]) + reference() + seeds("gn", 2, [0.700, 0.703, 0.706])
    v = verdict(claims.bn_degrades_gn_flat, bn_gains)
    assert v.verdict == "not reproduced" and "bn@32 - bn@2" in v.why


def test_table1_order_is_non_inferiority():
    same = [0.700, 0.702, 0.704, 0.701, 0.703]
    equal = seeds("bn", 32, same) + seeds("gn", 32, same) + seeds("ln", 32, same) + seeds("in", 32, same)
    v = verdict(claims.table1_order, equal)
    assert v.verdict == "supported", v  # equal layers satisfy ">=" (a strict test never could)
    assert "claimed > -1" in v.numbers[0]
    swapped = (seeds("bn", 32, same) + seeds("gn", 32, [x - 0.05 for x in same]) + seeds("ln", 32, same)
               + seeds("in", 32, same))
    v = verdict(claims.table1_order, swapped)
    assert v.verdict == "not reproduced" and "gn - ln at batch 32" in v.why
    v = verdict(claims.table1_order, equal[:15])
    assert v.verdict == "inconclusive" and "no runs of in at batch 32" in v.why


def test_lrn_claims():
    recs = (seeds("none", 100, [0.60, 0.61, 0.62]) + seeds("lrn", 100, [0.64, 0.65, 0.66], norm="lrn")
            + seeds("lrn_within", 100, [0.63, 0.64, 0.65], norm="lrn") + seeds("bn", 100, [0.70, 0.71, 0.72]))
    assert verdict(claims.lrn_beats_none, recs).verdict == "supported"
    assert verdict(claims.bn_beats_lrn, recs).verdict == "supported"
    worse = seeds("none", 100, [0.70, 0.71, 0.72]) + seeds("lrn_within", 100, [0.60, 0.61, 0.62], norm="lrn")
    assert verdict(claims.lrn_beats_none, worse).verdict == "not reproduced"
    assert "no batch size has both an LRN run" in verdict(claims.bn_beats_lrn, worse).why


def test_target_epochs_claim():
    recs = (seeds("none", 32, [0.5, 0.5, 0.5], to_target=None)
            + [record("bn", 32, s, 0.7, to_target=t) for s, t in enumerate((1, 2, 1))])
    v = verdict(claims.norm_reaches_target_sooner, recs)
    assert v.verdict == "supported", v
    assert "none@32 6.00 ± 0.00 (n=3)" in v.numbers[0]  # never reached: epochs + 1
    slower = (seeds("none", 32, [0.7] * 3, to_target=1)
              + [record("bn", 32, s, 0.7, to_target=t) for s, t in enumerate((4, 3, 4))])
    assert verdict(claims.norm_reaches_target_sooner, slower).verdict == "not reproduced"


def test_a_tag_with_two_setups_is_not_pooled_in_a_claim():
    recs = (seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.68, 0.69, 0.70])
            + seeds("gn", 2, [0.60, 0.61, 0.62], norm_extra={"groups": 16}) + reference())
    v = verdict(claims.gn_beats_bn_small_batch, recs)
    assert v.verdict == "inconclusive" and "gn@2 has 2 different setups in this study" in v.why
    assert "give them distinct norm.tag values" in v.why


def test_studies_are_judged_apart():
    one = seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.68, 0.69, 0.70]) + reference()
    other = (seeds("bn", 2, [0.70, 0.72, 0.74], base_lr=0.1) + seeds("gn", 2, [0.60, 0.61, 0.62], base_lr=0.1)
             + reference(base_lr=0.1))
    result = claims.evaluate(frame(one + other), PLAN)
    gn = result[result.claim == "gn_beats_bn_small_batch"].set_index("study").verdict
    assert sorted(gn) == ["not reproduced", "supported"]
    assert any("optim.base_lr=0.1" in s for s in gn.index)


# --- calibration -------------------------------------------------------------------------------


def _simulate(claim_fn, template: pd.DataFrame, means: dict[tuple[str, int], float], sd: float, sims: int,
              seed: int) -> dict[str, float]:
    """Verdict rates over ``sims`` sweeps: each run's last-5 accuracy redrawn as
    N(mean of its arm, sd) in the template (real records of the sweep's shape)."""
    claim = next(c for c in claims.CLAIMS if c.check is claim_fn)
    rng = np.random.default_rng(seed)
    arm = list(zip(template.norm_tag, template.batch_size))
    mu = np.array([means[a] for a in arm])
    counts = dict.fromkeys(claims.VERDICTS, 0)
    df = template.copy()
    for _ in range(sims):
        df[claims.METRIC] = mu + rng.normal(0, sd, len(mu))
        counts[claims.check(claim, df, PLAN).verdict] += 1
    return {k: v / sims for k, v in counts.items()}


@pytest.fixture(scope="module")
def sweep() -> pd.DataFrame:
    """bn and gn at batch 2, 4 and 32, 5 seeds each, equal steps: the records' format."""
    return frame([r for tag in ("bn", "gn") for b in (2, 4, 32) for r in seeds(tag, b, [0.7] * 5)])


# At most 5% (the level), with room for the simulation's own binomial noise (2 s.e.).
SIMS = 1000
LIMIT = 0.05 + 2 * np.sqrt(0.05 * 0.95 / SIMS)


@pytest.mark.parametrize("claim_fn", [claims.gn_beats_bn_small_batch, claims.bn_degrades_gn_flat])
def test_verdicts_are_calibrated_under_no_effect(sweep, claim_fn):
    null = {(t, b): 0.70 for t in ("bn", "gn") for b in (2, 4, 32)}
    rates = _simulate(claim_fn, sweep, null, sd=0.005, sims=SIMS, seed=1)
    assert rates["supported"] <= LIMIT and rates["not reproduced"] <= LIMIT, rates
    assert rates["out of scope"] == 0  # equal steps, GN and BN equal at 32: every gate passes


def test_a_three_sigma_effect_with_five_seeds_is_found(sweep):
    sd = 0.005
    effect = {("bn", 2): 0.70 - 3 * sd, ("bn", 4): 0.70 - 3 * sd, ("bn", 32): 0.70,
              ("gn", 2): 0.70, ("gn", 4): 0.70, ("gn", 32): 0.70}
    rates = _simulate(claims.gn_beats_bn_small_batch, sweep, effect, sd=sd, sims=300, seed=2)
    assert rates["supported"] >= 0.8 and rates["not reproduced"] == 0, rates
    against = {k: (0.70 + 3 * sd if k[0] == "bn" and k[1] < 32 else v) for k, v in effect.items()}
    rates = _simulate(claims.gn_beats_bn_small_batch, sweep, against, sd=sd, sims=300, seed=3)
    assert rates["not reproduced"] >= 0.8 and rates["supported"] == 0, rates


def test_batch_free_norms_beat_bn_small_batch():
    recs = (seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.60, 0.61, 0.62])
            + seeds("frn", 2, [0.62, 0.63, 0.64]) + seeds("evonorm_s0", 2, [0.58, 0.59, 0.60]))
    v = verdict(claims.batch_free_beat_bn_small_batch, recs)
    assert v.verdict == "supported" and [n.split(":")[0] for n in v.numbers] == \
        ["gn - bn at batch 2", "frn - bn at batch 2", "evonorm_s0 - bn at batch 2"]
    worse = seeds("bn", 2, [0.70, 0.71, 0.72]) + seeds("frn", 2, [0.60, 0.61, 0.62])
    v = verdict(claims.batch_free_beat_bn_small_batch, worse)
    assert v.verdict == "not reproduced" and "frn - bn at batch 2" in v.why
    assert verdict(claims.batch_free_beat_bn_small_batch, seeds("bn", 32, [0.7, 0.71])).verdict == "inconclusive"


def test_brn_closes_most_of_bns_gap():
    base = seeds("bn", 2, [0.50, 0.51, 0.52]) + seeds("bn", 32, [0.70, 0.71, 0.72])
    v = verdict(claims.brn_closes_bn_gap, base + seeds("brn", 2, [0.68, 0.69, 0.70]))
    assert v.verdict == "supported", v
    assert v.numbers[1].startswith("brn@2 - (bn@2 + bn@32) / 2: +8.00 points")
    v = verdict(claims.brn_closes_bn_gap, base + seeds("brn", 2, [0.52, 0.53, 0.54]))  # 2 of 20 points back
    assert v.verdict == "not reproduced" and "brn@2 - (bn@2 + bn@32) / 2" in v.why
    no_gap = seeds("bn", 2, [0.70, 0.71, 0.72]) + seeds("bn", 32, [0.70, 0.71, 0.72]) + seeds("brn", 2, [0.75, 0.76, 0.77])
    assert verdict(claims.brn_closes_bn_gap, no_gap).verdict != "supported"  # no gap: nothing to close


def ghost_study(bn_small=(0.50, 0.52, 0.54), gn=(0.70, 0.705, 0.71)) -> list[dict]:
    """SGD batch 32 everywhere; BN's statistics over 2 or 32 images; GN and none batch-blind."""
    return (seeds("bn", 32, list(bn_small), stat_batch=2) + seeds("bn", 32, [0.70, 0.71, 0.72], stat_batch=32)
            + seeds("gn", 32, list(gn)) + seeds("none", 32, [0.60, 0.61, 0.62]))


def test_ghost_batch_study_compares_statistics_batches_at_one_sgd_batch():
    recs = ghost_study()
    df = frame(recs)
    assert sorted(set(df.row_label)) == ["bn", "bn · norm.stat_batch=2", "gn", "none"]
    assert df.study_id.nunique() == 1  # one study: the statistics batch is a norm key
    v = verdict(claims.gn_beats_bn_small_batch, recs)
    assert v.verdict == "supported", v
    assert v.numbers[0].startswith("gn - bn at statistics batch 2 (SGD batch 32): +18.50 points")
    assert "gn@32 70.50" in v.numbers[0] and "bn@2 52.00" in v.numbers[0]
    assert "passed training length: every compared batch (2, 32) took 500 SGD steps (1.0x), within 2x" in v.gates
    v = verdict(claims.bn_degrades_gn_flat, recs)
    assert v.verdict == "supported", v
    assert [n.split(":")[0] for n in v.numbers[:1]] == ["bn@32 - bn@2"]
    assert any(n.startswith("GN is flat by design here") for n in v.numbers)
    assert not any("gn@2 - gn@32" in n for n in v.numbers)
    # BN at statistics batch 2 no worse than GN: not reproduced, in this setup
    v = verdict(claims.gn_beats_bn_small_batch, ghost_study(bn_small=(0.74, 0.75, 0.76)))
    assert v.verdict == "not reproduced" and "statistics batch 2" in v.why


def test_a_batch_blind_norm_stands_in_only_where_the_sgd_batch_is_unique():
    # BN at statistics batch 2 both as a ghost (SGD 32) and truly (SGD 2): two setups at one arm.
    recs = ghost_study() + seeds("bn", 2, [0.40, 0.41, 0.42], stat_batch=2) + seeds("gn", 2, [0.69, 0.7, 0.71])
    v = verdict(claims.gn_beats_bn_small_batch, recs)
    assert v.verdict == "inconclusive" and "bn@2 has 2 different setups" in v.why


def test_batch_free_claim_is_held_to_bn_at_the_reference_batch_where_it_has_runs_there():
    far = seeds("bn", 2, [0.70, 0.71, 0.72]) + seeds("gn", 2, [0.60, 0.61, 0.62]) + reference(gn=(0.60, 0.61, 0.62))
    v = verdict(claims.batch_free_beat_bn_small_batch, far)
    assert v.verdict == "out of scope"
    assert "failed domain: at batch 32 GN - BN = -10.00 points (beyond ±2; the paper: -0.5)" in v.gates[-1]
    near = seeds("bn", 2, [0.50, 0.52, 0.54]) + seeds("gn", 2, [0.60, 0.61, 0.62]) + reference()
    v = verdict(claims.batch_free_beat_bn_small_batch, near)
    assert v.verdict == "supported" and v.gates[-1].startswith("passed domain: at batch 32 GN - BN = -0.50")


def test_batches_where_no_run_reaches_the_target_are_left_out_not_called_noise():
    small = seeds("bn", 2, [0.50, 0.51], to_target=None) + seeds("none", 2, [0.40, 0.41], to_target=None)
    big = ([record("bn", 32, s, 0.70, to_target=t) for s, t in enumerate([2, 3, 2])]
           + [record("none", 32, s, 0.65, to_target=t) for s, t in enumerate([5, 4, 5])])
    v = verdict(claims.norm_reaches_target_sooner, small + big)
    assert v.verdict == "supported" and [n.split(":")[0] for n in v.numbers[:1]] == ["none - bn epochs to target at batch 32"]
    assert v.numbers[-1] == "at batch 2 no run of either arm reached the target, so those batches are left out"
    v = verdict(claims.norm_reaches_target_sooner, small)
    assert v.verdict == "inconclusive" and v.why.startswith("at batch 2 no run of either arm reached the target")


def test_under_a_step_budget_time_to_target_is_counted_in_evaluation_periods():
    recs = ([record("bn", 32, s, 0.70, to_target=t) for s, t in enumerate([2, 3, 2])]
            + [record("none", 32, s, 0.65, to_target=t) for s, t in enumerate([5, 4, 5])])
    for rec in recs:
        rec["config"]["budget"] = {"steps": 3000, "images": None}
    v = verdict(claims.norm_reaches_target_sooner, recs)
    assert v.numbers[0].startswith("none - bn evaluation periods to target at batch 32: +2.33 periods")
    assert v.why.endswith("(evaluation periods to reach test accuracy 60%; a period is an equal part of the step "
                          "budget, ending with a test pass)")
