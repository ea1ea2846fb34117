"""``python -m bench.plots``: figures, fitted exponents and a summary table from the sweep JSON.

Reads ``<results>/<device>/benchmark.json`` (written by ``python -m bench``) for every device
present and writes, per device, ``runtime_vs_N``, ``runtime_vs_M``, ``runtime_vs_b``,
``runtime_vs_d`` and ``collapse`` as PNG and SVG, plus ``<results>/SUMMARY.md``.

Timings are the fastest round of each case (the one least disturbed by other load); on CPU the
process's user CPU time per call is fitted too (it leaves out waiting for a core). Exponents are
least-squares slopes on logs with 95% Student-t intervals (:mod:`bench.fit`); timing exponents are
reported, never checked. The work-count exponents are deterministic and are checked: the
programme's energies ``N + sum_f b_f (b_f - 1)`` must grow like ``N**(1 +- 0.05)`` at fixed ``b``
and dense attention's like ``N**2``; the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fit import PowerLawFit, fit_power_law

__all__ = ["Record", "Run", "WorkCheck", "check_work_exponents", "load_run", "main"]

IMPL_STYLE = {
    "hsa_fast": {"color": "tab:blue", "marker": "o", "label": "hsa_fast.hsa"},
    "sdpa": {"color": "tab:red", "marker": "^", "label": "dense SDPA"},
    "hsa_reference": {"color": "tab:green", "marker": "s", "label": "hsa_reference (float64)"},
}
SWEEP_AXIS = {
    "N": ("N", "leaves N"),
    "M": ("M", "families M"),
    "b": ("b", "branching b (children per family)"),
    "d": ("d", "head dimension d"),
}
SWEEP_MARKER = {"N": "o", "M": "D", "b": "v", "d": "P"}
SWEEP_COLOR = {"N": "tab:blue", "M": "tab:purple", "b": "tab:orange", "d": "tab:cyan"}
FIGURES = ("runtime_vs_N", "runtime_vs_M", "runtime_vs_b", "runtime_vs_d", "collapse")
PROGRAMME_N_EXPONENT = (1.0, 0.05)
DENSE_N_EXPONENT = (2.0, 0.05)


@dataclass(frozen=True)
class Record:
    """One benchmarked case: the sizes and work counts of ``extra_info`` and its timings (s)."""

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
        )

    def x(self, sweep: str) -> int:
        return {"N": self.n, "M": self.m, "b": self.b, "d": self.d}[sweep]

    @property
    def work_flops(self) -> int:
        """Model flops of the algorithm that ran (dense for SDPA, the programme otherwise)."""
        return self.dense_flops if self.impl == "sdpa" else self.flops


@dataclass(frozen=True)
class Run:
    """The records of one ``benchmark.json`` and what it says about the machine."""

    device: str
    records: tuple[Record, ...]
    info: dict[str, Any]
    path: Path

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
            f"{i.get('accelerator', '?')}, {_threads(i)}, "
            f"torch {i.get('torch', '?')}, {i.get('date', '?')}, profile {i.get('profile', '?')}"
        )


def _threads(info: dict[str, Any]) -> str:
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
    return Run(device=device, records=records, info=info, path=Path(path))


def _fit(records: list[Record], sweep: str, y: str = "time") -> PowerLawFit | None:
    xs = [r.x(sweep) for r in records]
    if len(set(xs)) < 2:
        return None
    if y == "time":
        ys = [r.time_min for r in records]
    elif y == "cpu_user":
        ys = [r.cpu_user or 0.0 for r in records]
        if min(ys) <= 0 or records[0].device != "cpu":
            return None
    elif y == "energies":
        ys = [r.energies if r.impl != "sdpa" else r.n * r.n for r in records]
    else:
        ys = [r.work_flops for r in records]
    return fit_power_law(xs, ys)


# ---------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class WorkCheck:
    name: str
    fit: PowerLawFit | None
    expected: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.fit is not None and abs(self.fit.exponent - self.expected) <= self.tolerance


def check_work_exponents(runs: Iterable[Run]) -> list[WorkCheck]:
    """The deterministic checks: energies against ``N`` for the programme (at fixed ``b``, from
    ``hsa_fast``'s records, else the reference's) and for dense attention."""
    checks = []
    for run in runs:
        prog = run.select("N", "hsa_fast") or run.select("N", "hsa_reference")
        impl = prog[0].impl if prog else "hsa_fast"
        b = sorted({r.b for r in prog})
        checks.append(
            WorkCheck(
                f"{run.device}: programme energies vs N ({impl}, b={'/'.join(map(str, b))})",
                _fit(prog, "N", "energies"),
                *PROGRAMME_N_EXPONENT,
            )
        )
        dense = run.select("N", "sdpa")
        checks.append(
            WorkCheck(
                f"{run.device}: dense energies vs N (sdpa)",
                _fit(dense, "N", "energies"),
                *DENSE_N_EXPONENT,
            )
        )
    return checks


# ---------------------------------------------------------------------------------- figures
def _fmt_int(x: float) -> str:
    return f"{int(x):,}"


def _fixed_text(records: list[Record], sweep: str) -> str:
    """What is held fixed along a series, e.g. ``N=16,384, b=16, d=64``."""
    parts = []
    for key, get in (("N", lambda r: r.n), ("b", lambda r: r.b), ("d", lambda r: r.d)):
        if key == sweep or (key == "b" and records[0].impl == "sdpa"):
            continue
        values = sorted({get(r) for r in records})
        if len(values) == 1:
            parts.append(f"{key}={_fmt_int(values[0])}")
    return ", ".join(parts)


def _series_label(records: list[Record], sweep: str, fit: PowerLawFit | None) -> str:
    style = IMPL_STYLE[records[0].impl]
    fixed = _fixed_text(records, sweep)
    label = style["label"] + (f" ({fixed})" if fixed else "")
    if fit is not None:
        label += f"\n  slope {fit.label()}"
    return label


def _plot_series(ax: Any, records: list[Record], sweep: str) -> PowerLawFit | None:
    records = sorted(records, key=lambda r: r.x(sweep))
    xs = np.array([r.x(sweep) for r in records], dtype=float)
    ys = np.array([r.time_min for r in records])
    fit = _fit(records, sweep)
    style = IMPL_STYLE[records[0].impl]
    ax.plot(
        xs,
        ys,
        linestyle="none",
        marker=style["marker"],
        color=style["color"],
        markersize=6,
        label=_series_label(records, sweep, fit),
    )
    if fit is not None:
        grid = np.geomspace(xs.min(), xs.max(), 50)
        ax.plot(grid, fit(grid), color=style["color"], linestyle="--", linewidth=1.2)
    return fit


def _theory_line(ax: Any, records: list[Record], sweep: str) -> None:
    """A line through ``c * M * b**2`` at the programme's points, ``c`` fitted on logs."""
    records = sorted(records, key=lambda r: r.x(sweep))
    xs = np.array([r.x(sweep) for r in records], dtype=float)
    work = np.array([max(r.m, 1) * r.b**2 for r in records], dtype=float)
    if sweep == "d":
        work = work * np.array([r.d for r in records], dtype=float)
    ys = np.array([r.time_min for r in records])
    c = math.exp(float(np.mean(np.log(ys) - np.log(work))))
    label = "theory ∝ M·b²·d" if sweep == "d" else "theory ∝ M·b²"
    ax.plot(xs, c * work, color="0.45", linestyle=":", linewidth=2, label=label + " (scaled)")
    if sweep == "M":  # at fixed N the N leaf terms matter: draw the exact count too
        exact = np.array([r.energies for r in records], dtype=float)
        c = math.exp(float(np.mean(np.log(ys) - np.log(exact))))
        ax.plot(
            xs,
            c * exact,
            color="0.3",
            linestyle=(0, (5, 2, 1, 2)),
            linewidth=1.4,
            label="∝ N + Σ b_f(b_f−1) energies (scaled)",
        )


