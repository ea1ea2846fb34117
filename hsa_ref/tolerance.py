"""When does an implementation's result agree with the float64 reference? (``docs/TOLERANCE.md``)

For an output or a gradient ``x`` computed from inputs in dtype ``t``, entry by entry:

    |x - x64| <= limit = max(floor, MARGIN * (1 + u_64 / u_acc(t)) * bound)
    floor = K * max|x_t - x64| + ATOL_FACTOR * eps_t * magnitude

- ``x64`` is the float64 reference for exactly those inputs (its autograd gradients for a
  gradient).
- ``bound`` is the running error bound of :mod:`hsa_ref.rounding`: how far *any* correct
  evaluation in ``t`` may be from the exact answer, derived from the reference's own
  computation (``docs/TOLERANCE.md`` states the model and its constants). ``x64`` is itself
  an evaluation in float64, within ``(u_64 / u_acc(t)) * bound`` of the exact answer to first
  order, hence that factor (2 for ``t = float64``). A correct evaluation can come close to
  the bound (one rounding of a large log-partition, say, that removes a small share): the
  limit is ``MARGIN`` times it, so that a correct evaluation never uses more than half of it.
- ``floor`` is flash-attention's rule, kept as a lower limit: ``x_t`` is the reference
  evaluated in ``t`` (in float32 for ``t = float64``, its error scaled by ``eps_64 / eps_32``),
  ``K`` is 2 for outputs and 3 for gradients, and ``ATOL_FACTOR * eps_t * magnitude`` is the
  rounding noise of the answer's largest entry (for a gradient, of the whole gradient
  ``(dq, dk, dv[, d positions])`` of one loss).

A quantity is **not checkable** in ``t`` (reported, never passed) when ``x64``, ``x_t`` or the
bound is not finite, when ``eps_t * s_max > 1`` (rounding the scores alone changes attention
weights by a factor ``e``), or when every entry's limit reaches the size of the answer's entry
(even an all-zeros result would pass). A result with NaN or inf fails, checkable or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .hierarchy import Hierarchy
from .reference import hsa_reference, score_matrix, split_trees
from .rounding import Bounded, RoundingModel, bounded
from .validation import DTYPES as SUPPORTED_DTYPES
from .validation import check_attention_inputs

__all__ = [
    "ATOL_FACTOR",
    "DTYPES",
    "GRADIENT_NAMES",
    "MARGIN",
    "MAX_ROUNDED_SCORE",
    "REFERENCE_FACTOR",
    "Agreement",
    "Limit",
    "ReferenceResults",
    "compare_gradients_to_reference",
    "compare_to_reference",
    "eps",
    "error_bounds",
    "evaluate_reference",
    "gradient_magnitude",
    "hull_violation",
    "limits",
    "low_precision_dtype",
    "make_limit",
    "score_magnitude",
]

DTYPES: dict[str, torch.dtype] = {str(t).removeprefix("torch."): t for t in SUPPORTED_DTYPES}
"""The dtypes the rule is defined for, by name (``hsa_ref.validation.DTYPES``)."""
ATOL_FACTOR = 4.0
MARGIN = 2.0
REFERENCE_FACTOR = {"output": 2.0, "gradient": 3.0}
MAX_ROUNDED_SCORE = 1.0
GRADIENT_NAMES = ("q", "k", "v", "positions")

PASSED, FAILED, UNCHECKABLE = "passed", "failed", "not checkable"


def eps(dtype: torch.dtype) -> float:
    """``eps_t`` (``torch.finfo(dtype).eps``: twice the unit roundoff)."""
    return torch.finfo(dtype).eps


def low_precision_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``x_t`` is evaluated in: ``dtype`` itself, float32 for float64 (then scaled)."""
    return torch.float32 if dtype == torch.float64 else dtype


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _max_abs(x: torch.Tensor) -> float:
    return x.abs().max().item() if x.numel() else 0.0


