"""``python -m bench.zero_shot``: run the experiment, write table, JSON and plot."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from hsa_fast.token_trees import HIERARCHIES

from .corpus import load_corpus
from .experiment import run_experiment
from .model import load_encoder
from .report import plot, write_table

__all__ = ["DEFAULT_PAIRS", "RESULTS_DIR", "main"]

RESULTS_DIR = Path("results") / "zero_shot"
DEFAULT_PAIRS = 160


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.zero_shot [--out DIR] [--pairs P] ...``: table, JSON and plot."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.zero_shot",
        description="Zero-shot HSA inside the pre-trained all-MiniLM-L6-v2 encoder.",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    parser.add_argument(
        "--pairs", type=int, default=DEFAULT_PAIRS, help="number of query/document pairs"
    )
    parser.add_argument("--hierarchies", nargs="+", default=list(HIERARCHIES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1, steady on shared CPUs; 0: torch's default)",
    )
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        _run(args)
    finally:
        torch.set_num_threads(threads)
    return 0


def _run(args: argparse.Namespace) -> None:
    t0, cpu0 = time.perf_counter(), time.process_time()
    encoder = load_encoder()
    pairs = load_corpus(args.pairs)
    result = run_experiment(
        encoder, pairs, hierarchies=args.hierarchies, batch_size=args.batch_size
    )
    result["seconds"] = time.perf_counter() - t0
    result["cpu_seconds"] = time.process_time() - cpu0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    table = write_table(result, args.out / "table.md")
    plot(result, args.out / "fidelity_vs_flops.png")
    print(table)
    print(
        f"wrote {args.out}/table.md, results.json, fidelity_vs_flops.png "
        f"in {time.perf_counter() - t0:.0f}s"
    )
