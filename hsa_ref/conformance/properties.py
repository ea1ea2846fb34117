"""HSA's invariants as Hypothesis properties, held against an implementation (``PROPERTIES``)."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, Verbosity, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from ..hierarchy import Hierarchy
from ..reference import score_matrix, split_trees
from ..tolerance import Limit, hull_violation, limits, score_magnitude
from ..validation import check_scale
from .calling import Call
from .outcome import FAILED, PASSED, UNSUPPORTED, Outcome, Progress
from .strategies import HSACase, hierarchies, hsa_cases, large_hierarchies
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
    """State of one property run: the worst passing example, and how many examples reached a
    verdict (at least one comparison the dtype could resolve) or only what holds at any
    precision."""

    worst: tuple[float, float] | None = None
    uncheckable: int = 0
    checked: int = 0
    timed_out: str = ""
    resolved: bool = False  # the current example
    shrink: bool = True

    def record(self, err: float, limit: float) -> None:
        self.resolved = True
        if self.worst is None or err * self.worst[1] > self.worst[0] * limit:
            self.worst = (err, limit)

    def count(self) -> None:
        """The current example is over: count it."""
        if self.resolved:
            self.checked += 1
        else:
            self.uncheckable += 1
        self.resolved = False


_RUN = _Run()


def _text(case: HSACase, **extra: Any) -> str:
    notes = {**case.notes, **extra}
    return case.describe() + (
        "; " + ", ".join(f"{k}={v}" for k, v in notes.items()) if notes else ""
    )


def _fail(case: HSACase, what: str, err=None, limit=None, **notes: Any) -> PropertyViolation:
    which = "minimal failing example" if _RUN.shrink else "failing example (not shrunk)"
    return PropertyViolation(f"{what}\n{which}: {_text(case, **notes)}", err, limit, case)


@dataclass
class _Reference:
    """The rule for one property input: a :class:`~hsa_ref.tolerance.Limit` for every
    quantity (``"out"``, ``"q"``, ``"k"``, ``"v"``, ``"positions"``) and the values of ``v``
    and the tree, for the checks that hold at any precision."""

    rules: dict[str, Limit]
    v: torch.Tensor
    hierarchy: Hierarchy
    dtype: torch.dtype
    score_max: float

    @classmethod
    def of(cls, q, k, v, h: Hierarchy, kwargs: dict[str, Any], grad_out, dtype) -> _Reference:
        kw = {key: kwargs[key] for key in ("scale", "energy", "positions") if key in kwargs}
        rules = limits(q, k, v, h, dtype=dtype, grad_out=grad_out, **kw)
        kw["scale"] = check_scale(kw.get("scale"), q.shape[-1])
        s_max = score_magnitude(q, k, h, **kw)
        return cls(rules, v, h, dtype, s_max)

    @property
    def exact(self) -> dict[str, torch.Tensor]:
        return {name: rule.expected for name, rule in self.rules.items()}

    def rule(self, name: str, expected: torch.Tensor | None = None) -> Limit:
        """The rule for quantity ``name``; against ``expected``, an exact answer, rather
        than the reference: the reference is one more correct evaluation, so its distance
        from ``expected`` joins the limit."""
        rule = self.rules[name]
        if expected is None:
            return rule
        expected = expected.detach().double().cpu().expand_as(rule.expected)
        slack = (rule.expected - expected).abs()
        return Limit(expected, rule.limit + slack, rule.uncheckable, rule.kind)


def _max_abs(x: torch.Tensor) -> float:
    return x.abs().max().item() if x.numel() else 0.0


def _quantities(got: Call) -> dict[str, torch.Tensor]:
    return {"out": got.out} | got.grads


def _label(name: str) -> str:
    return "output" if name == "out" else f"gradient of {name}"


def _within_hull(case: HSACase, got: Call, ref: _Reference, what: str, **notes: Any) -> None:
    """What holds at any precision: the output is finite and inside the range of ``v`` over
    each row's tree."""
    problem = hull_violation(
        got.out, ref.v, ref.hierarchy, dtype=ref.dtype, score_max=ref.score_max
    )
    if problem:
        raise _fail(case, f"{what}: {problem}", **notes)


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
    _within_hull(case, got, ref, what, **notes)
    verdicts = {}
    for name, result in _quantities(got).items():
        rule = ref.rule(name, None if expected is None else expected.get(name)).judge(result)
        if rule.status == FAILED:
            raise _fail(
                case,
                f"{what}: {_label(name)}: {rule.reason} at entry {rule.entry}",
                rule.max_error,
                rule.tolerance,
                **notes,
            )
        verdicts[name] = rule
    checked = {n: r for n, r in verdicts.items() if r.checkable}
    if "out" not in checked:
        return
    for rule in checked.values():
        _RUN.record(rule.max_error, rule.tolerance)


