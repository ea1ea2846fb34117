"""``python -m bench``: run the sweeps with pytest-benchmark, then draw the plots.

    python -m bench                      # default profile on CPU (about 80 s of sweeps), then plots
    python -m bench --quick              # CI profile (about 20 s of sweeps)
    python -m bench --full               # N up to 1,048,576 (long on CPU)
    python -m bench --device cuda --full # on a CUDA machine
    python -m bench --threads 0          # torch's default thread count (default here: 1)
    python -m bench --system-malloc      # glibc's default allocator settings (see below)
    python -m bench --no-plots -- -k "N-hsa_fast"   # pytest arguments after --

Results go to ``<out>/<device>/benchmark.json`` (pytest-benchmark JSON with machine, torch version
and date); the plots and ``<out>/SUMMARY.md`` are written by :mod:`bench.plots`.

By default the sweeps run with glibc told to keep freed memory (``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``), the CPU counterpart of CUDA's caching allocator: otherwise every
call of every contender faults its large temporaries in afresh from the kernel, which on a
virtual machine costs more than the arithmetic. It applies to all contenders alike.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from . import checkout_env
from .cases import DEVICES

DEFAULT_OUT = Path("results") / "bench"
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**35), "MALLOC_TRIM_THRESHOLD_": str(2**35)}


def pytest_command(
    profile: str, device: str, out: Path, extra: list[str], threads: int = 1
) -> list[str]:
    """The pytest command line that runs one profile on one device."""
    json_path = out / device / "benchmark.json"
    return [
        sys.executable,
        "-m",
        "pytest",
        str(Path(__file__).with_name("bench_sweeps.py")),
        "-p",
        "bench.plugin",
        "-p",
        "no:cacheprovider",
        f"--profile={profile}",
        f"--device={device}",
        f"--threads={threads}",
        "--benchmark-enable",
        f"--benchmark-json={json_path}",
        "--benchmark-columns=min,median,rounds",
        "--benchmark-sort=fullname",
        "--benchmark-group-by=group",
        "-v",
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the CI profile")
    size.add_argument("--full", action="store_true", help="the big sweep (N to 1,048,576)")
    parser.add_argument("--device", choices=(*DEVICES, "all"), default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on CPU (default 1: many small ops stall when cores are shared; "
        "0: torch's default, for a machine of one's own)",
    )
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's allocator settings alone (temporaries are faulted in on every call)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--no-plots", action="store_true", help="only run the sweeps")
    args = parser.parse_args(argv)
    profile = "quick" if args.quick else "full" if args.full else "default"
    devices = list(DEVICES) if args.device == "all" else [args.device]
    if "cuda" in devices and args.device == "all":
        import torch

        if not torch.cuda.is_available():
            devices.remove("cuda")
    status = 0
    for device in devices:
        (args.out / device).mkdir(parents=True, exist_ok=True)
        print(f"== sweeps: profile {profile}, device {device} ==", flush=True)
        start = time.perf_counter()
        env = checkout_env() if args.system_malloc else checkout_env(**KEEP_FREED_MEMORY)
        command = pytest_command(profile, device, args.out, extra, args.threads)
        rc = subprocess.call(command, env=env)
        print(f"== {device}: {time.perf_counter() - start:.0f} s, pytest exit {rc} ==", flush=True)
        status = status or rc
    if not args.no_plots:
        from .plots import main as plots_main

        status = plots_main(["--results", str(args.out)]) or status
    return status


if __name__ == "__main__":
    raise SystemExit(main())
