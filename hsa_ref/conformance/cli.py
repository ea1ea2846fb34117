"""``python -m hsa_ref.conformance``: the command line of
:func:`~hsa_ref.conformance.runner.run`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch

from ..tolerance import DTYPES
from .calling import DEFAULT_TIMEOUT
from .formats import GOLDEN_DIR
from .frameworks import FRAMEWORKS
from .loading import ImplementationError, UsageError
from .properties import PROPERTIES
from .runner import DEFAULT_EXAMPLES, check_save_folder, run, save_failures
from .serve import capability_flags, declared_capabilities
from .target import Capabilities

__all__ = ["StderrProgress", "capabilities_from", "main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hsa_ref.conformance",
        description="Check an HSA implementation against the golden cases and HSA's invariants.",
        epilog="Exit status: 0 all checks passed, 1 a check failed, 2 a usage error.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--impl",
        metavar="MODULE:FUNCTION",
        help="a Python implementation (package.module:function or path/to/file.py:function), "
        "run in a child process",
    )
    target.add_argument(
        "--command", metavar='"CMD ARGS"', help="a port in any language speaking hsa-port/1"
    )
    target.add_argument("--outputs", metavar="DIR", help="a folder of hsa-output/1 files")
    p.add_argument(
        "--framework", choices=FRAMEWORKS, default="torch", help="what --impl computes with"
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run --impl (torch) in the harness's own process, for a debugger; gives up the "
        "isolation of a child process",
    )
    p.add_argument("--dtype", default="float64", choices=list(DTYPES), help="of the inputs")
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
    capability_flags(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds a call may take before it counts as hung (default %(default)g)",
    )
    p.add_argument(
        "--save-failures", metavar="DIR", help="write failing cases as hsa-case/1 (a new folder)"
    )
    p.add_argument("--report", metavar="FILE", help="write a JSON report")
    p.add_argument("--quiet", action="store_true", help="print the failures and the summary only")
    return p


def capabilities_from(args: argparse.Namespace) -> Capabilities:
    """The capabilities the flags of :func:`~.serve.capability_flags` declare."""
    caps = declared_capabilities(args)
    return Capabilities(
        energies=tuple(caps["energies"]),
        **{key: caps[key] for key in caps if key != "energies"},
    )


class StderrProgress:
    """Progress on a stream: on a terminal a line that updates in place, elsewhere only the
    finished blocks."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.live = stream.isatty()

    def update(self, text: str) -> None:
        if self.live:
            self.stream.write(f"\r[hsa] {text}\033[K")
            self.stream.flush()

    def done(self, text: str) -> None:
        prefix, clear = ("\r", "\033[K") if self.live else ("", "")
        self.stream.write(f"{prefix}[hsa] {text}{clear}\n")
        self.stream.flush()


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
    try:
        if args.save_failures:
            check_save_folder(args.save_failures)
        report = run(
            args.impl,
            command=args.command,
            outputs=args.outputs,
            dtype=args.dtype,
            device=args.device,
            framework=args.framework,
            in_process=args.in_process,
            examples=args.examples,
            seed=args.seed,
            golden_dir=args.golden,
            cases=args.case,
            properties=[] if args.golden_only or args.outputs else args.property,
            golden=not args.properties_only,
            capabilities=capabilities_from(args),
            timeout=args.timeout,
            label=args.impl or args.command or "",
            progress=StderrProgress(),
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
