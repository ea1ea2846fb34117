"""``python -m bench.block_sdpa``: the PyTorch programme against block-local SDPA, one CPU thread.

    python -m bench.block_sdpa                  # N = 65,536, b = 16 and 64, 4 heads, d = 64
    python -m bench.block_sdpa --baseline REV   # also the programme of git revision REV

Block-local SDPA is softmax attention inside each leaf family of a balanced tree of branching
``b``: ``q, k, v`` viewed as ``(heads, N / b, b, d)`` blocks and given to
``torch.nn.functional.scaled_dot_product_attention``. It is the leaf level of HSA without the
levels above, so less work than HSA: the ratio says what the hierarchy costs on top of
attention inside the leaf families. Every contender runs in this process with one torch thread,
float32: the forward under ``torch.no_grad``, and the forward with the backward (gradients of
``q, k, v`` for a fixed output gradient). Calls alternate between contenders, each case keeps
its fastest of ``--repeats`` calls, in wall time and in the process's CPU time (user and system,
which a shared machine's other jobs do not inflate), and the ratios HSA / SDPA are printed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

from bench.memory import baseline_file, load_programme

__all__ = ["Timing", "time_case"]

Timing = dict[str, tuple[float, float]]
"""Contender name -> (fastest wall seconds, fastest CPU seconds)."""


def time_case(
    n: int,
    b: int,
    *,
    heads: int = 4,
    d: int = 64,
    repeats: int = 5,
    programmes: dict[str, Callable] | None = None,
) -> Timing:
    """Fastest wall and CPU time of every contender on one case (module docstring):
    ``"sdpa"`` and ``"sdpa+backward"``, and for each programme ``name`` (default: the current
    one as ``"hsa"``) ``name`` and ``name+backward``."""
    import torch
    import torch.nn.functional as F

    from hsa_fast import compile_hierarchy
    from hsa_fast.programme import hsa_programme
    from hsa_ref import Hierarchy

    programmes = programmes or {"hsa": hsa_programme}
    layout = compile_hierarchy(Hierarchy.balanced(n, b))
    g = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(heads, n, d, generator=g) for _ in range(4))
    scale = d**-0.5

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return x.view(heads, n // b, b, d)

    def sdpa(backward: bool) -> None:
        qq, kk, vv = (blocks(x).detach().requires_grad_(backward) for x in (q, k, v))
        with torch.set_grad_enabled(backward):
            out = F.scaled_dot_product_attention(qq, kk, vv, scale=scale)
            if backward:
                out.backward(blocks(grad))

    def programme(run: Callable, backward: bool) -> None:
        qq, kk, vv = (x.detach().requires_grad_(backward) for x in (q, k, v))
        with torch.set_grad_enabled(backward):
            out = run(qq, kk, vv, layout, scale=scale, energy="dot")
            if backward:
                out.backward(grad)

    calls: dict[str, Callable[[], None]] = {}
    for backward in (False, True):
        tag = "+backward" if backward else ""
        calls["sdpa" + tag] = lambda bw=backward: sdpa(bw)
        for name, run in programmes.items():
            calls[name + tag] = lambda run=run, bw=backward: programme(run, bw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = {name: (float("inf"), float("inf")) for name in calls}
    try:
        for _ in range(repeats):
            for name, call in calls.items():
                wall, cpu = time.perf_counter(), time.process_time()
                call()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    finally:
        torch.set_num_threads(threads)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.block_sdpa", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=65_536, help="leaves N (default 65,536)")
    parser.add_argument("--b", type=int, nargs="+", default=[16, 64], help="branchings")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d", type=int, default=64, help="head dimension")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per contender")
    parser.add_argument("--baseline", metavar="REV", help="git revision to compare against")
    args = parser.parse_args(argv)
    import torch

    print(
        f"# bench.block_sdpa, {datetime.date.today()}, {platform.node()} ({os.cpu_count()} "
        f"cores), torch {torch.__version__}, one thread, float32, {args.heads} heads, "
        f"d = {args.d}, N = {args.n:,}; fastest of {args.repeats}; wall (CPU) ms\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        programmes = {"current": load_programme(None)}
        if args.baseline:
            programmes[args.baseline] = load_programme(baseline_file(args.baseline, tmp))
        print(
            "| programme | b | forward | SDPA forward | forward / SDPA | forward + backward | "
            "SDPA f+b | f+b / SDPA |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for b in args.b:
            print(f"timing b = {b} ...", file=sys.stderr, flush=True)
            best = time_case(
                args.n, b, heads=args.heads, d=args.d, repeats=args.repeats, programmes=programmes
            )
            for name in programmes:
                cells = []
                for tag in ("", "+backward"):
                    (wall, cpu), (s_wall, s_cpu) = best[name + tag], best["sdpa" + tag]
                    cells += [
                        f"{wall * 1e3:.0f} ({cpu * 1e3:.0f})",
                        f"{s_wall * 1e3:.0f} ({s_cpu * 1e3:.0f})",
                        f"{wall / s_wall:.2f} ({cpu / s_cpu:.2f})",
                    ]
                print(f"| {name} | {b} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