def _cpu_time_series(ax: Any, records: list[Record]) -> None:
    """The programme's user CPU time per call (hollow markers), when recorded on CPU."""
    records = sorted(records, key=lambda r: r.n)
    fit = _fit(records, "N", "cpu_user")
    if fit is None:
        return
    style = IMPL_STYLE["hsa_fast"]
    xs = np.array([r.n for r in records], dtype=float)
    ax.plot(
        xs,
        [r.cpu_user for r in records],
        linestyle="none",
        marker=style["marker"],
        markerfacecolor="none",
        color=style["color"],
        markersize=7,
        label=f"hsa_fast.hsa, user CPU time per call\n  slope {fit.label()}",
    )
    grid = np.geomspace(xs.min(), xs.max(), 50)
    ax.plot(grid, fit(grid), color=style["color"], linestyle=":", linewidth=1.0)


def _dense_baseline(ax: Any, run: Run, programme: list[Record]) -> None:
    """SDPA at the programme's fixed ``N`` (and ``d``, ``heads``) as a horizontal line."""
    ns = {r.n for r in programme}
    ds = {r.d for r in programme}
    if len(ns) != 1 or len(ds) != 1:
        return
    n, d = ns.pop(), ds.pop()
    heads = programme[0].heads
    match = [r for r in run.select(impl="sdpa") if r.n == n and r.d == d and r.heads == heads]
    if not match:
        return
    t = min(r.time_min for r in match)
    ax.axhline(
        t,
        color=IMPL_STYLE["sdpa"]["color"],
        linestyle="-.",
        linewidth=1.2,
        label=f"dense SDPA at N={_fmt_int(n)}, d={d} (no tree)",
    )


