"""Checks that ``python -m hsa_ref.summary`` adds for the dynamic programme."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hsa_ref.summary import named_hierarchies, register
from hsa_ref.tolerance import compare_to_reference

from .api import hsa
from .layout import compile_hierarchy


def _inputs(n: int, seed: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(2, n, d, generator=g, dtype=torch.float64).to(dtype) for d in (8, 8, 5)
    )


def _ratio(dtype: torch.dtype, scale: float | None = None) -> Iterator[float]:
    for seed, h in enumerate(named_hierarchies().values()):
        q, k, v = _inputs(h.num_leaves, seed, dtype)
        for energy in ("dot", "distance"):
            out = hsa(q, k, v, h, scale=scale, energy=energy)
            verdict = compare_to_reference(out, q, k, v, h, scale=scale, energy=energy)
            # error / tolerance: <= 1 passes; a NaN output counts as a failure
            yield verdict.max_error / verdict.tolerance if verdict.passed else float("inf")


for _dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
    register(f"hsa_fast vs reference, {str(_dtype)[6:]} (error / tolerance)", 1.0)(
        lambda dtype=_dtype: _ratio(dtype)
    )


@register("hsa_fast vs reference, |s| ~ 1e4, float32 (error / tolerance)", 1.0)
def _huge() -> Iterator[float]:
    yield from _ratio(torch.float32, scale=1e4 / 8)


@register("energies evaluated - (N + sum_f b_f (b_f - 1))", 0.0)
def _work() -> Iterator[float]:
    for h in named_hierarchies().values():
        expected = h.num_leaves + int((h.branching * (h.branching - 1)).sum())
        yield abs(compile_hierarchy(h).num_energies - expected)
