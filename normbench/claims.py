"""The published claims (docs/claims.md) as checks over the runs of one study.

A study (``normbench.setups``) is a set of setups that differ only in norm and batch size, so
every comparison here is between arms that share everything else. Each claim is a
conjunction of comparisons (``Test``), each a Welch contrast over per-seed values
(``normbench.stats``) of one of three kinds:

- ``greater``: the claimed contrast is above 0 ("GN beats BN");
- ``noninferior``: it is above ``-margin`` ("BN >= GN", which a strict test could never
  support for equal layers);
- ``equivalent``: it lies within ``+-margin`` ("GN stays flat"; TOST).

Each test has a p-value *for* the claim and one *against* it (the claimed direction's
opposite, at the same bound). Holm's correction is applied over the claim's tests on each
side alike. The verdict is

- ``supported``: every test goes the claimed way (Holm-adjusted p < alpha);
- ``not reproduced``: at least one goes significantly against it (Holm-adjusted p < alpha),
  in this setup: a statement about these runs, never about the paper;
- ``inconclusive``: neither, with the reason (runs missing, fewer than 2 seeds, a diverged or
  failed run, no spread, or differences within noise);
- ``out of scope``: a validity gate failed (below), with the measured reason.

Under no effect each of ``supported`` and ``not reproduced`` happens at most ``alpha`` of the
time (tested by simulation in tests/test_calibration.py).

Validity gates, checked before a verdict:

- metric: ``test_acc_last5_median`` is the GN paper's median of the final 5 epochs, so runs
  need at least 5 epochs (with fewer it mixes in the first epochs);
- training length (batch-size claims): the compared batch sizes trained within
  ``steps_ratio`` x as many SGD steps, or a batch-blind baseline (``none``, else ``gn``)
  moves by at most ``swing`` between them: otherwise accuracy differences measure how long
  each batch size trained (a fixed-epoch sweep gives batch 2 64x the steps of batch 128);
- domain (the GN claims, and the batch-independent-norms claim for each of its norms with runs
  at 32): at the reference batch 32, as in the paper, the norm and BN are within ``domain`` of
  each other (the paper: GN 0.5 points below); far apart, the setup is not the one the claim
  speaks of.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from normbench.stats import Cell, Contrast, NoSpread, holm

METRIC = "test_acc_last5_median"
SMALL_BATCH = 4
REFERENCE_BATCH = 32
LRN_TAGS = ("lrn", "lrn_within")
VERDICTS = ("supported", "not reproduced", "inconclusive", "out of scope")


@dataclass(frozen=True)
class Plan:
    """The thresholds a verdict uses (accuracies as fractions: 0.01 = 1 point)."""

    alpha: float = 0.05
    margin: float = 0.01  # equivalence and non-inferiority margin
    min_epochs: int = 5  # metric gate
    steps_ratio: float = 2.0  # training-length gate: steps within this factor ...
    swing: float = 0.02  # ... or the batch-blind baseline moves at most this much
    domain: float = 0.02  # domain gate: |GN - BN| at the reference batch


@dataclass
class Verdict:
    verdict: str  # one of VERDICTS
    why: str
    numbers: list[str] = field(default_factory=list)  # the comparisons it rests on, one line each
    gates: list[str] = field(default_factory=list)  # the validity gates checked, one line each


class Missing(Exception):
    """The runs a claim needs are not there (or not usable): the verdict is inconclusive."""


class OutOfScope(Exception):
    """A validity gate failed: ``gates`` says which and with what numbers."""

    def __init__(self, gates: list[str]) -> None:
        failed = [g.split(":")[0].removeprefix("failed ") for g in gates if g.startswith("failed")]
        super().__init__(f"validity gate{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)} "
                         f"(the measured reasons are listed under the gates)")
        self.gates = gates


def _pts(x: float) -> str:
    return f"{x * 100:+.2f}"


@dataclass
class Test:
    """One comparison of a claim: ``contrast`` is claimed above 0 (``greater``), above
    ``-margin`` (``noninferior``) or within ``+-margin`` (``equivalent``)."""

    label: str
    contrast: Contrast
    kind: str = "greater"
    margin: float = 0.0
    scale: float = 100.0
    unit: str = " points"

    @property
    def claimed(self) -> str:
        m = f"{self.margin * self.scale:g}"
        return {"greater": "> 0", "noninferior": f"> -{m}", "equivalent": f"within ±{m}"}[self.kind]

    def p_for(self) -> float:
        if self.kind == "greater":
            return self.contrast.p_above(0.0)
        if self.kind == "noninferior":
            return self.contrast.p_above(-self.margin)
        return self.contrast.p_within(self.margin)

    def p_against(self) -> float:
        if self.kind == "greater":
            return self.contrast.p_below(0.0)
        if self.kind == "noninferior":
            return self.contrast.p_below(-self.margin)
        return self.contrast.p_outside(self.margin)

    def arms(self) -> str:
        def fmt(cell) -> str:
            sd = f" ± {math.sqrt(cell.var) * self.scale:.2f}" if cell.n > 1 else ""
            return f"{cell.label} {cell.mean * self.scale:.2f}{sd} (n={cell.n})"

        return "; ".join(fmt(c) for c in self.contrast.cells)

    def line(self, p_for: float, adj_for: float, p_against: float, adj_against: float) -> str:
        c = self.contrast
        lo, hi = c.ci(0.95)
        s = self.scale
        return (f"{self.label}: {c.estimate * s:+.2f}{self.unit}, 95% CI [{lo * s:+.2f}, {hi * s:+.2f}], "
                f"Welch t = {c.estimate / c.se:.2f}, df = {c.df:.1f}; claimed {self.claimed}: p = {p_for:.3g} "
                f"(Holm {adj_for:.3g}), against: p = {p_against:.3g} (Holm {adj_against:.3g}). {self.arms()}")


def decide(tests: Sequence[Test], plan: Plan) -> Verdict:
    """``supported`` / ``not reproduced`` / ``inconclusive`` from a claim's tests, Holm over
    them on both sides."""
    try:
        p_for = [t.p_for() for t in tests]
        p_against = [t.p_against() for t in tests]
    except NoSpread:
        flat = [t.label for t in tests if t.contrast.se == 0]
        return Verdict("inconclusive", f"no spread over seeds in {', '.join(flat)}: the noise is unknown, "
                                       "so no difference can be called significant; run more seeds",
                       [f"{t.label}: {t.arms()}" for t in tests])
    adj_for, adj_against = holm(p_for), holm(p_against)
    numbers = [t.line(*ps) for t, ps in zip(tests, zip(p_for, adj_for, p_against, adj_against))]
    if all(p < plan.alpha for p in adj_for):
        return Verdict("supported", f"every comparison goes the claimed way (Holm-adjusted p < {plan.alpha})",
                       numbers)
    against = [t.label for t, p in zip(tests, adj_against) if p < plan.alpha]
    if against:
        return Verdict("not reproduced", f"in this setup, {', '.join(against)} went significantly against the "
                                         f"claim (Holm-adjusted p < {plan.alpha})", numbers)
    noisy = [t.label for t, p in zip(tests, adj_for) if p >= plan.alpha]
    return Verdict("inconclusive", f"within noise at Holm-adjusted p < {plan.alpha}: {', '.join(noisy)}; "
                                   "more seeds (or a larger test set) would tell", numbers)


# --- the runs a claim reads -----------------------------------------------------------------


class Study:
    """One study's runs, with each (norm tag, batch) arm selected once: a claim reads the
    same arms many times, and the calibration simulation checks thousands of studies.

    An arm's batch is the number of images behind its batch statistics: the record's
    ``stat_batch`` (a ghost-batch BN computes them over sub-batches of the SGD batch), else
    the SGD batch. A batch-blind norm (GN, none: ``stat_batch`` null) has no statistics batch;
    asked for one, it stands at the SGD batch that the batch-dependent runs of that statistics
    batch trained with. So in a ghost-batch study (every arm at SGD batch 32, BN's statistics
    over 2, 4, 8 or 32 images) "GN vs BN at batch 2" compares GN at 32 with BN whose statistics
    come from 2 images: only the statistics differ, not the SGD noise or the number of steps.
    """

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        stat = pd.to_numeric(df.stat_batch, errors="coerce") if "stat_batch" in df else pd.Series(math.nan, df.index)
        key = stat.where(stat.notna(), df.batch_size).astype(int)
        self.arms = {(t, int(b)): g for (t, b), g in df.groupby([df.norm_tag, key], sort=False)}
        self.blind = {t for t, g in stat.groupby(df.norm_tag) if g.isna().all()}
        self.sgd = {int(b): set(df.batch_size[g.index]) for b, g in stat.dropna().groupby(stat.dropna())}

    def key(self, tag: str, b: int) -> tuple[str, int] | None:
        """The arm that stands for ``tag`` at statistics batch ``b`` (class docstring)."""
        if (tag, b) in self.arms:
            return (tag, b)
        sgd = self.sgd.get(b, set())
        if tag in self.blind and len(sgd) == 1 and (tag, next(iter(sgd))) in self.arms:
            return (tag, next(iter(sgd)))
        return None

    def batches(self, *tags: str) -> list[int]:
        """Batch sizes at which every one of ``tags`` has runs."""
        candidates = {b for _, b in self.arms} | set(self.sgd)
        return sorted(b for b in candidates if all(self.key(t, b) for t in tags))

    def ghost(self, b: int) -> bool:
        """Whether batch-dependent runs at statistics batch ``b`` took SGD steps of another size."""
        return any(s != b for s in self.sgd.get(b, ()))

    def at(self, b: int) -> str:
        """``batch 2``, or ``statistics batch 2 (SGD batch 32)`` in a ghost-batch study."""
        sgd = self.sgd.get(b, set())
        return f"statistics batch {b} (SGD batch {', '.join(map(str, sorted(sgd)))})" if self.ghost(b) else f"batch {b}"


def _runs(study: Study, tag: str, batch_size: int) -> tuple[pd.DataFrame, str]:
    key = study.key(tag, batch_size)
    label = f"{tag}@{batch_size}" if key == (tag, batch_size) or key is None else f"{tag}@{key[1]}"
    if key is None:
        raise Missing(f"no runs of {tag} at batch {batch_size}")
    sel = study.arms[key]
    if sel.setup_id.nunique() > 1:
        raise Missing(f"{label} has {sel.setup_id.nunique()} different setups in this study "
                      f"({', '.join(sorted(set(sel.row_label)))}): give them distinct norm.tag values")
    bad = sel[sel.status != "ok"]
    if not bad.empty:
        raise Missing(f"{len(bad)} run(s) of {label} {'/'.join(sorted(set(bad.status)))} "
                      f"({', '.join(bad.run_key.head(3))}); a diverged run may itself be evidence (see its record), "
                      "but a t-test cannot score it")
    return sel, label


def _values(study: Study, tag: str, batch_size: int, metric: str = METRIC) -> tuple[np.ndarray, str]:
    sel, label = _runs(study, tag, batch_size)
    values = pd.to_numeric(sel[metric], errors="coerce").dropna().to_numpy(float)
    if len(values) < 2:
        raise Missing(f"only {len(values)} seed of {label}: the spread over seeds is unknown (run 5 seeds)")
    return values, label


def _diff(study: Study, a: tuple[str, int], b: tuple[str, int], metric: str = METRIC) -> Contrast:
    va, la = _values(study, *a, metric=metric)
    vb, lb = _values(study, *b, metric=metric)
    return Contrast.diff(la, va, lb, vb)


def _mean(study: Study, tag: str, b: int) -> float:
    return float(pd.to_numeric(_runs(study, tag, b)[0][METRIC], errors="coerce").mean())


# --- validity gates ---------------------------------------------------------------------------


def gate_metric(study: Study, plan: Plan) -> str:
    epochs = int(study.df.epochs.min())
    if epochs < plan.min_epochs:
        return (f"failed metric: the accuracy is the median of the final 5 epochs (GN paper), which needs at least "
                f"{plan.min_epochs} epochs; these runs have {epochs}, so it mixes in the first epochs")
    return f"passed metric: {epochs} epochs >= {plan.min_epochs}"


def gate_training_length(study: Study, batches: Sequence[int], plan: Plan) -> str:
    steps = {b: float(pd.concat([g for (_, gb), g in study.arms.items() if gb == b]).steps.median())
             for b in batches}
    known = {b: s for b, s in steps.items() if not math.isnan(s) and s > 0}
    if len(known) < len(batches):
        return "failed training length: the records do not say how many SGD steps were taken"
    lo, hi = min(known, key=known.get), max(known, key=known.get)
    ratio = known[hi] / known[lo]
    said = f"batch {lo} took {known[lo]:,.0f} SGD steps, batch {hi} took {known[hi]:,.0f} ({ratio:.1f}x)"
    if len(set(known.values())) == 1:
        said = f"every compared batch ({', '.join(map(str, batches))}) took {known[lo]:,.0f} SGD steps (1.0x)"
    if ratio <= plan.steps_ratio:
        return f"passed training length: {said}, within {plan.steps_ratio:g}x"
    for baseline in ("none", "gn"):
        if set(batches) <= set(study.batches(baseline)):
            try:
                means = {b: _mean(study, baseline, b) for b in batches}
            except Missing:
                continue
            swing = max(means.values()) - min(means.values())
            moved = f"{baseline}, which does not see the batch, moved {swing * 100:.2f} points across batch " \
                    f"{', '.join(map(str, batches))}"
            if swing <= plan.swing:
                return f"passed training length: {said}, but {moved} (<= {plan.swing * 100:g}): converged enough"
            return (f"failed training length: {said}, and {moved} (> {plan.swing * 100:g}): accuracy differences "
                    f"measure training length; train every batch size for the same steps, or long enough to converge")
    return (f"failed training length: {said}, and no none or gn runs at these batch sizes show that training "
            f"length does not matter; train every batch size for the same steps")


def gate_domain(study: Study, plan: Plan, tag: str = "gn") -> str:
    """The claim speaks of a norm that matches BN at the reference batch (GN: 0.5 points below)."""
    gap = _mean(study, tag, REFERENCE_BATCH) - _mean(study, "bn", REFERENCE_BATCH)
    said = f"at batch {REFERENCE_BATCH} {tag.upper()} - BN = {_pts(gap)} points"
    if abs(gap) <= plan.domain:
        return f"passed domain: {said} (within ±{plan.domain * 100:g})"
    paper = "; the paper: -0.5" if tag == "gn" else ""
    return (f"failed domain: {said} (beyond ±{plan.domain * 100:g}{paper}): at the reference batch the two "
            f"norms are not comparable here, so this setup is outside the claim's domain; what passes: a model, data "
            f"and budget on which the two agree at batch {REFERENCE_BATCH} (the published ResNet-20 reproductions: "
            f"GN 0.45 below BN, docs/designs.md)")


def _gated(gates: list[str]) -> None:
    if any(g.startswith("failed") for g in gates):
        raise OutOfScope(gates)


def _small_and_reference(study: Study) -> list[int]:
    both = study.batches("bn", "gn")
    small = [b for b in both if b <= SMALL_BATCH]
    if not small or REFERENCE_BATCH not in both:
        raise Missing(f"needs bn and gn at a batch size <= {SMALL_BATCH} and at the reference batch {REFERENCE_BATCH} "
                      f"(have both at: {', '.join(map(str, both)) or 'none'})")
    return small


def _batch_claim_gates(study: Study, small: list[int], plan: Plan) -> list[str]:
    for b in (*small, REFERENCE_BATCH):  # needed runs present and finished before any gate reads them
        _values(study, "bn", b)
        _values(study, "gn", b)
    gates = [gate_metric(study, plan), gate_training_length(study, [*small, REFERENCE_BATCH], plan), gate_domain(study, plan)]
    _gated(gates)
    return gates


# --- the claims ------------------------------------------------------------------------------


def gn_beats_bn_small_batch(study: Study, plan: Plan) -> Verdict:
    small = _small_and_reference(study)
    gates = _batch_claim_gates(study, small, plan)
    v = decide([Test(f"gn - bn at {study.at(b)}", _diff(study, ("gn", b), ("bn", b))) for b in small], plan)
    v.gates = gates
    return v


def bn_degrades_gn_flat(study: Study, plan: Plan) -> Verdict:
    """BN loses accuracy from batch 32 to each small batch, and GN stays within the margin."""
    small = _small_and_reference(study)
    gates = _batch_claim_gates(study, small, plan)
    ref = REFERENCE_BATCH
    tests, same = [], []
    for b in small:
        tests.append(Test(f"bn@{ref} - bn@{b}", _diff(study, ("bn", ref), ("bn", b))))
        if study.key("gn", b) == study.key("gn", ref):
            same.append(b)  # a ghost-batch study: GN at statistics batch b *is* GN at the SGD batch
            continue
        tests.append(Test(f"gn@{b} - gn@{ref}", _diff(study, ("gn", b), ("gn", ref)), "equivalent", plan.margin))
    v = decide(tests, plan)
    v.gates = gates
    if same:
        v.numbers.append(f"GN is flat by design here: at {', '.join(study.at(b) for b in same)} it is the same runs as "
                         f"at {ref} (GN never sees the batch, and the SGD batch does not change), so only BN's part "
                         f"of the claim is tested")
    lo = min(small)
    if lo in same:
        return v
    cells = [("bn", ref, 1.0), ("bn", lo, -1.0), ("gn", ref, -1.0), ("gn", lo, 1.0)]
    gap = Contrast(tuple(Cell(f"{t}@{b}", _values(study, t, b)[0], w) for t, b, w in cells))
    try:
        lo_ci, hi_ci = gap.ci()
        v.numbers.append(f"context, not part of the verdict: the BN - GN gap grows by {_pts(gap.estimate)} points "
                         f"from batch {ref} to {lo}, 95% CI [{_pts(lo_ci)}, {_pts(hi_ci)}], Welch-Satterthwaite "
                         f"df = {gap.df:.1f}, one-sided p = {gap.p_above():.3g}")
    except NoSpread:
        pass
    return v


def table1_order(study: Study, plan: Plan) -> Verdict:
    gates = [gate_metric(study, plan)]
    order = ["bn", "gn", "ln", "in"]
    contrasts = [_diff(study, (a, REFERENCE_BATCH), (b, REFERENCE_BATCH)) for a, b in zip(order, order[1:])]
    _gated(gates)
    tests = [Test(f"{a} - {b} at batch {REFERENCE_BATCH}", c, "noninferior", plan.margin)
             for (a, b), c in zip(zip(order, order[1:]), contrasts)]
    v = decide(tests, plan)
    v.gates = gates
    return v


def _lrn_against(study: Study, plan: Plan, other: str, lrn_first: bool) -> Verdict:
    contrasts = []
    for tag in LRN_TAGS:
        for b in study.batches(tag, other):
            pair = ((tag, b), (other, b)) if lrn_first else ((other, b), (tag, b))
            contrasts.append((f"{pair[0][0]} - {pair[1][0]} at {study.at(b)}", _diff(study, *pair)))
    if not contrasts:
        raise Missing(f"no batch size has both an LRN run ({' or '.join(LRN_TAGS)}) and a {other} run")
    gates = [gate_metric(study, plan)]
    _gated(gates)
    v = decide([Test(label, c) for label, c in contrasts], plan)
    v.gates = gates
    return v


def lrn_beats_none(study: Study, plan: Plan) -> Verdict:
    return _lrn_against(study, plan, "none", lrn_first=True)


def bn_beats_lrn(study: Study, plan: Plan) -> Verdict:
    return _lrn_against(study, plan, "bn", lrn_first=False)


def _under_budget(df: pd.DataFrame) -> bool:
    """Whether these runs trained to a step or image budget, where a history row (and so
    ``epochs_to_target``) is an evaluation period rather than a pass over the data."""
    budgets = [((c or {}).get("budget") or {}) if isinstance(c, dict) else {} for c in df.get("config", [])]
    return any(b.get("steps") is not None or b.get("images") is not None for b in budgets)


def norm_reaches_target_sooner(study: Study, plan: Plan) -> Verdict:
    shared = study.batches("bn", "none")
    if not shared:
        raise Missing("no batch size has both bn and none runs")
    unit = "evaluation periods" if _under_budget(study.df) else "epochs"
    tests, skipped = [], []
    for b in shared:
        runs, reached = {}, False
        for tag in ("none", "bn"):
            _values(study, tag, b)  # same guards: present, one setup, finished, >= 2 seeds
            sel = study.arms[study.key(tag, b)]  # type: ignore[index]
            reached |= bool(sel.epochs_to_target.notna().any())
            # A run that never reached the target counts as epochs + 1 (censored, in its favour).
            runs[tag] = sel.epochs_to_target.astype(float).fillna(sel.epochs + 1).to_numpy(float)
        if not reached:
            skipped.append(b)  # no run of either arm reached the target: nothing to compare
            continue
        tests.append(Test(f"none - bn {unit} to target at {study.at(b)}",
                          Contrast.diff(f"none@{b}", runs["none"], f"bn@{b}", runs["bn"]), scale=1.0,
                          unit=f" {unit.split()[-1]}"))
    note = f"at batch {', '.join(map(str, skipped))} no run of either arm reached the target" if skipped else ""
    if not tests:
        raise Missing(f"{note}: nothing to compare (a longer budget or a lower target_acc would tell)")
    v = decide(tests, plan)
    if note:
        v.numbers.append(f"{note}, so those batches are left out")
    targets = ", ".join(f"{t:.0%}" for t in pd.to_numeric(study.df.target_acc, errors="coerce").dropna().unique())
    per = "; a period is an equal part of the step budget, ending with a test pass" if unit != "epochs" else ""
    v.why += f" ({unit} to reach test accuracy {targets or 'unknown'}{per})"
    return v


BATCH_FREE = ("gn", "frn", "evonorm_s0")


def batch_free_beat_bn_small_batch(study: Study, plan: Plan) -> Verdict:
    """Each batch-independent norm present beats BN at each batch size <= 4 (same batch: the
    same SGD steps, so no training-length gate). Where a norm also has runs at the reference
    batch, the domain gate holds it to BN's accuracy there, as for GN."""
    tests = [Test(f"{tag} - bn at {study.at(b)}", _diff(study, (tag, b), ("bn", b)))
             for b in study.batches("bn") if b <= SMALL_BATCH for tag in BATCH_FREE if study.key(tag, b)]
    if not tests:
        raise Missing(f"needs bn and at least one of {', '.join(BATCH_FREE)} at a batch size <= {SMALL_BATCH}")
    gates = [gate_metric(study, plan)]
    if study.key("bn", REFERENCE_BATCH):
        gates += [gate_domain(study, plan, tag) for tag in BATCH_FREE
                  if study.key(tag, REFERENCE_BATCH) and any(t.label.startswith(f"{tag} ") for t in tests)]
    _gated(gates)
    v = decide(tests, plan)
    v.gates = gates
    return v


