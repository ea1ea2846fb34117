"""No false alarms: every correct implementation of the zoo (``tests/correct_zoo.py``) passes
the rule in every drawn case, dtype, output and gradient, with margin (worst error / limit at
most 0.5; docs/TOLERANCE.md).

The default run draws 100 cases per dtype (400 in all); ``-m slow`` draws 10,000 per dtype
(``HSA_ZOO_EXAMPLES`` sets the number) and prints the worst ratio of every member.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import pytest
import torch
from correct_zoo import DENSE, ZOO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsa_ref.conformance.properties import PORT_SIZES
from hsa_ref.conformance.strategies import HSACase, hierarchies, hsa_cases, large_hierarchies
from hsa_ref.tolerance import DTYPES, limits

pytestmark = pytest.mark.usefixtures("one_thread")

MARGIN = 0.5
DENSE_MAX_LEAVES = 48
"""The dense members evaluate one pair of siblings at a time: small trees only."""


def _results(impl, case: HSACase) -> dict[str, torch.Tensor]:
    inputs = {"q": case.q, "k": case.k, "v": case.v}
    if case.positions is not None:
        inputs["positions"] = case.positions
    leaves = {n: x.detach().clone().requires_grad_() for n, x in inputs.items()}
    kw: dict[str, Any] = {"scale": case.scale, "energy": case.energy}
    if "positions" in leaves:
        kw["positions"] = leaves["positions"]
    out = impl(leaves["q"], leaves["k"], leaves["v"], case.hierarchy, **kw)
    grads = torch.autograd.grad(out, list(leaves.values()), case.grad_out, allow_unused=True)
    return {"out": out} | {
        n: torch.zeros_like(leaves[n]) if g is None else g
        for n, g in zip(leaves, grads, strict=True)
    }


def _trees(large: bool) -> st.SearchStrategy:
    small = hierarchies(max_leaves=24, max_branching=8)
    if not large:
        return small
    big = large_hierarchies(max_leaves=384, max_branching=384)
    return st.integers(1, 20).flatmap(lambda i: big if i == 20 else small)


def _run_zoo(dtype: torch.dtype, examples: int, large: bool) -> dict[tuple[str, str], float]:
    worst: dict[tuple[str, str], float] = defaultdict(float)
    failures: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(
        case=hsa_cases(
            hierarchy=_trees(large),
            dtype=dtype,
            positions=True,
            offsets=True,
            score_magnitudes=(1e-3, 1.0, 5.0, 30.0),
            **PORT_SIZES,
        )
    )
    def run(case: HSACase) -> None:
        rules = limits(
            case.q, case.k, case.v, case.hierarchy, dtype=dtype, grad_out=case.grad_out,
            **case.kwargs(),
        )  # fmt: skip
        for name, impl in ZOO.items():
            if name in DENSE and case.hierarchy.num_leaves > DENSE_MAX_LEAVES:
                continue
            for quantity, result in _results(impl, case).items():
                verdict = rules[quantity].judge(result)
                if verdict.status == "failed":
                    failures.append(f"{name}, {quantity}: {verdict}; {case.describe()}")
                elif verdict.checkable:
                    worst[name, quantity] = max(worst[name, quantity], verdict.ratio)

    run()
    assert failures == [], failures[:3]
    return worst


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=list(DTYPES))
def test_correct_implementations_pass_with_margin(dtype):
    worst = _run_zoo(dtype, examples=100, large=False)
    assert worst, "no checkable case was drawn"
    assert max(worst.values()) <= MARGIN, max(worst.items(), key=lambda kv: kv[1])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=list(DTYPES))
def test_correct_implementations_pass_with_margin_thousands_of_cases(dtype):
    examples = int(os.environ.get("HSA_ZOO_EXAMPLES", "10000"))
    worst = _run_zoo(dtype, examples=examples, large=True)
    table = "\n".join(f"  {r:.3f}  {n} ({q})" for (n, q), r in sorted(worst.items()))
    print(f"\n{dtype}, {examples} cases, worst error / limit per member:\n{table}")
    assert max(worst.values()) <= MARGIN, max(worst.items(), key=lambda kv: kv[1])