def _require_close(
    case: HSACase, a: Call, b: Call, limits: dict[str, torch.Tensor], what: str, **notes: Any
) -> None:
    """Two calls of the implementation agree on every quantity within ``limits`` (entry by
    entry); a quantity without a limit (not checkable) is only required to be finite."""
    for got in (a, b):
        if got.problem:
            raise _fail(case, f"{what}: {got.problem}", **notes)
    qa, qb = _quantities(a), _quantities(b)
    for name in qa.keys() & qb.keys():
        x, y = qa[name].double(), qb[name].double()
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            raise _fail(case, f"{what}: the {_label(name)} has NaN or inf", math.inf, 0, **notes)
    if "out" not in limits:
        return
    for name, limit in limits.items():
        if name not in qa or name not in qb:
            continue
        err = (qa[name].double() - qb[name].double()).abs()
        if not err.numel():
            continue
        ratio = torch.where(err > 0, err / limit, 0.0)
        at = int(ratio.argmax())
        worst, bound = err.flatten()[at].item(), limit.flatten()[at].item()
        _RUN.record(worst, bound)
        if not bool((err <= limit).all()):
            raise _fail(
                case,
                f"{what}: {_label(name)} differs by more than the limit",
                worst,
                bound,
                **notes,
            )


def _pair_limits(ref: _Reference) -> dict[str, torch.Tensor]:
    """How far two results of the implementation, each within the rule's limit of the
    reference, may differ: twice each quantity's limit, entry by entry; quantities not
    checkable are left out."""
    return {name: 2 * rule.limit for name, rule in ref.rules.items() if rule.checkable}


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
    if got.unsupported:  # every drawn input lies inside the declared capabilities
        raise _fail(
            case,
            f"refused an input inside its declared capabilities ({got.unsupported}); declare "
            "what it does not support (docs/PORTING.md)",
            **notes,
        )
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
        _pair_limits(ref),
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
    expected = {"out": out.detach()}
    if target.capabilities.gradients and case.grad_out is not None:
        values = torch.autograd.grad(out, (q, k, v), case.grad_out.double())
        expected |= dict(zip("qkv", (g.detach() for g in values), strict=True))
    ref = _reference(target, case)
    # softmax attention in float64 is one more float64 evaluation: its distance from the
    # reference joins each limit (_Reference.rule)
    got = _run(target, case)
    _require(case, got, ref, "one family over all leaves is not softmax attention", expected)


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
        case, b, a, _pair_limits(ref), "a single-child family changed the result", **note
    )


def _permutation(target: Target, case: HSACase, data: st.DataObject) -> None:
    h = case.hierarchy
    rows = list(range(h.num_leaves))
    if target.capabilities.shuffled_leaves:
        leaf_map = data.draw(st.permutations(rows), label="leaf_map")
    else:  # reversing the rows keeps every subtree a contiguous range
        leaf_map = data.draw(st.sampled_from([rows, rows[::-1]]), label="leaf_map")
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
    _require_close(case, b, a, _pair_limits(ref), "relabelling does not permute the rows", **note)


