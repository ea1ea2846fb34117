"""Pytest plugin for the sweeps (``pytest -p bench.plugin bench/bench_sweeps.py``).

Adds ``--profile``, ``--device`` and ``--threads`` and records, in the pytest-benchmark JSON, what
a reader needs to compare runs: torch, numpy and Python versions, the accelerator, thread count,
profile and date.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np
import pytest
import torch

from .cases import DEVICES, PROFILES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hsa-bench", "HSA benchmark sweeps")
    group.addoption(
        "--profile",
        default="default",
        choices=sorted(PROFILES),
        help="sizes of the sweeps: quick (CI), default, full (N up to 1,048,576)",
    )
    group.addoption("--device", default="cpu", choices=DEVICES, help="torch device to time on")
    group.addoption(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable on shared machines; 0: torch's default)",
    )


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--threads", 0)
    if threads and threads > 0:
        torch.set_num_threads(threads)


def pytest_benchmark_update_machine_info(
    config: pytest.Config, machine_info: dict[str, Any]
) -> None:
    device = config.getoption("--device")
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "profile": config.getoption("--profile"),
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "accelerator": machine_info.get("cpu", {}).get("brand_raw") or platform.machine(),
        "malloc_keeps_freed_memory": "MALLOC_TRIM_THRESHOLD_" in os.environ,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["accelerator"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    machine_info["hsa_bench"] = info
