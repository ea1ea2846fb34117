"""pytest plugin: ``pytest --hsa-impl package.module:function`` runs the conformance harness.

hsa-suite registers this module through the ``pytest11`` entry point, so the options exist
wherever the package is installed (``-p hsa_ref.pytest_plugin`` loads it explicitly). Without
``--hsa-impl`` or ``--hsa-outputs`` it adds nothing. With one of them, every golden case and
every property of :mod:`hsa_ref.conformance` becomes a test item marked ``hsa_conformance``
(next to whatever else pytest collects; ``-m hsa_conformance`` selects only these). A failing
item reports its max error and tolerance, and for properties the minimal failing example.

Options: ``--hsa-dtype {float64,float32}``, ``--hsa-examples N`` (per property), ``--hsa-seed S``,
``--hsa-golden DIR``, ``--hsa-without-positions``. A bad ``--hsa-impl`` is a usage error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conformance import (
    DEFAULT_EXAMPLES,
    PROPERTIES,
    Outcome,
    UsageError,
    check_case,
    check_output_dir,
    check_property,
    load_impl,
    select_cases,
)
from .golden_cases import DTYPES, GOLDEN_DIR

_STATE = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hsa", "HSA conformance (hsa_ref.conformance)")
    group.addoption("--hsa-impl", metavar="MODULE:FUNCTION", help="check this HSA implementation")
    group.addoption("--hsa-outputs", metavar="DIR", help="check a folder of hsa-output/1 files")
    group.addoption("--hsa-dtype", default="float64", choices=sorted(DTYPES))
    group.addoption("--hsa-examples", type=int, default=DEFAULT_EXAMPLES, help="per property")
    group.addoption("--hsa-seed", type=int, default=0, help="Hypothesis seed")
    group.addoption("--hsa-golden", default=str(GOLDEN_DIR), metavar="DIR")
    group.addoption("--hsa-without-positions", action="store_true")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hsa_conformance: a check of the HSA conformance harness (--hsa-impl)"
    )
    spec, outputs = config.getoption("hsa_impl"), config.getoption("hsa_outputs")
    if spec is None and outputs is None:
        return
    if spec is not None and outputs is not None:
        raise pytest.UsageError("give --hsa-impl or --hsa-outputs, not both")
    if config.getoption("hsa_examples") < 1:
        raise pytest.UsageError("--hsa-examples must be at least 1")
    try:
        cases = select_cases(
            config.getoption("hsa_golden"),
            without_positions=config.getoption("hsa_without_positions"),
        )
        impl = load_impl(spec) if spec is not None else None
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from exc
    if outputs is not None and not Path(outputs).is_dir():
        raise pytest.UsageError(f"--hsa-outputs folder {outputs} does not exist")
    config.stash[_STATE] = {"impl": impl, "outputs": outputs, "cases": cases}


class ConformanceFailed(Exception):
    """Raised by an item whose check failed; carries the outcome for the report."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.line())
        self.outcome = outcome


class ConformanceItem(pytest.Item):
    """One conformance check (a golden case, an output file or a property)."""

    def __init__(self, *, check: Callable[[], Outcome], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._check = check
        self.add_marker("hsa_conformance")

    def runtest(self) -> None:
        outcome = self._check()
        if not outcome.passed:
            raise ConformanceFailed(outcome)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ConformanceFailed):
            return excinfo.value.outcome.line()
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"hsa conformance: {self.name}"


class ConformanceSuite(pytest.Collector):
    """The items of one harness run."""

    def collect(self) -> Iterator[ConformanceItem]:
        state = self.config.stash[_STATE]
        impl, outputs, cases = state["impl"], state["outputs"], state["cases"]
        if outputs is not None:
            for case in cases:
                yield ConformanceItem.from_parent(
                    self,
                    name=f"output[{case.name}]",
                    check=lambda case=case: check_output_dir(outputs, [case])[0],
                )
            return
        dtype = DTYPES[self.config.getoption("hsa_dtype")]
        for case in cases:
            yield ConformanceItem.from_parent(
                self,
                name=f"golden[{case.name}]",
                check=lambda case=case: check_case(impl, case, dtype),
            )
        examples, seed = self.config.getoption("hsa_examples"), self.config.getoption("hsa_seed")
        for prop in PROPERTIES.values():
            yield ConformanceItem.from_parent(
                self,
                name=f"property[{prop.name}]",
                check=lambda prop=prop: check_property(
                    impl, prop, dtype=dtype, examples=examples, seed=seed
                ),
            )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if _STATE not in config.stash:
        return
    suite = ConformanceSuite.from_parent(session, name="hsa-conformance", nodeid="hsa-conformance")
    items.extend(session.genitems(suite))  # reports the collection like any other
