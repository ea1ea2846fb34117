"""``python -m bench.memory``: peak memory of the PyTorch programme above its inputs, and its speed.

    python -m bench.memory                    # N = 262,144, b = 16 .. 4,096, and one flat family
                                              # of 20,000 leaves (CPU: about ten minutes)
    python -m bench.memory --quick            # N = 16,384 (about a minute)
    python -m bench.memory --baseline REV     # also time (and measure) the programme of commit REV

Every case runs in a fresh subprocess: one head, float32, d = 64, a balanced tree of branching
``b``. The child builds the inputs (q, k, v and, for the backward, the output gradient) and the
layout, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the programme once
(forward under ``torch.no_grad``, or forward and backward) and reports the peak resident set
above what it held just before. That extra is printed against the size of q, k, v and the output
(the target is at most 1x at every b up to 4,096).

With ``--baseline REV`` (a git revision of this repository) the programme of ``REV`` is written to
a temporary module and timed against the current one in the same run, one torch thread,
alternating calls (fastest of ``--repeats``), at b = 16 and 64: the ratio new / old is printed.
Children run with glibc's mmap threshold fixed at its default 128 KiB, so every large block goes
back to the kernel when freed and the peak is what was live at once. Linux only.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import checkout_env

MB = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def load_programme(path: str | None):
    """``hsa_programme`` of this checkout (``path=None``) or of the file ``path``
    (:func:`baseline_file`)."""
    if path is None:
        from hsa_fast.programme import hsa_programme

        return hsa_programme
    spec = importlib.util.spec_from_file_location("hsa_baseline_programme", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module.hsa_programme


def _hierarchy(n: int, b: int):
    from hsa_ref import Hierarchy

    return Hierarchy.one_family(n) if b >= n else Hierarchy.balanced(n, b)


def child(case: dict) -> dict:
    """Run one case in this process; returns the extra peak RSS in bytes."""
    import torch

    from hsa_fast import compile_hierarchy
    from hsa_ref.validation import check_scale

    torch.set_num_threads(1)
    run = load_programme(case.get("programme"))
    n, b, d = case["n"], case["b"], case["d"]
    layout = compile_hierarchy(_hierarchy(n, b))
    g = torch.Generator().manual_seed(0)
    backward = case["backward"]
    q, k, v = (torch.randn(1, n, d, generator=g).requires_grad_(backward) for _ in range(3))
    grad_out = torch.randn(1, n, d, generator=g) if backward else None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    with torch.set_grad_enabled(backward):
        out = run(q, k, v, layout, scale=check_scale(None, d), energy=case.get("energy", "dot"))
        if backward:
            out.backward(grad_out)
    peak = _status_kib("VmHWM")
    return {"extra_bytes": (peak - before) * 1024}


def _spawn(case: dict) -> dict:
    # A fixed mmap threshold (glibc's default value) turns off glibc's sliding threshold, which
    # would move large freed blocks onto the heap and count them as resident after their free.
    env = checkout_env(OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", json.dumps(case)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_file(rev: str, folder: str) -> str:
    """The programme of git revision ``rev`` as a file in ``folder`` that imports this
    checkout's ``hsa_fast`` (its relative imports made absolute)."""
    text = subprocess.run(
        ["git", "show", f"{rev}:hsa_fast/programme.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(folder) / "hsa_baseline_programme.py"
    path.write_text(re.sub(r"^from \.(\w+) import", r"from hsa_fast.\1 import", text, flags=re.M))
    return str(path)


def speed_ratio(n: int, b: int, d: int, baseline: str, repeats: int) -> tuple[float, float, float]:
    """Fastest forward time of the current and the baseline programme, and their ratio."""
    import torch

    from hsa_fast import compile_hierarchy
    from hsa_ref.validation import check_scale

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        new, old = load_programme(None), load_programme(baseline)
        layout = compile_hierarchy(_hierarchy(n, b))
        q, k, v = (torch.randn(1, n, d) for _ in range(3))
        best = {"new": float("inf"), "old": float("inf")}
        with torch.no_grad():
            for _ in range(repeats):
                for name, fn in (("old", old), ("new", new)):
                    start = time.perf_counter()
                    fn(q, k, v, layout, scale=check_scale(None, d), energy="dot")
                    best[name] = min(best[name], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best["new"], best["old"], best["new"] / best["old"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="N = 16,384 instead of 262,144")
    parser.add_argument("--baseline", metavar="REV", help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per programme")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    import torch

    n, d = (16_384 if args.quick else 262_144), 64
    cases = [(n, b) for b in (16, 64, 256, 1024, 4096)] + [(20_000, 20_000)]
    print(
        f"# bench.memory, {datetime.date.today()}, {platform.node()} ({os.cpu_count()} cores), "
        f"torch {torch.__version__}, one head, float32, d = {d}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        baseline = baseline_file(args.baseline, tmp) if args.baseline else None
        programmes = [("current", None)] + ([(args.baseline, baseline)] if baseline else [])
        print("| programme | N | b | q, k, v, out | forward extra | forward + backward extra |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, path in programmes:
            for size, b in cases:
                if path is not None and b > 256:
                    continue  # the baseline forms every bucket's w x w energies at once
                floor = 4 * size * d * 4
                cells = []
                for backward in (False, True):
                    case = {"n": size, "b": b, "d": d, "backward": backward, "programme": path}
                    result = _spawn(case)
                    if "error" in result:
                        cells.append(f"failed: {result['error'][:60]}")
                    else:
                        extra = result["extra_bytes"]
                        cells.append(f"{extra / MB:,.0f} MB ({extra / floor:.2f}x)")
                print(
                    f"| {label} | {size:,} | {b:,} | {floor / MB:,.0f} MB | "
                    + " | ".join(cells)
                    + " |"
                )
                sys.stdout.flush()
        if baseline:
            print("\n| b | N | current forward | baseline forward | current / baseline |")
            print("| --- | --- | --- | --- | --- |")
            for b in (16, 64):
                new, old, ratio = speed_ratio(n, b, d, baseline, args.repeats)
                print(f"| {b} | {n:,} | {new * 1e3:.0f} ms | {old * 1e3:.0f} ms | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
