"""One conformance run: the golden cases selected by the capabilities, then the properties; the
failures saved as replayable cases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from .calling import DEFAULT_TIMEOUT
from .formats import (
    GOLDEN_DIR,
    GoldenCase,
    load_cases,
    load_index,
    write_cases,
)
from .golden import check_golden, check_output_dir
from .golden_set import make_case
from .outcome import FAILED, Outcome, Report
from .properties import DEFAULT_EXAMPLES, PROPERTIES, check_properties
from .strategies import HSACase
from .target import (
    FULL,
    Capabilities,
    Impl,
    Target,
    UsageError,
    device_or_usage_error,
    dtype_or_usage_error,
)

__all__ = [
    "run",
    "save_failures",
    "select_cases",
]


# ---------------------------------------------------------------------------- driver
def select_cases(
    golden_dir: Path | str = GOLDEN_DIR,
    names: Sequence[str] | None = None,
    *,
    capabilities: Capabilities = FULL,
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
    capabilities: Capabilities = FULL,
    timeout: float | None = DEFAULT_TIMEOUT,
    label: str = "",
    shrink: bool = True,
) -> Report:
    """Run the harness on a callable (``impl``) or a folder of outputs (``outputs``)."""
    if (impl is None) == (outputs is None):
        raise UsageError("give exactly one of an implementation or an outputs folder")
    torch_dtype = dtype_or_usage_error(dtype)
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
        report.outcomes += check_properties(
            target, examples=examples, seed=seed, names=properties, shrink=shrink
        )
    return report
