"""``python -m bench.plots``: the cost model, figures and the report from the sweep JSON.

Reads ``<results>/<device>/benchmark.json`` (written by ``python -m bench``) for every device
present, fits each implementation's cost model over all its sweeps (:mod:`bench.cost_model`) and
writes, per device, ``runtime_vs_N``, ``runtime_vs_M``, ``runtime_vs_b``, ``runtime_vs_d`` and
``collapse`` as PNG and SVG and ``model.json`` (the fitted model, its quality and every point's
prediction), plus ``<results>/SUMMARY.md`` (:mod:`bench.report`).

Timings are the fastest round of each case (the one least disturbed by other load). The
work-count exponents are deterministic and are checked: the programme's energies
``N + sum_f b_f (b_f - 1)`` must grow like ``N**(1 +- 0.05)`` at fixed ``b`` and dense
attention's like ``N**2``; the exit status is 1 when a check fails. Points the cost model misses
are reported, never failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .cost_model import MODELS, TARGET, CostModel, fit_model
from .records import Record, Run, load_run
from .report import (
    SWEEP_WORDS,
    check_work_exponents,
    cpu_timed,
    fixed_text,
    model_json,
    series_fit,
    summary_markdown,
)

__all__ = ["CAPTIONS", "FIGURES", "fit_models", "main", "plot_collapse", "plot_sweep"]

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
TERM_COLORS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "0.4")
FIGURES = ("runtime_vs_N", "runtime_vs_M", "runtime_vs_b", "runtime_vs_d", "collapse")
CAPTIONS = {
    "runtime_vs_N": "Time per call against the number of leaves N (balanced trees, fixed b), "
    "for hsa_fast, dense SDPA and the float64 reference: measurements (markers), the cost "
    "model's predictions (solid lines) and hsa_fast's terms (dotted); hollow circles are "
    "hsa_fast's user CPU time. Where the solid lines of hsa_fast and SDPA cross is the "
    "predicted crossover.",
    "runtime_vs_M": "Time per call against the number of families M at fixed N and b (packed "
    "documents, the rest one-leaf trees), with the model and its terms; the dash-dotted line "
    "is dense SDPA at the same N.",
    "runtime_vs_b": "Time per call against the branching b at fixed N (balanced trees), with "
    "the model and its terms: the dotted lines show which work makes small b and large b slow.",
    "runtime_vs_d": "Time per call against the head dimension d at fixed N, with the model "
    "and its terms.",
    "collapse": "Every measured case against the cost model's prediction, all sweeps and "
    f"implementations; the diagonal is a perfect prediction, the band ±{TARGET:.0%}.",
}


def fit_models(run: Run) -> dict[str, CostModel]:
    """Each implementation's cost model fitted on ``run`` (where its records carry the counts)."""
    out = {}
    for impl in MODELS:
        model = fit_model(impl, run.records)
        if model is not None:
            out[impl] = model
    return out


# ---------------------------------------------------------------------------------- figures
def _modelled(model: CostModel | None, records: list[Record]) -> bool:
    return model is not None and all(r in model.records for r in records)


def _plot_series(ax: Any, records: list[Record], sweep: str, model: CostModel | None) -> None:
    """Measured points and, where the model covers them, its predictions (and for hsa_fast its
    terms)."""
    records = sorted(records, key=lambda r: r.x(sweep))
    xs = np.array([r.x(sweep) for r in records], dtype=float)
    style = IMPL_STYLE[records[0].impl]
    fixed = fixed_text(records, sweep)
    ax.plot(
        xs,
        [r.time for r in records],
        linestyle="none",
        marker=style["marker"],
        color=style["color"],
        markersize=6,
        label=f"{style['label']}{f' ({fixed})' if fixed else ''}, measured",
    )
    if not _modelled(model, records):
        return
    pred = model.predict(records)
    err = np.abs(pred / [r.time for r in records] - 1)
    ax.plot(
        xs,
        pred,
        color=style["color"],
        linewidth=1.6,
        label=f"{style['label']}, model ({int(np.sum(err <= TARGET))} of {len(records)} "
        f"within ±{TARGET:.0%})",
    )
    if records[0].impl != "hsa_fast":
        return
    parts = model.contributions(records)
    for j, term in enumerate(model.terms):
        if model.fit.coef[j] > 0:
            ax.plot(
                xs,
                parts[:, j],
                color=TERM_COLORS[j % len(TERM_COLORS)],
                linestyle=":",
                linewidth=1.3,
                label=f"  term: {term.short} ({term.counts})",
            )


