"""Proof results, the step-by-step builder that produces them, and the Markdown report.

A proof is a list of steps. A *derivation* step states what is being done (with display maths);
a *check* step states a claim together with whether SymPy established it. A proof's verdict is
``True`` exactly when it has at least one check and every check holds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy as sp

__all__ = [
    "Derivation",
    "ProofResult",
    "Step",
    "counterexample",
    "eq",
    "latex",
    "reduce_zero",
    "render_report",
]


@dataclass(frozen=True)
class Step:
    """One step: Markdown prose, LaTeX display lines, and ``holds`` (``None`` for a derivation)."""

    text: str
    math: tuple[str, ...] = ()
    holds: bool | None = None


@dataclass(frozen=True)
class ProofResult:
    """The outcome of one proof: its claim, the steps taken and the verdict."""

    name: str
    title: str
    statement: str
    steps: tuple[Step, ...]
    verdict: bool
    seconds: float

    @property
    def checks(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.holds is not None)

    @property
    def failures(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.holds is False)

    def to_markdown(self) -> str:
        """This proof as a Markdown section with ``$$...$$`` display maths."""
        mark = "proved" if self.verdict else "NOT PROVED"
        lines = [
            f"## {self.title} ({mark})",
            "",
            f"**Claim.** {self.statement}",
            "",
        ]
        for number, step in enumerate(self.steps, 1):
            tag = {None: "", True: " **[holds]**", False: " **[FAILS]**"}[step.holds]
            lines.append(f"{number}. {step.text}{tag}")
            for eq in step.math:
                lines += ["", f"   $$ {eq} $$"]
            lines.append("")
        passed = len(self.checks) - len(self.failures)
        lines += [
            f"*Verdict: {mark}; {passed} of {len(self.checks)} checks hold "
            f"({self.seconds:.2f} s).*",
            "",
        ]
        return "\n".join(lines)


def latex(expr: sp.Basic | str) -> str:
    """LaTeX for a SymPy expression (strings pass through)."""
    return expr if isinstance(expr, str) else sp.latex(expr)


def eq(lhs: sp.Basic | str, rhs: sp.Basic | str) -> str:
    """LaTeX for ``lhs = rhs`` without letting SymPy evaluate the equation."""
    return f"{latex(lhs)} = {latex(rhs)}"


def _split_sums(expr: sp.Expr) -> sp.Expr:
    def is_sum(a: sp.Basic) -> bool:
        return isinstance(a, sp.Sum)

    expr = expr.replace(
        is_sum,
        lambda a: sp.Sum(sp.expand(sp.expand_log(a.function, force=True)), *a.limits),
    )
    expr = sp.expand(expr)
    return expr.replace(is_sum, lambda a: sp.factor_terms(a.doit()))


def reduce_zero(expr: sp.Expr) -> sp.Expr:
    """Bring ``expr`` towards zero: combine exponentials, split logarithms, expand, simplify.

    Logarithms are split with ``force=True``; every logarithm in these derivations is of a
    positive quantity (a share, a leaf count, a sum of exponentials), where that is exact.
    Symbolic sums are split by linearity and constant factors taken out.
    """
    if expr.has(sp.Sum):
        expr = _split_sums(expr)
    e = sp.expand(sp.expand_log(sp.powsimp(sp.expand_log(expr, force=True)), force=True))
    if e == 0:
        return e
    try:
        e = sp.simplify(e)
    except (ArithmeticError, StopIteration, TypeError, ValueError):
        return e  # SymPy's simplifier gives up on some symbolic sums: not reduced.
    if e == 0:
        return e
    return sp.expand(sp.expand_log(e, force=True))


def _sample(symbol: sp.Symbol, rng: random.Random) -> sp.Expr:
    if symbol.is_integer:
        return sp.Integer(rng.randint(2, 4))
    if symbol.is_nonnegative:  # shares: small enough that a few of them stay inside the simplex
        return sp.Rational(rng.randint(2, 12), 40)
    return sp.Rational(rng.randint(-40, 40), 20)


def counterexample(expr: sp.Expr, seed: int = 0) -> tuple[dict, float] | None:
    """Values of the free symbols at which ``expr`` is clearly non-zero, or ``None``.

    Integer symbols (sizes, ranges of sums) are fixed first and sums evaluated, then the
    remaining symbols and indexed entries get random values consistent with their assumptions.
    """
    rng = random.Random(seed)
    for _ in range(5):
        values: dict = {}
        e = expr
        ints = sorted((s for s in e.free_symbols if s.is_integer), key=str)
        values.update({s: _sample(s, rng) for s in ints})
        e = e.subs(values).doit()
        indexed = e.atoms(sp.Indexed)
        labels = {a.base.label for a in indexed}
        atoms = sorted(indexed | (e.free_symbols - labels), key=str)
        rest = {}
        for a in atoms:
            base = a.base.label if isinstance(a, sp.Indexed) else a
            rest[a] = _sample(base, rng)
        try:
            value = complex(sp.N(e.subs(rest), 30))
        except (TypeError, ValueError):
            continue
        if abs(value) > 1e-12:
            return {**values, **rest}, abs(value)
    return None


class Derivation:
    """Collects the steps of one proof; :meth:`result` turns them into a :class:`ProofResult`."""

    def __init__(self, name: str, title: str, statement: str) -> None:
        self.name, self.title, self.statement = name, title, statement
        self.steps: list[Step] = []
        self._start = time.perf_counter()

    def say(self, text: str, *math: sp.Basic | str) -> None:
        """A derivation step: it asserts nothing by itself."""
        self.steps.append(Step(text, tuple(latex(m) for m in math)))

    def check(self, text: str, holds: bool, *math: sp.Basic | str) -> bool:
        """A claim that holds or fails."""
        self.steps.append(Step(text, tuple(latex(m) for m in math), bool(holds)))
        return bool(holds)

    def zero(
        self,
        text: str,
        exprs: sp.Expr | Sequence[sp.Expr],
        *math: sp.Basic | str,
        reduce: Callable[[sp.Expr], sp.Expr] = reduce_zero,
    ) -> bool:
        """Check that ``exprs`` (one or several) simplify to zero; else name a numeric witness."""
        items = list(exprs) if isinstance(exprs, Sequence) else [exprs]
        bad = [e for e in items if reduce(e) != 0]
        if bad:
            if len(items) > 1:
                text += f" {len(bad)} of {len(items)} differences do not vanish."
            witness = counterexample(bad[0])
            if witness is None:
                text += " SymPy could not reduce the difference to zero."
            else:
                values, size = witness
                shown = ", ".join(
                    f"${sp.latex(k)} = {sp.latex(v)}$" for k, v in list(values.items())[:6]
                )
                more = ", ..." if len(values) > 6 else ""
                text += f" At {shown}{more} it is {size:.4g} in absolute value, not zero."
        return self.check(text, not bad, *math)

    def result(self) -> ProofResult:
        checks = [s for s in self.steps if s.holds is not None]
        verdict = bool(checks) and all(s.holds for s in checks)
        return ProofResult(
            self.name,
            self.title,
            self.statement,
            tuple(self.steps),
            verdict,
            time.perf_counter() - self._start,
        )


def render_report(results: Sequence[ProofResult], *, header: str = "") -> str:
    """All proofs as one Markdown document with a summary table."""
    lines = ["# HSA: derivations checked with SymPy", ""]
    if header:
        lines += [header, ""]
    lines += ["| proof | verdict | checks | time |", "| --- | --- | --- | --- |"]
    for r in results:
        mark = "proved" if r.verdict else "**NOT PROVED**"
        lines.append(
            f"| {r.title} | {mark} | {len(r.checks) - len(r.failures)}/{len(r.checks)} "
            f"| {r.seconds:.2f} s |"
        )
    lines.append("")
    for r in results:
        lines.append(r.to_markdown())
    return "\n".join(lines)
