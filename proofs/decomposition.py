"""The optimality theorem (docs/HSA.md section 4; the paper's Theorem 3.2): the KL problem splits.

Over row-stochastic matrices ``theta`` that are constant on every sibling block, the objective
``sum_i KL(theta_i. || softmax(s_i.))`` splits into the family problems of proof 2, and its
minimum is ``sum_i logsumexp_j s_ij - |root| F(root)`` with ``F`` from the recursion.

Part A proves the induction step for any tree (symbolic sizes); part B expands the whole
objective for concrete two- and three-level trees with symbolic scores.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import sympy as sp

from .family import family_objective, family_symbols
from .result import Derivation, ProofResult, eq
from .tree import HSA_RECURSION, Recursion, Tree, TreeModel, attention_from_shares

__all__ = ["DEFAULT_TREES", "prove_decomposition", "split_objective", "total_kl"]

DEFAULT_TREES: tuple[Any, ...] = ([[0, 1], 2], [[0, [1, 2]], 3])
"""A two-level and a three-level tree with unequal sibling sizes."""


def _cancel(e: sp.Expr) -> sp.Expr:
    return sp.cancel(sp.together(e))


# ---------------------------------------------------------------------------- part A


def _block_term(d: Derivation, recursion: Recursion) -> None:
    n_b, n_c = sp.symbols("n_B n_C", positive=True, integer=True)
    i, j = sp.symbols("i j", positive=True, integer=True)
    s = sp.IndexedBase("s", real=True)
    delta = sp.Symbol("delta", positive=True)
    theta = delta / n_c
    block = sp.Sum(theta * (sp.log(theta) - s[i, j]), (i, 1, n_b), (j, 1, n_c))

    def sum_of(g):
        return sp.Sum(g(s[i, j]), (i, 1, n_b), (j, 1, n_c))

    energy = recursion.block_energy(sum_of, n_b * n_c)
    term = n_b * delta * (sp.log(delta) - sp.log(n_c) - energy)
    d.say(
        "**A1. A sibling block.** Rows i in B (|B| = n_B) give each key j of a sibling C "
        "(|C| = n_C) the weight delta / n_C, where delta is the share B sends to C. The block's "
        "part of sum_ij theta_ij (log theta_ij - s_ij):",
        eq(r"\sum_{i \in B} \sum_{j \in C} \theta_{ij}(\log\theta_{ij} - s_{ij})", block),
    )
    d.zero(
        "It equals n_B delta (log delta - log|C| - e_BC) with the claimed block energy e_BC.",
        block - term,
        eq("e_{BC}", energy),
    )


def _diagonal_term(d: Derivation) -> None:
    n_b = sp.Symbol("n_B", positive=True, integer=True)
    i, j = sp.symbols("i j", positive=True, integer=True)
    s = sp.IndexedBase("s", real=True)
    t = sp.IndexedBase("t", positive=True)  # theta^B: B's own row-stochastic matrix
    mu = sp.Symbol("mu", positive=True)
    inside = sp.Sum(mu * t[i, j] * (sp.log(mu * t[i, j]) - s[i, j]), (i, 1, n_b), (j, 1, n_b))
    g_b = sp.Sum(t[i, j] * (sp.log(t[i, j]) - s[i, j]), (i, 1, n_b), (j, 1, n_b))
    difference = sp.simplify(inside - (n_b * mu * sp.log(mu) + mu * g_b))
    d.say(
        "**A2. Inside a child.** Rows in B keep mass mu inside B, spread as mu t_ij with t a "
        "row-stochastic matrix on B (block-constant on B's own sibling blocks). Their part of "
        "the objective, minus |B| mu log mu + mu G_B(t), reduces to a multiple of the row-sum "
        "constraint:",
        eq(r"\sum_{i, j \in B} \mu t_{ij}(\log(\mu t_{ij}) - s_{ij})", inside),
        eq(r"\text{difference}", difference),
    )
    d.zero(
        "With sum_ij t_ij = |B| (rows of t sum to one) the difference vanishes.",
        difference.subs(sp.Sum(t[i, j], (i, 1, n_b), (j, 1, n_b)), n_b),
    )


def _induction_step(d: Derivation, b: int, recursion: Recursion) -> None:
    sizes = [sp.Symbol(f"n_{k}", positive=True, integer=True) for k in range(1, b + 1)]
    own = [sp.Symbol(f"F_{k}", real=True) for k in range(1, b + 1)]
    rest = [sp.Symbol(f"R_{k}", nonnegative=True) for k in range(1, b + 1)]
    energy = {
        (k, l): sp.Symbol(f"e_{k + 1}{l + 1}", real=True)
        for k in range(b)
        for l in range(b)
        if k != l
    }
    delta = {
        (k, l): sp.Symbol(f"delta_{k + 1}{l + 1}", positive=True)
        for k in range(b)
        for l in range(b)
        if k != l
    }
    others = [[l for l in range(b) if l != k] for k in range(b)]
    mu = [1 - sp.Add(*(delta[(k, l)] for l in others[k])) for k in range(b)]
    log_z = [
        recursion.log_partition(
            own[k], [sizes[l] for l in others[k]], [energy[(k, l)] for l in others[k]]
        )
        for k in range(b)
    ]
    f_a = recursion.family_value(sizes, log_z)
    size_a = sp.Add(*sizes)
    objective = sp.Add(
        *(
            sizes[k] * mu[k] * sp.log(mu[k])
            + mu[k] * (-sizes[k] * own[k] + rest[k])
            + sp.Add(
                *(
                    sizes[k]
                    * delta[(k, l)]
                    * (sp.log(delta[(k, l)]) - sp.log(sizes[l]) - energy[(k, l)])
                    for l in others[k]
                )
            )
            for k in range(b)
        )
    )
    phi = [
        family_objective(
            mu[k],
            [delta[(k, l)] for l in others[k]],
            own[k],
            [sizes[l] for l in others[k]],
            [energy[(k, l)] for l in others[k]],
        )
        for k in range(b)
    ]
    split = (
        -size_a * f_a
        + sp.Add(*(sizes[k] * (phi[k] + log_z[k]) for k in range(b)))
        + sp.Add(*(mu[k] * rest[k] for k in range(b)))
    )
    kids = "1 child" if b == 1 else f"{b} children"
    d.zero(
        f"**A3. Induction step, {kids}** B_1..B_{b} of A (sizes n_k, own values F_k, "
        f"remainders R_k >= 0, energies e_kl and shares delta_kl all symbolic, "
        f"mu_k = 1 - sum_l delta_kl). Assume G_k = -n_k F_k + R_k for each child. Adding A1 "
        f"and A2 over the children gives G_A (first line); with the claimed L(B_k) and F(A) it "
        f"equals the split form (last line), where phi_k is proof 2's objective.",
        objective - split,
        eq("G_A", objective),
        eq("F(A)", f_a),
        eq(
            r"\varphi_k",
            r"\mu_k(\log\mu_k - F_k) + \sum_{l \ne k} \delta_{kl}"
            r"(\log\delta_{kl} - \log n_l - e_{kl})",
        ),
        eq(
            "G_A",
            r"-|A| F(A) + \sum_k n_k \big(\varphi_k(\mu_k, \delta_k) + L(B_k)\big)"
            r" + \sum_k \mu_k R_k",
        ),
    )


def _part_a(d: Derivation, recursion: Recursion, branchings: Sequence[int]) -> None:
    d.say(
        "**Part A: any tree, by induction on height.** Rows sum to one, so "
        "sum_i KL(theta_i || softmax(s_i)) = sum_i logsumexp_j s_ij + G(theta) with "
        "G(theta) = sum_ij theta_ij (log theta_ij - s_ij). For a node A, G_A is G restricted "
        "to the rows and columns under A, for theta normalised to mass one inside A. "
        "Claim: G_A = -|A| F(A) + R_A with R_A >= 0, and R_A = 0 exactly at HSA's shares in "
        "A's subtree. For a leaf, theta = (1) and G_i = -s_ii = -F(i), R_i = 0."
    )
    _block_term(d, recursion)
    _diagonal_term(d)
    for b in branchings:
        _induction_step(d, b, recursion)
    own, sizes, energies = family_symbols(2)
    deltas = [sp.Symbol(f"delta_C{k}", positive=True) for k in (1, 2)]
    mu = 1 - sp.Add(*deltas)
    optimum = recursion.shares(own, sizes, energies)
    p, q = [mu, *deltas], [optimum[0], *optimum[1]]
    kl = sp.Add(*(x * sp.log(x / y) for x, y in zip(p, q, strict=True)))
    phi = family_objective(mu, deltas, own, sizes, energies)
    d.zero(
        "**A4. The brackets.** As in proof 2, phi_k + L(B_k) is the KL divergence of B_k's "
        "shares from the claimed optimal ones (shown for a child with two siblings of "
        "symbolic sizes): >= 0, and 0 only there.",
        phi + recursion.log_partition(own, sizes, energies) - kl,
        eq(
            r"\varphi(\mu, \delta) + L(B)",
            r"\mathrm{KL}\big((\mu, \delta) \,\|\, (\mu^*, \delta^*)\big)",
        ),
    )
    d.say(
        "**A5.** With mu_k > 0 and R_k >= 0, R_A = sum_k n_k KL_k + sum_k mu_k R_k >= 0, zero "
        "exactly when A's shares are optimal and every R_k = 0. By induction on height, "
        "G_root >= -|root| F(root) for every block-constant row-stochastic theta with positive "
        "entries, with equality only at HSA's theta; adding sum_i logsumexp_j s_ij gives the "
        "theorem for any tree. Matrices with zero entries are limits of positive ones and the "
        "objective is continuous (0 log 0 = 0), so the bound holds for them too, and strict "
        "convexity of x log x keeps the minimiser unique."
    )


# ---------------------------------------------------------------------------- part B


def total_kl(theta: sp.Matrix, scores: sp.Matrix) -> sp.Expr:
    """``sum_i KL(theta_i. || softmax(s_i.))`` of a one-tree attention matrix."""
    n = theta.rows
    total = sp.Integer(0)
    for i in range(n):
        log_z = sp.log(sp.Add(*(sp.exp(scores[i, j]) for j in range(n))))
        for j in range(n):
            total += theta[i, j] * (sp.log(theta[i, j]) - (scores[i, j] - log_z))
    return total


def _free_shares(tree: Tree) -> tuple[dict[int, sp.Expr], dict[tuple[int, int], sp.Symbol]]:
    """Symbolic shares: ``delta(B, C)`` free, ``mu(B) = 1 - sum_C delta(B, C)``."""
    delta = {
        (b, c): sp.Symbol(f"delta_{b}{c}", positive=True)
        for a in tree.families
        for b in tree.children(a)
        for c in tree.siblings(b)
    }
    mu = {
        b: 1 - sp.Add(*(delta[(b, c)] for c in tree.siblings(b)))
        for a in tree.families
        for b in tree.children(a)
    }
    return mu, delta


def _weights(tree: Tree, mu: dict[int, sp.Expr]) -> dict[int, sp.Expr]:
    """``W(X)``: the product of ``mu`` along the path below the root."""
    return {x: sp.Mul(*(mu[y] for y in tree.path(x)[1:])) for x in range(tree.num_nodes)}


def split_objective(
    tree: Tree, model: TreeModel, mu: dict[int, sp.Expr], delta: dict[tuple[int, int], sp.Expr]
) -> sp.Expr:
    """``-|R| F(R) + sum_A W(A) sum_B |B| (phi_B + L(B))`` with the model's ``F`` and ``L``.

    ``phi_B`` uses the true block means of the scores and ``log|C|``: it is the part of the
    objective derived in part A, not the recursion under test.
    """
    w = _weights(tree, mu)
    true_energy = TreeModel(tree, scores=model.scores).energies
    total = -tree.size(tree.root) * model.F[tree.root]
    for a in tree.families:
        for b in tree.children(a):
            sibs = tree.siblings(b)
            phi = family_objective(
                mu[b],
                [delta[(b, c)] for c in sibs],
                model.F[b],
                [sp.Integer(tree.size(c)) for c in sibs],
                [true_energy[(b, c)] for c in sibs],
            )
            total += w[a] * tree.size(b) * (phi + model.L[b])
    return total


def _parametrisation(d: Derivation, tree: Tree, label: str) -> None:
    mu, delta = _free_shares(tree)
    theta = attention_from_shares(tree, mu, delta)
    n = tree.num_leaves
    d.zero(
        f"({label}) theta built from free shares (mu(B) = 1 - sum_C delta(B, C)) has rows "
        f"summing to one.",
        [sp.Add(*theta.row(i)) - 1 for i in range(n)],
        eq(r"\theta(\delta)", theta),
    )
    blocks: dict[tuple[int, int], set] = {}
    for i in range(n):
        for j in range(n):
            if i != j:
                _, b, c = tree.split(i, j)
                blocks.setdefault((b, c), set()).add(sp.expand(theta[i, j]))
    d.check(
        f"({label}) It is constant on each of the {len(blocks)} sibling blocks B x C.",
        all(len(v) == 1 for v in blocks.values()),
    )
    free = {key: sp.Symbol(f"t_{key[0]}{key[1]}", positive=True) for key in blocks}

    def general(i: int, j: int) -> sp.Expr:
        if i != j:
            return free[tree.split(i, j)[1:]]
        return 1 - sp.Add(*(free[tree.split(i, k)[1:]] for k in range(n) if k != i))

    target = sp.Matrix(n, n, general)

    def outflow(x: int) -> sp.Expr:
        return sp.Add(
            *(tree.size(c) * free[(y, c)] for y in tree.path(x)[1:] for c in tree.siblings(y))
        )

    inverse = {
        delta[(b, c)]: tree.size(c) * free[(b, c)] / (1 - outflow(tree.parent[b]))
        for (b, c) in delta
    }
    d.zero(
        f"({label}) Conversely, every block-constant row-stochastic matrix with positive "
        f"entries (block values t_BC, diagonal fixed by the row sums) comes from the shares "
        f"delta(B, C) = |C| t_BC / W(A), W(A) = 1 - (mass a row under A sends outside A): "
        f"the map from shares to theta is a bijection.",
        list((theta.subs(inverse) - target).applyfunc(_cancel)),
        eq(r"\theta", target),
    )


def _objective_identity(
    d: Derivation, tree: Tree, label: str, recursion: Recursion, seed: int
) -> None:
    mu, delta = _free_shares(tree)
    model = TreeModel(tree, recursion)
    scores = model.scores
    theta = attention_from_shares(tree, mu, delta)
    g = sp.Add(
        *(
            theta[i, j] * (sp.log(theta[i, j]) - scores[i, j])
            for i in range(tree.num_leaves)
            for j in range(tree.num_leaves)
        )
    )
    lse = sp.Add(
        *(
            sp.log(sp.Add(*(sp.exp(scores[i, j]) for j in range(tree.num_leaves))))
            for i in range(tree.num_leaves)
        )
    )
    d.zero(
        f"({label}) For these theta, sum_i KL(theta_i || softmax(s_i)) = "
        f"sum_i logsumexp_j s_ij + G(theta).",
        total_kl(theta, scores) - (lse + g),
    )
    d.zero(
        f"({label}) **The split**, an identity in all shares and all scores: W(A) is the "
        f"product of mu along A's path, phi_B is proof 2's objective with the block means of "
        f"the scores, and F, L come from the claimed recursion.",
        g - split_objective(tree, model, mu, delta),
        eq(
            r"G(\theta)",
            r"-|R|\,F(R) + \sum_{A} W(A) \sum_{B \in \mathrm{ch}(A)} |B|\,"
            r"\big(\varphi_B(\mu_B, \delta_B) + L(B)\big)",
        ),
        eq("F(R)", model.F[tree.root]),
    )
    kls = []
    true_energy = TreeModel(tree, scores=scores).energies
    for a in tree.families:
        for b in tree.children(a):
            sibs = tree.siblings(b)
            phi = family_objective(
                mu[b],
                [delta[(b, c)] for c in sibs],
                model.F[b],
                [sp.Integer(tree.size(c)) for c in sibs],
                [true_energy[(b, c)] for c in sibs],
            )
            p = [mu[b], *(delta[(b, c)] for c in sibs)]
            q = [model.mu[b], *(model.delta[(b, c)] for c in sibs)]
            kl = sp.Add(*(x * sp.log(x / y) for x, y in zip(p, q, strict=True)))
            kls.append(phi + model.L[b] - kl)
    d.zero(
        f"({label}) Each bracket phi_B + L(B) is the KL divergence of B's shares from the "
        f"claimed optimal shares (so >= 0, zero only there).",
        kls,
    )
    _numeric_optimum(d, tree, label, recursion, seed)


def _numeric_optimum(
    d: Derivation, tree: Tree, label: str, recursion: Recursion, seed: int
) -> None:
    rng = random.Random(seed)
    model = TreeModel(tree, recursion)
    values = {x: sp.Float(rng.uniform(-2, 2), 40) for x in model.scores}
    kl = total_kl(model.theta, model.scores)
    claimed = (
        sp.Add(
            *(
                sp.log(sp.Add(*(sp.exp(model.scores[i, j]) for j in range(tree.num_leaves))))
                for i in range(tree.num_leaves)
            )
        )
        - tree.size(tree.root) * model.F[tree.root]
    )
    gap = abs(sp.N((kl - claimed).subs(values), 40))
    d.check(
        f"({label}) Numerical confirmation at random scores (40 digits): HSA's theta attains "
        f"sum_i logsumexp_j s_ij - |R| F(R) (gap {float(gap):.1e}).",
        gap < sp.Float("1e-30"),
    )


def prove_decomposition(
    recursion: Recursion = HSA_RECURSION,
    trees: Sequence[Any] = DEFAULT_TREES,
    induction: bool = True,
    branchings: Sequence[int] = (1, 2, 3),
) -> ProofResult:
    """Prove the optimality theorem: the KL problem splits and its value is the recursion.

    Part A (``induction``) checks the induction step for families of each size in
    ``branchings``; part B expands the whole objective on each tree in ``trees``.
    """
    d = Derivation(
        "decomposition",
        "3. Decomposition (Theorem 3.2)",
        r"Over row-stochastic $\theta$ constant on sibling blocks, "
        r"$\sum_i \mathrm{KL}(\theta_{i\cdot} \,\|\, \mathrm{softmax}(s_{i\cdot}))$ splits "
        r"into the family problems of proof 2; its minimum is "
        r"$\sum_i \mathrm{logsumexp}_j s_{ij} - |R| F(R)$ with "
        r"$F(A) = \sum_B \frac{|B|}{|A|} L(B)$, attained only at HSA's $\theta$.",
    )
    if induction:
        _part_a(d, recursion, branchings)
    for k, nested in enumerate(trees):
        tree = Tree.from_nested(nested)
        depth = max(len(tree.path(i)) - 1 for i in range(tree.num_leaves))
        label = f"{depth}-level tree {nested}"
        names = ", ".join(
            f"{a} = {'root' if a == tree.root else 'family'} over leaves {tree.leaves(a)}"
            for a in sorted(tree.families)
        )
        d.say(
            f"**Part B: the {label}**, all {tree.num_leaves**2} scores symbolic, every "
            f"block-constant row-stochastic theta through free shares. Nodes: leaves "
            f"0..{tree.num_leaves - 1}, {names}; delta_BC is the share child B sends to "
            f"sibling C."
        )
        _parametrisation(d, tree, label)
        _objective_identity(d, tree, label, recursion, seed=k)
    return d.result()
