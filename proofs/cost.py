"""The cost model of docs/HSA.md section 5: how many energies the programme evaluates.

The up pass asks for ``s_ii`` once per leaf and ``e_BC`` once per ordered pair of siblings:
``N + sum_f b_f (b_f - 1)`` energies, at most ``N + M b^2``. For a balanced ``b``-ary tree of
depth ``D`` that is ``(b + 1) b^D - b = (b + 1) N - b``, against ``N^2`` for dense attention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sympy as sp

from .programme import up_pass
from .result import Derivation, ProofResult, eq
from .tree import HSA_RECURSION, Tree

__all__ = [
    "DEFAULT_COST_TREES",
    "balanced_nested",
    "count_energies",
    "prove_cost",
    "spec_balanced_count",
    "spec_energy_count",
]


def spec_energy_count(num_leaves: int, branchings: Sequence[int]) -> int | sp.Expr:
    """docs/HSA.md section 5: ``N + sum_f b_f (b_f - 1)``."""
    return num_leaves + sum(b * (b - 1) for b in branchings)


def spec_balanced_count(b: sp.Expr, depth: sp.Expr) -> sp.Expr:
    """docs/HSA.md section 5, balanced ``b``-ary tree of depth ``D``: ``(b + 1) b^D - b``."""
    return (b + 1) * b**depth - b


def balanced_nested(b: int, depth: int) -> Any:
    """Nested lists for the balanced ``b``-ary tree with ``b ** depth`` leaves."""
    leaves = iter(range(b**depth))

    def build(level: int) -> Any:
        return next(leaves) if level == 0 else [build(level - 1) for _ in range(b)]

    return build(depth)


def count_energies(tree: Tree) -> int:
    """The number of energies the programme's up pass asks for on ``tree``."""
    calls: list[Any] = []

    def leaf(i: int) -> sp.Expr:
        calls.append(i)
        return sp.Symbol(f"s_{i}", real=True)

    def block(b: int, c: int) -> sp.Expr:
        calls.append((b, c))
        return sp.Symbol(f"e_{b}_{c}", real=True)

    up_pass(tree, leaf, block, HSA_RECURSION)
    return len(calls)


DEFAULT_COST_TREES: tuple[Any, ...] = (
    0,
    [0, 1, 2, 3],
    [[0, 1], 2],
    [[0, [1, 2]], 3],
    [[[0, 1]], 2],
    [[0, 1, 2], [3, [4, 5]], 6],
)


def prove_cost(
    energy_count: Callable[[int, Sequence[int]], int | sp.Expr] = spec_energy_count,
    balanced_count: Callable[[sp.Expr, sp.Expr], sp.Expr] = spec_balanced_count,
    trees: Sequence[Any] = DEFAULT_COST_TREES,
) -> ProofResult:
    """Prove the energy count, its bound and the balanced-tree closed form."""
    d = Derivation(
        "cost",
        "7. Cost model",
        r"The programme evaluates $N + \sum_f b_f(b_f - 1) \le N + M b^2$ energies; for a "
        r"balanced $b$-ary tree of depth $D$ ($N = b^D$) that is $(b+1)b^D - b$, at most "
        r"$N^2$ (dense attention) with equality only for $D = 1$.",
    )
    rows = []
    for nested in trees:
        tree = Tree.from_nested(nested)
        branchings = [len(tree.children(a)) for a in tree.families]
        counted = count_energies(tree)
        claimed = energy_count(tree.num_leaves, branchings)
        rows.append((nested, counted, claimed))
    d.check(
        "Counting the energies the up pass asks for (leaf scores s_ii, then e_BC for each "
        "ordered sibling pair) matches the claimed count on every tree: "
        + "; ".join(f"{n}: counted {c}, claimed {k}" for n, c, k in rows)
        + ".",
        all(c == k for _, c, k in rows),
    )
    bf, b, t = sp.Symbol("b_f", positive=True, integer=True), sp.Symbol("b"), sp.Symbol("t")
    gap = sp.expand((b**2 - bf * (bf - 1)).subs(b, bf + t))
    t_nonneg = sp.Symbol("t", nonnegative=True, integer=True)
    d.check(
        "Each family costs at most b^2: with b = b_f + t, t >= 0, the gap b^2 - b_f(b_f - 1) "
        "is a sum of non-negative terms, so the count is at most N + M b^2.",
        bool(gap.subs(t, t_nonneg).is_nonnegative),
        eq(r"b^2 - b_f(b_f - 1)", gap),
    )
    n_sym, m_sym = sp.symbols("N M", positive=True, integer=True)
    sum_b2 = sp.Symbol(r"\sum_f b_f^2", positive=True)
    identity = sp.expand(n_sym + sum_b2 - (n_sym + m_sym - 1)) - (sum_b2 - m_sym + 1)
    d.check(
        "In one tree every node but the root is some family's child, so sum_f b_f = N + M - 1 "
        "and the count is also sum_f b_f^2 - M + 1.",
        identity == 0,
        eq(r"N + \sum_f b_f(b_f - 1)", r"\sum_f b_f^2 - M + 1"),
    )
    bb = sp.Symbol("b", integer=True, positive=True)
    depth, level = sp.symbols("D l", integer=True, nonnegative=True)
    summed = sp.summation(bb**level, (level, 0, depth - 1))
    # SymPy answers with a Piecewise: D for b = 1, the geometric sum otherwise.
    families = summed.args[-1][0] if isinstance(summed, sp.Piecewise) else summed
    count = bb**depth + families * bb * (bb - 1)
    d.zero(
        "Balanced b-ary tree of depth D: N = b^D leaves and M = sum_{l<D} b^l families, each "
        "with b children; the count has the claimed closed form (b >= 2).",
        count - balanced_count(bb, depth),
        eq("M", families),
        eq(r"N + M b (b - 1)", sp.simplify(count)),
    )
    concrete = [
        (bv, dv, count_energies(Tree.from_nested(balanced_nested(bv, dv))))
        for bv, dv in ((2, 1), (2, 3), (3, 2), (4, 2))
    ]
    d.check(
        "The closed form matches the count on built balanced trees: "
        + "; ".join(
            f"b = {bv}, D = {dv}: counted {c}, closed form {balanced_count(bv, dv)}"
            for bv, dv, c in concrete
        )
        + ".",
        all(c == balanced_count(sp.Integer(bv), sp.Integer(dv)) for bv, dv, c in concrete),
    )
    dense = bb ** (2 * depth)
    d.zero(
        "Against dense attention: N^2 minus the count factorises as (b^D - 1)(b^D - b), "
        "which is >= 0 for b >= 2, D >= 1 and zero only for D = 1 (one family is dense).",
        (dense - balanced_count(bb, depth)) - (bb**depth - 1) * (bb**depth - bb),
        eq(r"N^2 - \big((b + 1) b^D - b\big)", r"(b^D - 1)(b^D - b)"),
    )
    c = sp.Symbol("c", integer=True, nonnegative=True)
    ratio = sp.limit((balanced_count(bb, depth) / dense).subs(bb, c + 2), depth, sp.oo)
    d.check(
        "The fraction of dense work vanishes with depth for every b = c + 2 >= 2: "
        "count / N^2 -> 0 as D grows.",
        ratio == 0,
        eq(r"\lim_{D \to \infty} \frac{(b + 1) b^D - b}{b^{2D}}", ratio),
    )
    return d.result()