@dataclass(frozen=True)
class Agreement:
    """Outcome of the rule for one output or gradient.

    ``status`` is ``"passed"``, ``"failed"`` or ``"not checkable"``; ``passed`` is true only
    for the first. ``max_error`` and ``tolerance`` are the error and the limit at the entry
    where their ratio is largest (``entry``; the ratio is ``max_error / tolerance``);
    ``largest_error`` is the largest error of any entry.
    """

    status: str
    max_error: float
    tolerance: float
    reason: str
    kind: str = "output"
    entry: tuple[int, ...] | None = None
    largest_error: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def checkable(self) -> bool:
        return self.status != UNCHECKABLE

    @property
    def ratio(self) -> float:
        if self.tolerance > 0:
            return self.max_error / self.tolerance
        return 0.0 if self.max_error == 0 else math.inf

    def __str__(self) -> str:
        verdict = {PASSED: "pass", FAILED: "FAIL", UNCHECKABLE: "not checkable"}[self.status]
        where = f" at entry {self.entry}" if self.entry is not None else ""
        return (
            f"{verdict}: error {self.max_error:.3g} vs limit {self.tolerance:.3g}{where} "
            f"(largest error {self.largest_error:.3g})"
            + (f"; {self.reason}" if self.reason else "")
        )


@dataclass(frozen=True)
class Limit:
    """The rule for one quantity in one dtype: the float64 answer ``expected``, the limit of
    every entry (same shape), and why the quantity is not checkable ("" when it is)."""

    expected: torch.Tensor
    limit: torch.Tensor
    uncheckable: str = ""
    kind: str = "output"

    @property
    def checkable(self) -> bool:
        return not self.uncheckable

    def judge(self, result: torch.Tensor) -> Agreement:
        """The verdict on an implementation's ``result``."""
        kind = self.kind
        if tuple(result.shape) != tuple(self.expected.shape):
            reason = f"shape {tuple(result.shape)} != expected {tuple(self.expected.shape)}"
            return Agreement(FAILED, math.inf, 0.0, reason, kind)
        x = result.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(x).all()):
            return Agreement(FAILED, math.inf, 0.0, "result has NaN or inf", kind)
        err = (x - self.expected).abs()
        if not err.numel():
            return Agreement(UNCHECKABLE if self.uncheckable else PASSED, 0.0, 0.0, "", kind)
        ratio = torch.where(err > 0, err / self.limit, 0.0)
        flat = int(torch.nan_to_num(ratio, nan=math.inf).argmax())
        entry = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), err.shape))
        worst, limit = err.flatten()[flat].item(), self.limit.flatten()[flat].item()
        largest = err.max().item()
        if self.uncheckable:
            return Agreement(UNCHECKABLE, worst, limit, self.uncheckable, kind, entry, largest)
        if bool((err <= self.limit).all()):
            return Agreement(PASSED, worst, limit, "", kind, entry, largest)
        return Agreement(FAILED, worst, limit, "error above the limit", kind, entry, largest)


