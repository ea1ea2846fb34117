"""The drift check: does a stored case still match a fresh generation of it?"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...tolerance import DTYPES
from ..formats import GoldenCase

__all__ = ["drift"]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def _flat(x: Any) -> list[Any]:
    return [y for row in x for y in row] if x and isinstance(x[0], list) else list(x)


def drift(stored: GoldenCase, fresh: GoldenCase) -> list[str]:
    """Differences between a stored case and a fresh generation; empty when they agree.

    Structure, options and inputs must be identical. Results may differ by rounding between
    machines: each float64 quantity within its float64 limit, each reference evaluated in ``t``
    within the limit of ``t``; ``score_max`` and ``gradient_magnitude`` to 1e-12 relative; the
    stored limits within 2% of fresh ones (the bound is rounded up to 3 digits), with the same
    verdict on what is checkable.
    """
    problems = []
    for field in ("name", "description", "hierarchy", "energy", "scale", "scale_is_default"):
        if getattr(stored, field) != getattr(fresh, field):
            problems.append(f"{field}: stored {getattr(stored, field)!r} != fresh")
    for field in ("q", "k", "v", "positions", "grad_out"):
        a, b = getattr(stored, field), getattr(fresh, field)
        if (a is None) != (b is None) or (
            a is not None and (a.shape != b.shape or not torch.equal(a, b))
        ):
            problems.append(f"{field}: stored inputs differ from a fresh generation")
    if stored.quantities != fresh.quantities or stored.references.keys() != fresh.references.keys():
        problems.append("stored quantities or reference dtypes differ from a fresh generation")
    if problems:
        return problems
    tol, new = stored.tolerance, fresh.tolerance
    for key in ("score_max", "gradient_magnitude"):
        if not math.isclose(tol[key], new[key], rel_tol=1e-12, abs_tol=1e-300):
            problems.append(f"tolerance.{key}: stored {tol[key]!r}, fresh {new[key]!r}")
    for quantity in stored.quantities:
        pairs = [(quantity, "float64", stored.expected[quantity], fresh.expected[quantity])]
        pairs += [
            (
                f"references.{label}.{quantity}",
                label,
                stored.references[label][quantity],
                fresh.references[label][quantity],
            )
            for label in stored.references
        ]
        for field, label, a, b in pairs:
            limit = fresh.limit(DTYPES[label], quantity).limit
            if a.shape != b.shape:
                problems.append(f"{field}: shape {tuple(a.shape)} != fresh {tuple(b.shape)}")
            elif not bool(((a - b).abs() <= limit).all()):
                problems.append(
                    f"{field}: max |stored - fresh| = {_max_abs(a, b):.3g} exceeds the limit"
                )
    if (stored.structure is None) != (fresh.structure is None):
        problems.append("structure: stored and fresh differ in whether they carry it")
    elif stored.structure is not None:
        for key in ("theta", "F", "L", "mu"):
            a, b = stored.structure[key], fresh.structure[key]
            nums = [(x, y) for x, y in zip(_flat(a), _flat(b), strict=True) if x is not None]
            if [x is None for x in _flat(a)] != [y is None for y in _flat(b)] or any(
                not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in nums
            ):
                problems.append(f"structure.{key}: stored values differ from a fresh generation")
    for label, dtype in DTYPES.items():
        for quantity in stored.quantities:
            a, b = stored.limit(dtype, quantity), fresh.limit(dtype, quantity)
            if a.uncheckable != b.uncheckable:
                problems.append(
                    f"tolerance.limits.{label}.{quantity}: stored checkable = {a.checkable}, "
                    f"fresh {b.checkable}"
                )
            close = torch.isclose(a.limit, b.limit, rtol=0.02, atol=0.0) | (a.limit == b.limit)
            if not bool(close.all()):
                problems.append(
                    f"tolerance.limits.{label}.{quantity}: stored limits differ from fresh ones "
                    "by more than 2%"
                )
    if tol.keys() != new.keys() or any(
        tol[key] != new[key]
        for key in tol
        if key not in ("limits", "score_max", "gradient_magnitude")
    ):
        problems.append("tolerance: the stored constants are not the rule's")
    return problems
