"""Means over seeds with Student-t 95% intervals (:func:`bench.fit.t_quantile`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bench.fit import t_quantile

__all__ = ["mean_interval"]


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the two-sided ``level`` t interval of the mean of ``values``
    (independent draws, e.g. one per seed); ``low = high = nan`` for a single value.
    ``ValueError`` for no values or a level outside ``(0, 1)``."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    half = t_quantile(0.5 + level / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half
