"""``python -m bench.gpu_triton``: the Triton kernels on a CUDA GPU, in one run.

1. Correctness: the Triton path against the float64 reference (docs/TOLERANCE.md's rule) on small
   hierarchies of every bucket kind, float32 / float16 / bfloat16, both energies, positions, and
   its gradients against the PyTorch programme's.
2. Timings (CUDA events, warm-up, median) at bfloat16, batch 1, 16 heads, d = 64, balanced trees
   b = 16 and b = 64, N = 4,096 .. 262,144: forward and forward+backward of the Triton path, of
   the PyTorch programme and of SDPA (FlashAttention), and the memory floor: one device-to-device
   copy of q, k, v and the output, timed in the same run.
3. One table with the ratios, then the targets: forward within 1.5x the floor at N = 262,144,
   b = 64; faster than SDPA at every N; forward+backward under 3x the forward.

    python -m bench.gpu_triton              # everything, a few minutes on an H100
    python -m bench.gpu_triton --quick      # N = 4,096 and 65,536, fewer repetitions
    python -m bench.gpu_triton --dry-run    # the plan (cases, bytes), no GPU needed
    python -m bench.gpu_triton --json out.json

Exit status: 0 when every correctness check passes (targets are reported, not enforced), 1 when
a check fails, 2 when no CUDA device or no Triton is available.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from hsa_ref import Hierarchy

SIZES = (4096, 16384, 65536, 262144)
QUICK_SIZES = (4096, 65536)
BRANCHINGS = (16, 64)
HEADS, DIM = 16, 64  # the timed shape: (1, HEADS, N, DIM)
FLOOR_TARGET = 1.5  # forward within 1.5x the copy time, at the largest N, b = 64
BACKWARD_TARGET = 3.0  # forward+backward within 3x the forward


@dataclass
class Row:
    """One timed case; times in milliseconds (``nan`` where not run)."""

    b: int
    n: int
    floor: float = math.nan
    triton_fwd: float = math.nan
    triton_fwd_bwd: float = math.nan
    torch_fwd: float = math.nan
    torch_fwd_bwd: float = math.nan
    sdpa_fwd: float = math.nan
    sdpa_fwd_bwd: float = math.nan
    rel_diff_vs_torch: float = math.nan
    notes: list[str] = field(default_factory=list)


def tensor_bytes(n: int, heads: int = HEADS, dim: int = DIM, itemsize: int = 2) -> int:
    """Bytes of one ``(1, heads, n, dim)`` tensor."""
    return heads * n * dim * itemsize


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def fmt(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"


def table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table with ratios."""
    head = (
        "| b | N | floor ms | triton fwd ms | fwd / floor | torch fwd ms | sdpa fwd ms "
        "| sdpa / triton fwd | triton f+b ms | f+b / fwd | torch f+b ms | sdpa f+b ms "
        "| sdpa / triton f+b | rel diff vs torch |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        cells = [
            str(r.b),
            f"{r.n:,}",
            fmt(r.floor),
            fmt(r.triton_fwd),
            fmt(ratio(r.triton_fwd, r.floor), 2),
            fmt(r.torch_fwd),
            fmt(r.sdpa_fwd),
            fmt(ratio(r.sdpa_fwd, r.triton_fwd), 2),
            fmt(r.triton_fwd_bwd),
            fmt(ratio(r.triton_fwd_bwd, r.triton_fwd), 2),
            fmt(r.torch_fwd_bwd),
            fmt(r.sdpa_fwd_bwd),
            fmt(ratio(r.sdpa_fwd_bwd, r.triton_fwd_bwd), 2),
            fmt(r.rel_diff_vs_torch, 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: Sequence[Row]) -> list[tuple[str, bool | None]]:
    """The three targets, each met (True), missed (False) or not measured (None)."""
    largest = [r for r in rows if r.b == 64 and r.n == max(x.n for x in rows)]
    floor = ratio(largest[0].triton_fwd, largest[0].floor) if largest else math.nan
    faster = [ratio(r.sdpa_fwd, r.triton_fwd) for r in rows] + [
        ratio(r.sdpa_fwd_bwd, r.triton_fwd_bwd) for r in rows
    ]
    backward = [ratio(r.triton_fwd_bwd, r.triton_fwd) for r in rows]

    def verdict(values: list[float], ok: Callable[[float], bool]) -> bool | None:
        values = [x for x in values if not math.isnan(x)]
        return all(ok(x) for x in values) if values else None

    n_max = max((r.n for r in rows), default=0)
    return [
        (
            f"forward <= {FLOOR_TARGET}x memory floor at N = {n_max:,}, b = 64 "
            f"(measured {fmt(floor, 2)}x)",
            verdict([floor], lambda x: x <= FLOOR_TARGET),
        ),
        (
            "faster than SDPA at every N (forward and forward+backward)",
            verdict(faster, lambda x: x > 1),
        ),
        (
            f"forward+backward < {BACKWARD_TARGET}x forward at every N",
            verdict(backward, lambda x: x < BACKWARD_TARGET),
        ),
    ]


# ----------------------------------------------------------------------------- timing
def time_ms(
    fn: Callable[[], object], *, device: str, warmup: int, reps: int, budget_s: float
) -> float:
    """Median of ``reps`` timings of ``fn`` in ms, each call on its own, after ``warmup`` untimed
    calls: CUDA events on a GPU, the wall clock on CPU (the ``--device cpu`` smoke run). Slow
    calls stop early: warming up after ``budget_s / 2`` seconds, timing after ``budget_s`` and at
    least 3 timings."""
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if time.perf_counter() - started > budget_s / 2:
            break
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        if time.perf_counter() - started > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def _inputs(shape: tuple[int, ...], device: str, *, grad: bool, seed: int) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return [
        torch.randn(shape, device=device, generator=g, dtype=torch.bfloat16).requires_grad_(grad)
        for _ in range(3)
    ]


def _fwd_bwd(fn: Callable[..., torch.Tensor], q, k, v, grad) -> Callable[[], None]:
    def run() -> None:
        for x in (q, k, v):
            x.grad = None
        fn(q, k, v).backward(grad)

    return run


def time_case(b: int, n: int, args: argparse.Namespace) -> Row:
    """Every timing of one (b, N) case."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hsa_fast import compile_hierarchy, hsa

    h = Hierarchy.balanced(n, b)
    compile_hierarchy(h, args.device)
    backends = [SDPBackend.FLASH_ATTENTION] if args.device == "cuda" else [SDPBackend.MATH]

    def sdpa(q, k, v):
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v)

    fns = {
        "triton": lambda q, k, v: hsa(q, k, v, h, backend="triton"),
        "torch": lambda q, k, v: hsa(q, k, v, h, backend="torch"),
        "sdpa": sdpa,
    }
    if n > args.torch_max_n:
        del fns["torch"]
    if args.no_sdpa:
        del fns["sdpa"]
    row = Row(b=b, n=n)
    if "torch" not in fns:
        row.notes.append(f"PyTorch programme skipped above N = {args.torch_max_n:,}")
    _time_forward(row, fns, args)
    _time_backward(row, fns, args)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def _timing(args: argparse.Namespace) -> dict:
    return {
        "device": args.device,
        "warmup": args.warmup,
        "reps": args.reps,
        "budget_s": args.budget,
    }


def _time_forward(row: Row, fns: dict[str, Callable], args: argparse.Namespace) -> None:
    """The floor, the forward of each function and the Triton path's difference to PyTorch's."""
    shape = (1, args.heads, row.n, args.dim)
    q, k, v = _inputs(shape, args.device, grad=False, seed=row.n + row.b)
    out = torch.empty_like(v)
    copies = [torch.empty_like(x) for x in (q, k, v, out)]

    def floor() -> None:  # the fewest bytes HSA can move: read q, k, v and write the output
        for dst, src in zip(copies, (q, k, v, out), strict=True):
            dst.copy_(src)

    row.floor = time_ms(floor, **_timing(args))
    with torch.no_grad():
        if "torch" in fns:
            y_torch = fns["torch"](q, k, v).float()
            y = fns["triton"](q, k, v).float()
            row.rel_diff_vs_torch = ((y - y_torch).norm() / y_torch.norm()).item()
        for name, fn in fns.items():
            setattr(row, f"{name}_fwd", time_ms(lambda fn=fn: fn(q, k, v), **_timing(args)))


def _time_backward(row: Row, fns: dict[str, Callable], args: argparse.Namespace) -> None:
    """Forward+backward of each function."""
    shape = (1, args.heads, row.n, args.dim)
    q, k, v = _inputs(shape, args.device, grad=True, seed=row.n + row.b + 1)
    grad = torch.randn_like(v)
    for name, fn in fns.items():
        setattr(row, f"{name}_fwd_bwd", time_ms(_fwd_bwd(fn, q, k, v, grad), **_timing(args)))


# ----------------------------------------------------------------------------- correctness
@dataclass(frozen=True)
class Check:
    """One forward check (and optionally a gradient check) on a small hierarchy."""

    name: str
    hierarchy: Hierarchy
    dtype: torch.dtype
    energy: str = "dot"
    positions: bool = False
    d: int = 16
    gradients: bool = False


def correctness_checks(quick: bool = False) -> list[Check]:
    """Every kind of bucket (contiguous and gathered leaves, families, leaves beside families,
    single-child chains, one-leaf trees, families wider than a tile), each dtype and energy,
    positions, gradients; few enough that compiling the kernels they need stays short."""
    mixed = Hierarchy.from_nested([[0, 1, 2], [3, [4, 5]], 6, [[7]], [8, [9, 10, 11]]])
    forest = Hierarchy.forest(
        [
            Hierarchy.from_parents([-1], 1),
            Hierarchy.from_nested([[0, [[1]], [2, 3]], 4]),
            Hierarchy.balanced(40, 5),
        ]
    )
    wide = Hierarchy.from_nested([list(range(150)), [150, [151, 152]], 153])
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    checks = [
        Check("mixed", mixed, f32, gradients=True),
        Check("mixed", mixed, bf16, "distance", positions=True),
        Check("wide family", wide, f32, "distance", positions=True, gradients=True),
        Check("balanced b=64", Hierarchy.balanced(4096, 64), bf16, d=64),
    ]
    if not quick:
        checks += [
            Check("mixed", mixed, f16, "distance"),
            Check("forest", forest, f32, "distance", positions=True, gradients=True),
            Check("forest", forest, bf16),
            Check("wide family", wide, bf16),
            Check("balanced b=16", Hierarchy.balanced(4096, 16), bf16, d=64),
            Check("balanced b=16", Hierarchy.balanced(256, 16), f32, "distance"),
        ]
    return checks


def check_correctness(device: str, checks: Sequence[Check]) -> list[str]:
    """Failures of the Triton path against the reference (forward) and against the PyTorch
    programme (gradients); prints one line per check."""
    from hsa_fast import hsa
    from hsa_ref.tolerance import compare_to_reference

    failures: list[str] = []
    gen = torch.Generator().manual_seed(0)
    for c in checks:
        h, n = c.hierarchy, c.hierarchy.num_leaves
        q, k, v = (
            torch.randn(2, n, d, generator=gen, dtype=torch.float64).to(c.dtype)
            for d in (c.d, c.d, c.d // 2)
        )
        pos = torch.randn(h.num_nodes, 4, generator=gen, dtype=torch.float64)
        pos = pos if c.positions else None
        out = hsa(
            *(x.to(device) for x in (q, k, v)),
            h,
            energy=c.energy,
            positions=pos.to(device) if pos is not None else None,
            backend="triton",
        )
        verdict = compare_to_reference(out.cpu(), q, k, v, h, energy=c.energy, positions=pos)
        label = f"{c.name}, {str(c.dtype)[6:]}, {c.energy}{', positions' if c.positions else ''}"
        print(f"  forward  {label}: {verdict}")
        if not verdict.passed:
            failures.append(f"forward {label}: {verdict}")
        if c.gradients:
            failures += _check_gradients(device, c, gen)
    return failures


def _check_gradients(device: str, c: Check, gen: torch.Generator) -> list[str]:
    """Triton's float32 gradients against float64 ones, allowed 4x the error of the PyTorch
    programme in float32 (plus 1e-6 of the largest gradient)."""
    from hsa_fast import hsa

    h, n = c.hierarchy, c.hierarchy.num_leaves
    base = [torch.randn(2, n, d, generator=gen, dtype=torch.float64) for d in (c.d, c.d, c.d // 2)]
    pos = torch.randn(h.num_nodes, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(2, n, c.d // 2, generator=gen, dtype=torch.float64)
    grads = {}
    for backend, dtype in (
        ("torch", torch.float64),
        ("torch", torch.float32),
        ("triton", torch.float32),
    ):
        ins = [x.detach().to(device, dtype).requires_grad_() for x in base]
        p = pos.detach().to(device).requires_grad_() if c.positions else None
        out = hsa(*ins, h, energy=c.energy, positions=p, backend=backend)
        (out.double() * weight.to(device)).sum().backward()
        leaves = (*ins, p) if p is not None else ins
        grads[backend, dtype] = [x.grad.double().cpu() for x in leaves]
    worst = 0.0
    for fast, base32, ref in zip(
        grads["triton", torch.float32],
        grads["torch", torch.float32],
        grads["torch", torch.float64],
        strict=True,
    ):
        limit = 4 * (base32 - ref).abs().max().item() + 1e-6 * ref.abs().max().item()
        worst = max(worst, (fast - ref).abs().max().item() / limit)
    label = f"{c.name}, float32, {c.energy}{', positions' if c.positions else ''}"
    print(f"  gradient {label}: error / limit {worst:.2f}")
    return [] if worst <= 1 else [f"gradients {label}: error {worst:.2f}x the limit"]


# ----------------------------------------------------------------------------- driver
def _triton_version() -> str:
    import triton

    return triton.__version__


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_triton", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="N = 4,096 and 65,536, fewer reps")
    parser.add_argument(
        "--sizes",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help="comma-separated N (default 4096,16384,65536,262144)",
    )
    parser.add_argument(
        "--branching",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=BRANCHINGS,
        help="comma-separated b (default 16,64)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per timing")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per timing (median)")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds per timing before stopping early (at least 3 calls)",
    )
    parser.add_argument(
        "--torch-max-n", type=int, default=262144, help="skip the PyTorch programme above this N"
    )
    parser.add_argument("--no-sdpa", action="store_true", help="skip SDPA")
    parser.add_argument("--heads", type=int, default=HEADS, help=f"heads (default {HEADS})")
    parser.add_argument("--dim", type=int, default=DIM, help=f"head dimension (default {DIM})")
    parser.add_argument("--skip-checks", action="store_true", help="skip the correctness checks")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: a smoke run of this script under TRITON_INTERPRET=1 (timings meaningless)",
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    args.reps = args.reps if args.reps is not None else (5 if args.quick else 10)
    args.budget = args.budget if args.budget is not None else (2.0 if args.quick else 4.0)
    bad = [n for n in args.sizes if n < 1] + [b for b in args.branching if b < 2]
    if bad or args.warmup < 0 or args.reps < 1 or args.heads < 1 or args.dim < 1:
        parser.error("need sizes >= 1, branchings >= 2, warmup >= 0, reps, heads and dim >= 1")
    return args


def plan(args: argparse.Namespace) -> str:
    """What a run will do, without touching a GPU."""
    lines = [
        f"cases: b in {list(args.branching)}, N in {[f'{n:,}' for n in args.sizes]}, "
        f"bfloat16, batch 1, {args.heads} heads, d = {args.dim}",
        f"timing: {args.warmup} warm-up + up to {args.reps} timed calls (median), "
        f"{args.budget:g} s per timing",
    ]
    for b in args.branching:
        for n in args.sizes:
            h = Hierarchy.balanced(n, b)
            floor_bytes = 2 * 4 * tensor_bytes(n, args.heads, args.dim)  # read + write q, k, v, y
            lines.append(
                f"  b={b:<3} N={n:>9,}  families={h.num_families:>7,}  depth={h.max_depth}  "
                f"copy floor moves {floor_bytes / 2**20:,.0f} MiB"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(plan(args))
    if args.dry_run:
        return 0
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA device: this benchmark times the Triton kernels on a GPU "
            "(use --dry-run to see the plan)",
            file=sys.stderr,
        )
        return 2
    from hsa_fast.triton import triton_unsupported

    probe = torch.empty(1, 1, 1, 8, device=device, dtype=torch.bfloat16)
    reason = triton_unsupported(probe, probe, None, 1, explicit=True)
    if reason:
        print(f"error: the Triton path cannot run here: {reason}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    print(f"device: {name}, torch {torch.__version__}, triton {_triton_version()}")
    started = time.perf_counter()
    failures: list[str] = []
    if not args.skip_checks:
        print("correctness (Triton path vs float64 reference; gradients vs PyTorch programme):")
        try:
            failures = check_correctness(device, correctness_checks(args.quick))
        except Exception as exc:  # report and stop: timings of a broken path mean nothing
            print(f"error: correctness check crashed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        verdict = "all passed" if not failures else f"{len(failures)} FAILED"
        print(f"  {verdict} ({time.perf_counter() - started:.0f} s)")
    rows: list[Row] = []
    for b in args.branching:
        for n in args.sizes:
            t0 = time.perf_counter()
            try:
                row = time_case(b, n, args)
            except torch.OutOfMemoryError as exc:
                row = Row(b=b, n=n, notes=[f"out of memory: {exc}".splitlines()[0]])
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"  timed b={b} N={n:,} in {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(table(rows))
    for r in rows:
        for note in r.notes:
            print(f"note (b={r.b}, N={r.n:,}): {note}")
    print()
    for text, met in targets(rows):
        print(f"target: {text}: {'met' if met else 'MISSED' if met is False else 'not measured'}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": [asdict(r) for r in rows], "failures": failures}, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
