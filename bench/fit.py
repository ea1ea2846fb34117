"""Least-squares fits with Student-t confidence intervals.

- :func:`fit_power_law`: ``y = c * x**p`` by least squares on logs;
- :func:`fit_nonnegative`: ``y = X c`` with ``c >= 0``, by least squares on the relative error
  ``(X c - y) / y`` (the cost model's fit, :mod:`bench.cost_model`).

Only numpy and the standard library: the t distribution is computed here (``t_cdf``,
``t_quantile``) rather than taken from scipy, which is not a dependency of this project.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "LinearFit",
    "PowerLawFit",
    "fit_nonnegative",
    "fit_power_law",
    "t_cdf",
    "t_quantile",
]

_EPS = 2.0**-53


def _whole_df(df: float) -> int:
    if isinstance(df, bool) or not isinstance(df, numbers.Real):
        raise TypeError(f"df must be a real number, got {type(df).__name__}")
    if not (df > 0 and float(df).is_integer()):
        raise ValueError(f"df must be a positive whole number, got {df}")
    return int(df)


def _two_sided(t: float, nu: int) -> tuple[float, float]:
    """``(P(|T| <= t), P(|T| > t))`` for finite ``t >= 0`` and ``nu`` degrees of freedom.

    Abramowitz & Stegun 26.7.3 (odd ``nu``) and 26.7.4 (even ``nu``): with ``c = cos(theta)``,
    ``theta = atan(t / sqrt(nu))``, ``P(|T| <= t)`` is the sum of the first ``nu // 2`` terms of a
    series in ``c**2`` whose infinite sum gives exactly 1, so ``P(|T| > t)`` is its remainder. Each
    term is at most ``c**2`` times the one before: for ``c**2 <= 1/2`` the remainder is summed
    directly, which keeps the smaller tail accurate to a few ulps relative; otherwise it is
    ``1 - P(|T| <= t)``, accurate to a few ulps absolute.
    """
    root = math.sqrt(nu)
    hyp = math.hypot(t, root)
    s, c = t / hyp, root / hyp
    c2, s2 = c * c, s * s
    odd = nu % 2
    factor = 2 / math.pi * s * c if odd else s
    head = c2 > 0.5
    partial, term = 0.0, 1.0
    for k in range(1, nu // 2 + 1):
        partial += term
        term *= c2 * (2 * k - 1 + odd) / (2 * k + odd)
        # Everything after this point sums to at most term / s**2.
        if head and term <= _EPS * partial * s2:
            break
    if head:
        inside = factor * partial + (2 / math.pi * math.atan2(t, root) if odd else 0.0)
        return inside, 1.0 - inside
    rest, k = 0.0, nu // 2
    while term > _EPS * rest:  # each term is at most half the last: the rest is below it
        rest += term
        k += 1
        term *= c2 * (2 * k - 1 + odd) / (2 * k + odd)
    outside = factor * rest
    return 1.0 - outside, outside


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom, a positive whole number.

    The exact finite series of ``_two_sided``: absolute error of a few ulps (it grows slowly with
    ``df``, below 1e-14 up to ``df = 1000``), relative error of a few ulps in the tails
    ``|t| >= sqrt(df)``; about ``df / 2`` terms. ``ValueError`` for a non-whole or non-positive
    ``df`` or a NaN ``t``; ``TypeError`` for non-numbers.
    """
    nu = _whole_df(df)
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"t must be a real number, got {type(t).__name__}")
    if math.isnan(t):
        raise ValueError("t must not be NaN")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    outside = _two_sided(abs(t), nu)[1]
    return 1.0 - 0.5 * outside if t >= 0 else 0.5 * outside


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t with ``df`` (a positive whole number) degrees of freedom.

    Bisection on ``t >= 0`` down to adjacent doubles, for ``P(|T| <= t) = |2p - 1|`` when
    ``1/4 <= p <= 3/4`` and ``P(|T| > t) = 2 min(p, 1 - p)`` otherwise (both targets exact in
    floating point): its error is that of ``t_cdf`` divided by the density, a few ulps relative
    wherever the tail beyond the quantile is not tiny, and throughout for ``|t| >= sqrt(df)``.
    ``ValueError`` unless ``0 < p < 1``; ``+-inf`` only where the quantile exceeds the largest
    double.
    """
    nu = _whole_df(df)
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    central = 0.25 <= p <= 0.75
    target = abs(2 * p - 1) if central else 2 * min(p, 1 - p)
    if target == 0:
        return 0.0

    def below_root(t: float) -> bool:
        inside, outside = _two_sided(t, nu)
        return inside < target if central else outside > target

    lo, hi = 0.0, 1.0
    while below_root(hi):
        lo, hi = hi, 2 * hi
        if math.isinf(hi):
            return math.copysign(math.inf, p - 0.5)
    mid = 0.5 * (lo + hi)
    while lo < mid < hi:
        lo, hi = (mid, hi) if below_root(mid) else (lo, mid)
        mid = 0.5 * (lo + hi)
    return math.copysign(hi, p - 0.5)


@dataclass(frozen=True)
class PowerLawFit:
    """``y ~ prefactor * x**exponent``; ``ci`` is the two-sided ``level`` interval of the exponent.

    ``ci`` is ``(nan, nan)`` with fewer than three points (no residual degrees of freedom).
    ``r2`` is the coefficient of determination on the logs.
    """

    exponent: float
    prefactor: float
    ci: tuple[float, float]
    stderr: float
    r2: float
    points: int
    level: float

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return self.prefactor * np.asarray(x, dtype=float) ** self.exponent

    @property
    def half_width(self) -> float:
        return 0.5 * (self.ci[1] - self.ci[0])

    def label(self, digits: int = 2) -> str:
        """``"1.03 [0.98, 1.08]"``, or ``"1.03"`` without an interval."""
        if math.isnan(self.ci[0]):
            return f"{self.exponent:.{digits}f}"
        return f"{self.exponent:.{digits}f} [{self.ci[0]:.{digits}f}, {self.ci[1]:.{digits}f}]"


def fit_power_law(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, level: float = 0.95
) -> PowerLawFit:
    """Least squares of ``log y = log c + p log x``; the interval is ``p +- t * stderr(p)``.

    Needs at least two points with distinct positive ``x`` and positive ``y`` (``ValueError``
    otherwise). The interval assumes independent, equal-variance errors on the log scale.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {xa.shape} and {ya.shape}")
    if xa.size < 2:
        raise ValueError(f"a power-law fit needs at least 2 points, got {xa.size}")
    if not (np.all(xa > 0) and np.all(ya > 0) and np.all(np.isfinite(xa) & np.isfinite(ya))):
        raise ValueError("a power-law fit needs finite, positive x and y")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    lx, ly = np.log(xa), np.log(ya)
    mx, my = lx.mean(), ly.mean()
    sxx = float(((lx - mx) ** 2).sum())
    if sxx <= 0:
        raise ValueError("a power-law fit needs at least two distinct x values")
    slope = float(((lx - mx) * (ly - my)).sum()) / sxx
    intercept = my - slope * mx
    resid = ly - (intercept + slope * lx)
    rss = float(resid @ resid)
    tss = float(((ly - my) ** 2).sum())
    r2 = 1.0 - rss / tss if tss > 0 else 1.0
    dof = xa.size - 2
    if dof > 0:
        stderr = math.sqrt(rss / dof / sxx)
        t = t_quantile(0.5 + level / 2, dof)
        ci = (slope - t * stderr, slope + t * stderr)
    else:
        stderr, ci = math.nan, (math.nan, math.nan)
    return PowerLawFit(
        exponent=slope,
        prefactor=math.exp(intercept),
        ci=ci,
        stderr=stderr,
        r2=r2,
        points=int(xa.size),
        level=level,
    )