def _cpu_time_series(ax: Any, records: list[Record]) -> None:
    """The programme's user CPU time per call (hollow markers), where it can be read."""
    records = sorted(cpu_timed(records), key=lambda r: r.n)
    fit = series_fit(records, "N", "cpu_user")
    if fit is None:
        return
    style = IMPL_STYLE["hsa_fast"]
    ax.plot(
        [r.n for r in records],
        [r.cpu_user for r in records],
        linestyle="none",
        marker=style["marker"],
        markerfacecolor="none",
        color=style["color"],
        markersize=8,
        label=f"hsa_fast.hsa, user CPU time per call (slope {fit.label()})",
    )


def _dense_baseline(ax: Any, run: Run, programme: list[Record]) -> None:
    """SDPA of the ``N`` sweep at the programme's fixed ``N`` (and ``d``, heads), a line."""
    ns, ds = {r.n for r in programme}, {r.d for r in programme}
    if len(ns) != 1 or len(ds) != 1:
        return
    n, d, heads = ns.pop(), ds.pop(), programme[0].heads
    match = [r for r in run.select("N", "sdpa") if (r.n, r.d, r.heads) == (n, d, heads)]
    if not match:
        return
    ax.axhline(
        match[0].time,
        color=IMPL_STYLE["sdpa"]["color"],
        linestyle="-.",
        linewidth=1.2,
        label=f"dense SDPA at N={n:,}, d={d} (no tree), measured",
    )


def _finish(
    ax: Any,
    fig: Any,
    title: str,
    labels: tuple[str, str],
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
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=7, frameon=False)
    fig.supxlabel(run.caption, fontsize=7.5, color="0.35")
    for ext in ("png", "svg"):
        fig.savefig(out / f"{name}.{ext}", dpi=150 if ext == "png" else None)


def _new_figure() -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 7.6), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.12)
    return fig, ax


def plot_sweep(run: Run, sweep: str, out: Path, models: Mapping[str, CostModel]) -> bool:
    """``runtime_vs_<sweep>``: each implementation measured and modelled, hsa_fast's terms,
    the dense baseline. ``False`` (nothing written) when the run has no such sweep."""
    import matplotlib.pyplot as plt

    records = run.select(sweep)
    if not records:
        return False
    fig, ax = _new_figure()
    for impl in IMPL_STYLE:
        series = [r for r in records if r.impl == impl]
        if series:
            _plot_series(ax, series, sweep, models.get(impl))
    programme = [r for r in records if r.impl == "hsa_fast"]
    if programme and sweep == "N":
        _cpu_time_series(ax, programme)
    if programme and sweep in ("M", "b"):
        _dense_baseline(ax, run, programme)
    titles = {
        "N": "Runtime against leaves N (balanced trees, fixed b)",
        "M": "Runtime against families M (fixed N and b; packed documents)",
        "b": "Runtime against branching b (balanced trees, fixed N)",
        "d": "Runtime against head dimension d (fixed N, b)",
    }
    heads = sorted({r.heads for r in records})
    title = f"{titles[sweep]}\n{run.device}, {'/'.join(map(str, heads))} heads, float32"
    title += " (reference float64)" if any(r.impl == "hsa_reference" for r in records) else ""
    title += "; lines: cost model fitted over all sweeps"
    ticks = sorted({r.x(sweep) for r in records}) if sweep in ("b", "d") else None
    key, xlabel = SWEEP_AXIS[sweep]
    labels = (xlabel, run.measure_text)
    _finish(ax, fig, title, labels, run, out, f"runtime_vs_{key}", ticks)
    plt.close(fig)
    return True


