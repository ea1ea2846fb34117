"""Conformance harness: does an HSA implementation agree with the float64 reference?

Two modes (``docs/PORTING.md`` has the formats and the tolerance rule)::

    python -m hsa_ref.conformance --impl package.module:function [--dtype float32]
    python -m hsa_ref.conformance --outputs DIR

``--impl`` calls a Python callable with SPEC section 8's signature
``hsa(q, k, v, hierarchy, *, scale=None, energy="dot")`` (``positions=`` too, unless
``--without-positions``) on every golden case and on a Hypothesis property suite: agreement with
the reference under SPEC section 6's rule, and HSA's invariants (constant values come back, one
family is softmax attention, one-leaf trees return ``v``, single-child families change nothing,
relabelling permutes rows, a forest equals its trees alone, batches equal their examples, the
default scale is ``1/sqrt(d_k)``). ``--outputs`` checks a folder of ``hsa-output/1`` files that a
port in another language wrote for the golden inputs.

Every failing check is named with its max error and its tolerance; property failures show the
minimal failing example. Exit status: 0 all passed, 1 a check failed, 2 a usage error (bad
``--impl`` string, import failure, missing folder).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from .golden_cases import DTYPES, GOLDEN_DIR, GoldenCase, load_cases
from .hierarchy import Hierarchy
from .reference import hsa_reference, score_matrix, tree_mask
from .strategies import HSACase, hierarchies, hsa_cases
from .tolerance import ATOL_FACTOR, Agreement, agreement, compare_to_reference

__all__ = [
    "DEFAULT_EXAMPLES",
    "OUTPUT_FORMAT",
    "PROPERTIES",
    "Outcome",
    "Report",
    "UsageError",
    "check_case",
    "check_golden",
    "check_output_dir",
    "check_properties",
    "load_impl",
    "main",
    "run",
]

OUTPUT_FORMAT = "hsa-output/1"
DEFAULT_EXAMPLES = 100
Impl = Callable[..., torch.Tensor]


class UsageError(Exception):
    """Bad arguments: an ``--impl`` that cannot be imported, a folder that does not exist."""


@dataclass(frozen=True)
class Outcome:
    """The verdict of one check: a golden case, an output file or a property."""

    kind: str
    name: str
    passed: bool
    max_error: float | None = None
    tolerance: float | None = None
    detail: str = ""

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        numbers = ""
        if self.max_error is not None:
            numbers = f"max error {self.max_error:.3g}, tolerance {self.tolerance:.3g}"
        text = f"{verdict} {self.kind:<8} {self.name:<36} {numbers}"
        if self.detail and not self.passed:
            text += "\n" + "\n".join("       " + ln for ln in self.detail.splitlines())
        return text.rstrip()


@dataclass
class Report:
    """All outcomes of one run; ``passed`` when every check passed."""

    header: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def format(self, *, verbose: bool = True) -> str:
        lines = [self.header]
        lines += [o.line() for o in self.outcomes if verbose or not o.passed]
        n, bad = len(self.outcomes), len(self.failures)
        lines.append(f"{n} checks: {n - bad} passed, {bad} failed")
        if bad:
            lines.append("failed: " + ", ".join(f"{o.kind} {o.name}" for o in self.failures))
        return "\n".join(lines)


# ---------------------------------------------------------------------------- loading
def load_impl(spec: str) -> Impl:
    """The callable named by ``"package.module:function"`` (or ``module:Class.attribute``).

    Raises :class:`UsageError` for a malformed string, a module that fails to import, a missing
    attribute or something that is not callable.
    """
    module_name, sep, attr_path = spec.partition(":")
    parts = attr_path.split(".")
    if (
        not sep
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in parts)
    ):
        raise UsageError(f"--impl must look like package.module:function, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj


def on_device(impl: Impl, device: str) -> Impl:
    """``impl`` run on ``device``: inputs are moved there and the output back to the CPU.

    Raises :class:`UsageError` for a device torch does not know or cannot reach.
    """
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise UsageError(f"device {device!r} is not available: {exc}") from None

    @functools.wraps(impl)  # keeps the signature that accepts_positions reads
    def run(q, k, v, hierarchy, **kwargs):
        if isinstance(kwargs.get("positions"), torch.Tensor):
            kwargs["positions"] = kwargs["positions"].to(dev)
        out = impl(q.to(dev), k.to(dev), v.to(dev), hierarchy, **kwargs)
        return out.cpu() if isinstance(out, torch.Tensor) else out

    return run


def accepts_positions(impl: Impl) -> bool:
    """Whether ``impl`` takes a ``positions=`` keyword (or ``**kwargs``)."""
    try:
        params = inspect.signature(impl).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "positions" or p.kind is p.VAR_KEYWORD for p in params)


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


# ---------------------------------------------------------------------------- golden cases
def _verdict(kind: str, name: str, rule: Agreement) -> Outcome:
    return Outcome(kind, name, rule.passed, rule.max_error, rule.tolerance, rule.reason)


def _apply_stored_rule(
    kind: str, case: GoldenCase, out: torch.Tensor, dtype: torch.dtype
) -> Outcome:
    tol = case.tolerance
    rule = agreement(
        out,
        case.out,
        case.reference_t(dtype),
        dtype=dtype,
        score_max=tol["score_max"],
        value_max=tol["value_max"],
    )
    return _verdict(kind, case.name, rule)


def _shape_problem(out: Any, expected: tuple[int, ...]) -> str:
    """Why ``out`` is not a floating-point tensor of shape ``expected`` ("" when it is).

    The dtype of the result is not checked: computing a float32 input in float64 is allowed.
    """
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return f"returned {type(out).__name__} {getattr(out, 'dtype', '')}, not a float tensor"
    if tuple(out.shape) != expected:
        return f"returned shape {tuple(out.shape)}, expected {expected}"
    return ""


def check_case(impl: Impl, case: GoldenCase, dtype: torch.dtype = torch.float64) -> Outcome:
    """Run ``impl`` on one golden case in ``dtype`` and apply the stored tolerance."""
    q, k, v = case.inputs(dtype)
    try:
        out = impl(q, k, v, case.hierarchy, **case.call_kwargs(dtype))
    except Exception as exc:
        hint = ""
        if case.positions is not None and not accepts_positions(impl):
            hint = "\nthe implementation takes no positions=; --without-positions leaves these out"
        return Outcome("golden", case.name, False, detail=f"raised {exc!r}{hint}")
    problem = _shape_problem(out, tuple(case.out.shape))
    if problem:
        return Outcome("golden", case.name, False, detail=problem)
    return _apply_stored_rule("golden", case, out, dtype)


def check_golden(
    impl: Impl, cases: Sequence[GoldenCase], dtype: torch.dtype = torch.float64
) -> list[Outcome]:
    """:func:`check_case` for every case."""
    return [check_case(impl, case, dtype) for case in cases]


def _read_output(path: Path, case: GoldenCase) -> tuple[torch.Tensor, torch.dtype]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name}: not readable JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != OUTPUT_FORMAT:
        raise ValueError(f"{path.name}: format must be {OUTPUT_FORMAT!r}")
    if obj.get("case") != case.name:
        raise ValueError(f"{path.name}: 'case' is {obj.get('case')!r}, expected {case.name!r}")
    if obj.get("dtype") not in DTYPES:
        raise ValueError(f"{path.name}: 'dtype' must be one of {sorted(DTYPES)}")
    rows = obj.get("out")
    n, d_v = case.out.shape
    if (
        not isinstance(rows, list)
        or len(rows) != n
        or not all(isinstance(r, list) and len(r) == d_v for r in rows)
    ):
        raise ValueError(f"{path.name}: 'out' must be a list of {n} rows of {d_v} numbers")
    values = [[math.nan if x is None else x for x in r] for r in rows]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for r in values for x in r):
        raise ValueError(f"{path.name}: 'out' holds something other than numbers")
    return torch.tensor(values, dtype=torch.float64), DTYPES[obj["dtype"]]


def check_output_dir(directory: Path | str, cases: Sequence[GoldenCase]) -> list[Outcome]:
    """Check ``<directory>/<case>.json`` (``hsa-output/1``) for every golden case."""
    directory = Path(directory)
    outcomes = []
    for case in cases:
        path = directory / f"{case.name}.json"
        if not path.is_file():
            outcomes.append(Outcome("output", case.name, False, detail=f"no file {path}"))
            continue
        try:
            out, dtype = _read_output(path, case)
        except ValueError as exc:
            outcomes.append(Outcome("output", case.name, False, detail=str(exc)))
            continue
        outcomes.append(_apply_stored_rule("output", case, out, dtype))
    return outcomes


# ---------------------------------------------------------------------------- properties
class PropertyViolation(AssertionError):
    """A property failed; carries the numbers for the report."""

    def __init__(self, message: str, max_error: float | None, tolerance: float | None) -> None:
        super().__init__(message)
        self.max_error = max_error
        self.tolerance = tolerance


@dataclass(frozen=True)
class _Tolerance:
    """SPEC section 6's numbers for one input.

    In float64, ``ref_t`` is ``ref64`` itself: the tolerance is ``atol`` and no reference needs
    to run. In float32 the reference runs in both dtypes (``ref_t``, ``ref64``).
    """

    score_max: float
    value_max: float
    dtype: torch.dtype
    ref_t: torch.Tensor | None = None
    ref64: torch.Tensor | None = None

    def rule(self, out: torch.Tensor, expected: torch.Tensor) -> Agreement:
        """The rule for ``out`` against the exact answer ``expected`` (float64)."""
        ref_t = expected if self.ref_t is None else self.ref_t
        return agreement(
            out,
            expected,
            ref_t,
            dtype=self.dtype,
            score_max=self.score_max,
            value_max=self.value_max,
        )

    @property
    def limit(self) -> float:
        """The absolute tolerance ``2 * max|ref_t - ref64| + atol``."""
        eps = torch.finfo(self.dtype).eps
        atol = ATOL_FACTOR * eps * (1.0 + self.score_max) * self.value_max
        if self.ref64 is None or self.ref_t is None or not self.ref64.numel():
            return atol
        return 2.0 * (self.ref_t.double() - self.ref64).abs().max().item() + atol


def _tolerance(q, k, v, h: Hierarchy, kw: dict[str, Any]) -> _Tolerance:
    dtype = q.dtype
    scale = kw.get("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = score_matrix(q.double(), k.double(), scale=scale, energy=kw.get("energy", "dot"))
    score_max = s.abs().masked_fill(~tree_mask(h), 0).max().item()
    value_max = v.double().abs().max().item()
    if dtype == torch.float64:
        return _Tolerance(score_max, value_max, dtype)
    ref64 = hsa_reference(q, k, v, h, **kw)
    ref_t = hsa_reference(q, k, v, h, **kw, dtype=dtype)
    return _Tolerance(score_max, value_max, dtype, ref_t, ref64)


def _call(impl: Impl, case_text: str, *args: Any, **kwargs: Any) -> torch.Tensor:
    try:
        out = impl(*args, **kwargs)
    except Exception as exc:
        raise PropertyViolation(
            f"raised {exc!r}\nminimal failing example: {case_text}", None, None
        ) from exc
    q, v = args[0], args[2]
    problem = _shape_problem(out, (*q.shape[:-1], v.shape[-1]))
    if problem:
        raise PropertyViolation(f"{problem}\nminimal failing example: {case_text}", None, None)
    return out


# The worst (error, tolerance) pair seen by the property now running, by ratio.
_WORST: list[tuple[float, float]] = []


def _record(err: float, limit: float) -> None:
    if not _WORST:
        _WORST.append((err, limit))
    elif err * _WORST[0][1] > _WORST[0][0] * limit:
        _WORST[0] = (err, limit)


def _require(rule: Agreement, case_text: str, what: str) -> None:
    _record(rule.max_error, rule.tolerance)
    if not rule.passed:
        raise PropertyViolation(
            f"{what}: {rule.reason}\nminimal failing example: {case_text}",
            rule.max_error,
            rule.tolerance,
        )


def _require_close(
    a: torch.Tensor, b: torch.Tensor, limit: float, case_text: str, what: str
) -> None:
    """``a`` and ``b`` (both outputs of the implementation) within ``limit`` and finite."""
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    finite = bool(torch.isfinite(a).all() and torch.isfinite(b).all())
    _record(err, limit)
    if not (finite and err <= limit):
        reason = "output has NaN or inf" if not finite else "max difference above tolerance"
        raise PropertyViolation(
            f"{what}: {reason}\nminimal failing example: {case_text}", err, limit
        )


def _text(case: HSACase, **extra: Any) -> str:
    notes = {**case.notes, **extra}
    return case.describe() + (
        "; " + ", ".join(f"{k}={v}" for k, v in notes.items()) if notes else ""
    )


def _one_family(n: int) -> Hierarchy:
    return Hierarchy.from_parents([n] * n + [-1], n)


def _one_leaf_forest(chains: list[int]) -> Hierarchy:
    trees = []
    for depth in chains:
        nested: Any = 0
        for _ in range(depth):
            nested = [nested]
        trees.append(Hierarchy.from_nested(nested))
    return Hierarchy.forest(trees)


@dataclass(frozen=True)
class Property:
    """A named invariant: a case strategy and a check that raises on violation."""

    name: str
    description: str
    strategy: Callable[[torch.dtype], st.SearchStrategy[HSACase]]
    check: Callable[[Impl, HSACase, st.DataObject], None]


_MAGNITUDES = (1e-3, 1.0, 5.0, 30.0, 1e4)


def _matches_reference(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    text = _text(case)
    out = _call(impl, text, case.q, case.k, case.v, case.hierarchy, **case.kwargs())
    rule = compare_to_reference(out, case.q, case.k, case.v, case.hierarchy, **case.kwargs())
    _require(rule, text, "output differs from the reference")


def _default_scale(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    h, explicit = case.hierarchy, 1.0 / math.sqrt(case.q.shape[-1])
    text = _text(case, called_with="scale=None and scale=1/sqrt(d_k)")
    out = _call(impl, text, case.q, case.k, case.v, h, scale=None, energy=case.energy)
    kw = {"scale": explicit, "energy": case.energy}
    out_explicit = _call(impl, text, case.q, case.k, case.v, h, **kw)
    limit = 2 * _tolerance(case.q, case.k, case.v, h, kw).limit
    _require_close(out, out_explicit, limit, text, "scale=None differs from scale=1/sqrt(d_k)")


def _constant_values(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    row = data.draw(st.integers(0, case.hierarchy.num_leaves - 1), label="row")
    v = case.v[..., row : row + 1, :].expand_as(case.v).contiguous()
    text = _text(case, v=f"every row equal to row {row} of v")
    out = _call(impl, text, case.q, case.k, v, case.hierarchy, **case.kwargs())
    tol = _tolerance(case.q, case.k, v, case.hierarchy, case.kwargs())
    _require(tol.rule(out, v.double()), text, "v = constant does not give that constant back")


def _one_family_softmax(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    text = _text(case)
    h = case.hierarchy
    out = _call(impl, text, case.q, case.k, case.v, h, **case.kwargs())
    tol = _tolerance(case.q, case.k, case.v, h, case.kwargs())
    scale = case.scale if case.scale is not None else 1.0 / math.sqrt(case.q.shape[-1])
    s = score_matrix(case.q.double(), case.k.double(), scale=scale, energy=case.energy)
    expected = torch.softmax(s, dim=-1) @ case.v.double()
    _require(tol.rule(out, expected), text, "one family over all leaves is not softmax attention")


def _one_leaf_trees(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    text = _text(case)
    out = _call(impl, text, case.q, case.k, case.v, case.hierarchy, **case.kwargs())
    tol = _tolerance(case.q, case.k, case.v, case.hierarchy, case.kwargs())
    _require(tol.rule(out, case.v.double()), text, "one-leaf trees do not return v")


def _single_child(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    h = case.hierarchy
    node = data.draw(st.integers(0, h.num_nodes - 1), label="wrapped node")
    parent = h.parent
    parent.append(parent[node])
    parent[node] = len(parent) - 1
    wrapped = Hierarchy.from_parents(parent, h.num_leaves)
    text = _text(case, wrapped=wrapped.to_json())
    out = _call(impl, text, case.q, case.k, case.v, h, **case.kwargs())
    out_wrapped = _call(impl, text, case.q, case.k, case.v, wrapped, **case.kwargs())
    limit = 2 * _tolerance(case.q, case.k, case.v, h, case.kwargs()).limit
    _require_close(out_wrapped, out, limit, text, "a single-child family changed the output")


def _permutation(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    h = case.hierarchy
    leaf_map = data.draw(st.permutations(range(h.num_leaves)), label="leaf_map")
    family_map = data.draw(st.permutations(range(h.num_leaves, h.num_nodes)), label="family_map")
    moved = h.relabel(leaf_map, family_map)
    inv = torch.empty(h.num_leaves, dtype=torch.long)
    inv[torch.tensor(leaf_map, dtype=torch.long)] = torch.arange(h.num_leaves)
    text = _text(case, leaf_map=list(leaf_map), family_map=list(family_map))
    out = _call(impl, text, case.q, case.k, case.v, h, **case.kwargs())
    qm, km, vm = (x[..., inv, :] for x in (case.q, case.k, case.v))
    out_moved = _call(impl, text, qm, km, vm, moved, **case.kwargs())
    limit = 2 * _tolerance(case.q, case.k, case.v, h, case.kwargs()).limit
    _require_close(out_moved, out[..., inv, :], limit, text, "relabelling does not permute rows")


def _forest(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    h = case.hierarchy
    text = _text(case)
    out = _call(impl, text, case.q, case.k, case.v, h, **case.kwargs())
    limit_forest = _tolerance(case.q, case.k, case.v, h, case.kwargs()).limit
    roots = h.root_of[: h.num_leaves]
    for root in h.roots:
        rows = torch.as_tensor((roots == root).nonzero()[0], dtype=torch.long)
        keep = {int(x) for x in rows}
        sub = _subtree(h, root, keep)
        q, k, v = (x[..., rows, :] for x in (case.q, case.k, case.v))
        alone = _call(impl, text, q, k, v, sub, **case.kwargs())
        limit = limit_forest + _tolerance(q, k, v, sub, case.kwargs()).limit
        _require_close(
            out[..., rows, :], alone, limit, text, f"the tree of root {root} differs when alone"
        )


def _subtree(h: Hierarchy, root: int, leaves: set[int]) -> Hierarchy:
    """The tree of ``root`` as its own hierarchy, leaves renumbered in increasing order."""
    nodes = sorted(leaves) + sorted(
        int(a) for a in h.families if int(h.root_of[a]) == root and a not in leaves
    )
    new_id = {old: new for new, old in enumerate(nodes)}
    parent = [new_id[p] if (p := h.parent[x]) >= 0 else -1 for x in nodes]
    return Hierarchy.from_parents(parent, len(leaves))


def _batch(impl: Impl, case: HSACase, data: st.DataObject) -> None:
    text = _text(case)
    h = case.hierarchy
    out = _call(impl, text, case.q, case.k, case.v, h, **case.kwargs())
    for index in itertools.product(*(range(n) for n in case.q.shape[:-2])):
        q, k, v = (x[index] for x in (case.q, case.k, case.v))
        single = _call(impl, text, q, k, v, h, **case.kwargs())
        limit = 2 * _tolerance(q, k, v, h, case.kwargs()).limit
        _require_close(out[index], single, limit, text, f"batch element {index} differs")


def _cases(**kw: Any) -> Callable[[torch.dtype], st.SearchStrategy[HSACase]]:
    return lambda dtype: hsa_cases(dtype=dtype, **kw)


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in [
        Property(
            "matches_reference",
            "agrees with the float64 reference under SPEC section 6 (|s| up to 1e4)",
            _cases(score_magnitudes=_MAGNITUDES),
            _matches_reference,
        ),
        Property(
            "default_scale",
            "scale=None means 1/sqrt(d_k)",
            _cases(score_magnitudes=(1.0,)),
            _default_scale,
        ),
        Property(
            "constant_values",
            "v with all rows equal gives that row back",
            _cases(score_magnitudes=_MAGNITUDES),
            _constant_values,
        ),
        Property(
            "one_family_is_softmax",
            "one family over all leaves is softmax attention",
            _cases(hierarchy=st.integers(1, 24).map(_one_family), score_magnitudes=_MAGNITUDES),
            _one_family_softmax,
        ),
        Property(
            "one_leaf_trees_return_v",
            "a forest of one-leaf trees (some under single-child chains) returns v",
            _cases(
                hierarchy=st.lists(st.integers(0, 3), min_size=1, max_size=6).map(_one_leaf_forest)
            ),
            _one_leaf_trees,
        ),
        Property(
            "single_child_family",
            "inserting a single-child family above any node changes nothing",
            _cases(hierarchy=hierarchies(max_leaves=16)),
            _single_child,
        ),
        Property(
            "permutation_equivariance",
            "relabelling leaves (rows move along) and families permutes the output rows",
            _cases(hierarchy=hierarchies(max_leaves=16)),
            _permutation,
        ),
        Property(
            "forest_is_trees_alone",
            "each tree of a forest (rows interleaved) gives what it gives alone",
            _cases(
                hierarchy=hierarchies(max_leaves=16, min_leaves=2, max_trees=4).filter(
                    lambda h: h.num_trees > 1
                )
            ),
            _forest,
        ),
        Property(
            "batch_is_per_example",
            "batched inputs give the outputs of each example alone",
            lambda dtype: hsa_cases(
                hierarchy=hierarchies(max_leaves=12), dtype=dtype, max_batch_dims=2
            ).filter(lambda c: c.q.dim() > 2),
            _batch,
        ),
    ]
}


def check_property(
    impl: Impl,
    prop: Property,
    *,
    dtype: torch.dtype = torch.float64,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
) -> Outcome:
    """Run one property for ``examples`` Hypothesis examples; a failure is shrunk to a minimum."""

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
    @given(case=prop.strategy(dtype), data=st.data())
    def run_property(case: HSACase, data: st.DataObject) -> None:
        prop.check(impl, case, data)

    _WORST.clear()
    try:
        run_property()
    except PropertyViolation as exc:
        return Outcome("property", prop.name, False, exc.max_error, exc.tolerance, str(exc))
    except Exception as exc:
        return Outcome("property", prop.name, False, detail=f"{type(exc).__name__}: {exc}")
    err, limit = _WORST[0] if _WORST else (None, None)
    return Outcome("property", prop.name, True, err, limit, "worst example by error / tolerance")


def check_properties(
    impl: Impl,
    *,
    dtype: torch.dtype = torch.float64,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> list[Outcome]:
    """Run the named properties (all of :data:`PROPERTIES` by default)."""
    props = [PROPERTIES[n] for n in names] if names is not None else list(PROPERTIES.values())
    return [check_property(impl, p, dtype=dtype, examples=examples, seed=seed) for p in props]


# ---------------------------------------------------------------------------- driver
def select_cases(
    golden_dir: Path | str = GOLDEN_DIR,
    names: Sequence[str] | None = None,
    *,
    without_positions: bool = False,
) -> list[GoldenCase]:
    """Load golden cases; :class:`UsageError` for a missing folder or unknown names."""
    golden_dir = Path(golden_dir)
    if not golden_dir.is_dir():
        raise UsageError(f"golden folder {golden_dir} does not exist")
    try:
        cases = load_cases(golden_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if names:
        unknown = set(names) - {c.name for c in cases}
        if unknown:
            raise UsageError(f"unknown golden cases {sorted(unknown)}")
        cases = [c for c in cases if c.name in set(names)]
    if without_positions:
        cases = [c for c in cases if c.positions is None]
    return cases


def run(
    impl: Impl | None = None,
    *,
    outputs: Path | str | None = None,
    dtype: str = "float64",
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    golden_dir: Path | str = GOLDEN_DIR,
    cases: Sequence[str] | None = None,
    properties: Sequence[str] | None = None,
    golden: bool = True,
    without_positions: bool = False,
    label: str = "",
) -> Report:
    """Run the harness on a callable (``impl``) or a folder of outputs (``outputs``)."""
    if (impl is None) == (outputs is None):
        raise UsageError("give exactly one of an implementation or an outputs folder")
    torch_dtype = _dtype(dtype)
    selected = (
        select_cases(golden_dir, cases, without_positions=without_positions) if golden else []
    )
    if outputs is not None:
        if not Path(outputs).is_dir():
            raise UsageError(f"outputs folder {outputs} does not exist")
        report = Report(f"HSA conformance of the outputs in {outputs}: {len(selected)} cases")
        report.outcomes = check_output_dir(outputs, selected)
        return report
    if properties is not None:
        unknown = set(properties) - PROPERTIES.keys()
        if unknown:
            raise UsageError(f"unknown properties {sorted(unknown)}; known: {sorted(PROPERTIES)}")
    if examples < 1:
        raise UsageError("--examples must be at least 1")
    n_props = len(PROPERTIES) if properties is None else len(properties)
    props = (
        f"{n_props} properties x {examples} examples (seed {seed})" if n_props else "no properties"
    )
    report = Report(
        f"HSA conformance of {label or getattr(impl, '__qualname__', impl)} in {dtype}: "
        f"{len(selected)} golden cases, {props}"
    )
    report.outcomes = check_golden(impl, selected, torch_dtype)
    if n_props:
        report.outcomes += check_properties(
            impl, dtype=torch_dtype, examples=examples, seed=seed, names=properties
        )
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hsa_ref.conformance",
        description="Check an HSA implementation against the golden cases and HSA's invariants.",
        epilog="Exit status: 0 all passed, 1 a check failed, 2 a usage error.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--impl", metavar="MODULE:FUNCTION", help="a Python implementation")
    target.add_argument("--outputs", metavar="DIR", help="a folder of hsa-output/1 files")
    p.add_argument("--dtype", default="float64", choices=sorted(DTYPES), help="(--impl only)")
    p.add_argument(
        "--device", default="cpu", help="run --impl on this torch device, e.g. cuda (--impl only)"
    )
    p.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="per property")
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed")
    p.add_argument("--golden", default=str(GOLDEN_DIR), metavar="DIR", help="golden folder")
    p.add_argument("--case", action="append", metavar="NAME", help="only these golden cases")
    p.add_argument(
        "--property", action="append", metavar="NAME", help=f"only these of {sorted(PROPERTIES)}"
    )
    only = p.add_mutually_exclusive_group()
    only.add_argument("--golden-only", action="store_true", help="no property suite")
    only.add_argument("--properties-only", action="store_true", help="no golden cases")
    p.add_argument("--without-positions", action="store_true", help="leave out geometry cases")
    p.add_argument("--quiet", action="store_true", help="print failures and the summary only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 pass, 1 failure, 2 usage error)."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        impl = load_impl(args.impl) if args.impl else None
        if impl is not None and args.device != "cpu":
            impl = on_device(impl, args.device)
        report = run(
            impl,
            outputs=args.outputs,
            dtype=args.dtype,
            examples=args.examples,
            seed=args.seed,
            golden_dir=args.golden,
            cases=args.case,
            properties=[] if args.golden_only else args.property,
            golden=not args.properties_only,
            without_positions=args.without_positions,
            label=args.impl or "",
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format(verbose=not args.quiet))
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
