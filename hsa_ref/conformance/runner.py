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
from .loading import check_impl_spec, load_impl
from .outcome import FAILED, Outcome, Progress, Report
from .properties import DEFAULT_EXAMPLES, PROPERTIES, check_properties
from .strategies import HSACase
from .target import (
    FULL,
    Capabilities,
    Impl,
    InProcessTarget,
    PortTarget,
    Target,
    UsageError,
    device_or_usage_error,
    dtype_or_usage_error,
    python_port_command,
    python_port_environment,
)

__all__ = [
    "check_save_folder",
    "open_target",
    "run",
    "save_failures",
    "select_cases",
    "within",
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
    return within(cases, capabilities)


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


def check_save_folder(directory: Path | str) -> Path:
    """The folder failures will be saved in: a new or empty folder, never a golden one
    (:class:`UsageError` otherwise, before anything runs)."""
    directory = Path(directory)
    if (directory / "index.json").exists() or directory.resolve() == GOLDEN_DIR.resolve():
        raise UsageError(
            f"--save-failures {directory} is a golden folder: failures are saved into a new "
            "folder, and a golden folder is never written to"
        )
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UsageError(
            f"--save-failures {directory} is not an empty folder: name a new one (nothing is "
            "ever overwritten)"
        )
    return directory


def save_failures(report: Report, directory: Path | str) -> None:
    """Write every failed check's case to ``directory`` (``hsa-case/1`` files and an index:
    ``--golden DIR`` replays them) and note the path in each outcome. ``directory`` must be
    new or empty (:func:`check_save_folder`)."""
    directory = check_save_folder(directory)
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
    impl: Impl | str | None = None,
    *,
    command: Sequence[str] | str | None = None,
    outputs: Path | str | None = None,
    dtype: str = "float64",
    device: str = "cpu",
    framework: str = "torch",
    in_process: bool = False,
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
    progress: Progress | None = None,
) -> Report:
    """Run the harness on one implementation, or on a folder of a port's outputs.

    - ``impl`` a callable: called in this process (for tests and debugging);
    - ``impl`` a string ``"package.module:function"`` (or ``"path/file.py:function"``): served
      in a child process by :mod:`.serve` in ``framework`` (``in_process`` runs it here);
    - ``command``: a port in any language, a program that speaks ``hsa-port/1``;
    - ``outputs``: a folder of ``hsa-output/1`` files for the golden cases.

    The golden cases are read before any implementation starts. ``capabilities`` declare
    what the implementation supports (a port's declaration is narrowed by them, never
    widened). ``progress`` receives a line per golden block and per property.
    """
    given = [x for x in (impl, command, outputs) if x is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of an implementation, a command or an outputs folder")
    torch_dtype = dtype_or_usage_error(dtype)
    if examples < 1:
        raise UsageError("--examples must be at least 1")
    if timeout is not None and not timeout > 0:
        raise UsageError("--timeout must be positive")
    if properties is not None:
        unknown = set(properties) - PROPERTIES.keys()
        if unknown:
            raise UsageError(f"unknown properties {sorted(unknown)}; known: {sorted(PROPERTIES)}")
    all_cases, _ = select_cases(golden_dir, cases) if golden else ([], [])
    try:
        set_version = load_index(golden_dir).get("set_version")
    except ValueError:
        set_version = None
    if outputs is not None:
        return _run_outputs(Path(outputs), all_cases, capabilities, set_version, dtype)
    target = open_target(
        impl,
        command=command,
        dtype=torch_dtype,
        device=device,
        framework=framework,
        in_process=in_process,
        timeout=timeout,
        capabilities=capabilities,
    )
    with target:
        caps = target.capabilities
        selected, left_out = within(all_cases, caps)
        name = label or _label(impl, command, target)
        meta = {
            "tool_version": __version__,
            "golden_set_version": set_version,
            "implementation": name,
            "dtype": dtype,
            "device": device,
            "capabilities": asdict(caps),
            "examples": examples,
            "seed": seed,
            "timeout": timeout,
            "left_out": left_out,
        }
        n_props = len(PROPERTIES) if properties is None else len(properties)
        props = f"{n_props} properties x {examples} examples (seed {seed})"
        declared = " ".join(caps.flags()) or "everything"
        header = (
            f"HSA conformance of {name} in {dtype} on {device}: {len(selected)} golden cases, "
            f"{props if n_props else 'no properties'}; declared: {declared}"
            + ("" if caps.gradients else " (gradients not checked)")
        )
        if left_out:
            header += "\nleft out by the declared capabilities: " + ", ".join(left_out)
        report = Report(header, meta=meta)
        report.outcomes = check_golden(target, selected, progress=progress)
        if n_props:
            report.outcomes += check_properties(
                target,
                examples=examples,
                seed=seed,
                names=properties,
                shrink=shrink,
                progress=progress,
            )
    return report


def within(
    cases: Sequence[GoldenCase], capabilities: Capabilities
) -> tuple[list[GoldenCase], list[str]]:
    """The cases inside the capabilities, and the names of those outside (with why)."""
    kept, left_out = [], []
    for case in cases:
        why = capabilities.excludes(case.hierarchy, case.energy, case.positions is not None)
        if why:
            left_out.append(f"{case.name} ({why})")
        else:
            kept.append(case)
    return kept, left_out


def _label(impl: Impl | str | None, command: Sequence[str] | str | None, target: Target) -> str:
    if isinstance(impl, str):
        return impl
    if impl is not None:
        return getattr(impl, "__qualname__", repr(impl))
    return getattr(target, "name", "") or str(command)


def open_target(
    impl: Impl | str | None = None,
    *,
    command: Sequence[str] | str | None = None,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    framework: str = "torch",
    in_process: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
    capabilities: Capabilities = FULL,
) -> Target:
    """The target of a run (the one place the command line and the pytest plugin make it):
    a callable in this process, a Python implementation named by a string served in a child
    process (here with ``in_process``), or a port's ``command``. Close it when done."""
    env = None
    if callable(impl):
        return InProcessTarget(impl, dtype, device_or_usage_error(device), timeout, capabilities)
    if isinstance(impl, str):
        check_impl_spec(impl)
        if in_process:
            if framework != "torch":
                raise UsageError("--in-process runs torch callables only")
            dev = device_or_usage_error(device)
            return InProcessTarget(load_impl(impl), dtype, dev, timeout, capabilities)
        command = python_port_command(impl, capabilities, framework=framework, device=device)
        env = python_port_environment()
    return PortTarget(command, dtype=dtype, timeout=timeout, capabilities=capabilities, env=env)


def _run_outputs(
    outputs: Path,
    cases: Sequence[GoldenCase],
    capabilities: Capabilities,
    set_version: int | None,
    dtype: str,
) -> Report:
    if not outputs.is_dir():
        raise UsageError(f"outputs folder {outputs} does not exist")
    selected, left_out = within(cases, capabilities)
    meta = {
        "tool_version": __version__,
        "golden_set_version": set_version,
        "implementation": str(outputs),
        "capabilities": asdict(capabilities),
        "left_out": left_out,
    }
    report = Report(
        f"HSA conformance of the outputs in {outputs}: {len(selected)} cases", meta=meta
    )
    report.outcomes = check_output_dir(outputs, selected)
    return report
