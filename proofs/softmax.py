"""Softmax is entropy minimisation (docs/HSA.md section 4, first bullet).

For one query with scores ``s_1..s_n`` the free energy
``F(p) = sum_j p_j (-s_j) + sum_j p_j log p_j`` is minimised over the simplex by
``p_j = g(s_j) / sum_k g(s_k)`` with ``g = exp`` (softmax), and
``F(p) = KL(p || softmax(s)) - logsumexp(s)``. The generator ``g`` is the claim under test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy as sp

from .result import Derivation, ProofResult, eq

__all__ = ["prove_softmax", "solve_on_simplex"]

Generator = Callable[[sp.Expr], sp.Expr]


def solve_on_simplex(
    d: Derivation, objective: sp.Expr, shares: Sequence[sp.Symbol], lam: sp.Symbol
) -> list[sp.Expr]:
    """The stationary point of ``objective + lam (sum shares - 1)``, recorded as steps in ``d``.

    Each stationarity equation is solved for its share, then the constraint for ``lam``.
    """
    lagrangian = objective + lam * (sp.Add(*shares) - 1)
    solved = []
    for p in shares:
        stationarity = sp.diff(lagrangian, p)
        roots = sp.solve(stationarity, p)
        if len(roots) != 1:
            raise ArithmeticError(f"stationarity in {p} has {len(roots)} solutions")
        solved.append(roots[0])
    constraint = sp.factor_terms(sp.expand(sp.Add(*solved), power_exp=True)) - 1
    lam_roots = sp.solve(constraint, lam)
    if len(lam_roots) != 1:
        raise ArithmeticError(f"the constraint gives {len(lam_roots)} multipliers")
    d.say(
        "Lagrangian; stationarity in each share gives the share in terms of the multiplier, "
        "and the simplex constraint fixes the multiplier:",
        eq(r"\mathcal{L}", lagrangian),
        eq(lam, lam_roots[0]),
    )
    return [sp.expand(x.subs(lam, lam_roots[0]), power_exp=True) for x in solved]


def _concrete(d: Derivation, n: int, g: Generator, first: bool) -> None:
    """The steps for ``n`` scores; after the first ``n`` the prose is kept short."""
    p = sp.symbols(f"p_1:{n + 1}", positive=True)
    s = sp.symbols(f"s_1:{n + 1}", real=True)
    lam = sp.Symbol("lambda", real=True)
    free_energy = sp.Add(*(pj * (-sj) + pj * sp.log(pj) for pj, sj in zip(p, s, strict=True)))
    d.say(f"**n = {n}.** The free energy on the simplex:", eq("F(p)", free_energy))
    solution = solve_on_simplex(d, free_energy, p, lam)
    normaliser = sp.Add(*(g(sk) for sk in s))
    claimed = [g(sj) / normaliser for sj in s]
    d.zero(
        f"The stationary point is the claimed minimiser (n = {n}).",
        [x - c for x, c in zip(solution, claimed, strict=True)],
        *(eq(pj, x) for pj, x in zip(p, solution, strict=True)),
    )
    hessian = sp.hessian(free_energy, p)
    minors = [hessian[:k, :k].det() for k in range(1, n + 1)]
    d.check(
        f"The Hessian is diagonal with entries 1/p_j: all leading minors are positive for "
        f"p > 0, so F is strictly convex on the simplex (an affine set) and the stationary "
        f"point is its unique minimiser (n = {n})."
        if first
        else f"Hessian diagonal with positive leading minors: unique minimiser (n = {n}).",
        hessian.is_diagonal() and all(m.is_positive for m in minors),
        eq(r"\nabla^2 F", hessian),
    )
    lse = sp.log(sp.Add(*(sp.exp(sk) for sk in s)))
    at_min = free_energy.subs(dict(zip(p, claimed, strict=True)))
    d.zero(
        f"The minimum value is -logsumexp(s) (n = {n}).",
        at_min + lse,
        eq("F(p^*)", -lse),
    )
    kl = sp.Add(*(pj * sp.log(pj / c) for pj, c in zip(p, claimed, strict=True)))
    on_simplex = {p[-1]: 1 - sp.Add(*p[:-1])}
    d.zero(
        f"On the simplex (p_n = 1 - the rest) the free energy is KL to the claimed minimiser "
        f"minus logsumexp (n = {n})."
        if first
        else f"F(p) = KL(p || p*) - logsumexp(s) on the simplex (n = {n}).",
        (free_energy - (kl - sp.log(normaliser))).subs(on_simplex),
        eq("F(p)", r"\mathrm{KL}(p \,\|\, p^*) - " + sp.latex(lse)),
    )


def _general(d: Derivation, g: Generator) -> None:
    n = sp.Symbol("n", integer=True, positive=True)
    j, k, i = sp.symbols("j k i", integer=True, positive=True)
    p = sp.IndexedBase("p", positive=True)
    s = sp.IndexedBase("s", real=True)
    lam = sp.Symbol("lambda", real=True)
    free_energy = sp.Sum(p[j] * (-s[j]) + p[j] * sp.log(p[j]), (j, 1, n))
    lagrangian = free_energy + lam * (sp.Sum(p[j], (j, 1, n)) - 1)
    grad = sp.refine(sp.diff(lagrangian, p[k]).doit(), sp.Q.le(k, n))
    d.say(
        "**General n.** Differentiate the Lagrangian (symbolic sums) in p_k, 1 <= k <= n:",
        eq(r"\mathcal{L}", lagrangian),
        eq(r"\frac{\partial \mathcal{L}}{\partial p_k}", grad),
    )
    (p_k,) = sp.solve(grad, p[k])
    constraint = sp.simplify(sp.Sum(p_k.subs(k, i), (i, 1, n)) - 1)
    (lam_star,) = sp.solve(constraint, lam)
    solution = sp.simplify(p_k.subs(lam, lam_star))
    d.say(
        "Solve for p_k, then the constraint for the multiplier:",
        eq(p[k], p_k),
        eq(lam, lam_star),
        eq(p[k], solution),
    )
    claimed = g(s[k]) / sp.Sum(g(s[i]), (i, 1, n))
    d.zero("The stationary point is the claimed minimiser (general n).", solution - claimed)
    l = sp.Symbol("l", integer=True, positive=True)
    hessian = sp.refine(sp.diff(free_energy, p[k], p[l]).doit(), sp.Q.le(k, n) & sp.Q.le(l, n))
    d.zero(
        "The Hessian is diagonal with entry 1/p_k > 0 at (k, k): strict convexity and a "
        "unique minimiser, for every n.",
        hessian - sp.KroneckerDelta(k, l) / p[k],
        eq(r"\frac{\partial^2 F}{\partial p_k \partial p_l}", hessian),
    )
    q = g(s[j]) / sp.Sum(g(s[i]), (i, 1, n))
    kl = sp.Sum(p[j] * (sp.log(p[j]) - sp.log(q)), (j, 1, n))
    log_z = sp.log(sp.Sum(g(s[i]), (i, 1, n)))
    difference = sp.simplify(sp.expand_log(free_energy - (kl - log_z), force=True))
    on_simplex = difference.subs(sp.Sum(p[j], (j, 1, n)), 1)
    d.say(
        "Expand the logarithms and collect the sums: the difference between F and "
        "KL - logsumexp is a multiple of the constraint.",
        eq(r"F(p) - (\mathrm{KL}(p \,\|\, p^*) - \log Z)", difference),
    )
    d.zero(
        "With sum_j p_j = 1 it vanishes: F(p) = KL(p || softmax(s)) - logsumexp(s) (general n).",
        on_simplex,
    )


def prove_softmax(g: Generator = sp.exp, sizes: Sequence[int] = (1, 2, 3, 4, 5)) -> ProofResult:
    """Prove that ``p_j = g(s_j) / sum_k g(s_k)`` minimises the free energy (true for ``exp``)."""
    d = Derivation(
        "softmax",
        "1. Softmax from free energy",
        r"For scores $s_1..s_n$, $\arg\min_{p \in \Delta_n} \sum_j p_j(-s_j) + \sum_j p_j \log p_j"
        r" = \mathrm{softmax}(s)$, and on the simplex $F(p) = \mathrm{KL}(p \,\|\, "
        r"\mathrm{softmax}(s)) - \mathrm{logsumexp}(s)$. Concrete $n \le 5$, then general $n$.",
    )
    for k, n in enumerate(sizes):
        _concrete(d, n, g, first=k == 0)
    _general(d, g)
    return d.result()
