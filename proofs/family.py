"""One family's free-energy problem (docs/HSA.md sections 3 and 4).

Rows under a child ``B`` keep a share ``mu`` inside ``B`` and send ``delta_C`` to each sibling
``C``. With ``B``'s own optimal value ``F(B)``, the sizes ``|C|`` and the block energies ``e_BC``
symbolic, the problem

    minimise  phi(mu, delta) = mu (log mu - F(B)) + sum_C delta_C (log delta_C - log|C| - e_BC)
    subject to  mu + sum_C delta_C = 1

is solved by ``mu = exp(F(B) - L(B))``, ``delta_C = |C| exp(e_BC - L(B))`` with optimal value
``-L(B)``. The formulas for ``L``, ``mu`` and ``delta`` come from a :class:`Recursion`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy as sp

from .result import Derivation, ProofResult, eq
from .softmax import solve_on_simplex
from .tree import HSA_RECURSION, Recursion

__all__ = ["family_objective", "family_symbols", "prove_family"]


def family_symbols(m: int) -> tuple[sp.Symbol, list[sp.Symbol], list[sp.Symbol]]:
    """``F(B)``, the sizes ``n_{C_k} = |C_k|`` and energies ``e_{B C_k}`` for ``m`` siblings."""
    own = sp.Symbol("F_B", real=True)
    sizes = [sp.Symbol(f"n_{{C_{k}}}", positive=True, integer=True) for k in range(1, m + 1)]
    energies = [sp.Symbol(f"e_{{B C_{k}}}", real=True) for k in range(1, m + 1)]
    return own, sizes, energies


def family_objective(
    mu: sp.Expr,
    deltas: Sequence[sp.Expr],
    own: sp.Expr,
    sizes: Sequence[sp.Expr],
    energies: Sequence[sp.Expr],
) -> sp.Expr:
    """``phi(mu, delta)``: the family problem's objective for one child (per row of ``B``)."""
    return mu * (sp.log(mu) - own) + sp.Add(
        *(
            dl * (sp.log(dl) - sp.log(n) - e)
            for dl, n, e in zip(deltas, sizes, energies, strict=True)
        )
    )


def _one(d: Derivation, m: int, recursion: Recursion) -> None:
    """The steps for a child with ``m`` siblings (``m = 0``: a single child)."""
    own, sizes, energies = family_symbols(m)
    mu = sp.Symbol("mu", positive=True)
    deltas = [sp.Symbol(f"delta_C{k}", positive=True) for k in range(1, m + 1)]
    lam = sp.Symbol("lambda", real=True)
    phi = family_objective(mu, deltas, own, sizes, energies)
    tag = {0: "no sibling", 1: "1 sibling"}.get(m, f"{m} siblings")
    d.say(f"**A child with {tag}.** The family objective:", eq(r"\varphi", phi))
    solution = solve_on_simplex(d, phi, [mu, *deltas], lam)
    log_z = recursion.log_partition(own, sizes, energies)
    mu_claim, delta_claim = recursion.shares(own, sizes, energies)
    d.zero(
        f"The stationary point is the claimed share table ({tag}).",
        [x - c for x, c in zip(solution, [mu_claim, *delta_claim], strict=True)],
        eq(r"\mu", solution[0]),
        *(eq(dl, x) for dl, x in zip(deltas, solution[1:], strict=True)),
    )
    d.zero(
        f"The claimed shares sum to one ({tag}).",
        mu_claim + sp.Add(*delta_claim) - 1,
    )
    at_min = phi.subs(dict(zip([mu, *deltas], solution, strict=True)))
    d.zero(
        f"The optimal value is -L(B) ({tag}).",
        at_min + log_z,
        eq(r"\varphi^* = -L(B)", -log_z),
    )
    hessian = sp.hessian(phi, [mu, *deltas])
    minors = [hessian[:k, :k].det() for k in range(1, m + 2)]
    d.check(
        f"The Hessian is diagonal with positive entries, so positive definite: phi is strictly "
        f"convex, the constraint is affine, and the stationary point is the unique minimiser "
        f"({tag}).",
        hessian.is_diagonal() and all(x.is_positive for x in minors),
        eq(r"\nabla^2 \varphi", hessian),
    )
    q = [mu_claim, *delta_claim]
    p = [mu, *deltas]
    kl = sp.Add(*(pk * sp.log(pk / qk) for pk, qk in zip(p, q, strict=True)))
    d.zero(
        f"On the simplex, phi + L(B) is the KL divergence from the claimed shares, so "
        f"phi >= -L(B) with equality only there ({tag}).",
        (phi + log_z - kl).subs(mu, 1 - sp.Add(*deltas)),
        eq(
            r"\varphi(\mu, \delta) + L(B)",
            r"\mathrm{KL}\big((\mu, \delta) \,\|\, (\mu^*, \delta^*)\big)",
        ),
    )


def prove_family(
    recursion: Recursion = HSA_RECURSION, siblings: Sequence[int] = (0, 1, 2, 3)
) -> ProofResult:
    """Solve one family's problem for each number of siblings and compare with ``recursion``."""
    d = Derivation(
        "family",
        "2. One family",
        r"For a child $B$ with own value $F(B)$ and siblings $C$ of sizes $|C|$ and block "
        r"energies $e_{BC}$ (all symbolic), $\min \varphi(\mu, \delta) = \mu(\log\mu - F(B)) + "
        r"\sum_C \delta_C(\log\delta_C - \log|C| - e_{BC})$ subject to "
        r"$\mu + \sum_C \delta_C = 1$ is attained only at $\mu(B) = e^{F(B) - L(B)}$, "
        r"$\delta(B, C) = |C| e^{e_{BC} - L(B)}$, with value $-L(B)$, where "
        r"$L(B) = \log(e^{F(B)} + \sum_C |C| e^{e_{BC}})$. Here $n_X = |X|$.",
    )
    d.say(
        "Where the objective comes from: a row under B keeps mu inside B, where its best "
        "distribution is worth -F(B) per unit of mass, and sends delta_C to sibling C, spread as "
        "delta_C / |C| over C's |C| keys; entropy and energy of that spread give the C term "
        "(proof 3 derives this from the KL objective)."
    )
    for m in siblings:
        _one(d, m, recursion)
    return d.result()
