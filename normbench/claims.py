"""The published claims (REFERENCES.md §2, §3, §5) as checks over run records.

Each claim compares per-seed numbers of finished runs with a one-sided Welch t-test
(``scipy.stats.ttest_ind(equal_var=False)``) at level ``ALPHA``, and answers:

- ``supported``: every comparison it rests on goes the claimed way, significantly;
- ``refuted``: a comparison goes the other way significantly (and none the claimed way);
- ``inconclusive``: the runs cannot tell, with the reason: a config missing, fewer than
  two seeds, a diverged or failed run among those needed, or differences within noise.

The metric is ``test_acc_last5_median`` (GN paper: median of the final 5 epochs); claims
are checked separately within each (dataset, model, epochs) group of runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
METRIC = "test_acc_last5_median"
GROUP = ["dataset", "model", "epochs"]
SMALL_BATCH = 4
LRN_TAGS = ("lrn", "lrn_within")


@dataclass
class Verdict:
    verdict: str  # supported | refuted | inconclusive
    why: str
    numbers: list[str] = field(default_factory=list)  # the comparisons it rests on, one line each


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    source: str
    paper: str  # the published numbers
    needs: str  # which runs it reads
    check: Callable[[pd.DataFrame], Verdict]


@dataclass
class Comparison:
    """``a`` vs ``b``: per-seed values, mean difference and one-sided p-values."""

    label_a: str
    label_b: str
    a: np.ndarray
    b: np.ndarray

    @property
    def diff(self) -> float:
        return float(self.a.mean() - self.b.mean())

    def p(self, alternative: str) -> float:
        if len(self.a) < 2 or len(self.b) < 2:
            return math.nan
        if self.a.std() == 0 and self.b.std() == 0:  # no spread at all: the sign decides
            return 0.0 if (self.diff > 0 if alternative == "greater" else self.diff < 0) else 1.0
        return float(stats.ttest_ind(self.a, self.b, equal_var=False, alternative=alternative).pvalue)

    @property
    def outcome(self) -> str:
        """``>`` (a significantly above b), ``<`` (below), or ``~`` (within noise)."""
        if self.p("greater") < ALPHA:
            return ">"
        if self.p("less") < ALPHA:
            return "<"
        return "~"

    def line(self, scale: float = 100.0, unit: str = "%") -> str:
        def fmt(x: np.ndarray) -> str:
            sd = f" ± {x.std(ddof=1) * scale:.2f}" if len(x) > 1 else ""
            return f"{x.mean() * scale:.2f}{sd}{unit} (n={len(x)})"

        p = min(self.p("greater"), self.p("less"))
        return (f"{self.label_a} {fmt(self.a)} vs {self.label_b} {fmt(self.b)}: "
                f"difference {self.diff * scale:+.2f}{unit}, p = {p:.3g} ({self.outcome})")


class Missing(Exception):
    """The runs a claim needs are not there (or not usable): the verdict is inconclusive."""


def _values(df: pd.DataFrame, norm_tag: str, batch_size: int | None = None, metric: str = METRIC) -> np.ndarray:
    sel = df[df.norm_tag == norm_tag]
    if batch_size is not None:
        sel = sel[sel.batch_size == batch_size]
    label = f"{norm_tag}" + (f" at batch {batch_size}" if batch_size is not None else "")
    if sel.empty:
        raise Missing(f"no runs of {label}")
    bad = sel[sel.status != "ok"]
    if not bad.empty:
        raise Missing(f"{len(bad)} run(s) of {label} {'/'.join(sorted(set(bad.status)))}: "
                      f"{', '.join(bad.run_key.head(3))}")
    values = sel[metric].astype(float).to_numpy()
    if len(values) < 2:
        raise Missing(f"only {len(values)} seed of {label}: the spread over seeds is unknown (run seed=0,1,2)")
    return values


def _compare(df: pd.DataFrame, a: str, b: str, batch_size: int | None) -> Comparison:
    at = f" at batch {batch_size}" if batch_size is not None else ""
    return Comparison(a + at, b + at, _values(df, a, batch_size), _values(df, b, batch_size))


def _combine(comparisons: Sequence[Comparison], claimed: str = ">") -> Verdict:
    """Supported if every comparison is significant in the claimed direction; refuted if
    none is and at least one is significant against it; inconclusive otherwise."""
    numbers = [c.line() for c in comparisons]
    outcomes = [c.outcome for c in comparisons]
    against = "<" if claimed == ">" else ">"
    if all(o == claimed for o in outcomes):
        return Verdict("supported", f"every comparison goes the claimed way (one-sided Welch t-test, p < {ALPHA})", numbers)
    if claimed not in outcomes and against in outcomes:
        return Verdict("refuted", f"a comparison goes significantly against the claim (p < {ALPHA})", numbers)
    noisy = [f"{c.label_a} vs {c.label_b}" for c, o in zip(comparisons, outcomes) if o == "~"]
    mixed = claimed in outcomes and against in outcomes
    why = "comparisons disagree" if mixed else f"within noise at p < {ALPHA}: {', '.join(noisy)}"
    return Verdict("inconclusive", why + "; more seeds or epochs would tell", numbers)


def _guard(check: Callable[[pd.DataFrame], Verdict]) -> Callable[[pd.DataFrame], Verdict]:
    def run(df: pd.DataFrame) -> Verdict:
        try:
            return check(df)
        except Missing as why:
            return Verdict("inconclusive", str(why))

    return run


# --- the claims ------------------------------------------------------------------------------


@_guard
def gn_beats_bn_small_batch(df: pd.DataFrame) -> Verdict:
    both = sorted(set(df[df.norm_tag == "bn"].batch_size) & set(df[df.norm_tag == "gn"].batch_size))
    small = [b for b in both if b <= SMALL_BATCH]
    if not small:
        raise Missing(f"no batch size <= {SMALL_BATCH} has both bn and gn runs (have: {both or 'none'})")
    return _combine([_compare(df, "gn", "bn", b) for b in small])


@_guard
def bn_degrades_gn_flat(df: pd.DataFrame) -> Verdict:
    """Both halves must hold: BN loses accuracy from the largest to the smallest batch
    (significantly), and loses significantly more than GN does."""
    both = sorted(set(df[df.norm_tag == "bn"].batch_size) & set(df[df.norm_tag == "gn"].batch_size))
    if len(both) < 2 or min(both) > SMALL_BATCH or max(both) < 32:
        raise Missing(f"needs bn and gn at a batch size <= {SMALL_BATCH} and one >= 32 (have: {both or 'none'})")
    lo, hi = min(both), max(both)
    bn_loss = Comparison(f"bn at batch {hi}", f"bn at batch {lo}", _values(df, "bn", hi), _values(df, "bn", lo))
    gn_loss = Comparison(f"gn at batch {hi}", f"gn at batch {lo}", _values(df, "gn", hi), _values(df, "gn", lo))
    diff = bn_loss.diff - gn_loss.diff  # how much more accuracy BN loses than GN going down to `lo`
    se = math.sqrt(sum(c.a.var(ddof=1) / len(c.a) + c.b.var(ddof=1) / len(c.b) for c in (bn_loss, gn_loss)))
    z = diff / se if se > 0 else (math.copysign(math.inf, diff) if diff else 0.0)
    p_more, p_less = float(stats.norm.sf(z)), float(stats.norm.cdf(z))
    numbers = [bn_loss.line(), gn_loss.line(),
               f"BN - GN accuracy gap: {(bn_loss.a.mean() - gn_loss.a.mean()) * 100:+.2f} points at batch {hi}, "
               f"{(bn_loss.b.mean() - gn_loss.b.mean()) * 100:+.2f} at batch {lo} (change {-diff * 100:+.2f} "
               f"± {se * 100:.2f} s.e., one-sided p = {min(p_more, p_less):.3g})"]
    if bn_loss.outcome == ">" and p_more < ALPHA:
        return Verdict("supported", f"BN loses accuracy as the batch shrinks, significantly more than GN (p < {ALPHA})",
                       numbers)
    if bn_loss.outcome == "<":
        return Verdict("refuted", f"BN gains accuracy as the batch shrinks from {hi} to {lo} (p < {ALPHA})", numbers)
    if p_less < ALPHA:
        return Verdict("refuted", f"GN's accuracy moves more than BN's as the batch shrinks (p < {ALPHA})", numbers)
    return Verdict("inconclusive", f"BN's loss, or its excess over GN's, is within noise at p < {ALPHA}", numbers)


@_guard
def table1_order(df: pd.DataFrame) -> Verdict:
    order = ["bn", "gn", "ln", "in"]
    return _combine([_compare(df, a, b, 32) for a, b in zip(order, order[1:])])


@_guard
def lrn_beats_none(df: pd.DataFrame) -> Verdict:
    return _lrn_against(df, "none", lrn_first=True)


@_guard
def bn_beats_lrn(df: pd.DataFrame) -> Verdict:
    return _lrn_against(df, "bn", lrn_first=False)


def _lrn_against(df: pd.DataFrame, other: str, lrn_first: bool) -> Verdict:
    comparisons = []
    for tag in LRN_TAGS:
        shared = sorted(set(df[df.norm_tag == tag].batch_size) & set(df[df.norm_tag == other].batch_size))
        for b in shared:
            comparisons.append(_compare(df, tag, other, b) if lrn_first else _compare(df, other, tag, b))
    if not comparisons:
        raise Missing(f"no batch size has both an LRN run ({' or '.join(LRN_TAGS)}) and a {other} run")
    return _combine(comparisons)


@_guard
def norm_reaches_target_sooner(df: pd.DataFrame) -> Verdict:
    shared = sorted(set(df[df.norm_tag == "bn"].batch_size) & set(df[df.norm_tag == "none"].batch_size))
    if not shared:
        raise Missing("no batch size has both bn and none runs")
    comparisons = []
    for b in shared:
        runs = {}
        for tag in ("none", "bn"):
            _values(df, tag, b)  # same guards: present, finished, >= 2 seeds
            sel = df[(df.norm_tag == tag) & (df.batch_size == b)]
            # A run that never reached the target counts as epochs + 1 (censored, favours it).
            runs[tag] = sel.epochs_to_target.fillna(sel.epochs + 1).astype(float).to_numpy()
        comparisons.append(Comparison(f"none at batch {b}", f"bn at batch {b}", runs["none"], runs["bn"]))
    target = df.target_acc.dropna().unique()
    verdict = _combine(comparisons)
    verdict.numbers = [c.line(scale=1.0, unit=" epochs") for c in comparisons]
    verdict.why += f" (epochs to reach test accuracy {', '.join(f'{t:.0%}' for t in target)})"
    return verdict


CLAIMS: list[Claim] = [
    Claim("gn_beats_bn_small_batch", "GN beats BN at small batch sizes (4 and below)",
          "Wu & He 2018, Table 2; REFERENCES.md §3, §5 claim 2",
          "ResNet-50 ImageNet val error: batch 4 BN 27.3 vs GN 24.2; batch 2 BN 34.7 vs GN 24.1",
          "bn and gn at batch sizes <= 4, >= 2 seeds each", gn_beats_bn_small_batch),
    Claim("bn_degrades_gn_flat", "BN degrades as the batch shrinks while GN stays flat",
          "Wu & He 2018, Table 2 and Fig. 1; REFERENCES.md §5 claims 1-2",
          "error from batch 32 to 2: BN 23.6 -> 34.7 (+11.1), GN 24.1 -> 24.1 (+0.0)",
          "bn and gn at a batch <= 4 and one >= 32", bn_degrades_gn_flat),
    Claim("table1_order", "At batch 32: BN >= GN >= LN >= IN",
          "Wu & He 2018, Table 1; REFERENCES.md §3, §5 claim 4",
          "ResNet-50 ImageNet val error at 32/GPU: BN 23.6, GN 24.1, LN 25.3, IN 28.4",
          "bn, gn, ln, in at batch 32", table1_order),
    Claim("lrn_beats_none", "LRN beats no normalization",
          "Krizhevsky et al. 2012, Sec. 3.3; cuda-convnet layers-18pct vs 19pct; REFERENCES.md §2, §5 claim 5",
          "CIFAR-10 test error: AlexNet-paper CNN 13% -> 11% with LRN; cuda-convnet 19% -> 18%",
          "lrn or lrn_within and none at the same batch size", lrn_beats_none),
    Claim("bn_beats_lrn", "BN beats LRN (LRN can be replaced by BN)",
          "REFERENCES.md §5 claim 6", "no number published: a qualitative claim",
          "bn and lrn or lrn_within at the same batch size", bn_beats_lrn),
    Claim("norm_reaches_target_sooner", "Normalization reaches a target accuracy in fewer epochs than none",
          "Ioffe & Szegedy 2015 (BN: same accuracy with 14x fewer steps); REFERENCES.md §4, §5 claim 7",
          "ImageNet Inception: BN reached the baseline's accuracy in 14x fewer training steps",
          "bn and none at the same batch size", norm_reaches_target_sooner),
]


def evaluate(df: pd.DataFrame) -> pd.DataFrame:
    """Every claim in every (dataset, model, epochs) group: one row each."""
    rows = []
    for group, runs in df.groupby(GROUP, sort=True):
        for claim in CLAIMS:
            v = claim.check(runs)
            rows.append({**dict(zip(GROUP, group)), "claim": claim.key, "statement": claim.statement,
                         "source": claim.source, "paper": claim.paper, "needs": claim.needs,
                         "verdict": v.verdict, "why": v.why, "numbers": v.numbers})
    return pd.DataFrame(rows)
