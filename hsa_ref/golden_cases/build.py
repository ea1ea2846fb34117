"""Making a case: inputs exact in every dtype, the reference in every dtype, the rule's numbers.

:func:`make_case` evaluates the float64 reference (output and gradients of
``sum(grad_out * out)``), the reference in float32, bfloat16 and float16, and the ``tolerance``
and ``structure`` records of an ``hsa-case/1`` file for given inputs; :func:`build_case` draws
the inputs of a :class:`~hsa_ref.golden_cases.specs.CaseSpec` first; :func:`generate` builds the
whole set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..formats import GoldenCase, dtype_name, quantity_kind
from ..hierarchy import Hierarchy
from ..reference import family_shares, hsa_attention_matrix, log_partition, sibling_log_partition
from ..tolerance import (
    ATOL_FACTOR,
    DTYPES,
    FLOAT32_RELATIVE,
    FLOAT32_RELATIVE_MAX_SCORE,
    MAX_ROUNDED_SCORE,
    PERTURBATIONS,
    REFERENCE_FACTOR,
    agreement,
    eps,
    evaluate_reference,
    gradient_magnitude,
    low_precision_dtype,
    perturbation_errors,
    score_magnitude,
)
from ..validation import check_scale
from .specs import CaseSpec, case_specs

__all__ = [
    "RULE_TEXT",
    "STRUCTURE_MAX_LEAVES",
    "build_case",
    "generate",
    "half_exact",
    "make_case",
    "structure_record",
    "tolerance_record",
]

STRUCTURE_MAX_LEAVES = 32
"""Cases with at most this many leaves carry ``structure`` (SPEC section 3 step by step)."""


def structure_record(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None,
) -> dict[str, Any]:
    """SPEC section 3's intermediate values (float64) for a port to compare step by step:
    ``theta``, and per node ``F``, ``L`` and ``mu`` (``None`` at roots)."""
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
    "NaN or inf, max|x - expected| <= limits[t][x].max_abs_error = reference_factor[kind] * "
    "reference_error + atol (reference_error = the larger of perturbation_error and "
    "max|references[r][x] - expected| * eps[t] / eps[r], r = t, or float32 for t = float64; "
    "atol = atol_factor * eps[t] * "
    "magnitude, magnitude = max|expected| for out and gradient_magnitude for gradients), and "
    "||x - expected|| / ||expected|| <= relative_limit unless that is null; a limit with "
    "checkable = false (the reference in t overflows, eps[t] * score_max > max_rounded_score, "
    "or max_abs_error >= max|expected|) is not checkable in t: reported apart, never passed"
)


def tolerance_record(
    expected: dict[str, torch.Tensor],
    references: dict[str, dict[str, torch.Tensor]],
    perturbation: dict[str, dict[str, float]],
    *,
    score_max: float,
) -> dict[str, Any]:
    """The ``tolerance`` object of a case: SPEC section 6's numbers per dtype and quantity."""
    grads = {name: t for name, t in expected.items() if name != "out"}
    magnitude = gradient_magnitude(grads)
    record: dict[str, Any] = {
        "rule": RULE_TEXT,
        "score_max": score_max,
        "gradient_magnitude": magnitude,
        "atol_factor": ATOL_FACTOR,
        "reference_factor": dict(REFERENCE_FACTOR),
        "float32_relative": FLOAT32_RELATIVE,
        "float32_relative_max_score": FLOAT32_RELATIVE_MAX_SCORE,
        "perturbations": PERTURBATIONS,
        "max_rounded_score": MAX_ROUNDED_SCORE,
        "eps": {label: eps(dtype) for label, dtype in DTYPES.items()},
        "limits": {},
    }
    for label, dtype in DTYPES.items():
        low = dtype_name(low_precision_dtype(dtype))
        limits = record["limits"][label] = {}
        for quantity, exact in expected.items():
            rule = agreement(
                exact,
                exact,
                references[low][quantity],
                dtype=dtype,
                score_max=score_max,
                kind=quantity_kind(quantity),
                magnitude=magnitude if quantity != "out" else None,
                perturbation_error=perturbation[label][quantity],
            )
            limits[quantity] = {
                "reference": low,
                "perturbation_error": perturbation[label][quantity],
                "reference_error": rule.reference_error,
                "atol": rule.atol,
                "max_abs_error": rule.tolerance,
                "relative_limit": rule.relative_limit,
                "checkable": rule.checkable,
            }
    return record


def build_case(spec: CaseSpec) -> GoldenCase:
    """Draw the inputs of ``spec`` and evaluate the reference in every dtype, with gradients."""
    h = spec.hierarchy
    rng = np.random.RandomState(spec.seed)  # a frozen stream: the same inputs everywhere
    n = h.num_leaves
    q = half_exact(spec.offset + rng.standard_normal((n, spec.d_k)))
    k = half_exact(spec.offset + rng.standard_normal((n, spec.d_k)))
    v = half_exact(spec.value_scale * rng.standard_normal((n, spec.d_v)))
    if spec.inputs == "keys_are_queries":
        k = q.clone()
    elif spec.inputs == "repeated_rows":
        q[1:] = q[0]
    elif spec.inputs != "normal":
        raise ValueError(f"unknown inputs kind {spec.inputs!r}")
    pos = (
        half_exact(0.5 * rng.standard_normal((h.num_nodes, spec.positions_dim)))
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
    perturbation = {
        label: {
            ("out" if n == "out" else f"grad_{n}"): err
            for n, err in perturbation_errors(q, k, v, h, **kw, dtype=dtype, exact=exact).items()
        }
        for label, dtype in DTYPES.items()
    }
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
        tolerance=tolerance_record(expected, references, perturbation, score_max=score_max),
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
