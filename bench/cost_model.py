"""The cost model: each implementation's time per call predicted from exact counts of its work.

An implementation's time per call is modelled as ``t = sum_j c_j x_j``: one term per kind of
thing it does, ``x_j`` an exact count stored with every case by the sweeps (operators dispatched
and the layout's schedule, :mod:`bench.counts`; per-tree sums, :mod:`bench.shapes`; sizes), and
``c_j >= 0`` the cost of one unit (seconds); ``t`` is the record's ``time``
(:mod:`bench.records`: CPU time on one core, or wall time). The coefficients are fitted once per
device and implementation over the points of all four sweeps together, by least squares on the
relative error, with 95% Student-t intervals (:func:`bench.fit.fit_nonnegative`). ``Z`` is the
number of heads (the sweeps run a batch of one) and ``D = d_k + d_v`` (the sweeps: ``2 d``).

A term whose coefficient the fit holds at zero costs too little to be seen next to the others
(or is confounded with them); it stays in the model, reported as zero. Points further than
:data:`TARGET` from the model are reported, never failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .fit import LinearFit, fit_nonnegative
from .records import Record

__all__ = [
    "MODELS",
    "TARGET",
    "CostModel",
    "Crossover",
    "HeldOut",
    "Term",
    "crossover",
    "fit_model",
    "held_out",
]

TARGET = 0.25
"""The relative distance from the model within which a measured point counts as explained."""


@dataclass(frozen=True)
class Term:
    """One kind of work: ``name`` (what one unit is), ``short`` (a legend's words), ``counts``
    (its count as a formula), the ``extra_info`` keys it reads beyond the sizes, and its
    ``value`` for a record."""

    name: str
    short: str
    counts: str
    keys: tuple[str, ...]
    value: Callable[[Record], float]


def _z(r: Record) -> int:
    return r.heads


def _dd(r: Record) -> int:
    return 2 * r.d  # d_k + d_v: the sweeps use d_k = d_v = d


def _call(name: str = "per call (validation, dispatch, Python)") -> Term:
    return Term(name, "per call", "1", (), lambda r: 1.0)


def _ops(what: str) -> Term:
    return Term(
        f"per ATen operator dispatched ({what})",
        "operators",
        "ops, counted while the call runs",
        ("ops",),
        lambda r: float(r.info["ops"]),
    )


MODELS: dict[str, tuple[Term, ...]] = {
    "hsa_fast": (
        _call(),
        _ops("the fixed cost of each bucket and depth"),
        Term(
            "per leaf value (leaf scores, output)",
            "leaf values",
            "Z N D",
            (),
            lambda r: _z(r) * r.n * _dd(r),
        ),
        Term(
            "per child value read by a bucket (gathers, means)",
            "child values",
            "Z D sum_buckets f w",
            ("slots",),
            lambda r: _z(r) * r.info["slots"] * _dd(r),
        ),
        Term(
            "per family value (family buffers, down pass)",
            "family values",
            "Z M D",
            (),
            lambda r: _z(r) * r.m * _dd(r),
        ),
        Term(
            "per product term of the blocks (q k^T, delta v)",
            "block products",
            "Z D sum_buckets f w^2",
            ("block_entries",),
            lambda r: _z(r) * r.info["block_entries"] * _dd(r),
        ),
        Term(
            "per block entry (logsumexp, exp, masks)",
            "block entries",
            "Z sum_buckets f w^2",
            ("block_entries",),
            lambda r: _z(r) * r.info["block_entries"],
        ),
    ),
    "sdpa": (
        _call(),
        Term(
            "per product term (q k^T, p v)",
            "products",
            "Z N^2 D",
            (),
            lambda r: _z(r) * r.n**2 * _dd(r),
        ),
        Term("per score (softmax)", "scores", "Z N^2", (), lambda r: _z(r) * r.n**2),
        Term(
            "per input or output value",
            "inputs, output",
            "Z N D",
            (),
            lambda r: _z(r) * r.n * _dd(r),
        ),
    ),
    "hsa_reference": (
        _call(),
        _ops("Python loops over families and children"),
        Term(
            "per product term of the scores and theta v",
            "products",
            "Z D sum_t n_t^2",
            ("tree_leaves_sq",),
            lambda r: _z(r) * r.info["tree_leaves_sq"] * _dd(r),
        ),
        Term(
            "per n_t x n_t entry, once per child (membership products)",
            "per-child passes",
            "Z sum_t c_t n_t^2",
            ("tree_children_leaves_sq",),
            lambda r: _z(r) * r.info["tree_children_leaves_sq"],
        ),
        Term(
            "per n_t x n_t entry, once per family (theta updated)",
            "per-family passes",
            "Z sum_t m_t n_t^2",
            ("tree_families_leaves_sq",),
            lambda r: _z(r) * r.info["tree_families_leaves_sq"],
        ),
        Term(
            "per tree and node (splitting a forest into trees)",
            "forest split",
            "trees (N + M)",
            ("trees_nodes",),
            lambda r: float(r.info["trees_nodes"]),
        ),
    ),
}
"""The terms of each implementation's model; sums in the formulas run over the layout's
buckets (``f`` families padded to ``w`` children each) or the forest's trees (``n_t`` leaves,
``c_t`` children, ``m_t`` families)."""


def _features(terms: Sequence[Term], records: Sequence[Record]) -> np.ndarray:
    return np.array([[t.value(r) for t in terms] for r in records], dtype=float).reshape(
        len(records), len(terms)
    )


@dataclass(frozen=True)
class CostModel:
    """The fitted model of one implementation on one device, and the points it was fitted on."""

    impl: str
    terms: tuple[Term, ...]
    fit: LinearFit
    records: tuple[Record, ...]

    def predict(self, records: Sequence[Record]) -> np.ndarray:
        """Predicted seconds per call of ``records`` (which must carry the model's counts)."""
        return self.fit(_features(self.terms, records))

    def contributions(self, records: Sequence[Record]) -> np.ndarray:
        """``(points, terms)``: seconds per call that each term contributes."""
        return _features(self.terms, records) * self.fit.coef

    @property
    def within(self) -> int:
        """Points of the fit within :data:`TARGET` of the model."""
        return int(np.sum(np.abs(self.fit.relative_residuals) <= TARGET))

    @property
    def outside(self) -> list[tuple[Record, float]]:
        """``(record, predicted / measured - 1)`` of the points further than :data:`TARGET`."""
        res = self.fit.relative_residuals
        return [(r, float(e)) for r, e in zip(self.records, res, strict=True) if abs(e) > TARGET]


def _countable(impl: str, records: Sequence[Record]) -> list[Record]:
    keys = {k for t in MODELS[impl] for k in t.keys}
    return [r for r in records if r.impl == impl and keys <= r.info.keys()]


def fit_model(impl: str, records: Sequence[Record]) -> CostModel | None:
    """Fit ``impl``'s model to those of ``records`` that are ``impl``'s and carry its counts.

    ``None`` when fewer such points than terms remain (a run recorded before the counts were).
    ``ValueError`` for an implementation without a model.
    """
    if impl not in MODELS:
        raise ValueError(f"no cost model for {impl!r}; expected one of {sorted(MODELS)}")
    terms = MODELS[impl]
    points = _countable(impl, records)
    if len(points) < len(terms):
        return None
    fit = fit_nonnegative(_features(terms, points), [r.time for r in points])
    return CostModel(impl=impl, terms=terms, fit=fit, records=tuple(points))


@dataclass(frozen=True)
class HeldOut:
    """Each point predicted by the model refitted without it (leave-one-out).

    ``errors[i]``: ``predicted / measured - 1`` for ``model.records[i]``.
    """

    errors: np.ndarray

    @property
    def within(self) -> int:
        return int(np.sum(np.abs(self.errors) <= TARGET))

    @property
    def worst(self) -> float:
        return float(np.nanmax(np.abs(self.errors)))


def held_out(model: CostModel) -> HeldOut:
    """Refit ``model`` without each of its points in turn and predict that point: how well the
    model predicts a case it was not fitted to. A point whose removal leaves fewer points than
    terms gets a NaN error."""
    x = _features(model.terms, model.records)
    y = np.array([r.time for r in model.records])
    errors = np.full(len(y), np.nan)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        if keep.sum() >= len(model.terms):
            errors[i] = fit_nonnegative(x[keep], y[keep])(x[i : i + 1])[0] / y[i] - 1
    return HeldOut(errors)


@dataclass(frozen=True)
class Crossover:
    """Where one implementation starts to beat another along ``N``.

    ``n``: the crossing, interpolated on log-log axes between ``lo`` and ``hi``, the neighbouring
    sizes measured; ``None`` when the first is faster at every size (``side="below"``, ``lo`` the
    smallest size) or at none (``side="above"``, ``hi`` the largest). ``side="between"``
    otherwise. The crossing is the last one: from there on, the first is faster at every size.
    """

    n: float | None
    side: str
    lo: int
    hi: int

    def text(self) -> str:
        """Where the first is faster: ``"from N ≈ 181 (between 128 and 256)"``."""
        if self.side == "below":
            return f"at every size measured, down to N = {self.lo:,}"
        if self.side == "above":
            return f"at no size measured, up to N = {self.hi:,}"
        return f"from N ≈ {self.n:,.0f} (between {self.lo:,} and {self.hi:,})"


def crossover(sizes: Sequence[int], first: Sequence[float], second: Sequence[float]) -> Crossover:
    """Where ``first`` (times at ``sizes``, increasing) becomes and stays faster than ``second``.

    ``ValueError`` for fewer than one size, unsorted sizes, lengths that differ or non-positive
    times.
    """
    n = np.asarray(sizes, dtype=float)
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if n.ndim != 1 or n.size < 1 or a.shape != n.shape or b.shape != n.shape:
        raise ValueError("crossover needs equal-length, non-empty sizes and times")
    if np.any(np.diff(n) <= 0):
        raise ValueError("crossover needs increasing sizes")
    if not (np.all(a > 0) and np.all(b > 0)):
        raise ValueError("crossover needs positive times")
    gap = np.log(b / a)  # > 0 where first is faster
    losing = np.flatnonzero(gap <= 0)
    if losing.size == 0:
        return Crossover(None, "below", int(n[0]), int(n[0]))
    i = int(losing[-1])
    if i == n.size - 1:
        return Crossover(None, "above", int(n[-1]), int(n[-1]))
    lo, hi = math.log(n[i]), math.log(n[i + 1])
    at = lo + (hi - lo) * (0 - gap[i]) / (gap[i + 1] - gap[i])
    return Crossover(math.exp(at), "between", int(n[i]), int(n[i + 1]))
