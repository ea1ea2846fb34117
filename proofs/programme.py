"""The dynamic programme of docs/HSA.md section 5 computes section 3's output exactly.

Up: ``F`` and ``L`` by height. Down: ``log W(B) = log W(A) + F(B) - L(B)`` and
``U(B) = U(A) + W(A) sum_C delta(B, C) mean_C(v)`` from ``W(root) = 1, U(root) = 0``; at a leaf
``y_i = U(i) + W(i) v_i``. With ``F``, ``L``, the shares and ``v`` all symbolic this must equal
``sum_j theta_ij v_j`` for section 3's ``theta``. The ``U`` update is the claim under test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sympy as sp

from .result import Derivation, ProofResult, eq
from .tree import Recursion, Tree, attention_from_shares

__all__ = ["DEFAULT_PROGRAMME_TREES", "down_pass", "prove_programme", "spec_u_step", "up_pass"]

DEFAULT_PROGRAMME_TREES: tuple[Any, ...] = (
    [[0, 1], 2],
    [[0, [1, 2]], 3],
    [[0, 1, 2], [3, [4, 5]], 6],
)

UStep = Callable[[sp.Expr, sp.Expr, Sequence[tuple[sp.Expr, Sequence[sp.Expr]]]], sp.Expr]
"""``u_step(U(A), W(A), [(delta(B, C), values of v under C), ...]) -> U(B)``."""


def spec_u_step(
    u_a: sp.Expr, w_a: sp.Expr, sent: Sequence[tuple[sp.Expr, Sequence[sp.Expr]]]
) -> sp.Expr:
    """docs/HSA.md section 5: ``U(B) = U(A) + W(A) sum_C delta(B, C) * mean of v over C``."""
    return u_a + w_a * sp.Add(*(dl * sp.Add(*vals) / len(vals) for dl, vals in sent))


def up_pass(
    tree: Tree,
    leaf_energy: Callable[[int], sp.Expr],
    block_energy: Callable[[int, int], sp.Expr],
    recursion: Recursion,
) -> tuple[dict[int, sp.Expr], dict[int, sp.Expr], dict[tuple[int, int], sp.Expr]]:
    """``F``, ``L`` and ``delta`` by height, asking for each energy exactly once.

    ``leaf_energy(i)`` is ``s_ii``; ``block_energy(B, C)`` is ``e_BC`` for siblings ``B != C``.
    """
    f = {i: leaf_energy(i) for i in range(tree.num_leaves)}
    log_z: dict[int, sp.Expr] = {}
    delta: dict[tuple[int, int], sp.Expr] = {}
    for a in tree.families:
        kids = tree.children(a)
        energy = {(b, c): block_energy(b, c) for b in kids for c in kids if b != c}
        for b in kids:
            sibs = tree.siblings(b)
            sizes = [sp.Integer(tree.size(c)) for c in sibs]
            es = [energy[(b, c)] for c in sibs]
            log_z[b] = recursion.log_partition(f[b], sizes, es)
            _, ds = recursion.shares(f[b], sizes, es)
            delta.update({(b, c): x for c, x in zip(sibs, ds, strict=True)})
        f[a] = recursion.family_value(
            [sp.Integer(tree.size(b)) for b in kids], [log_z[b] for b in kids]
        )
    return f, log_z, delta


def down_pass(
    tree: Tree,
    f: dict[int, sp.Expr],
    log_z: dict[int, sp.Expr],
    delta: dict[tuple[int, int], sp.Expr],
    v: Sequence[sp.Expr],
    u_step: UStep = spec_u_step,
) -> list[sp.Expr]:
    """The outputs ``y_i = U(i) + W(i) v_i`` of docs/HSA.md section 5's down pass."""
    log_w = {tree.root: sp.Integer(0)}
    u = {tree.root: sp.Integer(0)}
    order = sorted(range(tree.num_nodes), key=lambda x: len(tree.path(x)))
    for b in order:
        a = tree.parent[b]
        if a == -1:
            continue
        log_w[b] = log_w[a] + f[b] - log_z[b]
        sent = [(delta[(b, c)], [v[j] for j in tree.leaves(c)]) for c in tree.siblings(b)]
        u[b] = u_step(u[a], sp.exp(log_w[a]), sent)
    return [u[i] + sp.exp(log_w[i]) * v[i] for i in range(tree.num_leaves)]


def _one(d: Derivation, nested: Any, u_step: UStep) -> None:
    tree = Tree.from_nested(nested)
    nodes = range(tree.num_nodes)
    f = {x: sp.Symbol(f"F_{x}", real=True) for x in nodes}
    log_z = {x: sp.Symbol(f"L_{x}", real=True) for x in nodes if x != tree.root}
    delta = {
        (b, c): sp.Symbol(f"delta_{b}{c}", positive=True) for b in nodes for c in tree.siblings(b)
    }
    v = sp.symbols(f"v_0:{tree.num_leaves}", real=True)
    y = down_pass(tree, f, log_z, delta, v, u_step)
    mu = {b: sp.exp(f[b] - log_z[b]) for b in log_z}
    theta = attention_from_shares(tree, mu, delta)
    target = theta * sp.Matrix(v)
    d.zero(
        f"Tree {nested}: with F, L, delta and v symbolic, the down pass gives "
        f"y_i = sum_j theta_ij v_j for every leaf, theta from section 3 with "
        f"mu(B) = exp(F(B) - L(B)).",
        [sp.powsimp(y[i] - target[i]) for i in range(tree.num_leaves)],
        eq("y_0", y[0]),
        eq(r"\sum_j \theta_{0j} v_j", target[0]),
    )


def prove_programme(
    u_step: UStep = spec_u_step, trees: Sequence[Any] = DEFAULT_PROGRAMME_TREES
) -> ProofResult:
    """Prove that the down pass reproduces ``theta @ v`` on symbolic trees."""
    d = Derivation(
        "programme",
        "6. The programme",
        r"The down pass $\log W(B) = \log W(A) + F(B) - L(B)$, "
        r"$U(B) = U(A) + W(A) \sum_C \delta(B, C)\, \bar v_C$, $W(\text{root}) = 1$, "
        r"$U(\text{root}) = 0$, $y_i = U(i) + W(i) v_i$ gives exactly "
        r"$y_i = \sum_j \theta_{ij} v_j$ with $\theta$ from docs/HSA.md section 3.",
    )
    d.say(
        "Unrolling the recursion: W(B) = mu(B_1) ... mu(B) along B's path, and U(i) collects, "
        "for every ancestor level l, W(B_{l-1}) delta(B_l, C) times the mean of v over each "
        "sibling C of B_l, which is sum over j in C of theta_ij v_j. SymPy checks the identity "
        "on whole trees, with every quantity a free symbol:"
    )
    for nested in trees:
        _one(d, nested, u_step)
    return d.result()
