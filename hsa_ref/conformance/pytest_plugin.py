"""pytest plugin: ``pytest --hsa-impl package.module:function`` runs the conformance harness.

hsa-suite registers this module through the ``pytest11`` entry point, so the options exist
wherever the package is installed (``-p hsa_ref.conformance.pytest_plugin`` loads it
explicitly). Without ``--hsa-impl``, ``--hsa-command`` or ``--hsa-outputs`` it adds nothing.
With one of them, every golden case (output and gradients) and every property of
:mod:`hsa_ref.conformance` becomes a test item marked ``hsa_conformance`` (``-m
hsa_conformance`` selects only these). A failing item reports its max error, its tolerance and
its diagnostic; for properties the minimal failing example. A check that is unsupported by the
implementation or not checkable in the dtype is skipped with the reason.

Options: ``--hsa-framework``, ``--hsa-in-process``, ``--hsa-dtype``, ``--hsa-device``,
``--hsa-examples N`` (per property), ``--hsa-seed S``, ``--hsa-golden DIR``, ``--hsa-timeout``,
and the capabilities ``--hsa-energy``, ``--hsa-single-tree``, ``--hsa-without-positions``,
``--hsa-contiguous-leaves``, ``--hsa-without-batches``, ``--hsa-forward-only``. A bad
``--hsa-impl`` is a usage error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..tolerance import DTYPES
from ..validation import ENERGIES
from .calling import DEFAULT_TIMEOUT
from .cli import capabilities_from
from .formats import GOLDEN_DIR
from .frameworks import FRAMEWORKS
from .golden import check_case, check_output_dir
from .loading import ImplementationError, UsageError
from .outcome import FAILED, PASSED, Outcome
from .properties import DEFAULT_EXAMPLES, PROPERTIES, check_property
from .runner import open_target, select_cases, within
from .target import Capabilities

_STATE = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hsa", "HSA conformance (hsa_ref.conformance)")
    group.addoption("--hsa-impl", metavar="MODULE:FUNCTION", help="check this HSA implementation")
    group.addoption("--hsa-command", metavar='"CMD ARGS"', help="check this hsa-port/1 port")
    group.addoption("--hsa-outputs", metavar="DIR", help="check a folder of hsa-output/1 files")
    group.addoption("--hsa-framework", default="torch", choices=FRAMEWORKS)
    group.addoption("--hsa-in-process", action="store_true", help="run --hsa-impl here")
    group.addoption("--hsa-dtype", default="float64", choices=list(DTYPES))
    group.addoption("--hsa-device", default="cpu", help="torch device for --hsa-impl")
    group.addoption("--hsa-examples", type=int, default=DEFAULT_EXAMPLES, help="per property")
    group.addoption("--hsa-seed", type=int, default=0, help="Hypothesis seed")
    group.addoption("--hsa-golden", default=str(GOLDEN_DIR), metavar="DIR")
    group.addoption("--hsa-timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per call")
    group.addoption("--hsa-energy", action="append", choices=ENERGIES, help="supported energy")
    group.addoption("--hsa-single-tree", action="store_true")
    group.addoption("--hsa-without-positions", action="store_true")
    group.addoption("--hsa-contiguous-leaves", action="store_true")
    group.addoption("--hsa-without-batches", action="store_true")
    group.addoption("--hsa-forward-only", action="store_true")


def _capabilities(config: pytest.Config) -> Capabilities:
    flags = {
        name: config.getoption(f"hsa_{name}")
        for name in (
            "single_tree",
            "without_positions",
            "contiguous_leaves",
            "without_batches",
            "forward_only",
        )
    }
    return capabilities_from(argparse.Namespace(energy=config.getoption("hsa_energy"), **flags))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hsa_conformance: a check of the HSA conformance harness (--hsa-impl)"
    )
    spec, command = config.getoption("hsa_impl"), config.getoption("hsa_command")
    outputs = config.getoption("hsa_outputs")
    given = [x for x in (spec, command, outputs) if x is not None]
    if not given:
        return
    if len(given) > 1:
        raise pytest.UsageError("give one of --hsa-impl, --hsa-command or --hsa-outputs")
    if config.getoption("hsa_examples") < 1:
        raise pytest.UsageError("--hsa-examples must be at least 1")
    caps = _capabilities(config)
    try:
        cases, _ = select_cases(config.getoption("hsa_golden"))
        target = None
        if outputs is None:
            target = open_target(
                spec,
                command=command,
                dtype=DTYPES[config.getoption("hsa_dtype")],
                device=config.getoption("hsa_device"),
                framework=config.getoption("hsa_framework"),
                in_process=config.getoption("hsa_in_process"),
                timeout=config.getoption("hsa_timeout"),
                capabilities=caps,
            )
            caps = target.capabilities
    except (UsageError, ImplementationError) as exc:
        raise pytest.UsageError(str(exc)) from exc
    if outputs is not None and not Path(outputs).is_dir():
        raise pytest.UsageError(f"--hsa-outputs folder {outputs} does not exist")
    cases, _ = within(cases, caps)
    config.stash[_STATE] = {"target": target, "outputs": outputs, "cases": cases}


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and state["target"] is not None:
        state["target"].close()


class ConformanceFailed(Exception):
    """Raised by an item whose check failed; carries the outcomes for the report."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        super().__init__("\n".join(o.line() for o in outcomes))
        self.outcomes = outcomes


class ConformanceItem(pytest.Item):
    """One conformance check: a golden case (output and gradients), an output file or a
    property."""

    def __init__(self, *, check: Callable[[], list[Outcome]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._check = check
        self.add_marker("hsa_conformance")

    def runtest(self) -> None:
        outcomes = self._check()
        failed = [o for o in outcomes if o.status == FAILED]
        if failed:
            raise ConformanceFailed(failed)
        if not any(o.status == PASSED for o in outcomes):
            pytest.skip("; ".join(f"{o.name}: {o.status} ({o.detail})" for o in outcomes))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ConformanceFailed):
            return "\n".join(o.line() for o in excinfo.value.outcomes)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"hsa conformance: {self.name}"


class ConformanceSuite(pytest.Collector):
    """The items of one harness run."""

    def collect(self) -> Iterator[ConformanceItem]:
        state = self.config.stash[_STATE]
        target, outputs, cases = state["target"], state["outputs"], state["cases"]
        if outputs is not None:
            for case in cases:
                yield ConformanceItem.from_parent(
                    self,
                    name=f"output[{case.name}]",
                    check=lambda case=case: check_output_dir(outputs, [case]),
                )
            return
        for case in cases:
            yield ConformanceItem.from_parent(
                self, name=f"golden[{case.name}]", check=lambda case=case: check_case(target, case)
            )
        examples, seed = self.config.getoption("hsa_examples"), self.config.getoption("hsa_seed")
        for prop in PROPERTIES.values():
            yield ConformanceItem.from_parent(
                self,
                name=f"property[{prop.name}]",
                check=lambda prop=prop: [
                    check_property(target, prop, examples=examples, seed=seed)
                ],
            )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if _STATE not in config.stash:
        return
    suite = ConformanceSuite.from_parent(session, name="hsa-conformance", nodeid="hsa-conformance")
    items.extend(session.genitems(suite))  # reports the collection like any other
