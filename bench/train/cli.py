"""``python -m bench.train``: run the comparison, write table, JSON, figures and checkpoints."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .attentions import ATTENTIONS
from .experiment import run_experiment
from .profiles import PROFILES
from .report import plot_by_depth, plot_curves, write_table

__all__ = ["RESULTS_DIR", "main"]

RESULTS_DIR = Path("results") / "train"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.train [--full | --profile P] [--out DIR] [--jobs J] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.train",
        description="Train small encoders with softmax attention, HSA over the parse tree and "
        "controls on ListOps, from scratch; compare accuracy and cost.",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="default", help="default: ~15 min on CPU"
    )
    parser.add_argument(
        "--full", action="store_true", help="the full profile (deeper, longer; for a GPU)"
    )
    parser.add_argument("--seeds", type=int, help="number of seeds (0, 1, ...; default: profile's)")
    parser.add_argument("--steps", type=int, help="training steps (default: profile's)")
    parser.add_argument("--attentions", nargs="+", choices=ATTENTIONS, help="default: all")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs at a time, in worker processes (default: 2, or 1 on a 1-core machine)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per run (default 1; 0: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="train nothing: redraw table and figures from the output folder's results.json",
    )
    args = parser.parse_args(argv)
    if args.replot:
        source = args.out / "results.json"
        if not source.is_file():
            parser.error(f"--replot needs {source}")
        _write_reports(json.loads(source.read_text()), args.out)
        return 0
    profile = PROFILES["full" if args.full else args.profile]
    changes: dict[str, object] = {}
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error(f"--seeds must be at least 1, got {args.seeds}")
        changes["seeds"] = tuple(range(args.seeds))
    if args.steps is not None:
        changes["train_steps"] = args.steps
    if args.attentions:
        changes["attentions"] = tuple(dict.fromkeys(args.attentions))
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device} is not available here: {err}")
    try:
        profile = profile.replace(**changes)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_experiment(
        profile,
        args.out,
        jobs=args.jobs,
        threads=args.threads,
        device=args.device,
        quiet=args.quiet,
    )
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    _write_reports(result, args.out)
    print(f"wrote {args.out}/results.json and checkpoints/; {result['seconds']:.0f} s in all")
    return 0


def _write_reports(result: dict[str, Any], out: Path) -> None:
    table = write_table(result, out / "table.md")
    plot_curves(result, out / "learning_curves.png")
    plot_by_depth(result, out / "accuracy_by_depth.png")
    print(table)
    print(f"wrote {out}/table.md, learning_curves.png and accuracy_by_depth.png")
