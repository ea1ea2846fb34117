"""Consequences of the recursion (docs/HSA.md section 4): softmax, one leaf, single-child
families."""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

from .family import family_symbols
from .result import Derivation, ProofResult, eq
from .tree import HSA_RECURSION, Recursion, Tree, TreeModel

__all__ = ["prove_special_cases"]


def _one_family(d: Derivation, n: int, recursion: Recursion) -> None:
    tree = Tree.from_nested(list(range(n)))
    model = TreeModel(tree, recursion)
    s = model.scores
    softmax = sp.Matrix(
        n, n, lambda i, j: sp.exp(s[i, j]) / sp.Add(*(sp.exp(s[i, k]) for k in range(n)))
    )
    d.zero(
        f"One family over {n} leaves: every entry of theta is the softmax of its row "
        f"(e_ij = s_ij, |C| = 1, F(i) = s_ii, so L(i) = logsumexp_j s_ij).",
        list(model.theta - softmax),
        eq(f"L({0})", model.L[0]),
        eq(r"\theta_{0 \cdot}", model.theta.row(0)),
    )


def _one_leaf(d: Derivation, recursion: Recursion) -> None:
    tree = Tree((-1,), 1)
    model = TreeModel(tree, recursion)
    v = sp.Symbol("v_0", real=True)
    d.zero(
        "A one-leaf tree: theta = (1) (the empty product of shares), so y_0 = v_0; the "
        "optimal objective sum_i logsumexp_j s_ij - |R| F(R) is s_00 - s_00 = 0.",
        [(model.theta * sp.Matrix([v]))[0] - v, model.scores[0, 0] - model.F[0]],
        eq(r"\theta", model.theta),
    )


def _single_child(d: Derivation, recursion: Recursion, trees: Sequence[tuple]) -> None:
    own, _, _ = family_symbols(0)
    size = sp.Symbol("n_B", positive=True, integer=True)
    log_z = recursion.log_partition(own, [], [])
    mu, _ = recursion.shares(own, [], [])
    d.zero(
        "A family A with a single child B (|A| = |B| symbolic): L(B) = F(B), mu(B) = 1 and "
        "F(A) = F(B).",
        [log_z - own, mu - 1, recursion.family_value([size], [log_z]) - own],
        eq("L(B)", log_z),
        eq("F(A)", recursion.family_value([size], [log_z])),
    )
    for plain, wrapped in trees:
        a = TreeModel(Tree.from_nested(plain), recursion)
        b = TreeModel(Tree.from_nested(wrapped), recursion, scores=a.scores)
        ra, rb = a.tree.root, b.tree.root
        d.zero(
            f"Wrapping a subtree in a single-child family changes nothing: {plain} and "
            f"{wrapped} have the same theta and the same F(root).",
            [*list(a.theta - b.theta), a.F[ra] - b.F[rb]],
        )


def prove_special_cases(
    recursion: Recursion = HSA_RECURSION,
    family_sizes: Sequence[int] = (2, 3, 4),
    wrapped: Sequence[tuple] = (([[0, 1], 2], [[[0, 1]], 2]), ([[0, 1], 2], [[[0, 1], 2]])),
) -> ProofResult:
    """Prove the special cases of docs/HSA.md section 4 for the given recursion."""
    d = Derivation(
        "special_cases",
        "5. Special cases",
        "A tree with one family over all leaves gives softmax attention; a one-leaf tree "
        "returns v; a single-child family leaves F (and theta) unchanged.",
    )
    for n in family_sizes:
        _one_family(d, n, recursion)
    _one_leaf(d, recursion)
    _single_child(d, recursion, wrapped)
    return d.result()
