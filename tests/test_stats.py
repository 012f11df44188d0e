"""The statistics behind verdicts, against independent references: scipy's Welch test, the
audit's Welch-Satterthwaite numbers for the committed example, Holm's textbook example."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from normbench.stats import Contrast, NoSpread, holm


def test_two_group_contrast_is_scipys_welch_test():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.normal(0.5, 0.02, rng.integers(2, 8)), rng.normal(0.52, 0.05, rng.integers(2, 8))
        c = Contrast.diff("a", a, "b", b)
        ref = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
        assert c.p_above() == pytest.approx(ref.pvalue, rel=1e-10)
        assert c.p_below() == pytest.approx(1 - ref.pvalue, rel=1e-9)
        assert c.df == pytest.approx(ref.df, rel=1e-10)
        lo, hi = c.ci()
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_gap_change_of_the_release1_example_uses_welch_satterthwaite():
    # Per-seed last-5 medians of release 1's committed example (results/example at 875dd0e):
    # it printed p = 2.0e-35 for this contrast from a normal distribution; the audit's
    # Welch-Satterthwaite numbers are df 3.76, p ~ 1.7e-4.
    bn128, bn2 = [0.452802, 0.443953, 0.456244], [0.501967, 0.49705, 0.482793]
    gn128, gn2 = [0.188791, 0.177483, 0.199607], [0.469518, 0.444936, 0.419371]
    from normbench.stats import Cell

    gap = Contrast((Cell("bn128", np.array(bn128), 1), Cell("bn2", np.array(bn2), -1),
                    Cell("gn128", np.array(gn128), -1), Cell("gn2", np.array(gn2), 1)))
    assert gap.estimate == pytest.approx(0.2130, abs=5e-4)
    assert gap.df == pytest.approx(3.76, abs=0.01)
    assert gap.p_above() == pytest.approx(1.7e-4, rel=0.1)


def test_no_spread_is_never_significant():
    c = Contrast.diff("a", [0.5, 0.5], "b", [0.501, 0.501])  # two seeds, one test image apart
    with pytest.raises(NoSpread):
        c.p_above()
    with pytest.raises(NoSpread):
        c.ci()
    one_flat = Contrast.diff("a", [0.5, 0.5, 0.5], "b", [0.4, 0.42, 0.44])
    assert one_flat.df == pytest.approx(2.0) and one_flat.p_above() < 0.05  # the other arm's spread counts


def test_fewer_than_two_seeds_is_refused():
    with pytest.raises(ValueError, match="fewer than 2 seeds of a"):
        Contrast.diff("a", [0.5], "b", [0.4, 0.5]).p_above()


def test_tost_is_the_90_percent_interval_inside_the_margin():
    rng = np.random.default_rng(1)
    for _ in range(50):
        a, b = rng.normal(0.6, 0.01, 5), rng.normal(0.6 + rng.normal(0, 0.01), 0.01, 5)
        c = Contrast.diff("a", a, "b", b)
        lo, hi = c.ci(0.90)
        assert (c.p_within(0.01) < 0.05) == (-0.01 < lo and hi < 0.01)
    shifted = Contrast.diff("a", [0.70, 0.71, 0.72, 0.70, 0.71], "b", [0.60, 0.61, 0.62, 0.60, 0.61])
    assert shifted.p_within(0.01) > 0.5 and shifted.p_outside(0.01) < 1e-4


def test_holm_matches_the_textbook():
    # Holm 1979 style example: p = 0.01, 0.04, 0.03, 0.005 at m = 4.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