def _part(limits: dict[str, torch.Tensor], index: Any) -> dict[str, torch.Tensor]:
    """The pair limits of the entries ``index`` selects: the reference evaluates every tree
    and every batch element on its own, so its bound for one alone is the same."""
    return {n: x[index] for n, x in limits.items() if n != "positions"}


def _forest(target: Target, case: HSACase, data: st.DataObject) -> None:
    h = case.hierarchy
    ref = _reference(target, case)
    whole = _run(target, case)
    pairs = _pair_limits(ref)
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
        limits = _part(pairs, (..., rows, slice(None)))
        _require_close(case, part, alone, limits, f"the tree of root {root} differs when alone")


def _batch(target: Target, case: HSACase, data: st.DataObject) -> None:
    ref = _reference(target, case)
    whole = _run(target, case)
    pairs = _pair_limits(ref)
    for index in itertools.product(*(range(n) for n in case.q.shape[:-2])):
        q, k, v = (x[index] for x in (case.q, case.k, case.v))
        one = HSACase(
            **{**case.__dict__, "grad_out": None if case.grad_out is None else case.grad_out[index]}
        )
        alone = _run(target, one, q, k, v)
        part = whole
        if whole.ok:
            part = Call(
                out=whole.out[index],
                grads={n: g[index] for n, g in whole.grads.items() if n != "positions"},
            )
            alone = Call(
                out=alone.out,
                problem=alone.problem,
                grads={n: g for n, g in alone.grads.items() if n != "positions"},
            )
        _require_close(case, part, alone, _part(pairs, index), f"batch element {index} differs")


def _finite_at_huge_scores(target: Target, case: HSACase, data: st.DataObject) -> None:
    got = _run(target, case)
    if got.problem:
        raise _fail(case, f"at |s| ~ 1e4: {got.problem}")
    for name, x in _quantities(got).items():
        if not torch.isfinite(x).all():
            raise _fail(case, f"at |s| ~ 1e4 the {_label(name)} has NaN or inf", math.inf, 0.0)
    kw = case.kwargs()
    kw["scale"] = check_scale(kw["scale"], case.q.shape[-1])
    s_max = score_magnitude(case.q, case.k, case.hierarchy, **kw)
    problem = hull_violation(got.out, case.v, case.hierarchy, dtype=target.dtype, score_max=s_max)
    if problem:
        raise _fail(case, f"at |s| ~ 1e4: {problem}")
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
    needs_batches: bool = False


LARGE_EVERY = 32
"""About one example in this many is a large tree (``large_hierarchies``), where drawn."""
PORT_SIZES: dict[str, Any] = {
    "head_sizes": True,
    "max_dim": 128,
    "max_batch": 8,
    "value_offsets": True,
    "positions_scales": (0.5, 4.0),
}
"""The sizes ports are written for (head sizes to 128, batches of up to 8 elements in two
dimensions, positions of entries up to about 10, ``v`` far from zero)."""


def _trees(caps: Capabilities, *, large: bool = False, **kw: Any) -> st.SearchStrategy[Hierarchy]:
    if not caps.forests:
        kw["max_trees"] = 1
    small = hierarchies(shuffle=caps.shuffled_leaves, **kw)
    if not large:
        return small
    big = large_hierarchies(shuffle=caps.shuffled_leaves)
    # a wide integer, for a frequency close to 1 / LARGE_EVERY; 0 (where Hypothesis shrinks
    # to) gives a small tree
    pick = st.integers(0, 2**16 - 1).map(lambda i: i % LARGE_EVERY == LARGE_EVERY - 1)
    return pick.flatmap(lambda large_tree: big if large_tree else small)