def brn_closes_bn_gap(study: Study, plan: Plan) -> Verdict:
    """At each batch <= 4: BN loses accuracy against batch 32, and BRN recovers more than half
    of it: brn@b - bn@b > (bn@32 - bn@b) / 2, i.e. brn@b - bn@b / 2 - bn@32 / 2 > 0."""
    small = [b for b in study.batches("bn", "brn") if b <= SMALL_BATCH]
    if not small or REFERENCE_BATCH not in study.batches("bn"):
        raise Missing(f"needs bn and brn at a batch size <= {SMALL_BATCH} and bn at {REFERENCE_BATCH}")
    ref = REFERENCE_BATCH
    tests = []
    for b in small:
        tests.append(Test(f"bn@{ref} - bn@{b}", _diff(study, ("bn", ref), ("bn", b))))
        cells = (Cell(f"brn@{b}", _values(study, "brn", b)[0], 1.0), Cell(f"bn@{b}", _values(study, "bn", b)[0], -0.5),
                 Cell(f"bn@{ref}", _values(study, "bn", ref)[0], -0.5))
        tests.append(Test(f"brn@{b} - (bn@{b} + bn@{ref}) / 2", Contrast(cells)))
    gates = [gate_metric(study, plan), gate_training_length(study, [*small, ref], plan)]
    _gated(gates)
    v = decide(tests, plan)
    v.gates = gates
    return v


