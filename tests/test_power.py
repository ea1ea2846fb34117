"""``python -m bench.power``: the search for the smallest rejected mistake, and the table that
docs/PORTING.md records from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.power import DELTAS, MAGNITUDES, markdown, power_table, smallest_rejected

pytestmark = pytest.mark.usefixtures("one_thread")

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "PORTING.md"


def test_smallest_rejected_is_the_first_failing_delta():
    threshold = DELTAS[10]
    assert smallest_rejected(lambda d: "failed" if d >= threshold else "passed") == threshold
    assert smallest_rejected(lambda d: "passed") is None


def _recorded_rows() -> dict[str, list[str]]:
    head = markdown({("float64", m): {"output": 1.0, "share": 1.0} for m in MAGNITUDES})
    text = GUIDE.read_text()
    start = text.index(head.splitlines()[0])
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("| "):
            break
        label, *cells = (c.strip() for c in line.strip("|").split("|"))
        rows[label] = cells
    return rows


@pytest.mark.parametrize(("dtype", "magnitude"), [("float32", 5.0), ("float16", 1.0)])
def test_the_recorded_table_is_what_the_command_prints(dtype, magnitude):
    cell = markdown(power_table([dtype], [magnitude], progress=False), [magnitude])
    fresh = cell.splitlines()[-1].strip("|").split("|")[1].strip()
    assert _recorded_rows()[dtype][MAGNITUDES.index(magnitude)] == fresh
