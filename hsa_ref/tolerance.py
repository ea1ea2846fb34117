"""SPEC section 6: when does an implementation's result agree with the float64 reference?

flash-attention's rule, for an output or a gradient ``x`` computed from inputs in dtype ``t``:

    max|x - x64| <= K * max|x_t - x64| + atol_t,    atol_t = ATOL_FACTOR * eps_t * max|x64|

- ``x64`` is the float64 reference for exactly those inputs (its autograd gradients for a
  gradient). ``max|x_t - x64|`` is the error a correct evaluation in ``t`` makes, measured, not
  modelled, as the larger of two numbers: the error of the reference evaluated in ``t``
  (flash-attention's ``ref_t``; for ``t = float64``, which cannot be compared with itself, the
  float32 evaluation's error scaled by ``eps_float64 / eps_float32``, first-order rounding error
  being proportional to the unit roundoff), and the change of the float64 answer when every
  input is perturbed by a relative ``eps_t`` (``PERTURBATIONS`` fixed random draws): the error
  that any backward-stable evaluation in ``t`` may make. One evaluation is one sample of
  rounding; two correct evaluations of equal precision differ in their maximum error by up to
  4-5x, and the perturbation term keeps the rule from failing the luckier one's rival.
- ``K`` is 2 for outputs (flash-attention's factor) and 3 for gradients (flash-attention allows
  2x-3x there; a backward pass chains more rounded operations than the forward, and the gradients
  of two correct evaluations of equal precision differ by up to about 3x in their maximum error).
- ``atol_t`` is the rounding noise of the answer itself, a few units in the last place of its
  largest entry (for gradients the answer is the whole gradient ``(dq, dk, dv[, d positions])``
  of one loss, so a part that is far smaller than the rest, such as ``dq`` under nearly hard
  attention, is judged against the noise of the whole). It never grows with the scores: the
  growth of rounding error with ``|s|`` is what ``x_t`` measures.
- In float32, when the largest score within a tree is at most 10, the relative error
  ``||x - x64|| / ||x64||`` must also stay within ``max(1e-5, K * ||x_t - x64|| / ||x64||)``,
  unless ``x64`` is exactly zero (``dq`` of a one-leaf tree, or with every row of ``v`` equal):
  a relative error against zero is undefined, and the absolute limit alone judges the rounding
  noise of a correct evaluation there.

A case is **not checkable** in ``t`` (never passed) when ``x64`` or ``x_t`` is not finite (the
low-precision reference overflows), when ``eps_t * s_max > 1`` (rounding the scores alone
changes attention weights by a factor ``e``: ``t`` cannot resolve the attention), or when the
limit is not below ``max|x64|`` (even an all-zeros result would pass). A result with NaN or
inf fails, checkable or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .hierarchy import Hierarchy
from .reference import hsa_reference, score_matrix, tree_mask
from .validation import DTYPES as SUPPORTED_DTYPES
from .validation import check_attention_inputs

__all__ = [
    "ATOL_FACTOR",
    "DTYPES",
    "FLOAT32_RELATIVE",
    "FLOAT32_RELATIVE_MAX_SCORE",
    "GRADIENT_NAMES",
    "MAX_ROUNDED_SCORE",
    "PERTURBATIONS",
    "REFERENCE_FACTOR",
    "Agreement",
    "ReferenceResults",
    "agreement",
    "compare_gradients_to_reference",
    "compare_to_reference",
    "eps",
    "evaluate_reference",
    "gradient_magnitude",
    "low_precision_dtype",
    "perturbation_errors",
    "score_magnitude",
]

DTYPES: dict[str, torch.dtype] = {str(t).removeprefix("torch."): t for t in SUPPORTED_DTYPES}
"""The dtypes the rule is defined for, by name (``hsa_ref.validation.DTYPES``)."""
ATOL_FACTOR = 8.0
REFERENCE_FACTOR = {"output": 2.0, "gradient": 3.0}
FLOAT32_RELATIVE = 1e-5
FLOAT32_RELATIVE_MAX_SCORE = 10.0
MAX_ROUNDED_SCORE = 1.0
PERTURBATIONS = 2
PERTURBATION_SEED = 20250918
GRADIENT_NAMES = ("q", "k", "v", "positions")

PASSED, FAILED, UNCHECKABLE = "passed", "failed", "not checkable"


def eps(dtype: torch.dtype) -> float:
    """The unit roundoff ``eps_t`` (``torch.finfo(dtype).eps``)."""
    return torch.finfo(dtype).eps


def low_precision_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``x_t`` is evaluated in: ``dtype`` itself, float32 for float64 (then scaled)."""
    return torch.float32 if dtype == torch.float64 else dtype


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Agreement:
    """Outcome of the rule for one output or gradient.

    ``status`` is ``"passed"``, ``"failed"`` or ``"not checkable"``; ``passed`` is true only for
    the first. ``reference_error`` is ``max|x_t - x64|`` (scaled for float64), ``tolerance``
    the limit ``K * reference_error + atol``.
    """

    status: str
    max_error: float
    tolerance: float
    reference_error: float
    atol: float
    relative_error: float
    relative_limit: float | None
    reason: str
    kind: str = "output"

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def checkable(self) -> bool:
        return self.status != UNCHECKABLE

    def __str__(self) -> str:
        verdict = {PASSED: "pass", FAILED: "FAIL", UNCHECKABLE: "not checkable"}[self.status]
        factor = REFERENCE_FACTOR[self.kind]
        rel = f", rel {self.relative_error:.3g}" + (
            f" <= {self.relative_limit:g}" if self.relative_limit is not None else ""
        )
        return (
            f"{verdict}: max error {self.max_error:.3g} vs tolerance {self.tolerance:.3g} "
            f"({factor:g} x ref_t error {self.reference_error:.3g} + atol {self.atol:.3g}){rel}"
            + (f"; {self.reason}" if self.reason else "")
        )