@dataclass(frozen=True)
class Claim:
    key: str
    statement: str
    source: str
    paper: str  # the published numbers
    needs: str  # which runs it reads
    check: Callable[[Study, Plan], Verdict]


CLAIMS: list[Claim] = [
    Claim("gn_beats_bn_small_batch", "GN beats BN at small batch sizes (4 and below)",
          "Wu & He 2018, Table 2 (docs/claims.md)",
          "ResNet-50 ImageNet val error: batch 4 BN 27.3 vs GN 24.2; batch 2 BN 34.7 vs GN 24.1",
          "bn and gn at batch sizes <= 4 and at 32, >= 2 seeds each (5 recommended)", gn_beats_bn_small_batch),
    Claim("bn_degrades_gn_flat", "BN degrades as the batch shrinks while GN stays flat",
          "Wu & He 2018, Table 2 and Fig. 1 (docs/claims.md)",
          "error from batch 32 to 2: BN 23.6 -> 34.7 (+11.1), GN 24.1 -> 24.1 (+0.0)",
          "bn and gn at a batch <= 4 and at 32", bn_degrades_gn_flat),
    Claim("batch_free_beat_bn_small_batch",
          "Batch-independent norms (GN, FRN + TLU, EvoNorm-S0) beat BN at batch sizes of 4 and below",
          "Wu & He 2018, Table 2; Singh & Krishnan 2020; Liu et al. 2020 (docs/claims.md)",
          "ResNet-50 ImageNet val error at batch 2: BN 34.7 vs GN 24.1; FRN + TLU: over 1 point better than GN at "
          "small batch (abstract); EvoNorm-S0: Fig. 1 (values not read)",
          "bn and any of gn, frn, evonorm_s0 at a batch size <= 4", batch_free_beat_bn_small_batch),
    Claim("brn_closes_bn_gap", "BRN closes most of BN's small-batch gap (recovers over half of BN's loss from 32)",
          "Ioffe 2017; the GN paper's BR run (docs/claims.md)",
          "ResNet-50 ImageNet val error at 4 images/GPU: BR 26.3 vs BN 27.3 (BN at 32: 23.6), i.e. 1.0 of 3.7 "
          "points recovered there; the BRN paper's own microbatch numbers are not verified",
          "bn and brn at a batch size <= 4, bn at 32", brn_closes_bn_gap),
    Claim("table1_order", "At batch 32: BN >= GN >= LN >= IN",
          "Wu & He 2018, Table 1 (docs/claims.md)",
          "ResNet-50 ImageNet val error at 32/GPU: BN 23.6, GN 24.1, LN 25.3, IN 28.4",
          "bn, gn, ln, in at batch 32", table1_order),
    Claim("lrn_beats_none", "LRN beats no normalization",
          "Krizhevsky et al. 2012, Sec. 3.3; cuda-convnet layers-18pct vs 19pct (docs/claims.md)",
          "CIFAR-10 test error: AlexNet-paper CNN 13% -> 11% with LRN; cuda-convnet 19% -> 18%",
          "lrn or lrn_within and none at the same batch size", lrn_beats_none),
    Claim("bn_beats_lrn", "BN beats LRN (LRN can be replaced by BN)",
          "the project's source documents (docs/claims.md)", "no number published: a qualitative claim",
          "bn and lrn or lrn_within at the same batch size", bn_beats_lrn),
    Claim("norm_reaches_target_sooner", "Normalization reaches a target accuracy in fewer epochs than none",
          "Ioffe & Szegedy 2015 (docs/claims.md)",
          "ImageNet Inception: BN reached the baseline's accuracy in 14x fewer training steps",
          "bn and none at the same batch size", norm_reaches_target_sooner),
]


