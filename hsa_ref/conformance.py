"""Conformance harness: does an HSA implementation agree with the float64 reference?

Two modes (``docs/PORTING.md`` has the formats, the tolerance rule and the report)::

    python -m hsa_ref.conformance --impl package.module:function [--dtype bfloat16]
    python -m hsa_ref.conformance --outputs DIR

``--impl`` calls a Python callable with SPEC section 8's signature
``hsa(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None)`` on every golden case
and on a Hypothesis property suite, and judges its outputs and its gradients (``dq, dk, dv``,
``d positions``) under SPEC section 6's rule. ``--outputs`` checks a folder of ``hsa-output/1``
files that a port in another language wrote for the golden inputs.

A port declares what it supports (``--energy``, ``--single-tree``, ``--without-positions``,
``--contiguous-leaves``, ``--forward-only``); inputs outside that set are not run, and a
``NotImplementedError`` raised by the port counts as *unsupported*, never as failed.

Exit status: 0 every check that ran passed, 1 a check failed (or the implementation ended the
process, or hung), 2 a usage error (bad arguments, import failure of the harness' own inputs, a
run in which nothing was checked).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, Verbosity, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from . import __version__
from .calling import DEFAULT_TIMEOUT, Call, call
from .diagnostics import diagnose
from .formats import (
    GOLDEN_DIR,
    OUTPUT_FORMAT,
    GoldenCase,
    load_cases,
    load_index,
    read_output,
    write_cases,
)
from .golden_cases import make_case
from .hierarchy import Hierarchy
from .reference import hsa_attention_matrix, score_matrix, split_trees
from .strategies import HSACase, hierarchies, hsa_cases
from .tolerance import (
    DTYPES,
    Agreement,
    agreement,
    eps,
    evaluate_reference,
    gradient_magnitude,
    low_precision_dtype,
    perturbation_errors,
    score_magnitude,
)
from .validation import ENERGIES, check_scale

__all__ = [
    "DEFAULT_EXAMPLES",
    "OUTPUT_FORMAT",
    "PROPERTIES",
    "REPORT_FORMAT",
    "Capabilities",
    "ImplementationError",
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

REPORT_FORMAT = "hsa-conformance-report/1"
DEFAULT_EXAMPLES = 100
PASSED, FAILED, UNCHECKABLE, UNSUPPORTED = "passed", "failed", "not checkable", "unsupported"
Impl = Callable[..., Any]


class UsageError(Exception):
    """Bad arguments: a malformed ``--impl``, a folder that does not exist, nothing to check."""


class ImplementationError(Exception):
    """The implementation could not even be loaded (it raised, or exited, on import)."""


# ---------------------------------------------------------------------------- capabilities
def leaves_contiguous(h: Hierarchy) -> bool:
    """Whether every node's leaves are a contiguous range of rows (as a recursion over token
    ranges assumes)."""
    for node in range(h.num_nodes):
        leaves = h.leaves_under(node)
        if leaves[-1] - leaves[0] + 1 != len(leaves):
            return False
    return True


@dataclass(frozen=True)
class Capabilities:
    """What an implementation supports; inputs outside it are not run."""

    energies: tuple[str, ...] = ENERGIES
    forests: bool = True
    positions: bool = True
    gradients: bool = True
    shuffled_leaves: bool = True

    def excludes(self, h: Hierarchy, energy: str, has_positions: bool) -> str:
        """Why an input lies outside the declared set ("" when it does not)."""
        if energy not in self.energies:
            return f"the {energy} energy"
        if not self.forests and h.num_trees > 1:
            return "a forest"
        if not self.positions and has_positions:
            return "positions"
        if not self.shuffled_leaves and not leaves_contiguous(h):
            return "non-contiguous leaves"
        return ""

    def flags(self) -> list[str]:
        """The command-line flags that declare these capabilities."""
        out = [f"--energy {e}" for e in self.energies] if self.energies != ENERGIES else []
        out += ["--single-tree"] * (not self.forests) + ["--without-positions"] * (
            not self.positions
        )
        out += ["--contiguous-leaves"] * (not self.shuffled_leaves)
        out += ["--forward-only"] * (not self.gradients)
        return out


# ---------------------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class Outcome:
    """The verdict of one check: a golden case's output or gradient, an output file or a
    property. ``status`` is passed, failed, not checkable or unsupported."""

    kind: str
    name: str
    status: str
    max_error: float | None = None
    tolerance: float | None = None
    detail: str = ""
    diagnostic: str = ""
    saved: str = ""
    case: Any = field(default=None, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def line(self) -> str:
        verdict = {PASSED: "ok  ", FAILED: "FAIL", UNCHECKABLE: "n/c ", UNSUPPORTED: "unsu"}
        numbers = ""
        if self.max_error is not None and self.tolerance is not None:
            numbers = f"max error {self.max_error:.3g}, tolerance {self.tolerance:.3g}"
        text = f"{verdict[self.status]} {self.kind:<8} {self.name:<40} {numbers}"
        if self.status != PASSED:
            extra = self.diagnostic.splitlines()
            extra += self.detail.splitlines()
            if self.saved:
                extra.append(f"saved as {self.saved}")
            text += "".join("\n       " + ln for ln in extra if ln)
        return text.rstrip()


@dataclass
class Report:
    """All outcomes of one run. ``passed`` when no check failed and at least one passed."""

    header: str
    outcomes: list[Outcome] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def checked(self) -> int:
        """Checks that ran to a verdict (passed or failed)."""
        return self.counts[PASSED] + self.counts[FAILED]

    @property
    def passed(self) -> bool:
        return not self.failures and self.checked > 0

    def format(self, *, verbose: bool = True) -> str:
        lines = [self.header]
        lines += [o.line() for o in self.outcomes if verbose or o.status != PASSED]
        c = self.counts
        lines.append(
            f"{len(self.outcomes)} checks: {c[PASSED]} passed, {c[FAILED]} failed, "
            f"{c[UNCHECKABLE]} not checkable, {c[UNSUPPORTED]} unsupported"
        )
        for status, label in (
            (FAILED, "failed"),
            (UNCHECKABLE, "not checkable in this dtype"),
            (UNSUPPORTED, "unsupported by the implementation"),
        ):
            names = [f"{o.kind} {o.name}" for o in self.outcomes if o.status == status]
            if names:
                lines.append(f"{label}: " + ", ".join(names))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The ``hsa-conformance-report/1`` object (docs/PORTING.md)."""
        return {
            "format": REPORT_FORMAT,
            **self.meta,
            "summary": {s: self.counts[s] for s in (PASSED, FAILED, UNCHECKABLE, UNSUPPORTED)},
            "passed": self.passed,
            "checks": [
                {
                    k: (None if isinstance(x, float) and not math.isfinite(x) else x)
                    for k, x in asdict(o).items()
                    if k != "case"
                }
                for o in self.outcomes
            ],
        }