def _finish(
    ax: Any,
    fig: Any,
    title: str,
    xlabel: str,
    run: Run,
    out: Path,
    name: str,
    xticks: list[int] | None = None,
) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    if xticks:
        ax.xaxis.set_major_locator(FixedLocator(xticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{round(v):,}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("runtime per call (s, fastest round)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    fig.supxlabel(run.caption, fontsize=7.5, color="0.35")
    for ext in ("png", "svg"):
        fig.savefig(out / f"{name}.{ext}", dpi=150 if ext == "png" else None)


def _new_figure() -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 6.6), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.12)
    return fig, ax


def plot_sweep(run: Run, sweep: str, out: Path) -> dict[str, PowerLawFit | None]:
    """``runtime_vs_<sweep>``: every implementation's series, fits, theory line, dense baseline."""
    import matplotlib.pyplot as plt

    fits: dict[str, PowerLawFit | None] = {}
    records = run.select(sweep)
    if not records:
        return fits
    fig, ax = _new_figure()
    for impl in IMPL_STYLE:
        series = [r for r in records if r.impl == impl]
        if series:
            fits[impl] = _plot_series(ax, series, sweep)
    programme = [r for r in records if r.impl == "hsa_fast"]
    if programme and sweep == "N":
        _cpu_time_series(ax, programme)
    if programme:
        _theory_line(ax, programme, sweep)
        if sweep in ("M", "b"):
            _dense_baseline(ax, run, programme)
    key, xlabel = SWEEP_AXIS[sweep]
    titles = {
        "N": "Runtime against leaves N (balanced trees, fixed b)",
        "M": "Runtime against families M (fixed N and b; packed documents)",
        "b": "Runtime against branching b (balanced trees, fixed N)",
        "d": "Runtime against head dimension d (fixed N, b)",
    }
    heads = sorted({r.heads for r in records})
    title = f"{titles[sweep]}\n{run.device}, {'/'.join(map(str, heads))} heads, float32"
    title += " (reference float64)" if any(r.impl == "hsa_reference" for r in records) else ""
    ticks = sorted({r.x(sweep) for r in records}) if sweep in ("b", "d") else None
    _finish(ax, fig, title, xlabel, run, out, f"runtime_vs_{key}", ticks)
    plt.close(fig)
    return fits


def plot_collapse(run: Run, out: Path) -> dict[str, PowerLawFit | None]:
    """Runtime against model flops: every ``hsa_fast`` sweep, and dense SDPA against its own."""
    import matplotlib.pyplot as plt

    fits: dict[str, PowerLawFit | None] = {}
    fig, ax = _new_figure()
    programme = run.select(impl="hsa_fast")
    for sweep in ("N", "M", "b", "d"):
        pts = [r for r in programme if r.sweep == sweep]
        if pts:
            ax.plot(
                [r.flops for r in pts],
                [r.time_min for r in pts],
                linestyle="none",
                marker=SWEEP_MARKER[sweep],
                color=SWEEP_COLOR[sweep],
                markersize=6,
                label=f"hsa_fast.hsa, {SWEEP_AXIS[sweep][1]} sweep",
            )
    for impl, pts in (("hsa_fast", programme), ("sdpa", run.select(impl="sdpa"))):
        if len({r.work_flops for r in pts}) < 2:
            continue
        if impl == "sdpa":
            ax.plot(
                [r.work_flops for r in pts],
                [r.time_min for r in pts],
                linestyle="none",
                marker="^",
                color=IMPL_STYLE["sdpa"]["color"],
                markersize=6,
                label="dense SDPA, N and d sweeps",
            )
        fit = fit_power_law([r.work_flops for r in pts], [r.time_min for r in pts])
        fits[impl] = fit
        grid = np.geomspace(min(r.work_flops for r in pts), max(r.work_flops for r in pts), 50)
        ax.plot(
            grid,
            fit(grid),
            color="black" if impl == "hsa_fast" else IMPL_STYLE["sdpa"]["color"],
            linestyle="--",
            linewidth=1.2,
            label=f"fit, {IMPL_STYLE[impl]['label']}: slope {fit.label()}",
        )
    title = (
        "Runtime against work (docs/HSA.md §5): every sweep on one line\n"
        f"{run.device}; E = N + Σ_f b_f(b_f−1) energies per head (dense attention: E = N²)"
    )
    xlabel = "work: model flops 2·heads·(d_k+d_v)·(E + N + M)   (dense: 2·heads·(d_k+d_v)·N²)"
    _finish(ax, fig, title, xlabel, run, out, "collapse")
    plt.close(fig)
    return fits


# ---------------------------------------------------------------------------------- summary
def _ms(t: float) -> str:
    return f"{t * 1e3:,.1f}" if t < 10 else f"{t * 1e3:,.0f}"


def _ratio_rows(run: Run) -> list[tuple[int, int, float, float]]:
    """``(N, d, hsa_fast s, sdpa s)`` where both ran at equal ``N``, ``d``, heads."""
    fast: dict[tuple[int, int, int], float] = {}
    dense: dict[tuple[int, int, int], float] = {}
    for r in run.records:
        key = (r.n, r.d, r.heads)
        if r.impl == "hsa_fast" and r.sweep in ("N", "d"):
            fast[key] = min(fast.get(key, math.inf), r.time_min)
        elif r.impl == "sdpa":
            dense[key] = min(dense.get(key, math.inf), r.time_min)
    return [(k[0], k[1], fast[k], dense[k]) for k in sorted(fast.keys() & dense.keys())]


def summary_markdown(
    runs: list[Run], fits: dict[str, dict[str, dict[str, PowerLawFit | None]]], checks
) -> str:
    lines = ["# Benchmark summary", ""]
    lines += [
        "Generated by `python -m bench.plots` from pytest-benchmark JSON. Times are the fastest",
        "round per case (user CPU time: the process's, in the round with least of it);",
        "exponents are least-squares slopes on logs with 95% t intervals.",
        "Timing exponents are measurements (noisy on a shared machine); work exponents are exact.",
        "",
    ]
    for run in runs:
        lines += [f"## {run.device}: {run.caption}", "", f"Source: `{run.path}`", ""]
        lines += [
            "| sweep | implementation | fixed | x range | points | timing exponent [95% CI] "
            "| user-CPU-time exponent | work exponent (model flops) |",
            "| --- | --- | --- | --- | ---: | --- | --- | ---: |",
        ]
        for sweep in ("N", "M", "b", "d"):
            for impl in IMPL_STYLE:
                recs = run.select(sweep, impl)
                if not recs:
                    continue
                tfit = fits[run.device].get(sweep, {}).get(impl)
                wfit = _fit(recs, sweep, "flops")
                cfit = _fit(recs, sweep, "cpu_user")
                xs = [r.x(sweep) for r in recs]
                lines.append(
                    f"| {sweep} | {impl} | {_fixed_text(recs, sweep) or '-'} | "
                    f"{_fmt_int(min(xs))}-{_fmt_int(max(xs))} | {len(recs)} | "
                    f"{tfit.label() if tfit else '-'} | {cfit.label() if cfit else '-'} | "
                    f"{f'{wfit.exponent:.3f}' if wfit else '-'} |"
                )
        coll = fits[run.device].get("collapse", {})
        if coll:
            lines += ["", "Runtime against model flops (collapse plot):", ""]
            for impl, f in coll.items():
                if f is not None:
                    lines.append(
                        f"- {impl}: slope {f.label()}, R² on logs {f.r2:.3f}, {f.points} points"
                    )
        rows = _ratio_rows(run)
        if rows:
            lines += [
                "",
                "Dense SDPA against hsa_fast at equal N, d, heads (balanced b=16; ratio > 1: "
                "hsa_fast is faster):",
                "",
                "| N | d | hsa_fast (ms) | dense SDPA (ms) | SDPA / hsa_fast |",
                "| ---: | ---: | ---: | ---: | ---: |",
            ]
            lines += [
                f"| {_fmt_int(n)} | {d} | {_ms(tf)} | {_ms(td)} | {td / tf:,.2f} |"
                for n, d, tf, td in rows
            ]
        lines += ["", "Row for `bench/RESULTS.md`:", "", "```", RESULTS_HEADER]
        lines += [_results_row(run, fits), "```", ""]
        lines += [
            "<details><summary>All measurements</summary>",
            "",
            "| sweep | impl | N | M | b | d | heads | dtype | energies/head | model flops "
            "| min (ms) | median (ms) | rounds | user CPU (ms) | system CPU (ms) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: "
            "| ---: | ---: | ---: |",
        ]
        for r in sorted(run.records, key=lambda r: (r.sweep, r.impl, r.n, r.m, r.b, r.d)):
            lines.append(
                f"| {r.sweep} | {r.impl} | {_fmt_int(r.n)} | {_fmt_int(r.m)} | {r.b} | {r.d} | "
                f"{r.heads} | {r.dtype} | {_fmt_int(r.energies)} | {r.work_flops:.3g} | "
                f"{_ms(r.time_min)} | {_ms(r.time_median)} | {r.rounds} | "
                f"{_ms(r.cpu_user) if r.cpu_user is not None else '-'} | "
                f"{_ms(r.cpu_sys) if r.cpu_sys is not None else '-'} |"
            )
        lines += ["", "</details>", ""]
    lines += ["## Work-count checks", "", "| check | exponent | expected | verdict |"]
    lines += ["| --- | ---: | ---: | --- |"]
    for c in checks:
        got = f"{c.fit.exponent:.4f}" if c.fit else "no data"
        verdict = "ok" if c.passed else "FAIL"
        lines.append(f"| {c.name} | {got} | {c.expected:g} ± {c.tolerance:g} | {verdict} |")
    lines.append("")
    return "\n".join(lines)


RESULTS_HEADER = (
    "| date | machine (threads) | torch | profile | hsa_fast exponent in N, wall [95% CI] "
    "| hsa_fast exponent in N, user CPU | SDPA exponent in N | hsa_fast at the largest N "
    "| SDPA / hsa_fast at the largest common N |"
)


def _results_row(run: Run, fits) -> str:
    """One row of ``bench/RESULTS.md`` (columns of ``RESULTS_HEADER``)."""
    f = fits[run.device].get("N", {})
    fast, dense = f.get("hsa_fast"), f.get("sdpa")
    cpu = _fit(run.select("N", "hsa_fast"), "N", "cpu_user")
    rows = [r for r in _ratio_rows(run) if r[1] == 64]
    ratio = f"{rows[-1][3] / rows[-1][2]:,.1f}x at N={_fmt_int(rows[-1][0])}" if rows else "-"
    fast_n = run.select("N", "hsa_fast")
    largest = max(fast_n, key=lambda r: r.n) if fast_n else None
    big = f"{largest.time_min:.3g} s at N={_fmt_int(largest.n)}" if largest else "-"
    i = run.info
    return (
        f"| {i.get('date', '?')} | {i.get('accelerator', '?')} ({_threads(i)}) | "
        f"{i.get('torch', '?')} | {i.get('profile', '?')} | "
        f"{fast.label() if fast else '-'} | {cpu.label() if cpu else '-'} | "
        f"{dense.label() if dense else '-'} | {big} | {ratio} |"
    )


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__)
    parser.add_argument("--results", type=Path, default=Path("results") / "bench")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    paths = sorted(args.results.glob("*/benchmark.json"))
    if not paths:
        print(
            f"no {args.results}/<device>/benchmark.json: run `nox -s bench` (or python -m bench)",
            file=sys.stderr,
        )
        return 1
    runs = [load_run(p) for p in paths]
    fits: dict[str, dict[str, dict[str, PowerLawFit | None]]] = {}
    written = []
    for run in runs:
        out = run.path.parent
        fits[run.device] = {s: plot_sweep(run, s, out) for s in ("N", "M", "b", "d")}
        fits[run.device]["collapse"] = plot_collapse(run, out)
        written += [out / f"{name}.png" for name in FIGURES if (out / f"{name}.png").exists()]
        print(f"\n{run.device}: {run.caption}")
        for sweep in ("N", "M", "b", "d"):
            for impl, fit in fits[run.device][sweep].items():
                if fit is not None:
                    print(f"  timing exponent in {sweep:<2} {impl:<14} {fit.label()}")
        for impl, fit in fits[run.device]["collapse"].items():
            if fit is not None:
                print(f"  timing exponent in work {impl:<14} {fit.label()}")
    checks = check_work_exponents(runs)
    print("\nwork-count exponents (checked):")
    for c in checks:
        got = f"{c.fit.exponent:.4f}" if c.fit else "no data"
        verdict = "ok" if c.passed else "FAIL"
        print(f"  {c.name}: {got} (expected {c.expected:g} ± {c.tolerance:g}) {verdict}")
    summary = args.results / "SUMMARY.md"
    summary.write_text(summary_markdown(runs, fits, checks))
    print("\nplots (PNG and SVG):")
    for p in written:
        print(f"  {p}")
    print(f"summary table: {summary}")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
