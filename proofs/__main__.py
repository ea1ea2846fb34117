"""``python -m proofs [--output PATH]``: run every proof, write the report, exit 1 on a failure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import run_all
from .result import render_report

DEFAULT_OUTPUT = Path("build") / "proofs" / "report.md"

HEADER = """\
Each section states a claim from docs/HSA.md sections 3 to 5, derives it with SymPy and checks every
step. A step marked **[holds]** was established symbolically (a difference simplified to zero, a
system solved, a sign decided), except steps marked as numerical confirmations. Logarithms are
split as log(xy) = log x + log y only where x and y are positive (shares, leaf counts, sums of
exponentials). Notation: s_ij leaf scores, e_BC block energies, |X| (also n_X) leaf counts,
mu and delta the shares a child keeps and sends, F and L the recursion of docs/HSA.md section 3."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proofs", description=__doc__)
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the Markdown report (default: {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)
    results = run_all()
    for r in results:
        mark = "proved" if r.verdict else "NOT PROVED"
        passed = len(r.checks) - len(r.failures)
        print(f"{r.title:<36} {mark:<11} {passed:>3}/{len(r.checks)} checks  {r.seconds:6.2f} s")
        for step in r.failures:
            print(f"    failed: {step.text}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render_report(results, header=HEADER), encoding="utf-8")
    print(f"report written to {args.output}")
    return 0 if all(r.verdict for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
