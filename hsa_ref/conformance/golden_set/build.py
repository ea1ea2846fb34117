"""Making a case: inputs exact in every dtype, the reference in every dtype, the rule's numbers.

:func:`make_case` evaluates the float64 reference (output and gradients of
``sum(grad_out * out)``), the reference in float32, bfloat16 and float16, and the ``tolerance``
and ``structure`` records of an ``hsa-case/1`` file for given inputs; :func:`build_case` draws
the inputs of a :class:`~.specs.CaseSpec` first; :func:`generate` builds the whole set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ...hierarchy import Hierarchy
from ...reference import family_shares, hsa_attention_matrix, log_partition, sibling_log_partition
from ...rounding import LAMBDA, TRANSCENDENTAL
from ...tolerance import (
    ATOL_FACTOR,
    DTYPES,
    MARGIN,
    MAX_ROUNDED_SCORE,
    REFERENCE_FACTOR,
    eps,
    error_bounds,
    evaluate_reference,
    gradient_magnitude,
    low_precision_dtype,
    make_limit,
    score_magnitude,
)
from ...validation import check_scale
from ..formats import GoldenCase, dtype_name, quantity_kind
from .specs import CaseSpec, case_specs

__all__ = [
    "RULE_TEXT",
    "STRUCTURE_MAX_LEAVES",
    "build_case",
    "generate",
    "half_exact",
    "make_case",
    "round_up",
    "structure_record",
    "tolerance_record",
]

STRUCTURE_MAX_LEAVES = 32
"""Cases with at most this many leaves carry ``structure`` (docs/HSA.md section 3 step by step)."""


def structure_record(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None,
) -> dict[str, Any]:
    """The intermediate values of docs/HSA.md section 3 (float64) for a port to compare step by
    step: ``theta``, and per node ``F``, ``L`` and ``mu`` (``None`` at roots)."""
    kw = {"scale": scale, "energy": energy, "positions": positions}
    theta = hsa_attention_matrix(q, k, hierarchy, **kw)
    f = log_partition(q, k, hierarchy, **kw)
    lse = sibling_log_partition(q, k, hierarchy, **kw)
    shares = family_shares(q, k, hierarchy, **kw)
    mu: list[float | None] = [None] * hierarchy.num_nodes
    for family, share in shares.items():
        for r, child in enumerate(hierarchy.children(family)):
            mu[child] = share[r, r].item()
    lse_list = [None if m is None else lse[x].item() for x, m in enumerate(mu)]
    return {"theta": theta.tolist(), "F": f.tolist(), "L": lse_list, "mu": mu}


def half_exact(a: np.ndarray) -> torch.Tensor:
    """``a`` rounded to a float64 tensor of numbers exact in bfloat16 *and* float16.

    bfloat16 keeps 8 significant bits; values too small for float16's normal range
    (``|x| < 2**-14``) become 0. Every dtype of :data:`DTYPES` then reads exactly these inputs.
    """
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(torch.bfloat16).double()
    t = torch.where(t.abs() < 2.0**-14, 0.0, t)
    if torch.isinf(t.half()).any():
        raise ValueError("input too large for float16")
    return t


RULE_TEXT = (
    "a result x (out, or a gradient grad_*) computed from inputs in dtype t passes when it has no "
    "NaN or inf and |x - expected| <= limits[t][x].limit entry by entry; the limit is "
    "max(reference_factor[kind] * max|references[r][x] - expected| * eps[t] / eps[r] + atol_factor "
    "* eps[t] * magnitude, margin * (1 + u_float64 / u_acc(t)) * bound), r = t or float32 for t = "
    "float64, magnitude = max|expected| for out and gradient_magnitude for gradients, bound the "
    "running error bound of docs/TOLERANCE.md, rounded up to 3 significant digits; a quantity "
    "with checkable = false (reason says why) is not checkable in t: reported apart, never passed"
)


def round_up(x: torch.Tensor, digits: int = 3) -> list[list[float | None]]:
    """``x`` (nonnegative) as nested lists of numbers of ``digits`` significant decimal digits,
    each at least the entry it stands for (a limit rounded up stays a limit); ``None`` (JSON
    ``null``) for an infinite entry."""
    out: list[list[float | None]] = []
    for row in x.tolist():
        values: list[float | None] = []
        for value in row:
            if value == 0 or not math.isfinite(value):
                values.append(0.0 if value == 0 else None)
                continue
            exponent = math.floor(math.log10(value)) - (digits - 1)
            mantissa = math.ceil(value / 10.0**exponent)
            rounded = float(f"{mantissa}e{exponent}")
            while rounded < value:
                mantissa += 1
                rounded = float(f"{mantissa}e{exponent}")
            values.append(rounded)
        out.append(values)
    return out


def tolerance_record(
    expected: dict[str, torch.Tensor],
    references: dict[str, dict[str, torch.Tensor]],
    bounds: dict[str, dict[str, torch.Tensor]],
    *,
    score_max: float,
) -> dict[str, Any]:
    """The ``tolerance`` object of a case: the rule's limit of every entry, per dtype and
    quantity (``bounds[t][quantity]``: the running error bound of :func:`error_bounds`)."""
    grads = {name: t for name, t in expected.items() if name != "out"}
    magnitude = gradient_magnitude(grads)
    record: dict[str, Any] = {
        "rule": RULE_TEXT,
        "score_max": score_max,
        "gradient_magnitude": magnitude,
        "atol_factor": ATOL_FACTOR,
        "reference_factor": dict(REFERENCE_FACTOR),
        "max_rounded_score": MAX_ROUNDED_SCORE,
        "margin": MARGIN,
        "lambda": LAMBDA,
        "transcendental": TRANSCENDENTAL,
        "eps": {label: eps(dtype) for label, dtype in DTYPES.items()},
        "limits": {},
    }
    for label, dtype in DTYPES.items():
        low = dtype_name(low_precision_dtype(dtype))
        limits = record["limits"][label] = {}
        for quantity, exact in expected.items():
            rule = make_limit(
                exact,
                references[low][quantity],
                bounds[label][quantity],
                dtype=dtype,
                score_max=score_max,
                kind=quantity_kind(quantity),
                magnitude=magnitude if quantity != "out" else None,
            )
            limits[quantity] = {
                "reference": low,
                "checkable": rule.checkable,
                "reason": rule.uncheckable,
                "limit": round_up(rule.limit),
            }
    return record


def build_case(spec: CaseSpec) -> GoldenCase:
    """Draw the inputs of ``spec`` and evaluate the reference in every dtype, with gradients."""
    h = spec.hierarchy
    rng = np.random.RandomState(spec.seed)  # a frozen stream: the same inputs everywhere
    n = h.num_leaves
    q = half_exact(spec.offset + rng.standard_normal((n, spec.d_k)))
    k = half_exact(spec.offset + rng.standard_normal((n, spec.d_k)))
    v = half_exact(spec.value_offset + spec.value_scale * rng.standard_normal((n, spec.d_v)))
    if spec.inputs == "keys_are_queries":
        k = q.clone()
    elif spec.inputs == "repeated_rows":
        q[1:] = q[0]
    elif spec.inputs != "normal":
        raise ValueError(f"unknown inputs kind {spec.inputs!r}")
    pos = (
        half_exact(spec.positions_scale * rng.standard_normal((h.num_nodes, spec.positions_dim)))
        if spec.positions_dim
        else None
    )
    grad_out = half_exact(rng.standard_normal((n, spec.d_v)))
    scale = spec.scale
    if spec.max_score is not None:
        # Four significant digits keep the scale identical on every machine.
        unit = score_magnitude(q, k, h, scale=1.0, energy=spec.energy)
        scale = float(f"{spec.max_score / unit:.4g}")
    return make_case(
        spec.name,
        spec.description,
        h,
        q,
        k,
        v,
        grad_out,
        energy=spec.energy,
        scale=scale,
        positions=pos,
    )


def make_case(
    name: str,
    description: str,
    hierarchy: Hierarchy,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    energy: str = "dot",
    scale: float | None = None,
    positions: torch.Tensor | None = None,
) -> GoldenCase:
    """A case for given 2-D inputs: the reference in every dtype, gradients and limits.

    The inputs are used as float64; a port reads them exactly only if they are exact in its
    dtype (the generated set makes sure they are in all of :data:`DTYPES`).
    """
    h = hierarchy
    q, k, v, grad_out = (x.detach().double().cpu() for x in (q, k, v, grad_out))
    pos = positions.detach().double().cpu() if positions is not None else None
    scale_value = check_scale(scale, q.shape[-1])
    kw = {"scale": scale_value, "energy": energy, "positions": pos, "grad_out": grad_out}

    def evaluated(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        res = evaluate_reference(q, k, v, h, **kw, dtype=dtype)
        return {"out": res.out} | {f"grad_{n}": g for n, g in res.grads.items()}

    exact = evaluate_reference(q, k, v, h, **kw)
    expected = {"out": exact.out} | {f"grad_{n}": g for n, g in exact.grads.items()}
    references = {
        label: evaluated(dtype) for label, dtype in DTYPES.items() if dtype != torch.float64
    }
    bounds = {}
    for label, dtype in DTYPES.items():
        res = error_bounds(q, k, v, h, **kw, dtype=dtype)
        bounds[label] = {"out": res.out} | {f"grad_{n}": g for n, g in res.grads.items()}
    score_max = score_magnitude(q, k, h, scale=scale_value, energy=energy, positions=pos)
    structure = None
    if h.num_leaves <= STRUCTURE_MAX_LEAVES:
        structure = structure_record(q, k, h, scale=scale_value, energy=energy, positions=pos)
    return GoldenCase(
        name=name,
        description=description,
        hierarchy=h,
        energy=energy,
        scale=scale_value,
        scale_is_default=scale is None,
        q=q,
        k=k,
        v=v,
        positions=pos,
        grad_out=grad_out,
        expected=expected,
        references=references,
        tolerance=tolerance_record(expected, references, bounds, score_max=score_max),
        structure=structure,
    )


def generate(names: Sequence[str] | None = None) -> list[GoldenCase]:
    """Fresh golden cases (all of :func:`case_specs`, or those named)."""
    specs = case_specs()
    if names is not None:
        known = {s.name for s in specs}
        unknown = set(names) - known
        if unknown:
            raise ValueError(f"unknown golden cases {sorted(unknown)}")
        specs = [s for s in specs if s.name in set(names)]
    return [build_case(s) for s in specs]