MAX_TERMS = 12


@dataclass(frozen=True)
class LinearFit:
    """``y ~ X @ coef`` with ``coef >= 0``, fitted on the relative error.

    ``ci[j]`` is the two-sided ``level`` interval of ``coef[j]`` from the least-squares fit on the
    terms left positive (``support``); a term the constraint holds at zero has ``(nan, nan)``.
    Intervals are ``(nan, nan)`` throughout when no degrees of freedom are left.
    ``relative_residuals`` is ``X @ coef / y - 1`` per point.
    """

    coef: np.ndarray
    ci: tuple[tuple[float, float], ...]
    support: tuple[bool, ...]
    relative_residuals: np.ndarray
    dof: int
    level: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Predictions for the rows of ``x`` ``(points, terms)``."""
        return np.asarray(x, dtype=float) @ self.coef

    @property
    def rms_relative_error(self) -> float:
        return float(np.sqrt(np.mean(self.relative_residuals**2)))


def fit_nonnegative(
    x: Sequence[Sequence[float]] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
) -> LinearFit:
    """Non-negative least squares of the relative error: ``min sum_i ((X c)_i / y_i - 1)**2``,
    ``c >= 0``.

    ``x`` is ``(points, terms)`` with finite, non-negative entries, ``y`` ``(points,)`` finite
    and positive, at most :data:`MAX_TERMS` terms. Exact: every support (set of terms allowed
    to be positive) is solved by unconstrained least squares, and the best one whose solution is
    positive wins (the constrained optimum is the unconstrained one on its own support). The
    interval of a term is ``c_j +- t * stderr_j``, from the covariance ``s**2 (A^T A)^-1`` of
    that support's fit (``A = X / y``, ``s**2`` its residual sum over ``points - |support|``).
    ``ValueError`` for inputs outside these bounds.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.ndim != 2 or ya.ndim != 1 or xa.shape[0] != ya.shape[0]:
        raise ValueError(f"x must be (points, terms) and y (points,), got {xa.shape}, {ya.shape}")
    points, terms = xa.shape
    if not 1 <= terms <= MAX_TERMS:
        raise ValueError(f"a non-negative fit takes 1 to {MAX_TERMS} terms, got {terms}")
    if points < 1:
        raise ValueError("a non-negative fit needs at least one point")
    if not (np.all(np.isfinite(xa)) and np.all(xa >= 0)):
        raise ValueError("a non-negative fit needs finite, non-negative x")
    if not (np.all(np.isfinite(ya)) and np.all(ya > 0)):
        raise ValueError("a non-negative fit needs finite, positive y")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    a = xa / ya[:, None]
    norms = np.linalg.norm(a, axis=0)
    scale = np.where(norms > 0, norms, 1.0)  # unit columns: the solves stay well conditioned
    a = a / scale
    ones = np.ones(points)
    best_rss, best_u, best_support = float(points), np.zeros(terms), np.zeros(terms, bool)
    for mask in range(1, 1 << terms):
        support = np.array([(mask >> j) & 1 for j in range(terms)], dtype=bool)
        if support.sum() > points or np.any(norms[support] == 0):
            continue
        sol = np.linalg.lstsq(a[:, support], ones, rcond=None)[0]
        if np.any(sol <= 0):
            continue
        u = np.zeros(terms)
        u[support] = sol
        rss = float(np.sum((a @ u - 1) ** 2))
        if rss < best_rss:
            best_rss, best_u, best_support = rss, u, support
    coef = best_u / scale
    dof = points - int(best_support.sum())
    ci = [(math.nan, math.nan)] * terms
    if dof > 0 and best_support.any():
        sub = a[:, best_support]
        cov = best_rss / dof * np.linalg.pinv(sub.T @ sub)
        t = t_quantile(0.5 + level / 2, dof)
        for i, j in enumerate(np.flatnonzero(best_support)):
            half = t * math.sqrt(max(cov[i, i], 0.0)) / scale[j]
            ci[j] = (coef[j] - half, coef[j] + half)
    return LinearFit(
        coef=coef,
        ci=tuple(ci),
        support=tuple(bool(b) for b in best_support),
        relative_residuals=xa @ coef / ya - 1,
        dof=dof,
        level=level,
    )