def make_limit(
    expected: torch.Tensor,
    low: torch.Tensor,
    bound: torch.Tensor,
    *,
    dtype: torch.dtype,
    score_max: float,
    kind: str = "output",
    magnitude: float | None = None,
) -> Limit:
    """The rule's :class:`Limit` from the float64 answer, the reference evaluated in
    :func:`low_precision_dtype` of ``dtype`` and the error bound of :func:`error_bounds`.

    ``magnitude`` is the size of the answer that the noise term is the rounding noise of:
    ``max|expected|`` by default; for a gradient, the largest entry of the whole gradient.
    """
    if kind not in REFERENCE_FACTOR:
        raise ValueError(f"kind must be one of {sorted(REFERENCE_FACTOR)}, got {kind!r}")
    expected = expected.detach().to(device="cpu", dtype=torch.float64)
    low = low.detach().to(device="cpu", dtype=torch.float64)
    bound = bound.detach().to(device="cpu", dtype=torch.float64)
    largest = _max_abs(expected)
    magnitude = largest if magnitude is None else max(magnitude, largest)
    scaling = eps(dtype) / eps(low_precision_dtype(dtype))
    floor = REFERENCE_FACTOR[kind] * _max_abs(low - expected) * scaling
    floor = torch.full_like(expected, floor + ATOL_FACTOR * eps(dtype) * magnitude)
    own = RoundingModel(torch.float64).u / RoundingModel(dtype).u_acc
    limit = torch.maximum(floor, MARGIN * (1 + own) * bound)
    reason = ""
    if not (torch.isfinite(expected).all() and torch.isfinite(low).all()):
        reason = f"the reference evaluated in {_name(low_precision_dtype(dtype))} overflows"
    elif eps(dtype) * score_max > MAX_ROUNDED_SCORE:
        reason = (
            f"{_name(dtype)} cannot resolve scores of {score_max:.3g}: eps * s_max = "
            f"{eps(dtype) * score_max:.3g} > {MAX_ROUNDED_SCORE:g}"
        )
    elif not torch.isfinite(limit).all():
        reason = f"the rounding error of {_name(dtype)} has no finite bound here"
    elif largest > 0 and bool((limit >= expected.abs()).all()):
        reason = (
            f"{_name(dtype)} cannot resolve this case: every entry's limit reaches the size "
            "of the answer's entry (even zeros would pass)"
        )
    limit = torch.nan_to_num(limit, nan=math.inf, posinf=math.inf)
    return Limit(expected, limit, reason, kind)


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
    score_max = 0.0
    for nodes, tree in split_trees(hierarchy):
        rows = torch.as_tensor(nodes[: tree.num_leaves], device=q.device)
        s = score_matrix(
            q.double().index_select(-2, rows),
            k.double().index_select(-2, rows),
            scale=scale,
            energy=energy,
        )
        score_max = max(score_max, _max_abs(s))
    if positions is not None:
        p = positions.double()
        score_max += _max_abs(p @ p.T)
    return score_max


@dataclass(frozen=True)
class ReferenceResults:
    """The reference for one input in one dtype: ``out`` and, when asked, ``grads``
    (``{"q", "k", "v"}`` and ``"positions"`` when given; float64 tensors on the CPU)."""

    out: torch.Tensor
    grads: dict[str, torch.Tensor]

    def quantities(self) -> dict[str, torch.Tensor]:
        """``{"out": out, "q": dq, ...}``."""
        return {"out": self.out} | self.grads