# ---------------------------------------------------------------------------- loading
def load_impl(spec: str) -> Impl:
    """The callable named by ``"package.module:function"`` (or ``module:Class.attribute``).

    Raises :class:`UsageError` for a malformed string, a missing module or attribute, or
    something that is not callable, and :class:`ImplementationError` when the module raises
    (or calls ``sys.exit``) while it is imported.
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
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
        raise ImplementationError(f"importing {module_name!r} raised {exc!r}") from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise ImplementationError(f"importing {module_name!r} raised {exc!r}") from None
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def device_or_usage_error(name: str) -> torch.device:
    try:
        dev = torch.device(name)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise UsageError(f"device {name!r} is not available: {exc}") from None
    return dev


@dataclass(frozen=True)
class Target:
    """How the implementation under test is called: dtype, device, time limit, capabilities."""

    impl: Impl
    dtype: torch.dtype = torch.float64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout: float | None = DEFAULT_TIMEOUT
    capabilities: Capabilities = Capabilities()

    def __call__(
        self, q, k, v, hierarchy: Hierarchy, kwargs: dict[str, Any], grad_out=None
    ) -> Call:
        wants = grad_out if self.capabilities.gradients else None
        return call(
            self.impl,
            q,
            k,
            v,
            hierarchy,
            kwargs,
            grad_out=wants,
            device=self.device,
            timeout=self.timeout,
        )


# ---------------------------------------------------------------------------- diagnostics
def _theta_diagnostic(target: Target, q, k, hierarchy: Hierarchy, kwargs: dict) -> str:
    """The first three of :func:`hsa_ref.diagnostics.diagnose`'s findings for ``q, k`` (2-D),
    one a line, most telling first."""
    n = hierarchy.num_leaves
    eye = torch.eye(n, dtype=q.dtype)
    got = call(
        target.impl, q, k, eye, hierarchy, kwargs, device=target.device, timeout=target.timeout
    )
    if not got.ok:
        return f"(theta could not be read with v = I: {got.problem or got.unsupported})"
    kw = {key: kwargs[key] for key in ("scale", "energy", "positions") if key in kwargs}
    expected = hsa_attention_matrix(q, k, hierarchy, **kw)
    low = hsa_attention_matrix(q, k, hierarchy, **kw, dtype=low_precision_dtype(q.dtype))
    scaling = eps(q.dtype) / eps(low_precision_dtype(q.dtype))
    limit = 2 * (low.double() - expected).abs().max().item() * scaling + 8 * eps(q.dtype)
    found = diagnose(got.out, expected, hierarchy, limit)
    return "\n".join(found[:3])


# ---------------------------------------------------------------------------- golden cases
def _golden_outcome(case: GoldenCase, name: str, rule: Agreement, diagnostic: str = "") -> Outcome:
    return Outcome(
        "golden",
        name,
        rule.status,
        rule.max_error,
        rule.tolerance,
        rule.reason,
        diagnostic,
        case=case,
    )


def check_case(target: Target, case: GoldenCase) -> list[Outcome]:
    """Run the implementation on one golden case: one outcome for ``out`` and, unless
    forward-only, one per gradient (``name:grad_q`` ...)."""
    dtype = target.dtype
    q, k, v = case.inputs(dtype)
    kw = case.call_kwargs(dtype)
    grad_out = case.grad_out.to(dtype)
    got = target(q, k, v, case.hierarchy, kw, grad_out)
    if got.unsupported:
        return [Outcome("golden", case.name, UNSUPPORTED, detail=got.unsupported)]
    quantities = [x for x in case.quantities if x == "out" or target.capabilities.gradients]
    if got.out is None:
        detail = got.problem
        if case.positions is not None and "positions" in got.problem:
            detail += "\nan implementation without positions= declares --without-positions"
        return [Outcome("golden", case.name, FAILED, detail=detail, case=case)]
    outcomes = []
    for quantity in quantities:
        name = case.name if quantity == "out" else f"{case.name}:{quantity}"
        if quantity == "out":
            rule = case.judge(got.out, dtype, "out")
            diagnostic = ""
            if rule.status == FAILED:
                diagnostic = _theta_diagnostic(target, q, k, case.hierarchy, kw)
            outcomes.append(_golden_outcome(case, name, rule, diagnostic))
        elif got.problem:
            outcomes.append(Outcome("golden", name, FAILED, detail=got.problem, case=case))
        else:
            result = got.grads[quantity.removeprefix("grad_")]
            outcomes.append(_golden_outcome(case, name, case.judge(result, dtype, quantity)))
    return outcomes


def check_golden(target: Target, cases: Sequence[GoldenCase]) -> list[Outcome]:
    """:func:`check_case` for every case."""
    return [o for case in cases for o in check_case(target, case)]


def check_output_dir(directory: Path | str, cases: Sequence[GoldenCase]) -> list[Outcome]:
    """Check ``<directory>/<case>.json`` (``hsa-output/1``) for every golden case: ``out``
    and every gradient the file carries."""
    directory = Path(directory)
    outcomes = []
    for case in cases:
        path = directory / f"{case.name}.json"
        if not path.is_file():
            outcomes.append(Outcome("output", case.name, FAILED, detail=f"no file {path}"))
            continue
        try:
            results, dtype = read_output(path, case)
        except ValueError as exc:
            outcomes.append(Outcome("output", case.name, FAILED, detail=str(exc)))
            continue
        for quantity, result in results.items():
            name = case.name if quantity == "out" else f"{case.name}:{quantity}"
            rule = case.judge(result, dtype, quantity)
            outcomes.append(
                Outcome("output", name, rule.status, rule.max_error, rule.tolerance, rule.reason)
            )
    return outcomes


# ---------------------------------------------------------------------------- properties
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


# ---------------------------------------------------------------------------- driver
def select_cases(
    golden_dir: Path | str = GOLDEN_DIR,
    names: Sequence[str] | None = None,
    *,
    capabilities: Capabilities = Capabilities(),
) -> tuple[list[GoldenCase], list[str]]:
    """The golden cases to run and the names left out by the capabilities (with why);
    :class:`UsageError` for a missing folder or unknown names."""
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
    kept, left_out = [], []
    for case in cases:
        why = capabilities.excludes(case.hierarchy, case.energy, case.positions is not None)
        if why:
            left_out.append(f"{case.name} ({why})")
        else:
            kept.append(case)
    return kept, left_out


def _saved_case(outcome: Outcome) -> GoldenCase | None:
    """The case to save for a failed outcome: the golden case, or the property's minimal
    example (its first batch element) as a golden case."""
    if isinstance(outcome.case, GoldenCase):
        return outcome.case
    case = outcome.case
    if not isinstance(case, HSACase):
        return None
    first = (0,) * (case.q.dim() - 2)
    grad_out = case.grad_out if case.grad_out is not None else torch.ones_like(case.v)
    return make_case(
        f"{outcome.name}_minimal",
        f"minimal failing example of the property {outcome.name}: {case.describe()}",
        case.hierarchy,
        case.q[first],
        case.k[first],
        case.v[first],
        grad_out[first],
        energy=case.energy,
        scale=case.scale,
        positions=case.positions,
    )


def save_failures(report: Report, directory: Path | str) -> None:
    """Write every failed check's case to ``directory`` (``hsa-case/1`` files and an index:
    ``--golden DIR`` replays them) and note the path in each outcome."""
    directory = Path(directory)
    by_name: dict[str, GoldenCase] = {}
    for i, outcome in enumerate(report.outcomes):
        if outcome.status != FAILED:
            continue
        case = _saved_case(outcome)
        if case is None:
            continue
        by_name.setdefault(case.name, case)
        path = directory / f"{case.name}.json"
        report.outcomes[i] = Outcome(**{**outcome.__dict__, "saved": str(path)})
    if by_name:
        write_cases(list(by_name.values()), directory)


def run(
    impl: Impl | None = None,
    *,
    outputs: Path | str | None = None,
    dtype: str = "float64",
    device: str = "cpu",
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    golden_dir: Path | str = GOLDEN_DIR,
    cases: Sequence[str] | None = None,
    properties: Sequence[str] | None = None,
    golden: bool = True,
    capabilities: Capabilities = Capabilities(),
    timeout: float | None = DEFAULT_TIMEOUT,
    label: str = "",
) -> Report:
    """Run the harness on a callable (``impl``) or a folder of outputs (``outputs``)."""
    if (impl is None) == (outputs is None):
        raise UsageError("give exactly one of an implementation or an outputs folder")
    torch_dtype = _dtype(dtype)
    selected, left_out = (
        select_cases(golden_dir, cases, capabilities=capabilities) if golden else ([], [])
    )
    try:
        set_version = load_index(golden_dir).get("set_version")
    except ValueError:
        set_version = None
    meta = {
        "tool_version": __version__,
        "golden_set_version": set_version,
        "implementation": label
        or (str(outputs) if outputs is not None else getattr(impl, "__qualname__", repr(impl))),
        "dtype": dtype,
        "device": device,
        "capabilities": asdict(capabilities),
        "examples": examples,
        "seed": seed,
        "timeout": timeout,
        "left_out": left_out,
    }
    if outputs is not None:
        if not Path(outputs).is_dir():
            raise UsageError(f"outputs folder {outputs} does not exist")
        report = Report(
            f"HSA conformance of the outputs in {outputs}: {len(selected)} cases", meta=meta
        )
        report.outcomes = check_output_dir(outputs, selected)
        return report
    if properties is not None:
        unknown = set(properties) - PROPERTIES.keys()
        if unknown:
            raise UsageError(f"unknown properties {sorted(unknown)}; known: {sorted(PROPERTIES)}")
    if examples < 1:
        raise UsageError("--examples must be at least 1")
    if timeout is not None and not timeout > 0:
        raise UsageError("--timeout must be positive")
    target = Target(impl, torch_dtype, device_or_usage_error(device), timeout, capabilities)
    n_props = len(PROPERTIES) if properties is None else len(properties)
    props = (
        f"{n_props} properties x {examples} examples (seed {seed})" if n_props else "no properties"
    )
    declared = " ".join(capabilities.flags()) or "everything"
    header = (
        f"HSA conformance of {meta['implementation']} in {dtype} on {device}: "
        f"{len(selected)} golden cases, {props}; declared: {declared}"
        + ("" if capabilities.gradients else " (gradients not checked)")
    )
    if left_out:
        header += "\nleft out by the declared capabilities: " + ", ".join(left_out)
    report = Report(header, meta=meta)
    report.outcomes = check_golden(target, selected)
    if n_props:
        report.outcomes += check_properties(target, examples=examples, seed=seed, names=properties)
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hsa_ref.conformance",
        description="Check an HSA implementation against the golden cases and HSA's invariants.",
        epilog="Exit status: 0 all checks passed, 1 a check failed, 2 a usage error.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--impl", metavar="MODULE:FUNCTION", help="a Python implementation")
    target.add_argument("--outputs", metavar="DIR", help="a folder of hsa-output/1 files")
    p.add_argument("--dtype", default="float64", choices=list(DTYPES), help="(--impl only)")
    p.add_argument("--device", default="cpu", help="torch device for --impl, e.g. cuda")
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
    caps = p.add_argument_group("capabilities (what the implementation supports)")
    caps.add_argument(
        "--energy",
        action="append",
        choices=ENERGIES,
        help="an energy it supports (repeatable; default both)",
    )
    caps.add_argument("--single-tree", action="store_true", help="no forests")
    caps.add_argument("--without-positions", action="store_true", help="no positions=")
    caps.add_argument(
        "--contiguous-leaves",
        action="store_true",
        help="only trees whose every subtree is a contiguous range of rows",
    )
    caps.add_argument("--forward-only", action="store_true", help="no gradients are checked")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds per call before it counts as hung (default %(default)g)",
    )
    p.add_argument("--save-failures", metavar="DIR", help="write failing cases as hsa-case/1")
    p.add_argument("--report", metavar="FILE", help="write a JSON report")
    p.add_argument("--quiet", action="store_true", help="print failures and the summary only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 pass, 1 failure, 2 usage error)."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    capabilities = Capabilities(
        energies=tuple(dict.fromkeys(args.energy)) if args.energy else ENERGIES,
        forests=not args.single_tree,
        positions=not args.without_positions,
        gradients=not args.forward_only,
        shuffled_leaves=not args.contiguous_leaves,
    )
    try:
        impl = load_impl(args.impl) if args.impl else None
        report = run(
            impl,
            outputs=args.outputs,
            dtype=args.dtype,
            device=args.device,
            examples=args.examples,
            seed=args.seed,
            golden_dir=args.golden,
            cases=args.case,
            properties=[] if args.golden_only or args.outputs else args.property,
            golden=not args.properties_only,
            capabilities=capabilities,
            timeout=args.timeout,
            label=args.impl or "",
        )
        if report.checked == 0:
            raise UsageError(
                "nothing was checked: the selection ran no check to a verdict "
                f"({len(report.outcomes)} outcomes, {dict(report.counts)})"
            )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImplementationError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    if args.save_failures:
        save_failures(report, args.save_failures)
    print(report.format(verbose=not args.quiet))
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