def _cases(tree_kw: dict | None = None, hierarchy: Callable | None = None, **kw: Any) -> Strategy:
    with_positions = kw.pop("positions", True)
    kw = {**PORT_SIZES, **kw}

    def strategy(dtype: torch.dtype, caps: Capabilities) -> st.SearchStrategy[HSACase]:
        trees = hierarchy(caps) if hierarchy is not None else _trees(caps, **(tree_kw or {}))
        batch = {} if caps.batches else {"max_batch_dims": 0}
        return hsa_cases(
            hierarchy=trees,
            dtype=dtype,
            energies=caps.energies,
            positions=caps.positions and with_positions,
            **{**kw, **batch},
        )

    return strategy


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in [
        Property(
            "matches_reference",
            "output and gradients agree with the float64 reference (|s| to 1e4, q and k far "
            "from the origin, positions)",
            _cases({"large": True}, score_magnitudes=_MAGNITUDES, offsets=True),
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
                **PORT_SIZES,
            ).filter(lambda c: c.q.dim() > 2),
            _batch,
            needs_batches=True,
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
    target: Target,
    prop: Property,
    *,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    shrink: bool = True,
    progress: Progress | None = None,
) -> Outcome:
    """Run one property for ``examples`` Hypothesis examples; a failure is shrunk to a minimum.

    An input the implementation refuses (``NotImplementedError``) fails: every drawn input
    lies inside the declared capabilities. Examples that the dtype cannot resolve are still
    held to what holds at any precision (finite, inside the range of ``v``), and counted; a
    property none of whose examples reached a full verdict fails.
    """
    caps = target.capabilities
    if prop.needs_forests and not caps.forests:
        return Outcome("property", prop.name, UNSUPPORTED, detail="needs forests (--single-tree)")
    if prop.needs_batches and not caps.batches:
        detail = "needs batch dimensions (--without-batches)"
        return Outcome("property", prop.name, UNSUPPORTED, detail=detail)

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        report_multiple_bugs=False,
        phases=list(Phase) if shrink else [Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @given(case=prop.strategy(target.dtype, caps), data=st.data())
    def run_property(case: HSACase, data: st.DataObject) -> None:
        _RUN.resolved = False
        prop.check(target, case, data)
        resolved = _RUN.resolved
        _RUN.count()
        if progress is not None:
            progress.update(f"property {prop.name}: {_RUN.checked} of {examples} examples resolved")
        if not resolved:  # held to what holds at any precision; draw another for a verdict
            reject()

    global _RUN
    _RUN = _Run(shrink=shrink)
    start = time.perf_counter()
    outcome = _verdict(prop, target, run_property)
    if progress is not None:
        status = {PASSED: "passed", FAILED: "FAILED"}.get(outcome.status, outcome.status)
        progress.done(
            f"property {prop.name}: {status}, {_RUN.checked} examples resolved "
            f"({time.perf_counter() - start:.1f} s)"
        )
    return outcome


def _verdict(prop: Property, target: Target, run_property: Callable[[], None]) -> Outcome:
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
    examples_run = _RUN.checked + _RUN.uncheckable
    coverage = {"examples": examples_run, "verdicts": _RUN.checked}
    counted = (
        f"{examples_run} examples, {_RUN.checked} checked, {_RUN.uncheckable} not checkable "
        f"in {str(target.dtype).removeprefix('torch.')} (held to what holds at any precision)"
    )
    if _RUN.checked == 0:
        return Outcome(
            "property",
            prop.name,
            FAILED,
            detail=f"no example reached a verdict ({counted})",
            coverage=coverage,
        )
    err, limit = _RUN.worst
    note = f"worst example by error / limit; {counted}"
    return Outcome("property", prop.name, PASSED, err, limit, note, coverage=coverage)


def check_properties(
    target: Target,
    *,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    names: Sequence[str] | None = None,
    shrink: bool = True,
    progress: Progress | None = None,
) -> list[Outcome]:
    """Run the named properties (all of :data:`PROPERTIES` by default); without ``shrink`` a
    failure is reported as first found, not shrunk to a minimal example."""
    props = [PROPERTIES[n] for n in names] if names is not None else list(PROPERTIES.values())
    return [
        check_property(target, p, examples=examples, seed=seed, shrink=shrink, progress=progress)
        for p in props
    ]