def _max_abs(x: torch.Tensor) -> float:
    return x.abs().max().item() if x.numel() else 0.0


def _relative(x: torch.Tensor, ref64: torch.Tensor) -> float:
    denom = ref64.norm().item()
    diff = (x - ref64).norm().item()
    return diff / denom if denom > 0 else (0.0 if diff == 0 else math.inf)


def agreement(
    out: torch.Tensor,
    ref64: torch.Tensor,
    ref_t: torch.Tensor,
    *,
    dtype: torch.dtype,
    score_max: float,
    kind: str = "output",
    magnitude: float | None = None,
    perturbation_error: float = 0.0,
) -> Agreement:
    """Apply the rule to ``out`` given ``ref64`` and ``ref_t`` (evaluated in
    :func:`low_precision_dtype` of ``dtype``). ``kind`` is ``"output"`` or ``"gradient"``.

    ``magnitude`` is the size of the answer that ``atol`` is the rounding noise of:
    ``max|ref64|`` by default; for a gradient, the largest entry of the whole gradient
    ``(dq, dk, dv[, d positions])``, which is one answer (the gradient of one loss).
    ``perturbation_error`` is the input-perturbation term of the reference error
    (:func:`perturbation_errors`).
    """
    if kind not in REFERENCE_FACTOR:
        raise ValueError(f"kind must be one of {sorted(REFERENCE_FACTOR)}, got {kind!r}")
    if tuple(out.shape) != tuple(ref64.shape):
        reason = f"shape {tuple(out.shape)} != expected {tuple(ref64.shape)}"
        return Agreement(FAILED, math.inf, 0.0, 0.0, 0.0, math.inf, None, reason, kind)
    out64 = out.detach().to(device="cpu", dtype=torch.float64)
    ref64 = ref64.detach().to(device="cpu", dtype=torch.float64)
    ref_t64 = ref_t.detach().to(device="cpu", dtype=torch.float64)
    factor = REFERENCE_FACTOR[kind]
    scaling = eps(dtype) / eps(low_precision_dtype(dtype))
    ref_err = _max_abs(ref_t64 - ref64) * scaling if ref64.numel() else 0.0
    ref_err = max(ref_err, perturbation_error)
    largest = _max_abs(ref64)
    magnitude = largest if magnitude is None else max(magnitude, largest)
    atol = ATOL_FACTOR * eps(dtype) * magnitude
    tol = factor * ref_err + atol
    finite = bool(torch.isfinite(out64).all())
    err = _max_abs(out64 - ref64) if finite else math.inf
    rel = _relative(out64, ref64) if finite else math.inf
    rel_limit = None
    if dtype == torch.float32 and score_max <= FLOAT32_RELATIVE_MAX_SCORE and largest > 0:
        rel_limit = max(FLOAT32_RELATIVE, factor * _relative(ref_t64, ref64))

    def verdict(status: str, reason: str) -> Agreement:
        return Agreement(status, err, tol, ref_err, atol, rel, rel_limit, reason, kind)

    if not finite:
        return verdict(FAILED, "result has NaN or inf")
    if not math.isfinite(magnitude) or not math.isfinite(ref_err):
        return verdict(UNCHECKABLE, f"the reference evaluated in {_name(dtype)} overflows")
    if eps(dtype) * score_max > MAX_ROUNDED_SCORE:
        return verdict(
            UNCHECKABLE,
            f"{_name(dtype)} cannot resolve scores of {score_max:.3g}: eps * s_max = "
            f"{eps(dtype) * score_max:.3g} > {MAX_ROUNDED_SCORE:g}",
        )
    if largest > 0 and tol >= largest:
        return verdict(
            UNCHECKABLE,
            f"{_name(dtype)} cannot resolve this case: the limit {tol:.3g} is not below "
            f"max|ref64| = {largest:.3g}",
        )
    reasons = []
    if not err <= tol:
        reasons.append("max error above tolerance")
    if rel_limit is not None and not rel <= rel_limit:
        reasons.append(f"float32 relative error above {rel_limit:.3g}")
    return verdict(FAILED if reasons else PASSED, "; ".join(reasons))


