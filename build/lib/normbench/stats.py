"""The statistics behind a verdict: Welch contrasts, their confidence intervals, one-sided,
non-inferiority and equivalence (TOST) p-values, and Holm's correction. Torch-free.

Every comparison is a *contrast* ``c = sum_i w_i * mean_i`` over independent groups of
per-seed values (``a - b`` has weights +1, -1; a change of a gap has four cells). Its
standard error is ``sqrt(sum_i w_i^2 s_i^2 / n_i)`` and its degrees of freedom are
Welch-Satterthwaite's::

    df = (sum_i w_i^2 s_i^2 / n_i)^2 / sum_i (w_i^2 s_i^2 / n_i)^2 / (n_i - 1)

(Welch 1947; Satterthwaite 1946), so p-values and intervals come from a t distribution
with ``df``: at 3-5 seeds a normal approximation would claim far more certainty than the
data hold. For two groups this is ``scipy.stats.ttest_ind(equal_var=False)`` (tested).

Written here rather than taken from statsmodels (``ttost_ind``, ``multipletests``), the
one library that has these: it would be a large dependency for a few lines, and it has no
Welch contrast over more than two groups. docs/statistics.md explains the choices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Cell:
    """One group of per-seed values with its weight in a contrast."""

    label: str
    values: np.ndarray
    weight: float = 1.0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def var(self) -> float:
        return float(np.var(self.values, ddof=1)) if self.n > 1 else math.nan


class NoSpread(Exception):
    """Every group has zero spread over seeds: the noise is unknown, so nothing is significant.
    (A shortcut to p = 0 would call two seeds one test image apart a significant effect.)"""


@dataclass(frozen=True)
class Contrast:
    """``sum_i w_i * mean_i`` over ``cells`` with its Welch-Satterthwaite t distribution."""

    cells: tuple[Cell, ...]

    @classmethod
    def diff(cls, label_a: str, a: Sequence[float], label_b: str, b: Sequence[float]) -> Contrast:
        """``mean(a) - mean(b)``."""
        return cls((Cell(label_a, np.asarray(a, float), 1.0), Cell(label_b, np.asarray(b, float), -1.0)))

    @property
    def estimate(self) -> float:
        return float(sum(c.weight * c.mean for c in self.cells))

    @property
    def se(self) -> float:
        return math.sqrt(sum(c.weight ** 2 * c.var / c.n for c in self.cells))

    @property
    def df(self) -> float:
        parts = [c.weight ** 2 * c.var / c.n for c in self.cells]
        den = sum(p ** 2 / (c.n - 1) for p, c in zip(parts, self.cells) if p > 0)
        if den == 0:
            raise NoSpread()
        return sum(parts) ** 2 / den

    def _check(self) -> None:
        short = [c.label for c in self.cells if c.n < 2]
        if short:
            raise ValueError(f"fewer than 2 seeds of {', '.join(short)}")
        if self.se == 0:
            raise NoSpread()

    def p_above(self, bound: float = 0.0) -> float:
        """One-sided p for "the contrast is above ``bound``" (H0: contrast <= bound)."""
        self._check()
        return float(stats.t.sf((self.estimate - bound) / self.se, self.df))

    def p_below(self, bound: float = 0.0) -> float:
        """One-sided p for "the contrast is below ``bound``" (H0: contrast >= bound)."""
        self._check()
        return float(stats.t.cdf((self.estimate - bound) / self.se, self.df))

    def p_within(self, margin: float) -> float:
        """TOST p for "|contrast| < margin" (Schuirmann 1987): the larger of the two one-sided
        p-values; below alpha exactly when the (1 - 2 alpha) interval lies inside +-margin."""
        return max(self.p_above(-margin), self.p_below(margin))

    def p_outside(self, margin: float) -> float:
        """p for "|contrast| > margin": the smaller of the one-sided p-values for "above
        +margin" and "below -margin" (at most one of them can be small for a given truth)."""
        return min(self.p_above(margin), self.p_below(-margin))

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Two-sided confidence interval for the contrast."""
        self._check()
        half = float(stats.t.ppf(0.5 + level / 2, self.df)) * self.se
        return self.estimate - half, self.estimate + half


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the family-wise error rate of rejecting
    every adjusted p < alpha is at most alpha, whatever the dependence between the tests."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
