"""Verification summary: ``python -m hsa_ref.summary`` checks HSA's defining properties.

Each check runs the float64 reference on a fixed set of named hierarchies and prints its worst
error against its limit; the exit status is 1 if any check fails. Other packages add checks with
:func:`register` (``hsa_fast`` adds the comparison of the dynamic programme with the reference).
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

from .hierarchy import Hierarchy
from .reference import (
    hsa_attention_matrix,
    hsa_reference,
    kl_to_softmax,
    softmax_kl_lower_bound,
)

__all__ = ["CheckResult", "named_hierarchies", "register", "run_checks"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    worst: float
    limit: float
    cases: int

    @property
    def passed(self) -> bool:
        return self.worst <= self.limit


Check = Callable[[], Iterator[float]]
_CHECKS: list[tuple[str, float, Check]] = []


def register(name: str, limit: float) -> Callable[[Check], Check]:
    """Add a check: a generator of errors whose maximum must not exceed ``limit``."""

    def wrap(fn: Check) -> Check:
        _CHECKS.append((name, limit, fn))
        return fn

    return wrap


def named_hierarchies() -> dict[str, Hierarchy]:
    """Small hierarchies covering the shapes that matter (all within reference reach)."""
    chain = Hierarchy.from_nested([[[[0, 1]], 2], 3])
    return {
        "one family (b=12)": Hierarchy.from_parents([12] * 12 + [-1], 12),
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


@register("one family = softmax attention (max |diff|)", 1e-12)
def _softmax_limit() -> Iterator[float]:
    for n in (1, 2, 7, 31):
        h = Hierarchy.from_parents([n] * n + [-1], n)
        q, k, v = _inputs(h, n)
        yield (hsa_reference(q, k, v, h) - F.scaled_dot_product_attention(q, k, v)).abs().max()


@register("rows of theta sum to 1 (max |sum - 1|)", 1e-12)
def _row_sums() -> Iterator[float]:
    for seed, h in enumerate(named_hierarchies().values()):
        q, k, _ = _inputs(h, seed)
        yield (hsa_attention_matrix(q, k, h).sum(-1) - 1).abs().max()


@register("KL(theta || softmax) = sum lse - sum |tree| F(root)", 1e-10)
def _optimal_value() -> Iterator[float]:
    for seed, h in enumerate(named_hierarchies().values()):
        q, k, _ = _inputs(h, seed)
        theta = hsa_attention_matrix(q, k, h)
        yield (kl_to_softmax(theta, q, k, h) - softmax_kl_lower_bound(q, k, h)).abs().max()


@register("forest = each tree alone (max |diff|)", 1e-12)
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


@register("distance = dot energy for unit q, k (max |diff|)", 1e-11)
def _distance() -> Iterator[float]:
    for seed, h in enumerate(named_hierarchies().values()):
        q, k, v = _inputs(h, seed)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        a = hsa_reference(q, k, v, h, energy="distance")
        yield (a - hsa_reference(q, k, v, h)).abs().max()


def run_checks(stream=sys.stdout) -> list[CheckResult]:
    """Run every registered check, print a table to ``stream`` and return the results."""
    results = []
    width = max(len(name) for name, _, _ in _CHECKS)
    print(f"{'check':<{width}}  {'worst':>10}  {'limit':>8}  cases  verdict", file=stream)
    print("-" * (width + 37), file=stream)
    for name, limit, fn in _CHECKS:
        errors = [float(e) for e in fn()]
        res = CheckResult(name, max(errors, default=0.0), limit, len(errors))
        results.append(res)
        verdict = "ok" if res.passed else "FAIL"
        print(
            f"{name:<{width}}  {res.worst:>10.2e}  {limit:>8.0e}  {res.cases:>5}  {verdict}",
            file=stream,
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsa_ref.summary", description=__doc__)
    parser.parse_args(argv)
    _load_plugins()
    print(
        f"HSA verification summary - torch {torch.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {time.strftime('%Y-%m-%d')}\n"
    )
    results = run_checks()
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _load_plugins() -> None:
    """Import packages that register their own checks, when they are installed."""
    for module in ("hsa_fast.checks",):
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise


if __name__ == "__main__":
    # Run the importable copy of this module, whose registry plugins extend.
    from hsa_ref.summary import main as _main

    raise SystemExit(_main())