def score_magnitude(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None = None,
) -> float:
    """``s_max``: the largest ``|s_ij|`` within a tree, plus ``max |<p_x, p_y>|`` with positions."""
    s = score_matrix(q.double(), k.double(), scale=scale, energy=energy)
    same_tree = tree_mask(hierarchy, s.device)
    score_max = s.abs().masked_fill(~same_tree, 0).max().item() if s.numel() else 0.0
    if positions is not None:
        p = positions.double()
        score_max += (p @ p.T).abs().max().item()
    return score_max


@dataclass(frozen=True)
class ReferenceResults:
    """The reference for one input in one dtype: ``out`` and, when asked, ``grads``
    (``{"q", "k", "v"}`` and ``"positions"`` when given; float64 tensors on the CPU)."""

    out: torch.Tensor
    grads: dict[str, torch.Tensor]


def evaluate_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    grad_out: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> ReferenceResults:
    """:func:`hsa_reference` evaluated in ``dtype`` on the given inputs (rounded to ``dtype``),
    with the autograd gradients of ``sum(grad_out * out)`` when ``grad_out`` is given."""
    inputs = {"q": q, "k": k, "v": v}
    if positions is not None:
        inputs["positions"] = positions
    leaves = {
        name: x.detach().to(dtype).requires_grad_(grad_out is not None)
        for name, x in inputs.items()
    }
    with torch.enable_grad():
        out = hsa_reference(
            leaves["q"],
            leaves["k"],
            leaves["v"],
            hierarchy,
            scale=scale,
            energy=energy,
            positions=leaves.get("positions"),
            dtype=dtype,
        )
        grads: dict[str, torch.Tensor] = {}
        if grad_out is not None:
            names = list(leaves)
            values = torch.autograd.grad(
                out, [leaves[n] for n in names], grad_out.to(dtype), allow_unused=True
            )
            for name, g in zip(names, values, strict=True):
                g = torch.zeros_like(leaves[name]) if g is None else g
                grads[name] = g.detach().double().cpu()
    return ReferenceResults(out.detach().double().cpu(), grads)


