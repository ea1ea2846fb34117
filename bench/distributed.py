"""``python -m bench.distributed``: what sequence-parallel HSA communicates, and its wall time.

1. Bytes sent per rank, per call, for ``hsa_fast.distributed.hsa_sharded`` (counted by the
   module: :func:`hsa_fast.distributed.planned_collectives`, which the tests check against what
   a run records) against ring attention for the same N, P, d and batch, over several N at
   fixed P. Ring attention (each rank keeps its query block; its key and value block of
   ``ceil(N / P)`` rows travels round the ring, one hop per step, ``P - 1`` steps) sends per rank
   ``(P - 1) * ceil(N / P) * batch * (d_k + d_v) * itemsize`` bytes in the forward pass; the
   backward circulates the key and value blocks again and their gradient accumulators with
   them, at least twice that. HSA sends its rank's cut summaries (``2 d_k + d_v + 1`` numbers
   each, per batch element) to the ``P - 1`` other ranks forward and their adjoints
   (``d_v + 1``) backward, in the accumulation dtype: independent of N.
2. Wall time on gloo (CPU processes) for P = 1, 2, 4 at a fixed N, forward and
   forward+backward, with the bytes each run recorded (``CommStats``).

    python -m bench.distributed                 # both, a minute or two on CPU
    python -m bench.distributed --bytes-only    # the communication table only (no processes)
    python -m bench.distributed --sizes 4096 65536 --n 16384 --repeats 3   # other sizes
    python -m bench.distributed --json out.json
    # multi-GPU (NCCL), one process per GPU, started by torchrun:
    torchrun --nproc_per_node=8 -m bench.distributed --launched --backend nccl --n 1048576

The ``--launched`` mode is what every rank runs (the CPU runs start it with the environment
torchrun would set); rank 0 prints one JSON line with its timings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

import torch

from bench import checkout_env
from hsa_fast.distributed import CommStats, hsa_sharded, planned_collectives
from hsa_fast.sharding import partition
from hsa_ref import Hierarchy

SIZES = (4096, 16384, 65536, 262144, 1048576)
WORLD = 8  # ranks of the communication table
BRANCHING = 16
HEADS, DIM = 8, 64  # the batch of the communication table: 8 heads, d_k = d_v = 64
TIMED_N, TIMED_WORLDS = 65536, (1, 2, 4)


def ring_attention_bytes(
    n: int, world: int, *, batch: int, d_k: int, d_v: int, itemsize: int
) -> tuple[int, int]:
    """(forward, backward) bytes one rank sends in ring attention (backward: a lower bound)."""
    forward = (world - 1) * math.ceil(n / world) * batch * (d_k + d_v) * itemsize
    return forward, 2 * forward


def hsa_bytes(
    n: int, world: int, *, batch: int, d_k: int, d_v: int, dtype: torch.dtype
) -> tuple[int, int, int]:
    """(forward, backward, slots) for a balanced tree of branching ``BRANCHING``."""
    plan = partition(Hierarchy.balanced(n, BRANCHING), world)
    calls = planned_collectives(plan, batch=batch, d_k=d_k, d_v=d_v, dtype=dtype)
    fwd = sum(c.sent_bytes for c in calls if c.phase == "forward")
    bwd = sum(c.sent_bytes for c in calls if c.phase == "backward")
    return fwd, bwd, plan.slots


def bytes_table(sizes=SIZES, world: int = WORLD) -> list[dict]:
    rows = []
    for n in sizes:
        fwd, bwd, slots = hsa_bytes(n, world, batch=HEADS, d_k=DIM, d_v=DIM, dtype=torch.bfloat16)
        ring_f, ring_b = ring_attention_bytes(n, world, batch=HEADS, d_k=DIM, d_v=DIM, itemsize=2)
        rows.append(
            {
                "n": n,
                "world": world,
                "slots": slots,
                "hsa_forward": fwd,
                "hsa_backward": bwd,
                "ring_forward": ring_f,
                "ring_backward_at_least": ring_b,
            }
        )
    return rows


def _time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds (this process) of ``fn`` over ``repeats`` calls, warm."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def launched(args: argparse.Namespace) -> None:
    """One rank: time hsa_sharded forward and forward+backward; rank 0 prints JSON."""
    import torch.distributed as dist

    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    plan = partition(Hierarchy.balanced(args.n, BRANCHING), world)
    shard = plan.shards[rank]
    g = torch.Generator().manual_seed(rank)
    q, k, v, grad = (
        torch.randn(args.heads, shard.num_leaves, args.d, generator=g).to(device, dtype)
        for _ in range(4)
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()

    def forward() -> None:
        with torch.no_grad():
            hsa_sharded(q, k, v, plan)
        sync()

    def both() -> None:
        qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
        (hsa_sharded(qg, kg, vg, plan) * grad).sum().backward()
        sync()

    sync()
    (t_fwd, cpu_fwd), (t_both, cpu_both) = _time(forward, args.repeats), _time(both, args.repeats)
    stats = CommStats()
    qg = q.detach().requires_grad_(True)
    (hsa_sharded(qg, k, v, plan, stats=stats) * grad).sum().backward()
    planned = planned_collectives(plan, batch=args.heads, d_k=args.d, d_v=args.d, dtype=dtype)
    if rank == 0:
        print(
            json.dumps(
                {
                    "world": world,
                    "n": args.n,
                    "heads": args.heads,
                    "d": args.d,
                    "dtype": str(dtype),
                    "backend": args.backend,
                    "forward_s": t_fwd,
                    "forward_backward_s": t_both,
                    "forward_cpu_s": cpu_fwd,
                    "forward_backward_cpu_s": cpu_both,
                    "sent_forward": stats.sent_bytes("forward"),
                    "sent_backward": stats.sent_bytes("backward"),
                    "matches_plan": stats.collectives == planned,
                }
            ),
            flush=True,
        )
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo(world: int, args: argparse.Namespace) -> dict:
    """Start ``world`` CPU ranks as torchrun would, wait (bounded), return rank 0's JSON."""
    env = checkout_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env["WORLD_SIZE"] = str(world)
    cmd = [sys.executable, "-m", "bench.distributed", "--launched", "--backend", "gloo"]
    cmd += ["--n", str(args.n), "--heads", str(args.heads), "--d", str(args.d)]
    cmd += ["--repeats", str(args.repeats), "--threads", "1"]
    procs = [
        subprocess.Popen(
            cmd,
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    outputs = []
    try:
        outputs = [p.communicate(timeout=args.timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        if p.returncode != 0:
            raise RuntimeError(f"rank {r} of {world} failed:\n{out}")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__)
    parser.add_argument("--launched", action="store_true", help="run as one rank (torchrun)")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--bytes-only", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="N of the bytes table")
    parser.add_argument("--n", type=int, default=TIMED_N)
    parser.add_argument("--heads", type=int, default=HEADS)
    parser.add_argument("--d", type=int, default=DIM)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.launched:
        launched(args)
        return 0

    print(
        f"# sequence-parallel HSA: {datetime.now(UTC):%Y-%m-%d}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n"
    )
    table = bytes_table(args.sizes)
    print(
        f"Bytes sent per rank per call, P = {WORLD}, balanced tree b = {BRANCHING}, "
        f"{HEADS} heads, d_k = d_v = {DIM}, bfloat16 inputs (HSA sends float32 summaries), "
        "bytes:\n"
    )
    print(
        "| N | cut summaries per rank | HSA forward | HSA backward | ring forward | "
        "ring backward (at least) | ring / HSA, forward |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        print(
            f"| {r['n']:,} | {r['slots']} | {r['hsa_forward']:,} | {r['hsa_backward']:,} | "
            f"{r['ring_forward']:,} | {r['ring_backward_at_least']:,} | "
            f"{r['ring_forward'] / r['hsa_forward']:,.0f} |"
        )
    results: dict = {"bytes": table, "timed": []}
    if not args.bytes_only:
        print(
            f"\nWall time on gloo (CPU processes, 1 thread each), N = {args.n:,}, "
            f"{args.heads} heads, d = {args.d}, float32, median of {args.repeats}:\n"
        )
        print(
            "| P | forward wall (s) | forward+backward wall (s) | forward CPU, rank 0 (s) | "
            "forward+backward CPU, rank 0 (s) | forward wall vs P = 1 | "
            "bytes sent per rank (fwd + bwd) | recorded = planned |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
        base = None
        for world in TIMED_WORLDS:
            r = run_gloo(world, args)
            base = base or r["forward_s"]
            results["timed"].append(r)
            print(
                f"| {world} | {r['forward_s']:.3f} | {r['forward_backward_s']:.3f} | "
                f"{r['forward_cpu_s']:.3f} | {r['forward_backward_cpu_s']:.3f} | "
                f"{r['forward_s'] / base:.2f} | {r['sent_forward'] + r['sent_backward']:,} | "
                f"{'yes' if r['matches_plan'] else 'NO'} |",
                flush=True,
            )
        if not all(r["matches_plan"] for r in results["timed"]):
            return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
