"""The sweeps' results as read back from ``<results>/<device>/benchmark.json``.

Each record's ``time`` is its time per call as the report, the plots and the cost model use it:
for a CPU run with one torch thread, the processor time the benchmark process spent in the call
(user plus system, the timed round with the least of it), which leaves out the time spent
waiting for a core while other jobs run on a shared machine; otherwise (CUDA, or several threads,
whose CPU time adds up over cores) the wall time of the fastest round, ``time_min``.

Only the standard library: the plots, the cost model and the report read results without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["Record", "Run", "load_run", "threads_text"]


@dataclass(frozen=True)
class Record:
    """One benchmarked case: the sizes and work counts of ``extra_info`` and its timings (s).

    ``time_min``, ``time_median``: wall time of the fastest and the median round; ``cpu``:
    process CPU time of the round with the least of it; ``time``: the time per call the report
    uses (see the module). ``info`` keeps the whole ``extra_info``, with the exact counts the
    cost model reads (:mod:`bench.counts`; absent from runs recorded before they were counted).
    """

    sweep: str
    impl: str
    n: int
    m: int
    b: int
    d: int
    heads: int
    dtype: str
    device: str
    energies: int
    flops: int
    dense_flops: int
    time_min: float
    time_median: float
    rounds: int
    cpu_user: float | None = None
    cpu_sys: float | None = None
    cpu: float | None = None
    time: float = math.nan
    info: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_benchmark(cls, bench: dict[str, Any]) -> Record:
        x, s = bench["extra_info"], bench["stats"]
        return cls(
            sweep=x["sweep"],
            impl=x["impl"],
            n=int(x["N"]),
            m=int(x["M"]),
            b=int(x["b"]),
            d=int(x["d"]),
            heads=int(x["heads"]),
            dtype=str(x["dtype"]),
            device=str(x["device"]),
            energies=int(x["energies"]),
            flops=int(x["flops"]),
            dense_flops=int(x["dense_flops"]),
            time_min=float(s["min"]),
            time_median=float(s["median"]),
            rounds=int(s["rounds"]),
            cpu_user=x.get("cpu_user_s"),
            cpu_sys=x.get("cpu_sys_s"),
            cpu=x.get("cpu_s"),
            time=float(s["min"]),
            info=dict(x),
        )

    def x(self, sweep: str) -> int:
        """The swept quantity of ``sweep`` (``N``, ``M``, ``b`` or ``d``) for this case."""
        return {"N": self.n, "M": self.m, "b": self.b, "d": self.d}[sweep]

    @property
    def work_flops(self) -> int:
        """Model flops of the algorithm that ran (dense for SDPA, the programme otherwise)."""
        return self.dense_flops if self.impl == "sdpa" else self.flops

    @property
    def label(self) -> str:
        """``"b sweep, N=16,384, b=2, d=64"``: the case in words."""
        sizes = f"N={self.n:,}" + (f", M={self.m:,}, b={self.b}" if self.impl != "sdpa" else "")
        return f"{self.sweep} sweep, {sizes}, d={self.d}"


@dataclass(frozen=True)
class Run:
    """The records of one ``benchmark.json`` and what it says about the machine."""

    device: str
    records: tuple[Record, ...]
    info: dict[str, Any]
    path: Path
    measure: str = "wall"

    @property
    def measure_text(self) -> str:
        """What ``Record.time`` is, in words."""
        if self.measure == "cpu":
            return "CPU time per call (s, one core)"
        return "wall time per call (s, fastest round)"

    def select(self, sweep: str | None = None, impl: str | None = None) -> list[Record]:
        return [
            r
            for r in self.records
            if (sweep is None or r.sweep == sweep) and (impl is None or r.impl == impl)
        ]

    @property
    def caption(self) -> str:
        i = self.info
        return (
            f"{i.get('accelerator', '?')}, {threads_text(i)}, "
            f"torch {i.get('torch', '?')}, {i.get('date', '?')}, profile {i.get('profile', '?')}"
        )


def threads_text(info: Mapping[str, Any]) -> str:
    """``"1 torch thread"`` from a run's machine info."""
    n = info.get("torch_threads", "?")
    return f"{n} torch thread" + ("" if n == 1 else "s")


def load_run(path: Path) -> Run:
    """Read one pytest-benchmark JSON written by the sweeps."""
    data = json.loads(Path(path).read_text())
    records = tuple(
        Record.from_benchmark(b) for b in data["benchmarks"] if "sweep" in b.get("extra_info", {})
    )
    info = dict(data.get("machine_info", {}).get("hsa_bench", {}))
    info.setdefault("date", data.get("datetime", "?")[:10])
    device = info.get("device") or (records[0].device if records else Path(path).parent.name)
    measure = "wall"
    one_core = device == "cpu" and info.get("torch_threads") == 1 and records
    if one_core and all(r.cpu is not None and r.cpu > 0 for r in records):
        measure = "cpu"
        records = tuple(replace(r, time=float(r.cpu)) for r in records)
    return Run(device=device, records=records, info=info, path=Path(path), measure=measure)
