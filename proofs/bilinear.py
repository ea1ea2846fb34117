"""Block energies factorise through per-node means (docs/HSA.md section 2).

The mean over ``B x C`` of ``scale <q_i, k_j>`` equals ``scale <mean q over B, mean k over C>``;
for the distance energy ``-scale/2 ||q_i - k_j||^2`` the block mean also needs the mean squared
norms of ``q`` over ``B`` and ``k`` over ``C``. This is what lets the dynamic programme work with
node summaries instead of the ``N x N`` scores. The factorised forms are the claims under test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp

from .result import Derivation, ProofResult, eq

__all__ = [
    "BlockSummary",
    "distance_block_energy",
    "dot_block_energy",
    "prove_bilinearity",
]


@dataclass(frozen=True)
class BlockSummary:
    """Per-node summaries of a block ``B x C``: the means the programme keeps (docs/HSA.md
    section 5).

    ``mean_q`` and ``mean_k`` are vectors combined only through ``inner``; ``mean_sq_q`` and
    ``mean_sq_k`` are the mean squared norms of ``q`` over ``B`` and ``k`` over ``C``.
    """

    mean_q: Any
    mean_k: Any
    mean_sq_q: sp.Expr
    mean_sq_k: sp.Expr
    scale: sp.Expr
    inner: Callable[[Any, Any], sp.Expr]


def dot_block_energy(x: BlockSummary) -> sp.Expr:
    """docs/HSA.md section 2: ``e_BC = scale <mean q over B, mean k over C>``."""
    return x.scale * x.inner(x.mean_q, x.mean_k)


def distance_block_energy(x: BlockSummary) -> sp.Expr:
    """docs/HSA.md section 2: the dot form minus ``scale/2`` times both mean squared norms."""
    return x.scale * (x.inner(x.mean_q, x.mean_k) - (x.mean_sq_q + x.mean_sq_k) / 2)


BlockClaim = Callable[[BlockSummary], sp.Expr]


def _concrete(
    d: Derivation,
    n_b: int,
    n_c: int,
    dim: int,
    dot: BlockClaim,
    distance: BlockClaim,
    show: bool,
) -> None:
    q = sp.Matrix(n_b, dim, lambda i, t: sp.Symbol(f"q_{i}{t}", real=True))
    k = sp.Matrix(n_c, dim, lambda j, t: sp.Symbol(f"k_{j}{t}", real=True))
    scale = sp.Symbol("c", positive=True)
    pairs = n_b * n_c
    dot_mean = sp.Add(*(scale * q.row(i).dot(k.row(j)) for i in range(n_b) for j in range(n_c)))
    dist_mean = sp.Add(
        *(
            -scale / 2 * (q.row(i) - k.row(j)).dot(q.row(i) - k.row(j))
            for i in range(n_b)
            for j in range(n_c)
        )
    )
    summary = BlockSummary(
        mean_q=sp.Matrix([sum(q.col(t)) / n_b for t in range(dim)]),
        mean_k=sp.Matrix([sum(k.col(t)) / n_c for t in range(dim)]),
        mean_sq_q=sp.Add(*(q.row(i).dot(q.row(i)) for i in range(n_b))) / n_b,
        mean_sq_k=sp.Add(*(k.row(j).dot(k.row(j)) for j in range(n_c))) / n_c,
        scale=scale,
        inner=lambda u, v: u.dot(v),
    )
    shape = f"|B| = {n_b}, |C| = {n_c}, d = {dim}"
    d.zero(
        f"Dot energy, {shape}: the block mean equals the claimed factorised form.",
        dot_mean / pairs - dot(summary),
        *([eq(r"e_{BC}", dot(summary))] if show else []),
    )
    d.zero(
        f"Distance energy, {shape}: the block mean equals the claimed factorised form.",
        dist_mean / pairs - distance(summary),
        *([eq(r"e_{BC}", distance(summary))] if show else []),
    )


def _merge_product(term: sp.Expr) -> sp.Expr:
    """A product with several sums over distinct indices becomes one multiple sum."""
    factors = sp.Mul.make_args(term)
    sums = [f for f in factors if isinstance(f, sp.Sum)]
    names = [lim[0] for s in sums for lim in s.limits]
    if len(sums) < 2 or len(set(names)) != len(names):
        return term
    rest = sp.Mul(*(f for f in factors if not isinstance(f, sp.Sum)))
    body = sp.Mul(*(s.function for s in sums))
    return rest * sp.Sum(body, *(lim for s in sums for lim in s.limits))


def _flatten(e: sp.Expr) -> sp.Expr:
    """Nested sums and products of sums (distinct indices) become multiple sums."""
    if isinstance(e, sp.Sum):
        inner = sp.expand(_flatten(e.function))
        out = []
        for term in sp.Add.make_args(inner):
            factors = sp.Mul.make_args(term)
            sums = [f for f in factors if isinstance(f, sp.Sum)]
            if len(sums) == 1:
                rest = sp.Mul(*(f for f in factors if f is not sums[0]))
                out.append(sp.Sum(rest * sums[0].function, *sums[0].limits, *e.limits))
            else:
                out.append(sp.Sum(term, *e.limits))
        return sp.Add(*out)
    if isinstance(e, sp.Add | sp.Mul | sp.Pow):
        e = sp.expand(e.func(*(_flatten(a) for a in e.args)))
        return sp.Add(*(_merge_product(t) for t in sp.Add.make_args(e)))
    return e


def canonical_sums(e: sp.Expr) -> sp.Expr:
    """A normal form for linear combinations of finite multiple sums.

    Flattens (Fubini and distributivity for finite sums), expands summands and splits sums by
    linearity, moves factors free of the indices outside, replaces a sum over an index that
    the summand does not use by a factor (the range length), and sorts the limits.
    """
    e = sp.expand(_flatten(e))
    terms = []
    for term in sp.Add.make_args(e):
        sums = [a for a in sp.Mul.make_args(term) if isinstance(a, sp.Sum)]
        if not sums:
            terms.append(term)
            continue
        (s,) = sums
        outside = sp.Mul(*(a for a in sp.Mul.make_args(term) if a is not s))
        for piece in sp.Add.make_args(sp.expand(s.function)):
            limits = list(s.limits)
            factor = outside
            used = piece.free_symbols
            kept = []
            for var, lo, hi in limits:
                if var in used:
                    kept.append((var, lo, hi))
                else:
                    factor *= hi - lo + 1
            indices = {lim[0] for lim in kept}
            free, body = piece.as_independent(*indices, as_Add=False)
            kept.sort(key=lambda lim: str(lim[0]))
            terms.append(factor * free * (sp.Sum(body, *kept) if kept else body))
    return sp.expand(sp.Add(*terms))


def _general(d: Derivation, dot: BlockClaim, distance: BlockClaim) -> None:
    n_b, n_c, dim = sp.symbols("n_B n_C d", positive=True, integer=True)
    i, j, t = sp.symbols("i j t", positive=True, integer=True)
    q = sp.IndexedBase("q", real=True)
    k = sp.IndexedBase("k", real=True)
    scale = sp.Symbol("c", positive=True)

    def block_mean(f: sp.Expr) -> sp.Expr:
        return sp.Sum(f, (i, 1, n_b), (j, 1, n_c)) / (n_b * n_c)

    summary = BlockSummary(
        mean_q=sp.Lambda(t, sp.Sum(q[i, t], (i, 1, n_b)) / n_b),
        mean_k=sp.Lambda(t, sp.Sum(k[j, t], (j, 1, n_c)) / n_c),
        mean_sq_q=sp.Sum(q[i, t] ** 2, (i, 1, n_b), (t, 1, dim)) / n_b,
        mean_sq_k=sp.Sum(k[j, t] ** 2, (j, 1, n_c), (t, 1, dim)) / n_c,
        scale=scale,
        inner=lambda u, v: sp.Sum(u(t) * v(t), (t, 1, dim)),
    )
    dot_literal = block_mean(scale * sp.Sum(q[i, t] * k[j, t], (t, 1, dim)))
    dist_literal = block_mean(-scale / 2 * sp.Sum((q[i, t] - k[j, t]) ** 2, (t, 1, dim)))
    d.say(
        "**General sizes and dimension.** Finite sums are exchanged (Fubini) and multiplied "
        "out (distributivity); a sum over an index its summand does not use is a factor. In "
        "that normal form:",
        eq(r"\frac{1}{|B||C|}\sum_{i \in B}\sum_{j \in C} c\,\langle q_i, k_j\rangle", dot_literal),
        eq(r"e_{BC}^{\text{claimed}}", dot(summary)),
    )
    d.zero(
        "Dot energy, general |B|, |C|, d: the difference has normal form zero.",
        canonical_sums(dot_literal - dot(summary)),
        reduce=canonical_sums,
    )
    d.say(
        "Expanding the square splits the distance energy into the two mean squared norms and "
        "the mean inner product:",
        eq(
            r"-\frac{c}{2|B||C|}\sum_{i, j}\lVert q_i - k_j \rVert^2",
            canonical_sums(dist_literal),
        ),
    )
    d.zero(
        "Distance energy, general |B|, |C|, d: the difference has normal form zero.",
        canonical_sums(dist_literal - distance(summary)),
        reduce=canonical_sums,
    )


def prove_bilinearity(
    dot: BlockClaim = dot_block_energy,
    distance: BlockClaim = distance_block_energy,
    shapes: Sequence[tuple[int, int, int]] = ((1, 1, 2), (2, 3, 2), (3, 2, 3)),
) -> ProofResult:
    """Prove that block means of the scores factorise through node means as claimed."""
    d = Derivation(
        "bilinear",
        "4. Bilinearity",
        r"$\frac{1}{|B||C|}\sum_{i \in B, j \in C} \langle q_i, k_j\rangle = "
        r"\langle \bar q_B, \bar k_C \rangle$; for the distance energy "
        r"$-\frac{1}{2|B||C|}\sum_{i, j} \lVert q_i - k_j\rVert^2 = \langle \bar q_B, \bar k_C "
        r"\rangle - \frac12(\overline{\lVert q\rVert^2}_B + \overline{\lVert k\rVert^2}_C)$ "
        r"(both times the scale $c$).",
    )
    d.say(
        "Concrete blocks: q_it and k_jt are symbols (row i of B, row j of C, coordinate t), "
        "c is the scale. The factorised forms are shown for the first shape."
    )
    for k, (n_b, n_c, dim) in enumerate(shapes):
        _concrete(d, n_b, n_c, dim, dot, distance, show=k == 0)
    _general(d, dot, distance)
    return d.result()