def perturbation_errors(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    dtype: torch.dtype,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    grad_out: torch.Tensor | None = None,
    exact: ReferenceResults | None = None,
) -> dict[str, float]:
    """The perturbation term of the reference error for results in ``dtype``, per quantity
    (``"out"``, ``"q"``, ``"k"``, ``"v"``, ``"positions"``): the largest change of the float64
    reference (and its gradients) over :data:`PERTURBATIONS` draws of ``x * (1 + eps_t * u)``,
    ``u`` uniform in ``[-1, 1]`` for every entry of every input (a fixed seed)."""
    kw = {"scale": scale, "energy": energy, "grad_out": grad_out}
    if exact is None:
        exact = evaluate_reference(q, k, v, hierarchy, positions=positions, **kw)
    gen = torch.Generator().manual_seed(PERTURBATION_SEED)
    unit = eps(dtype)

    def perturbed(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().double().cpu()
        return x * (1 + unit * (2 * torch.rand(x.shape, generator=gen, dtype=torch.float64) - 1))

    worst = {"out": 0.0} | dict.fromkeys(exact.grads, 0.0)
    for _ in range(PERTURBATIONS):
        pos = perturbed(positions) if positions is not None else None
        res = evaluate_reference(
            perturbed(q), perturbed(k), perturbed(v), hierarchy, positions=pos, **kw
        )
        worst["out"] = max(worst["out"], _max_abs(res.out - exact.out))
        for name, g in res.grads.items():
            worst[name] = max(worst[name], _max_abs(g - exact.grads[name]))
    return worst


def gradient_magnitude(grads: dict[str, torch.Tensor]) -> float:
    """The largest entry of a whole gradient (every input's part): what gradient ``atol``
    is the rounding noise of."""
    return max((_max_abs(g.double()) for g in grads.values()), default=0.0)


def _checked(q, k, v, hierarchy, scale, energy, positions):
    return check_attention_inputs(
        q, k, v, hierarchy, scale=scale, energy=energy, positions=positions
    )


def compare_to_reference(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
) -> Agreement:
    """Check an implementation's output ``out`` for inputs ``q, k, v`` (in their own dtype)."""
    c = _checked(q, k, v, hierarchy, scale, energy, positions)
    dtype = c.q.dtype
    kw = {"scale": c.scale, "energy": c.energy, "positions": c.positions}
    exact = evaluate_reference(c.q, c.k, c.v, hierarchy, **kw)
    ref_t = evaluate_reference(c.q, c.k, c.v, hierarchy, **kw, dtype=low_precision_dtype(dtype)).out
    pert = perturbation_errors(c.q, c.k, c.v, hierarchy, dtype=dtype, exact=exact, **kw)
    s_max = score_magnitude(
        c.q, c.k, hierarchy, scale=c.scale, energy=c.energy, positions=c.positions
    )
    return agreement(
        out, exact.out, ref_t, dtype=dtype, score_max=s_max, perturbation_error=pert["out"]
    )


def compare_gradients_to_reference(
    grads: dict[str, torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    grad_out: torch.Tensor,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Agreement]:
    """The rule for an implementation's gradients of ``sum(grad_out * out)``.

    ``grads`` maps ``"q"``, ``"k"``, ``"v"`` (and ``"positions"``) to the implementation's
    gradients; every name in ``names`` (default: those three, plus ``"positions"`` when
    positions are given) is judged, a missing one fails.
    """
    c = _checked(q, k, v, hierarchy, scale, energy, positions)
    dtype = c.q.dtype
    kw = {"scale": c.scale, "energy": c.energy, "positions": c.positions, "grad_out": grad_out}
    exact = evaluate_reference(c.q, c.k, c.v, hierarchy, **kw)
    ref64 = exact.grads
    ref_t = evaluate_reference(
        c.q, c.k, c.v, hierarchy, **kw, dtype=low_precision_dtype(dtype)
    ).grads
    pert = perturbation_errors(c.q, c.k, c.v, hierarchy, dtype=dtype, exact=exact, **kw)
    s_max = score_magnitude(
        c.q, c.k, hierarchy, scale=c.scale, energy=c.energy, positions=c.positions
    )
    if names is None:
        names = [n for n in GRADIENT_NAMES if n in ref64]
    magnitude = gradient_magnitude(ref64)
    verdicts = {}
    for name in names:
        got = grads.get(name)
        if got is None:
            verdicts[name] = Agreement(
                FAILED,
                math.inf,
                0.0,
                0.0,
                0.0,
                math.inf,
                None,
                f"no gradient for {name}",
                "gradient",
            )
            continue
        verdicts[name] = agreement(
            got,
            ref64[name],
            ref_t[name],
            dtype=dtype,
            score_max=s_max,
            kind="gradient",
            magnitude=magnitude,
            perturbation_error=pert[name],
        )
    return verdicts