def plot_collapse(run: Run, out: Path, models: Mapping[str, CostModel]) -> bool:
    """Measured time against the model's prediction, every sweep and implementation.
    ``False`` (nothing written) without a model."""
    import matplotlib.pyplot as plt

    if not models:
        return False
    fig, ax = _new_figure()
    lo, hi = np.inf, 0.0
    for impl, model in models.items():
        style = IMPL_STYLE[impl]
        pred = model.predict(model.records)
        for sweep in ("N", "M", "b", "d"):
            idx = [i for i, r in enumerate(model.records) if r.sweep == sweep]
            if not idx:
                continue
            ys = [model.records[i].time for i in idx]
            ax.plot(
                pred[idx],
                ys,
                linestyle="none",
                marker=SWEEP_MARKER[sweep],
                color=style["color"],
                markersize=6,
                alpha=0.85,
                label=f"{style['label']}, {SWEEP_WORDS[sweep]} sweep",
            )
            lo, hi = min(lo, *pred[idx], *ys), max(hi, *pred[idx], *ys)
    grid = np.geomspace(lo / 1.5, hi * 1.5, 50)
    ax.plot(grid, grid, color="black", linewidth=1.0, label="measured = predicted")
    ax.fill_between(
        grid,
        grid * (1 - TARGET),
        grid * (1 + TARGET),
        color="0.5",
        alpha=0.18,
        label=f"±{TARGET:.0%}",
    )
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(grid[0], grid[-1])
    quality = "; ".join(f"{impl} {m.within}/{len(m.records)}" for impl, m in models.items())
    title = (
        "Measured against predicted time: every sweep on one line\n"
        f"{run.device}; points within ±{TARGET:.0%}: {quality}"
    )
    labels = (
        "predicted time per call (s): cost model, one fit per implementation over all sweeps",
        f"measured {run.measure_text}",
    )
    _finish(ax, fig, title, labels, run, out, "collapse")
    plt.close(fig)
    return True


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
    models: dict[str, dict[str, CostModel]] = {}
    written = []
    for run in runs:
        out = run.path.parent
        print(f"\n{run.device}: {run.caption}")
        models[run.device] = fit_models(run)
        for sweep in ("N", "M", "b", "d"):
            if plot_sweep(run, sweep, out, models[run.device]):
                written.append(out / f"runtime_vs_{sweep}.png")
        if plot_collapse(run, out, models[run.device]):
            written.append(out / "collapse.png")
        (out / "model.json").write_text(json.dumps(model_json(run, models[run.device]), indent=1))
        written.append(out / "model.json")
        for impl, model in models[run.device].items():
            print(
                f"  cost model, {impl}: {model.within} of {len(model.records)} points within "
                f"±{TARGET:.0%}, rms relative error {model.fit.rms_relative_error:.1%}"
            )
            for r, e in model.outside:
                print(f"    outside: {r.label}: {e:+.0%}")
    checks = check_work_exponents(runs)
    print("\nwork-count exponents (checked):")
    for c in checks:
        got = f"{c.fit.exponent:.4f}" if c.fit else "no data"
        verdict = "ok" if c.passed else "FAIL"
        print(f"  {c.name}: {got} (expected {c.expected:g} ± {c.tolerance:g}) {verdict}")
    summary = args.results / "SUMMARY.md"
    captions = {name: CAPTIONS[name] for name in FIGURES}
    summary.write_text(summary_markdown(runs, models, checks, captions))
    print("\nwritten:")
    for p in written:
        print(f"  {p}")
    print(f"summary: {summary}")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
