"""The verdicts of a conformance run: one :class:`Outcome` per check, gathered in a
:class:`Report`."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

__all__ = [
    "FAILED",
    "PASSED",
    "REPORT_FORMAT",
    "UNCHECKABLE",
    "UNSUPPORTED",
    "Outcome",
    "Progress",
    "Report",
]

REPORT_FORMAT = "hsa-conformance-report/1"
PASSED, FAILED, UNCHECKABLE, UNSUPPORTED = "passed", "failed", "not checkable", "unsupported"


class Progress(Protocol):
    """Where a run reports how far it is: ``update`` a running count (the next one replaces
    it), ``done`` a finished block of golden cases or a finished property."""

    def update(self, text: str) -> None: ...

    def done(self, text: str) -> None: ...


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
    coverage: dict[str, int] | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def line(self) -> str:
        verdict = {PASSED: "ok  ", FAILED: "FAIL", UNCHECKABLE: "n/c ", UNSUPPORTED: "unsu"}
        numbers = ""
        if self.max_error is not None and self.tolerance is not None:
            numbers = f"max error {self.max_error:.3g}, tolerance {self.tolerance:.3g}"
        if self.coverage is not None:
            numbers += (
                f"; {self.coverage['verdicts']} of {self.coverage['examples']} examples resolved"
            )
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
        """Every outcome a line (``verbose``), or only the failures; then the summary, which
        names what failed, what the dtype could not resolve and what was unsupported."""
        lines = [self.header]
        lines += [o.line() for o in self.outcomes if verbose or o.status == FAILED]
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
            "coverage": {o.name: o.coverage for o in self.outcomes if o.coverage is not None},
        }