#: The columns the claims read: selecting rows of only these keeps a check fast (a record
#: has ~60 columns, the history among them), which the calibration simulation relies on.
COLUMNS = ["norm_tag", "batch_size", "stat_batch", "status", "setup_id", "row_label", "run_key", METRIC, "steps", "epochs",
           "target_acc", "epochs_to_target", "config"]


def check(claim: Claim, runs: pd.DataFrame, plan: Plan) -> Verdict:
    """One claim over one study's runs (``normbench.setups.annotate`` columns needed)."""
    try:
        return claim.check(Study(runs.reindex(columns=COLUMNS)), plan)
    except Missing as why:
        return Verdict("inconclusive", str(why))
    except OutOfScope as gate:
        return Verdict("out of scope", str(gate), gates=gate.gates)


def evaluate(df: pd.DataFrame, plan: Plan | None = None) -> pd.DataFrame:
    """Every claim in every study (``normbench.setups.annotate`` columns needed): one row each."""
    plan = plan or Plan()
    rows = []
    for (study_id, label), runs in df.groupby(["study_id", "study_label"], sort=True):
        for claim in CLAIMS:
            v = check(claim, runs, plan)
            rows.append({"study_id": study_id, "study": label, "claim": claim.key, "statement": claim.statement,
                         "source": claim.source, "paper": claim.paper, "needs": claim.needs,
                         "verdict": v.verdict, "why": v.why, "numbers": v.numbers, "gates": v.gates})
    return pd.DataFrame(rows)
