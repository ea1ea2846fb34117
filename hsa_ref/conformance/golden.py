"""Golden cases against an implementation (``--impl``) or against a port's output files
(``--outputs``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..tolerance import (
    Agreement,
)
from .formats import (
    GoldenCase,
    read_output,
)
from .outcome import FAILED, Outcome, Progress
from .target import Target, theta_diagnostic

__all__ = [
    "check_case",
    "check_golden",
    "check_output_dir",
]


# ---------------------------------------------------------------------------- golden cases
def _golden_outcome(case: GoldenCase, name: str, rule: Agreement, diagnostic: str = "") -> Outcome:
    return Outcome(
        "golden",
        name,
        rule.status,
        rule.max_error,
        rule.tolerance,
        rule.reason,
        diagnostic,
        case=case,
    )


def check_case(target: Target, case: GoldenCase) -> list[Outcome]:
    """Run the implementation on one golden case: one outcome for ``out`` and, unless
    forward-only, one per gradient (``name:grad_q`` ...)."""
    dtype = target.dtype
    q, k, v = case.inputs(dtype)
    kw = case.call_kwargs(dtype)
    grad_out = case.grad_out.to(dtype)
    got = target(q, k, v, case.hierarchy, kw, grad_out)
    if got.unsupported:  # the case lies inside the declared capabilities
        detail = (
            f"refused an input inside its declared capabilities ({got.unsupported}); declare "
            "what it does not support (docs/PORTING.md)"
        )
        return [Outcome("golden", case.name, FAILED, detail=detail, case=case)]
    quantities = [x for x in case.quantities if x == "out" or target.capabilities.gradients]
    if got.out is None:
        detail = got.problem
        if case.positions is not None and "positions" in got.problem:
            detail += "\nan implementation without positions= declares --without-positions"
        return [Outcome("golden", case.name, FAILED, detail=detail, case=case)]
    outcomes = []
    for quantity in quantities:
        name = case.name if quantity == "out" else f"{case.name}:{quantity}"
        if quantity == "out":
            rule = case.judge(got.out, dtype, "out")
            diagnostic = ""
            if rule.status == FAILED:
                diagnostic = theta_diagnostic(target, q, k, case.hierarchy, kw)
            outcomes.append(_golden_outcome(case, name, rule, diagnostic))
        elif got.problem:
            outcomes.append(Outcome("golden", name, FAILED, detail=got.problem, case=case))
        else:
            result = got.grads[quantity.removeprefix("grad_")]
            outcomes.append(_golden_outcome(case, name, case.judge(result, dtype, quantity)))
    return outcomes


def check_golden(
    target: Target, cases: Sequence[GoldenCase], progress: Progress | None = None
) -> list[Outcome]:
    """:func:`check_case` for every case (``progress`` hears of each, and of the end)."""
    start, outcomes = time.perf_counter(), []
    for i, case in enumerate(cases, 1):
        outcomes += check_case(target, case)
        if progress is not None:
            failed = sum(o.status == FAILED for o in outcomes)
            progress.update(f"golden cases: {i}/{len(cases)}, {failed} failed")
    if progress is not None and cases:
        failed = sum(o.status == FAILED for o in outcomes)
        progress.done(
            f"golden cases: {len(cases)} cases, {len(outcomes)} checks, {failed} failed "
            f"({time.perf_counter() - start:.1f} s)"
        )
    return outcomes


def check_output_dir(directory: Path | str, cases: Sequence[GoldenCase]) -> list[Outcome]:
    """Check ``<directory>/<case>.json`` (``hsa-output/1``) for every golden case: ``out``
    and every gradient the file carries."""
    directory = Path(directory)
    outcomes = []
    for case in cases:
        path = directory / f"{case.name}.json"
        if not path.is_file():
            outcomes.append(Outcome("output", case.name, FAILED, detail=f"no file {path}"))
            continue
        try:
            results, dtype = read_output(path, case)
        except ValueError as exc:
            outcomes.append(Outcome("output", case.name, FAILED, detail=str(exc)))
            continue
        for quantity, result in results.items():
            name = case.name if quantity == "out" else f"{case.name}:{quantity}"
            rule = case.judge(result, dtype, quantity)
            outcomes.append(
                Outcome("output", name, rule.status, rule.max_error, rule.tolerance, rule.reason)
            )
    return outcomes
