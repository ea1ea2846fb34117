"""HSA's invariants as Hypothesis properties, held against an implementation (``PROPERTIES``)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import HealthCheck, Verbosity, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from ..calling import Call
from ..hierarchy import Hierarchy
from ..reference import score_matrix, split_trees
from ..strategies import HSACase, hierarchies, hsa_cases
from ..tolerance import (
    Agreement,
    agreement,
    evaluate_reference,
    gradient_magnitude,
    low_precision_dtype,
    perturbation_errors,
    score_magnitude,
)
from ..validation import check_scale
from .outcome import FAILED, PASSED, UNCHECKABLE, UNSUPPORTED, Outcome
from .target import Capabilities, Target

__all__ = [
    "DEFAULT_EXAMPLES",
    "PROPERTIES",
    "Property",
    "PropertyViolation",
    "check_properties",
    "check_property",
]

# ---------------------------------------------------------------------------- properties
DEFAULT_EXAMPLES = 100


class PropertyViolation(AssertionError):
    """A property failed; carries the numbers for the report and the case to save."""

    def __init__(
        self, message: str, max_error: float | None, tolerance: float | None, case: HSACase
    ) -> None:
        super().__init__(message)
        self.max_error = max_error
        self.tolerance = tolerance
        self.case = case


@dataclass
class _Run:
    """State of one property run: the worst passing example, counts of skipped examples."""

    worst: tuple[float, float] | None = None
    unsupported: int = 0
    uncheckable: int = 0
    checked: int = 0
    timed_out: str = ""

    def record(self, err: float, limit: float) -> None:
        self.checked += 1
        if self.worst is None or err * self.worst[1] > self.worst[0] * limit:
            self.worst = (err, limit)


_RUN = _Run()


def _text(case: HSACase, **extra: Any) -> str:
    notes = {**case.notes, **extra}
    return case.describe() + (
        "; " + ", ".join(f"{k}={v}" for k, v in notes.items()) if notes else ""
    )


def _fail(case: HSACase, what: str, err=None, limit=None, **notes: Any) -> PropertyViolation:
    return PropertyViolation(
        f"{what}\nminimal failing example: {_text(case, **notes)}", err, limit, case
    )


@dataclass
class _Reference:
    """The reference for one property input: the float64 value of every quantity (``"out"``,
    ``"q"``, ``"k"``, ``"v"``, ``"positions"``), its evaluation in the low-precision dtype,
    and the numbers of the rule."""

    exact: dict[str, torch.Tensor]
    low: dict[str, torch.Tensor]
    perturbation: dict[str, float]
    magnitude: float
    score_max: float
    dtype: torch.dtype

    @classmethod
    def of(cls, q, k, v, h: Hierarchy, kwargs: dict[str, Any], grad_out, dtype) -> _Reference:
        kw = {key: kwargs[key] for key in ("scale", "energy", "positions") if key in kwargs}
        kw["scale"] = check_scale(kw.get("scale"), q.shape[-1])
        exact = evaluate_reference(q, k, v, h, **kw, grad_out=grad_out)
        low = evaluate_reference(
            q, k, v, h, **kw, grad_out=grad_out, dtype=low_precision_dtype(dtype)
        )
        pert = perturbation_errors(q, k, v, h, **kw, grad_out=grad_out, dtype=dtype, exact=exact)
        s_max = score_magnitude(
            q, k, h, scale=kw["scale"], energy=kw["energy"], positions=kw.get("positions")
        )
        return cls(
            {"out": exact.out} | exact.grads,
            {"out": low.out} | low.grads,
            pert,
            gradient_magnitude(exact.grads),
            s_max,
            dtype,
        )

    def rule(self, name: str, result: torch.Tensor, expected: torch.Tensor | None = None):
        """SPEC section 6's verdict on ``result`` for quantity ``name`` (against ``expected``,
        an exact answer, or the reference itself).

        Against an exact answer the reference is one more correct evaluation whose error is
        known: ``max|ref64 - expected|`` joins the measured reference error (in float64 under
        nearly hard attention the float32 evaluation can be exact by luck).
        """
        measured = self.perturbation[name]
        if expected is not None:
            measured = max(measured, _max_abs(self.exact[name] - expected.double()))
        return agreement(
            result,
            self.exact[name] if expected is None else expected,
            self.low[name],
            dtype=self.dtype,
            score_max=self.score_max,
            kind="output" if name == "out" else "gradient",
            magnitude=None if name == "out" else self.magnitude,
            perturbation_error=measured,
        )

    def limit(self, name: str, expected: torch.Tensor | None = None) -> Agreement:
        """The rule applied to the reference itself: its ``tolerance`` and ``checkable``
        (with ``expected``, another evaluation of the same answer, its difference from the
        reference joins the measured error)."""
        return self.rule(name, self.exact[name], expected)


def _max_abs(x: torch.Tensor) -> float:
    return x.abs().max().item() if x.numel() else 0.0


def _quantities(got: Call) -> dict[str, torch.Tensor]:
    return {"out": got.out} | got.grads


def _label(name: str) -> str:
    return "output" if name == "out" else f"gradient of {name}"


def _require(
    case: HSACase,
    got: Call,
    ref: _Reference,
    what: str,
    expected: dict[str, torch.Tensor] | None = None,
    **notes: Any,
) -> None:
    """Every quantity of ``got`` passes the rule (against ``expected`` where given)."""
    if got.problem:
        raise _fail(case, f"{what}: {got.problem}", **notes)
    verdicts = {}
    for name, result in _quantities(got).items():
        rule = ref.rule(name, result, None if expected is None else expected.get(name))
        if rule.status == FAILED:
            raise _fail(
                case,
                f"{what}: {_label(name)}: {rule.reason}",
                rule.max_error,
                rule.tolerance,
                **notes,
            )
        verdicts[name] = rule
    checked = {n: r for n, r in verdicts.items() if r.checkable}
    if "out" not in checked:
        _RUN.uncheckable += 1
        reject()
    for rule in checked.values():
        _RUN.record(rule.max_error, rule.tolerance)


def _require_close(
    case: HSACase, a: Call, b: Call, limits: dict[str, float], what: str, **notes: Any
) -> None:
    """Two calls of the implementation agree on every quantity within ``limits``."""
    for got in (a, b):
        if got.problem:
            raise _fail(case, f"{what}: {got.problem}", **notes)
    qa, qb = _quantities(a), _quantities(b)
    for name, limit in limits.items():
        if name not in qa or name not in qb:
            continue
        x, y = qa[name].double(), qb[name].double()
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            raise _fail(
                case, f"{what}: the {_label(name)} has NaN or inf", math.inf, limit, **notes
            )
        err = _max_abs(x - y)
        _RUN.record(err, limit)
        if not err <= limit:
            raise _fail(
                case, f"{what}: {_label(name)} max difference above tolerance", err, limit, **notes
            )


def _limits(*refs: _Reference) -> dict[str, float]:
    """Sum over ``refs`` of each quantity's tolerance (two results each within their own
    tolerance of the reference differ by at most the sum); quantities not checkable in any
    of them are left out."""
    names = set.intersection(*(set(r.exact) for r in refs))
    out = {}
    for name in names:
        rules = [r.limit(name) for r in refs]
        if all(rule.checkable for rule in rules):
            out[name] = sum(rule.tolerance for rule in rules)
    return out


def _reference(target: Target, case: HSACase, q=None, k=None, v=None, h=None, kw=None):
    q = case.q if q is None else q
    k = case.k if k is None else k
    v = case.v if v is None else v
    grad_out = case.grad_out if target.capabilities.gradients else None
    return _Reference.of(
        q,
        k,
        v,
        case.hierarchy if h is None else h,
        case.kwargs() if kw is None else kw,
        grad_out,
        target.dtype,
    )


def _run(
    target: Target,
    case: HSACase,
    q=None,
    k=None,
    v=None,
    h=None,
    kw=None,
    **notes: Any,
) -> Call:
    q = case.q if q is None else q
    k = case.k if k is None else k
    v = case.v if v is None else v
    h = case.hierarchy if h is None else h
    kw = case.kwargs() if kw is None else kw
    if _RUN.timed_out:  # no second wait: report the same failure at once
        return Call(problem=_RUN.timed_out)
    got = target(q, k, v, h, kw, case.grad_out)
    if got.unsupported:
        _RUN.unsupported += 1
        reject()
    if "timed out" in got.problem:
        _RUN.timed_out = got.problem
    return got


# ---------------------------------------------------------------------------- the invariants
_MAGNITUDES = (1e-3, 1.0, 5.0, 30.0, 1e4)


def _matches_reference(target: Target, case: HSACase, data: st.DataObject) -> None:
    ref = _reference(target, case)
    _require(case, _run(target, case), ref, "differs from the reference")


def _default_scale(target: Target, case: HSACase, data: st.DataObject) -> None:
    explicit = {**case.kwargs(), "scale": check_scale(None, case.q.shape[-1])}
    implicit = {**case.kwargs(), "scale": None}
    ref = _reference(target, case, kw=explicit)
    a = _run(target, case, kw=implicit, called_with="scale=None and 1/sqrt(d_k)")
    b = _run(target, case, kw=explicit, called_with="scale=None and 1/sqrt(d_k)")
    _require_close(
        case,
        a,
        b,
        _limits(ref, ref),
        "scale=None differs from scale=1/sqrt(d_k)",
        called_with="scale=None and 1/sqrt(d_k)",
    )


def _constant_values(target: Target, case: HSACase, data: st.DataObject) -> None:
    row = data.draw(st.integers(0, case.hierarchy.num_leaves - 1), label="row")
    v = case.v[..., row : row + 1, :].expand_as(case.v).contiguous()
    note = {"values": f"every row of v equal to row {row}"}
    ref = _reference(target, case, v=v)
    got = _run(target, case, v=v, **note)
    _require(
        case,
        got,
        ref,
        "v = constant does not give that constant back",
        expected={"out": v.double()},
        **note,
    )


def _one_family_softmax(target: Target, case: HSACase, data: st.DataObject) -> None:
    kw = case.kwargs()
    scale = check_scale(kw["scale"], case.q.shape[-1])
    q, k, v = (x.detach().double().requires_grad_() for x in (case.q, case.k, case.v))
    s = score_matrix(q, k, scale=scale, energy=case.energy)
    out = torch.softmax(s, dim=-1) @ v
    grads = {}
    if target.capabilities.gradients and case.grad_out is not None:
        values = torch.autograd.grad(out, (q, k, v), case.grad_out.double())
        grads = dict(zip("qkv", (g.detach() for g in values), strict=True))
    softmax = Call(out=out.detach(), grads=grads)
    ref = _reference(target, case)
    got = _run(target, case)
    # softmax attention in float64 is itself one float64 evaluation: the implementation and it
    # may each err by a tolerance, in which their difference from the reference is measured
    values = {"out": softmax.out} | softmax.grads
    limits = {}
    for name, value in values.items():
        rule = ref.limit(name, value)
        if rule.checkable:
            limits[name] = 2 * rule.tolerance
    _require_close(
        case, got, softmax, limits, "one family over all leaves is not softmax attention"
    )


def _one_leaf_trees(target: Target, case: HSACase, data: st.DataObject) -> None:
    expected = {"out": case.v.double()}
    if case.grad_out is not None:
        zero = torch.zeros_like(case.q, dtype=torch.float64)
        expected |= {"q": zero, "k": zero, "v": case.grad_out.double()}
    ref = _reference(target, case)
    _require(case, _run(target, case), ref, "one-leaf trees do not return v", expected=expected)


def _single_child(target: Target, case: HSACase, data: st.DataObject) -> None:
    h = case.hierarchy
    node = data.draw(st.integers(0, h.num_nodes - 1), label="wrapped node")
    parent = h.parent
    parent.append(parent[node])
    parent[node] = len(parent) - 1
    wrapped = Hierarchy.from_parents(parent, h.num_leaves)
    kw = case.kwargs()
    if "positions" in kw:  # the new family gets the position of the node it wraps
        kw_wrapped = {
            **kw,
            "positions": torch.cat([kw["positions"], kw["positions"][node : node + 1]]),
        }
    else:
        kw_wrapped = kw
    note = {"wrapped": wrapped.to_json()}
    ref = _reference(target, case)
    a = _run(target, case, **note)
    b = _run(target, case, h=wrapped, kw=kw_wrapped, **note)
    if "positions" in b.grads:  # the new family's position is a copy of the node's
        g = b.grads["positions"]
        back = g[:-1].clone()
        back[node] += g[-1]
        b = Call(out=b.out, grads={**b.grads, "positions": back}, problem=b.problem)
    _require_close(
        case, b, a, _limits(ref, ref), "a single-child family changed the result", **note
    )


def _permutation(target: Target, case: HSACase, data: st.DataObject) -> None:
    h = case.hierarchy
    leaf_map = data.draw(st.permutations(range(h.num_leaves)), label="leaf_map")
    family_map = data.draw(st.permutations(range(h.num_leaves, h.num_nodes)), label="family_map")
    moved = h.relabel(leaf_map, family_map)
    inv = torch.empty(h.num_leaves, dtype=torch.long)
    inv[torch.tensor(leaf_map, dtype=torch.long)] = torch.arange(h.num_leaves)
    kw = case.kwargs()
    if "positions" in kw:
        new_id = torch.tensor(list(leaf_map) + list(family_map), dtype=torch.long)
        pos = torch.empty_like(kw["positions"])
        pos[new_id] = kw["positions"]
        kw = {**kw, "positions": pos}
    note = {"leaf_map": list(leaf_map), "family_map": list(family_map)}
    ref = _reference(target, case)
    a = _run(target, case, **note)
    qm, km, vm = (x[..., inv, :] for x in (case.q, case.k, case.v))
    moved_case = HSACase(
        **{
            **case.__dict__,
            "grad_out": None if case.grad_out is None else case.grad_out[..., inv, :],
        }
    )
    b = _run(target, moved_case, q=qm, k=km, v=vm, h=moved, kw=kw, **note)
    if a.ok and b.ok:
        back = {"out": b.out[..., leaf_map, :]}
        back |= {n: g[..., leaf_map, :] for n, g in b.grads.items() if n != "positions"}
        if "positions" in b.grads:
            back["positions"] = b.grads["positions"][new_id]
        b = Call(out=back["out"], grads={n: x for n, x in back.items() if n != "out"})
    _require_close(case, b, a, _limits(ref, ref), "relabelling does not permute the rows", **note)


def _forest(target: Target, case: HSACase, data: st.DataObject) -> None:
    h = case.hierarchy
    ref = _reference(target, case)
    whole = _run(target, case)
    for nodes, sub in split_trees(h):
        leaves, root = nodes[: sub.num_leaves], int(h.root_of[nodes[0]])
        rows = torch.tensor(leaves, dtype=torch.long)
        kw = case.kwargs()
        if "positions" in kw:
            kw = {**kw, "positions": kw["positions"][torch.tensor(nodes, dtype=torch.long)]}
        q, k, v = (x[..., rows, :] for x in (case.q, case.k, case.v))
        alone_case = HSACase(
            **{
                **case.__dict__,
                "grad_out": None if case.grad_out is None else case.grad_out[..., rows, :],
            }
        )
        ref_alone = _reference(target, alone_case, q, k, v, sub, kw)
        alone = _run(target, alone_case, q, k, v, sub, kw)
        if whole.ok and alone.ok:
            part = Call(
                out=whole.out[..., rows, :],
                grads={n: g[..., rows, :] for n, g in whole.grads.items() if n != "positions"},
            )
            alone = Call(
                out=alone.out, grads={n: g for n, g in alone.grads.items() if n != "positions"}
            )
        else:
            part = whole
        limits = {n: x for n, x in _limits(ref, ref_alone).items() if n != "positions"}
        _require_close(case, part, alone, limits, f"the tree of root {root} differs when alone")


def _batch(target: Target, case: HSACase, data: st.DataObject) -> None:
    ref = _reference(target, case)
    whole = _run(target, case)
    for index in itertools.product(*(range(n) for n in case.q.shape[:-2])):
        q, k, v = (x[index] for x in (case.q, case.k, case.v))
        one = HSACase(
            **{**case.__dict__, "grad_out": None if case.grad_out is None else case.grad_out[index]}
        )
        ref_one = _reference(target, one, q, k, v)
        single = _run(target, one, q, k, v)
        part = whole
        if whole.ok:
            part = Call(
                out=whole.out[index],
                grads={n: g[index] for n, g in whole.grads.items() if n != "positions"},
            )
            single = Call(
                out=single.out,
                problem=single.problem,
                grads={n: g for n, g in single.grads.items() if n != "positions"},
            )
        limits = {n: x for n, x in _limits(ref, ref_one).items() if n != "positions"}
        _require_close(case, part, single, limits, f"batch element {index} differs")


def _finite_at_huge_scores(target: Target, case: HSACase, data: st.DataObject) -> None:
    got = _run(target, case)
    if got.problem:
        raise _fail(case, f"at |s| ~ 1e4: {got.problem}")
    for name, x in _quantities(got).items():
        if not torch.isfinite(x).all():
            raise _fail(case, f"at |s| ~ 1e4 the {_label(name)} has NaN or inf", math.inf, 0.0)
    _RUN.record(0.0, 1.0)


# ---------------------------------------------------------------------------- the registry
def _one_leaf_forest(chains: list[int]) -> Hierarchy:
    trees = []
    for depth in chains:
        nested: Any = 0
        for _ in range(depth):
            nested = [nested]
        trees.append(Hierarchy.from_nested(nested))
    return Hierarchy.forest(trees)


Strategy = Callable[[torch.dtype, Capabilities], st.SearchStrategy[HSACase]]


@dataclass(frozen=True)
class Property:
    """A named invariant: a case strategy (given the dtype and capabilities), a check that
    raises :class:`PropertyViolation`, and whether it needs forests."""

    name: str
    description: str
    strategy: Strategy
    check: Callable[[Target, HSACase, st.DataObject], None]
    needs_forests: bool = False


def _trees(caps: Capabilities, **kw: Any) -> st.SearchStrategy[Hierarchy]:
    if not caps.forests:
        kw["max_trees"] = 1
    return hierarchies(shuffle=caps.shuffled_leaves, **kw)


def _cases(tree_kw: dict | None = None, hierarchy: Callable | None = None, **kw: Any) -> Strategy:
    with_positions = kw.pop("positions", True)

    def strategy(dtype: torch.dtype, caps: Capabilities) -> st.SearchStrategy[HSACase]:
        trees = hierarchy(caps) if hierarchy is not None else _trees(caps, **(tree_kw or {}))
        return hsa_cases(
            hierarchy=trees,
            dtype=dtype,
            energies=caps.energies,
            positions=caps.positions and with_positions,
            **kw,
        )

    return strategy


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in [
        Property(
            "matches_reference",
            "output and gradients agree with the float64 reference (|s| to 1e4, q and k far "
            "from the origin, positions)",
            _cases(score_magnitudes=_MAGNITUDES, offsets=True),
            _matches_reference,
        ),
        Property(
            "default_scale",
            "scale=None means 1/sqrt(d_k) (d_k >= 4, scores of order 1, two or more families)",
            _cases({"max_leaves": 16, "min_families": 2}, min_dim=4, score_magnitudes=(1.0,)),
            _default_scale,
        ),
        Property(
            "constant_values",
            "v with all rows equal gives that row back",
            _cases(score_magnitudes=_MAGNITUDES, positions=False),
            _constant_values,
        ),
        Property(
            "one_family_is_softmax",
            "one family over all leaves is softmax attention, output and gradients",
            _cases(
                hierarchy=lambda caps: st.integers(1, 24).map(Hierarchy.one_family),
                score_magnitudes=_MAGNITUDES,
                positions=False,
            ),
            _one_family_softmax,
        ),
        Property(
            "one_leaf_trees_return_v",
            "a forest of one-leaf trees (some under single-child chains) returns v; its "
            "gradients are 0, 0 and the upstream gradient",
            _cases(
                hierarchy=lambda caps: st.lists(
                    st.integers(0, 3), min_size=1, max_size=6 if caps.forests else 1
                ).map(_one_leaf_forest),
                positions=False,
            ),
            _one_leaf_trees,
        ),
        Property(
            "single_child_family",
            "inserting a single-child family above any node changes nothing",
            _cases({"max_leaves": 16}),
            _single_child,
        ),
        Property(
            "permutation_equivariance",
            "relabelling leaves (rows move along) and families permutes the results",
            _cases({"max_leaves": 16}),
            _permutation,
        ),
        Property(
            "forest_is_trees_alone",
            "each tree of a forest (rows interleaved) gives, output and gradients, what it "
            "gives alone",
            _cases(
                hierarchy=lambda caps: hierarchies(
                    max_leaves=16, min_leaves=2, max_trees=4, shuffle=caps.shuffled_leaves
                ).filter(lambda h: h.num_trees > 1),
                positions=False,
            ),
            _forest,
            needs_forests=True,
        ),
        Property(
            "batch_is_per_example",
            "a batch gives, output and gradients, what each example gives alone",
            lambda dtype, caps: hsa_cases(
                hierarchy=_trees(caps, max_leaves=12),
                dtype=dtype,
                energies=caps.energies,
                max_batch_dims=2,
            ).filter(lambda c: c.q.dim() > 2),
            _batch,
        ),
        Property(
            "finite_at_huge_scores",
            "output and gradients stay finite for scores of order 1e4",
            _cases(score_magnitudes=(1e4,)),
            _finite_at_huge_scores,
        ),
    ]
}


def check_property(
    target: Target, prop: Property, *, examples: int = DEFAULT_EXAMPLES, seed: int = 0
) -> Outcome:
    """Run one property for ``examples`` Hypothesis examples; a failure is shrunk to a minimum.

    Examples the implementation refuses (``NotImplementedError``) or that the dtype cannot
    resolve are discarded, never shrunk towards; a property none of whose examples could be
    checked is *unsupported* or *not checkable*.
    """
    caps = target.capabilities
    if prop.needs_forests and not caps.forests:
        return Outcome("property", prop.name, UNSUPPORTED, detail="needs forests (--single-tree)")

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @given(case=prop.strategy(target.dtype, caps), data=st.data())
    def run_property(case: HSACase, data: st.DataObject) -> None:
        prop.check(target, case, data)

    global _RUN
    _RUN = _Run()
    try:
        run_property()
    except PropertyViolation as exc:
        return Outcome(
            "property", prop.name, FAILED, exc.max_error, exc.tolerance, str(exc), case=exc.case
        )
    except Unsatisfiable:
        pass
    except Exception as exc:
        return Outcome("property", prop.name, FAILED, detail=f"{type(exc).__name__}: {exc}")
    skipped = f"{_RUN.unsupported} examples unsupported, {_RUN.uncheckable} not checkable"
    if _RUN.checked == 0:
        status = UNSUPPORTED if _RUN.unsupported >= _RUN.uncheckable else UNCHECKABLE
        return Outcome("property", prop.name, status, detail=f"no example checked ({skipped})")
    err, limit = _RUN.worst
    note = "worst example by error / tolerance"
    if _RUN.unsupported or _RUN.uncheckable:
        note += f"; {skipped}"
    return Outcome("property", prop.name, PASSED, err, limit, note)


def check_properties(
    target: Target,
    *,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> list[Outcome]:
    """Run the named properties (all of :data:`PROPERTIES` by default)."""
    props = [PROPERTIES[n] for n in names] if names is not None else list(PROPERTIES.values())
    return [check_property(target, p, examples=examples, seed=seed) for p in props]
