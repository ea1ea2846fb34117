"""proofs: SymPy derivations of HSA's maths (docs/HSA.md sections 3 to 5), each checked.

Every ``prove_*`` function states a claim, derives it step by step and returns a
:class:`ProofResult` whose ``verdict`` is ``True`` only if every check holds. The claimed formulas
are parameters (defaulting to those of docs/HSA.md), so a wrong variant is rejected by the same
machinery.
``python -m proofs`` runs them all and writes a Markdown report.
"""

from __future__ import annotations

from collections.abc import Callable

from .bilinear import prove_bilinearity
from .cost import prove_cost
from .decomposition import prove_decomposition
from .family import prove_family
from .programme import prove_programme
from .result import ProofResult, Step, render_report
from .softmax import prove_softmax
from .special_cases import prove_special_cases
from .tree import HSA_RECURSION, Recursion, Tree, TreeModel

__all__ = [
    "HSA_RECURSION",
    "PROOFS",
    "ProofResult",
    "Recursion",
    "Step",
    "Tree",
    "TreeModel",
    "prove_bilinearity",
    "prove_cost",
    "prove_decomposition",
    "prove_family",
    "prove_programme",
    "prove_softmax",
    "prove_special_cases",
    "render_report",
    "run_all",
]

PROOFS: tuple[Callable[[], ProofResult], ...] = (
    prove_softmax,
    prove_family,
    prove_decomposition,
    prove_bilinearity,
    prove_special_cases,
    prove_programme,
    prove_cost,
)
"""The proofs in report order, each with the claims of docs/HSA.md."""


def run_all() -> list[ProofResult]:
    """Run every proof with the claims of docs/HSA.md, in report order."""
    return [proof() for proof in PROOFS]
