"""``python -m hsa_ref.conformance.golden_set --path | --write [DIR] | --check [DIR]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..formats import GOLDEN_DIR, load_cases, write_cases
from .build import generate
from .drift import drift

__all__ = ["main"]


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
        paths = write_cases(fresh, args.write)
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
