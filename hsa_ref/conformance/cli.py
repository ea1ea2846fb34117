"""``python -m hsa_ref.conformance``: the command line of
:func:`~hsa_ref.conformance.runner.run`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..tolerance import (
    DTYPES,
)
from ..validation import ENERGIES
from .calling import DEFAULT_TIMEOUT
from .formats import (
    GOLDEN_DIR,
)
from .properties import PROPERTIES
from .runner import DEFAULT_EXAMPLES, run, save_failures
from .target import Capabilities, ImplementationError, UsageError, load_impl

__all__ = [
    "main",
]


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
    caps.add_argument(
        "--without-batches", action="store_true", help="only (N, d) inputs, no batch dimensions"
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the harness's arithmetic is many small operations
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    capabilities = Capabilities(
        energies=tuple(dict.fromkeys(args.energy)) if args.energy else ENERGIES,
        forests=not args.single_tree,
        positions=not args.without_positions,
        gradients=not args.forward_only,
        shuffled_leaves=not args.contiguous_leaves,
        batches=not args.without_batches,
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
