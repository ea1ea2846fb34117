"""Verification summary: ``python -m bench.summary`` checks HSA's defining properties.

Each check runs a fixed set of named hierarchies and prints its worst error against its limit:
first the float64 reference against the maths (softmax, row sums, the optimal KL value, forests,
the distance energy), then ``hsa_fast.hsa`` against the reference under docs/TOLERANCE.md's rule
in every dtype and its work count. The exit status is 1 if any check fails.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hsa_fast import compile_hierarchy, hsa
from hsa_ref import Hierarchy
from hsa_ref.reference import (
    hsa_attention_matrix,
    hsa_reference,
    kl_to_softmax,
    softmax_kl_lower_bound,
)
from hsa_ref.tolerance import compare_to_reference
from hsa_ref.validation import ENERGIES

__all__ = ["CHECKS", "Check", "CheckResult", "named_hierarchies", "run_checks"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    worst: float
    limit: float
    cases: int

    @property
    def passed(self) -> bool:
        return self.worst <= self.limit


@dataclass(frozen=True)
class Check:
    """A named generator of errors whose maximum must not exceed ``limit``."""

    name: str
    limit: float
    errors: Callable[[], Iterator[float]]


def named_hierarchies() -> dict[str, Hierarchy]:
    """Small hierarchies covering the shapes that matter (all within reference reach)."""
    chain = Hierarchy.from_nested([[[[0, 1]], 2], 3])
    return {
        "one family (b=12)": Hierarchy.one_family(12),
        "balanced b=3, N=27": Hierarchy.balanced(27, 3),
        "balanced b=4, N=22": Hierarchy.balanced(22, 4),
        "tokens/sentences/paragraphs": Hierarchy.from_segments([[3, 5, 2, 4, 1, 3], [2, 3, 1]]),
        "mixed depth": Hierarchy.from_nested([[0, [1, [2, 3]]], 4, [5, 6, [7, [8, [9]]]]]),
        "chain with single children": chain,
        "forest of 3": Hierarchy.forest(
            [Hierarchy.balanced(5, 2), Hierarchy.balanced(1, 2), chain]
        ),
        "one leaf": Hierarchy.from_parents([-1], 1),
    }


def _inputs(h: Hierarchy, seed: int, d_k: int = 8, d_v: int = 5, batch: tuple[int, ...] = (2,)):
    g = torch.Generator().manual_seed(seed)
    n = h.num_leaves
    return tuple(
        torch.randn(*batch, n, d, generator=g, dtype=torch.float64) for d in (d_k, d_k, d_v)
    )


def _softmax_limit() -> Iterator[float]:
    for n in (1, 2, 7, 31):
        h = Hierarchy.one_family(n)
        q, k, v = _inputs(h, n)
        yield (hsa_reference(q, k, v, h) - F.scaled_dot_product_attention(q, k, v)).abs().max()


def _row_sums() -> Iterator[float]:
    for seed, h in enumerate(named_hierarchies().values()):
        q, k, _ = _inputs(h, seed)
        yield (hsa_attention_matrix(q, k, h).sum(-1) - 1).abs().max()


def _optimal_value() -> Iterator[float]:
    for seed, h in enumerate(named_hierarchies().values()):
        q, k, _ = _inputs(h, seed)
        theta = hsa_attention_matrix(q, k, h)
        yield (kl_to_softmax(theta, q, k, h) - softmax_kl_lower_bound(q, k, h)).abs().max()


def _forest() -> Iterator[float]:
    trees = [Hierarchy.balanced(5, 2), Hierarchy.from_nested([0, [1, 2]]), Hierarchy.balanced(4, 4)]
    forest = Hierarchy.forest(trees)
    q, k, v = _inputs(forest, 3)
    out, start = hsa_reference(q, k, v, forest), 0
    for t in trees:
        rows = slice(start, start + t.num_leaves)
        alone = hsa_reference(q[..., rows, :], k[..., rows, :], v[..., rows, :], t)
        yield (out[..., rows, :] - alone).abs().max()
        start += t.num_leaves


def _distance() -> Iterator[float]:
    for seed, h in enumerate(named_hierarchies().values()):
        q, k, v = _inputs(h, seed)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        a = hsa_reference(q, k, v, h, energy="distance")
        yield (a - hsa_reference(q, k, v, h)).abs().max()


def _fast_inputs(n: int, seed: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(2, n, d, generator=g, dtype=torch.float64).to(dtype) for d in (8, 8, 5)
    )


def _fast_vs_reference(dtype: torch.dtype, scale: float | None = None) -> Iterator[float]:
    for seed, h in enumerate(named_hierarchies().values()):
        q, k, v = _fast_inputs(h.num_leaves, seed, dtype)
        for energy in ENERGIES:
            out = hsa(q, k, v, h, scale=scale, energy=energy)
            verdict = compare_to_reference(out, q, k, v, h, scale=scale, energy=energy)
            # error / tolerance: <= 1 passes; a NaN output counts as a failure
            if verdict.checkable:  # cases the dtype cannot resolve are not counted
                yield verdict.max_error / verdict.tolerance if verdict.passed else float("inf")


def _huge() -> Iterator[float]:
    yield from _fast_vs_reference(torch.float32, scale=1e4 / 8)


def _work() -> Iterator[float]:
    for h in named_hierarchies().values():
        slots = h.num_leaves  # the self terms, then each bucket's real (unpadded) slots
        for bucket in compile_hierarchy(h).up:
            real = torch.isfinite(bucket.log_size).sum(1)
            slots += int((real * (real - 1)).sum())
        yield abs(slots - h.num_energies)


_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
CHECKS: tuple[Check, ...] = (
    Check("one family = softmax attention (max |diff|)", 1e-12, _softmax_limit),
    Check("rows of theta sum to 1 (max |sum - 1|)", 1e-12, _row_sums),
    Check("KL(theta || softmax) = sum lse - sum |tree| F(root)", 1e-10, _optimal_value),
    Check("forest = each tree alone (max |diff|)", 1e-12, _forest),
    Check("distance = dot energy for unit q, k (max |diff|)", 1e-11, _distance),
    *(
        Check(
            f"hsa_fast vs reference, {str(dtype)[6:]} (error / tolerance)",
            1.0,
            lambda dtype=dtype: _fast_vs_reference(dtype),
        )
        for dtype in _DTYPES
    ),
    Check("hsa_fast vs reference, |s| ~ 1e4, float32 (error / tolerance)", 1.0, _huge),
    Check("energies in the layout - (N + sum_f b_f (b_f - 1))", 0.0, _work),
)


def run_checks(checks: tuple[Check, ...] = CHECKS, stream=sys.stdout) -> list[CheckResult]:
    """Run ``checks``, print a table to ``stream`` and return the results."""
    results = []
    width = max(len(c.name) for c in checks)
    print(f"{'check':<{width}}  {'worst':>10}  {'limit':>8}  cases  verdict", file=stream)
    print("-" * (width + 37), file=stream)
    for c in checks:
        errors = [float(e) for e in c.errors()]
        res = CheckResult(c.name, max(errors, default=0.0), c.limit, len(errors))
        results.append(res)
        verdict = "ok" if res.passed else "FAIL"
        print(
            f"{c.name:<{width}}  {res.worst:>10.2e}  {c.limit:>8.0e}  {res.cases:>5}  {verdict}",
            file=stream,
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__)
    parser.parse_args(argv)
    print(
        f"HSA verification summary - torch {torch.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {time.strftime('%Y-%m-%d')}\n"
    )
    results = run_checks()
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
