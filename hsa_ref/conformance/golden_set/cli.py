"""``python -m hsa_ref.conformance.golden_set --path | --write [DIR] | --check [DIR]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..formats import GOLDEN_DIR, digests, load_cases, write_cases
from .build import generate
from .drift import drift

__all__ = ["main", "write_shipped"]

SHIPPED = Path(__file__).resolve().parent / "shipped.py"


def write_shipped(found: dict[str, str]) -> None:
    """Record the digests of the package's golden set (``shipped.py``), which
    :func:`~hsa_ref.conformance.formats.load_cases` checks the files against."""
    lines = [f'    "{name}": "{digest}",' for name, digest in sorted(found.items())]
    SHIPPED.write_text(
        '"""The SHA-256 of every file of the golden set this version ships, written by\n'
        "``python -m hsa_ref.conformance.golden_set --write``: a run refuses a set that "
        'differs."""\n\n# ruff: noqa: E501\n\n'
        "SHA256 = {\n" + "\n".join(lines) + "\n}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``--write [DIR]`` regenerates, ``--check [DIR]`` compares, ``--path`` prints the folder."""
    parser = argparse.ArgumentParser(
        prog="python -m hsa_ref.conformance.golden_set",
        description="Regenerate or check the golden hsa-case/1 files.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", nargs="?", const=str(GOLDEN_DIR), metavar="DIR")
    group.add_argument("--check", nargs="?", const=str(GOLDEN_DIR), metavar="DIR")
    group.add_argument("--path", action="store_true", help="print the golden folder")
    args = parser.parse_args(argv)
    if args.path:
        print(GOLDEN_DIR)
        return 0
    fresh = generate()
    if args.write:
        paths = write_cases(fresh, args.write, replace=True)
        if Path(args.write).resolve() == GOLDEN_DIR.resolve():
            write_shipped(digests(GOLDEN_DIR))
        size = sum(p.stat().st_size for p in paths)
        print(f"wrote {len(paths)} cases ({size / 1e6:.2f} MB) to {args.write}")
        return 0
    try:
        stored = {c.name: c for c in load_cases(args.check)}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = 0
    for case in fresh:
        problems = ["missing"] if case.name not in stored else drift(stored[case.name], case)
        for problem in problems:
            print(f"DRIFT {case.name}: {problem}")
        failures += bool(problems)
    extra = sorted(stored.keys() - {c.name for c in fresh})
    for name in extra:
        print(f"DRIFT {name}: stored but no longer generated")
    print(f"{len(fresh) - failures} of {len(fresh)} golden cases match a fresh generation")
    return 1 if failures or extra else 0
