"""Power-law fits ``y = c * x**p`` by least squares on logs, with a Student-t confidence interval.

Only numpy and the standard library: the t quantile is computed here (``t_quantile``) rather than
taken from scipy, which is not a dependency of this project.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["PowerLawFit", "fit_power_law", "t_cdf", "t_quantile"]


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom.

    Substituting ``t = sqrt(df) * tan(u)`` turns the density into ``cos(u)**(df - 1)`` on a bounded
    interval, which composite Simpson integrates to ~1e-12 with a few thousand nodes.
    """
    if not df > 0:
        raise ValueError(f"df must be positive, got {df}")
    if t == 0:
        return 0.5
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    u_max = math.atan(abs(t) / math.sqrt(df))
    n = 4096  # even number of Simpson intervals
    u = np.linspace(0.0, u_max, n + 1)
    f = np.cos(u) ** (df - 1)
    w = np.ones(n + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    integral = float(w @ f) * u_max / (3 * n)
    # Normalising constant of cos(u)**(df - 1) over (-pi/2, pi/2): B(df/2, 1/2).
    log_norm = math.lgamma(df / 2) + math.lgamma(0.5) - math.lgamma((df + 1) / 2)
    half = integral / math.exp(log_norm)
    return 0.5 + math.copysign(half, t)


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``)."""
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if p == 0.5:
        return 0.0
    # Bisect in u = atan(t / sqrt(df)) in (0, pi/2), where the CDF is smooth and bounded.
    lo, hi = 0.0, math.pi / 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if t_cdf(math.sqrt(df) * math.tan(mid), df) < p:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan(0.5 * (lo + hi))


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