def _inputs(q, k, v, positions) -> dict[str, torch.Tensor]:
    inputs = {"q": q, "k": k, "v": v}
    if positions is not None:
        inputs["positions"] = positions
    return inputs


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
    leaves = {
        name: x.detach().to(dtype).requires_grad_(grad_out is not None)
        for name, x in _inputs(q, k, v, positions).items()
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


def error_bounds(
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
) -> ReferenceResults:
    """How far a correct evaluation in ``dtype`` may be from the exact answer, entry by entry:
    the running error bound of the reference's own computation (:mod:`hsa_ref.rounding`), for
    the output and, with ``grad_out``, the gradients of ``sum(grad_out * out)``."""
    wants_grad = grad_out is not None
    leaves = {
        name: Bounded(x.detach().to(dtype).double().cpu()).requires_grad_(wants_grad)
        for name, x in _inputs(q, k, v, positions).items()
    }
    with bounded(dtype), torch.enable_grad():
        out = hsa_reference(
            leaves["q"],
            leaves["k"],
            leaves["v"],
            hierarchy,
            scale=scale,
            energy=energy,
            positions=leaves.get("positions"),
        )
        grads: dict[str, torch.Tensor] = {}
        if wants_grad:
            names = list(leaves)
            upstream = Bounded(grad_out.detach().to(dtype).double().cpu())
            values = torch.autograd.grad(
                out, [leaves[n] for n in names], upstream, allow_unused=True
            )
            for name, g in zip(names, values, strict=True):
                grads[name] = torch.zeros_like(leaves[name].value) if g is None else g.radius
    return ReferenceResults(out.radius.detach(), grads)


def gradient_magnitude(grads: dict[str, torch.Tensor]) -> float:
    """The largest entry of a whole gradient (every input's part): what the gradient noise
    term is the rounding noise of."""
    return max((_max_abs(g.double()) for g in grads.values()), default=0.0)


def limits(
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
) -> dict[str, Limit]:
    """The rule for every quantity (``"out"`` and, with ``grad_out``, ``"q"``, ``"k"``,
    ``"v"`` and ``"positions"``) of results computed from these inputs in ``dtype``."""
    c = check_attention_inputs(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)
    kw = {"scale": c.scale, "energy": c.energy, "positions": c.positions, "grad_out": grad_out}
    exact = evaluate_reference(c.q, c.k, c.v, hierarchy, **kw).quantities()
    low_dtype = low_precision_dtype(dtype)
    low = evaluate_reference(c.q, c.k, c.v, hierarchy, **kw, dtype=low_dtype).quantities()
    bound = error_bounds(c.q, c.k, c.v, hierarchy, dtype=dtype, **kw).quantities()
    s_max = score_magnitude(
        c.q, c.k, hierarchy, scale=c.scale, energy=c.energy, positions=c.positions
    )
    magnitude = gradient_magnitude({n: g for n, g in exact.items() if n != "out"})
    return {
        name: make_limit(
            exact[name],
            low[name],
            bound[name],
            dtype=dtype,
            score_max=s_max,
            kind="output" if name == "out" else "gradient",
            magnitude=None if name == "out" else magnitude,
        )
        for name in exact
    }


def hull_violation(
    out: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    dtype: torch.dtype,
    score_max: float,
) -> str:
    """Why ``out`` is not inside the range of the ``v`` rows of each row's tree ("" when it
    is): what holds at any precision, every row of ``theta`` being a convex combination.

    The slack is the rounding of a correct evaluation in ``dtype`` (``docs/TOLERANCE.md``):
    its weights are nonnegative, and per tree level their sum moves from one by at most
    ``2 u_function + 4 u + sum_error(n)`` and ``2 u_acc`` times the largest log-partition
    (``score_max + 2 log n``; log-partitions are kept in the accumulation dtype), then the sum
    over the tree's ``n`` leaves adds ``sum_error(n) + u``; all times ``max|v|``.
    """
    model = RoundingModel(dtype)
    x = out.detach().to(device="cpu", dtype=torch.float64)
    values = v.detach().to(device="cpu", dtype=torch.float64).expand(*x.shape)
    if not bool(torch.isfinite(x).all()):
        return "the result has NaN or inf"
    depth = hierarchy.depth
    for nodes, tree in split_trees(hierarchy):
        rows = torch.as_tensor(nodes[: tree.num_leaves])
        y, w = x.index_select(-2, rows), values.index_select(-2, rows)
        lo, hi = w.amin(-2, keepdim=True), w.amax(-2, keepdim=True)
        levels = int(depth[rows].max()) + 1
        n = float(tree.num_leaves)
        log_partition = score_max + 2 * math.log(n)
        per_level = 2 * model.u_function + 4 * model.u + model.sum_error(n)
        per_level += 2 * model.u_acc * log_partition
        weights = per_level * levels + model.sum_error(n) + model.u
        slack = weights * torch.maximum(lo.abs(), hi.abs())
        outside = (y < lo - slack) | (y > hi + slack)
        if bool(outside.any()):
            at = tuple(int(i) for i in outside.nonzero()[0])
            leaf = int(rows[at[-2]])
            return (
                f"row {leaf} (entry {at}) is {y[at].item():.6g}, outside the range "
                f"[{lo[(*at[:-2], 0, at[-1])].item():.6g}, {hi[(*at[:-2], 0, at[-1])].item():.6g}]"
                f" of v over its tree (slack {slack[(*at[:-2], 0, at[-1])].item():.3g}): "
                "rows of theta are convex combinations"
            )
    return ""


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
    rule = limits(
        q, k, v, hierarchy, dtype=q.dtype, scale=scale, energy=energy, positions=positions
    )["out"]
    return rule.judge(out)


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
    rules = limits(
        q,
        k,
        v,
        hierarchy,
        dtype=q.dtype,
        scale=scale,
        energy=energy,
        positions=positions,
        grad_out=grad_out,
    )
    if names is None:
        names = [n for n in GRADIENT_NAMES if n in rules]
    verdicts = {}
    for name in names:
        got = grads.get(name)
        if got is None:
            verdicts[name] = Agreement(FAILED, math.inf, 0.0, f"no gradient for {name}", "gradient")
        else:
            verdicts[name] = rules[name].judge(got)
    return verdicts
