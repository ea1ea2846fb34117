"""The benchmark report: ``SUMMARY.md``, each device's ``model.json`` and the work-count checks.

Written by :mod:`bench.plots` from the sweeps' records (:mod:`bench.records`) and the fitted
cost models (:mod:`bench.cost_model`). The summary says what was run, gives the model one line
per term with the points it explains and misses, the crossover with dense attention (measured
and predicted), the speed-ups of the ``N`` sweep's own measurements, the power-law exponents, a
caption per figure and every measurement next to its prediction. The work-count checks are the
deterministic part: the programme's energies must grow like ``N**(1 +- 0.05)`` at fixed ``b``,
dense attention's like ``N**2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .cost_model import TARGET, CostModel, Crossover, crossover, held_out
from .fit import PowerLawFit, fit_power_law
from .records import Record, Run, threads_text

__all__ = [
    "MODEL_RESULTS_HEADER",
    "RESULTS_HEADER",
    "WorkCheck",
    "check_work_exponents",
    "cpu_timed",
    "dense_crossovers",
    "fixed_text",
    "model_json",
    "model_row",
    "results_row",
    "series_fit",
    "summary_markdown",
]

IMPL_LABEL = {
    "hsa_fast": "hsa_fast.hsa",
    "sdpa": "dense SDPA",
    "hsa_reference": "hsa_reference (float64)",
}
SWEEP_WORDS = {
    "N": "leaves N",
    "M": "families M",
    "b": "branching b",
    "d": "head dimension d",
}
PROGRAMME_N_EXPONENT = (1.0, 0.05)
DENSE_N_EXPONENT = (2.0, 0.05)


CPU_TIME_FLOOR_S = 0.01
"""User CPU times are fitted only for calls at least this long: the process's CPU clock advances
in ticks, which can make a call of a millisecond read as zero or as a whole tick."""


def cpu_timed(records: Sequence[Record]) -> list[Record]:
    """The CPU runs' records whose user CPU time can be read: calls of at least
    :data:`CPU_TIME_FLOOR_S` (wall time) with a positive user CPU time."""
    return [
        r
        for r in records
        if r.device == "cpu" and r.time_min >= CPU_TIME_FLOOR_S and (r.cpu_user or 0) > 0
    ]


def series_fit(records: Sequence[Record], sweep: str, y: str = "time") -> PowerLawFit | None:
    """Power law of ``y`` (``time``, ``wall``, ``cpu_user``, ``energies`` or ``flops``) against
    the swept quantity; ``None`` with fewer than two distinct sizes. ``cpu_user`` takes
    :func:`cpu_timed` ``(records)``."""
    if y == "cpu_user":
        records = cpu_timed(records)
    xs = [r.x(sweep) for r in records]
    if len(set(xs)) < 2:
        return None
    if y == "time":
        ys = [r.time for r in records]
    elif y == "wall":
        ys = [r.time_min for r in records]
    elif y == "cpu_user":
        ys = [r.cpu_user for r in records]
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
                series_fit(prog, "N", "energies"),
                *PROGRAMME_N_EXPONENT,
            )
        )
        checks.append(
            WorkCheck(
                f"{run.device}: dense energies vs N (sdpa)",
                series_fit(run.select("N", "sdpa"), "N", "energies"),
                *DENSE_N_EXPONENT,
            )
        )
    return checks


# ---------------------------------------------------------------------------------- numbers
def _fmt_int(x: float) -> str:
    return f"{int(x):,}"


def _ms(t: float) -> str:
    return f"{t * 1e3:,.1f}" if t < 10 else f"{t * 1e3:,.0f}"


_PREFIXES = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"), (1e-12, "ps"), (1e-15, "fs"))


def _si(seconds: float, interval: tuple[float, float] | None = None) -> str:
    """``"0.49 ms [0.33, 0.66]"``: a cost per unit in the prefix that suits it."""
    if seconds <= 0:
        return "0 (held at zero)"
    factor, unit = next((f, u) for f, u in _PREFIXES if seconds >= f or f == 1e-15)
    text = f"{seconds / factor:.3g} {unit}"
    if interval is not None and not math.isnan(interval[0]):
        text += f" [{interval[0] / factor:.3g}, {interval[1] / factor:.3g}]"
    return text


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%"


def fixed_text(records: Sequence[Record], sweep: str) -> str:
    """What is held fixed along a series, e.g. ``N=16,384, b=16, d=64``."""
    parts = []
    for key, get in (("N", lambda r: r.n), ("b", lambda r: r.b), ("d", lambda r: r.d)):
        if key == sweep or (key == "b" and records[0].impl == "sdpa"):
            continue
        values = sorted({get(r) for r in records})
        if len(values) == 1:
            parts.append(f"{key}={_fmt_int(values[0])}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------- dense
def _n_sweep_pairs(run: Run) -> list[tuple[Record, Record]]:
    """``(hsa_fast, sdpa)`` records of the ``N`` sweep at equal ``N``, ``d`` and heads."""
    dense = {(r.n, r.d, r.heads): r for r in run.select("N", "sdpa")}
    pairs = [(r, dense.get((r.n, r.d, r.heads))) for r in run.select("N", "hsa_fast")]
    return sorted(((f, s) for f, s in pairs if s is not None), key=lambda p: p[0].n)


def dense_crossovers(
    run: Run, models: Mapping[str, CostModel], *, wall: bool = False
) -> tuple[Crossover | None, Crossover | None]:
    """Where ``hsa_fast`` starts to beat dense SDPA along the ``N`` sweep: ``(measured,
    predicted)``, both at the sizes where both ran (the prediction from both models). Measured
    on ``Record.time``, or on the wall time with ``wall=True``."""
    pairs = _n_sweep_pairs(run)
    if not pairs:
        return None, None
    sizes = [f.n for f, _ in pairs]
    if wall:
        fast_t, dense_t = [f.time_min for f, _ in pairs], [s.time_min for _, s in pairs]
    else:
        fast_t, dense_t = [f.time for f, _ in pairs], [s.time for _, s in pairs]
    measured = crossover(sizes, fast_t, dense_t)
    fast, dense = models.get("hsa_fast"), models.get("sdpa")
    if fast is None or dense is None:
        return measured, None
    try:
        predicted = crossover(
            sizes, fast.predict([f for f, _ in pairs]), dense.predict([s for _, s in pairs])
        )
    except (KeyError, ValueError):  # a point without counts, or a zero prediction
        predicted = None
    return measured, predicted


# ---------------------------------------------------------------------------------- model.json
def model_json(run: Run, models: Mapping[str, CostModel]) -> dict[str, Any]:
    """The fitted models of ``run``, their quality and every point's prediction (JSON-ready)."""
    measured, predicted = dense_crossovers(run, models)
    out: dict[str, Any] = {
        "format": "hsa-bench-model/1",
        "device": run.device,
        "machine": run.info,
        "source": str(run.path),
        "measure": run.measure_text,
        "target_relative_error": TARGET,
        "fit": "least squares on (predicted - measured) / measured, coefficients >= 0, "
        "95% Student-t intervals on the terms left positive",
        "models": {},
        "crossover_with_dense": {
            "measured": None if measured is None else asdict(measured),
            "predicted": None if predicted is None else asdict(predicted),
        },
        "points": [],
    }
    for impl, model in models.items():
        out["models"][impl] = {
            "terms": [
                {
                    "name": t.name,
                    "counts": t.counts,
                    "seconds_per_unit": float(c),
                    "interval": None if math.isnan(ci[0]) else [float(ci[0]), float(ci[1])],
                }
                for t, c, ci in zip(model.terms, model.fit.coef, model.fit.ci, strict=True)
            ],
            "points": len(model.records),
            "within_target": model.within,
            "rms_relative_error": model.fit.rms_relative_error,
            "leave_one_out_relative_errors": [float(e) for e in held_out(model).errors],
        }
        contributions = model.contributions(model.records)
        for r, row, err in zip(
            model.records, contributions, model.fit.relative_residuals, strict=True
        ):
            out["points"].append(
                {
                    "sweep": r.sweep,
                    "impl": r.impl,
                    "N": r.n,
                    "M": r.m,
                    "b": r.b,
                    "d": r.d,
                    "heads": r.heads,
                    "measured_s": r.time,
                    "wall_s": r.time_min,
                    "predicted_s": float(row.sum()),
                    "relative_error": float(err),
                    "terms_s": {t.short: float(x) for t, x in zip(model.terms, row, strict=True)},
                }
            )
    return out


# ---------------------------------------------------------------------------------- markdown
def _what_was_run(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| device | machine | cores | torch threads | torch | numpy | Python | profile | date "
        "| allocator |",
        "| --- | --- | ---: | ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        i = run.info
        malloc = i.get("malloc_keeps_freed_memory")
        allocator = {True: "glibc keeps freed memory", False: "glibc defaults"}.get(malloc, "?")
        lines.append(
            f"| {run.device} | {i.get('accelerator', '?')} | {i.get('cpu_count', '?')} | "
            f"{i.get('torch_threads', '?')} | {i.get('torch', '?')} | {i.get('numpy', '?')} | "
            f"{i.get('python', '?')} | {i.get('profile', '?')} | {i.get('date', '?')} | "
            f"{allocator} |"
        )
    return lines


def _model_table(models: Mapping[str, CostModel]) -> list[str]:
    lines = [
        "| implementation | term | count | cost per unit [95% CI] "
        "| share of the predicted time (least-most) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for impl, model in models.items():
        parts = model.contributions(model.records)
        shares = parts / parts.sum(axis=1, keepdims=True)
        for j, (t, c, ci) in enumerate(zip(model.terms, model.fit.coef, model.fit.ci, strict=True)):
            share = f"{shares[:, j].min():.0%}-{shares[:, j].max():.0%}" if c > 0 else "-"
            lines.append(f"| {impl} | {t.name} | `{t.counts}` | {_si(float(c), ci)} | {share} |")
    return lines


def _quality(models: Mapping[str, CostModel]) -> list[str]:
    total = sum(len(m.records) for m in models.values())
    within = sum(m.within for m in models.values())
    each = ", ".join(f"{impl} {m.within} of {len(m.records)}" for impl, m in models.items())
    lines = [
        f"**Points within ±{TARGET:.0%} of the model: {within} of {total} "
        f"({within / total:.0%}; {each}).**",
        "",
    ]
    outside = [(impl, r, e) for impl, m in models.items() for r, e in m.outside]
    if outside:
        lines.append("Outside (prediction against measurement):")
        lines.append("")
        lines += [
            f"- {impl}, {r.label}: predicted {_ms(r.time * (1 + e))} ms, measured "
            f"{_ms(r.time)} ms ({_pct(e)})"
            for impl, r, e in outside
        ]
    else:
        lines.append("No point lies outside.")
    lines += [
        "",
        "Each point predicted by the model refitted without it (leave-one-out: how well the "
        "model predicts a case it was not fitted to):",
        "",
        f"| implementation | points | within ±{TARGET:.0%} | worst error |",
        "| --- | ---: | ---: | ---: |",
    ]
    for impl, model in models.items():
        h = held_out(model)
        lines.append(f"| {impl} | {len(h.errors)} | {h.within} | {h.worst:.0%} |")
    return lines


def _explanations(models: Mapping[str, CostModel]) -> list[str]:
    """Per sweep, the term that the model says dominates at each end of the range."""
    lines = []
    for impl, model in models.items():
        for sweep in ("N", "M", "b", "d"):
            recs = sorted((r for r in model.records if r.sweep == sweep), key=lambda r: r.x(sweep))
            if len({r.x(sweep) for r in recs}) < 2:
                continue
            ends = []
            for r in (recs[0], recs[-1]):
                part = model.contributions([r])[0]
                j = int(np.argmax(part))
                ends.append(
                    f"at {sweep} = {r.x(sweep):,}, {model.terms[j].short} "
                    f"({part[j] / part.sum():.0%} of {_ms(part.sum())} ms)"
                )
            lines.append(f"- {impl}, {SWEEP_WORDS[sweep]}: {ends[0]}; {ends[1]}.")
    return lines


def _speedups(run: Run, models: Mapping[str, CostModel]) -> list[str]:
    pairs = _n_sweep_pairs(run)
    if not pairs:
        return []
    fast, dense = models.get("hsa_fast"), models.get("sdpa")
    ds = "/".join(str(d) for d in sorted({f.d for f, _ in pairs}))
    heads = "/".join(str(h) for h in sorted({f.heads for f, _ in pairs}))
    lines = [
        f"Both from the N sweep (balanced trees, b = {pairs[0][0].b}, d = {ds}, {heads} heads); "
        f"times are {run.measure_text}; ratio > 1: hsa_fast is faster.",
        "",
        "| N | hsa_fast (ms) | dense SDPA (ms) | SDPA / hsa_fast, measured | predicted "
        "| in wall time (fastest rounds) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f, s in pairs:
        pred = "-"
        if fast is not None and dense is not None and {f, s} <= {*fast.records, *dense.records}:
            pred = f"{float(dense.predict([s])[0] / fast.predict([f])[0]):,.2f}"
        lines.append(
            f"| {_fmt_int(f.n)} | {_ms(f.time)} | {_ms(s.time)} | {s.time / f.time:,.2f} | "
            f"{pred} | {s.time_min / f.time_min:,.2f} |"
        )
    return lines


def _exponents(run: Run) -> list[str]:
    lines = [
        "| sweep | implementation | fixed | x range | points | exponent of the time per call "
        "[95% CI] | wall-time exponent | work exponent (model flops) |",
        "| --- | --- | --- | --- | ---: | --- | --- | ---: |",
    ]
    for sweep in ("N", "M", "b", "d"):
        for impl in IMPL_LABEL:
            recs = run.select(sweep, impl)
            if not recs:
                continue
            tfit, wfit = series_fit(recs, sweep), series_fit(recs, sweep, "wall")
            work = series_fit(recs, sweep, "flops")
            xs = [r.x(sweep) for r in recs]
            lines.append(
                f"| {sweep} | {impl} | {fixed_text(recs, sweep) or '-'} | "
                f"{_fmt_int(min(xs))}-{_fmt_int(max(xs))} | {len(recs)} | "
                f"{tfit.label() if tfit else '-'} | {wfit.label() if wfit else '-'} | "
                f"{f'{work.exponent:.3f}' if work else '-'} |"
            )
    return lines


def _measurements(run: Run, models: Mapping[str, CostModel]) -> list[str]:
    predicted: dict[Record, float] = {}
    for model in models.values():
        for r, p in zip(model.records, model.predict(model.records), strict=True):
            predicted[r] = float(p)
    lines = [
        "<details><summary>All measurements, with the model's predictions</summary>",
        "",
        f"Time: {run.measure_text}. Wall: fastest and median round. User and system CPU: the "
        "round with the least CPU time.",
        "",
        "| sweep | impl | N | M | b | d | heads | dtype | energies/head | model flops "
        "| time (ms) | predicted (ms) | error | wall, min (ms) | wall, median (ms) | rounds "
        "| user CPU (ms) | system CPU (ms) | operators |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(run.records, key=lambda r: (r.sweep, r.impl, r.n, r.m, r.b, r.d)):
        p = predicted.get(r)
        lines.append(
            f"| {r.sweep} | {r.impl} | {_fmt_int(r.n)} | {_fmt_int(r.m)} | {r.b} | {r.d} | "
            f"{r.heads} | {r.dtype} | {_fmt_int(r.energies)} | {r.work_flops:.3g} | "
            f"{_ms(r.time)} | {_ms(p) if p is not None else '-'} | "
            f"{_pct(p / r.time - 1) if p is not None else '-'} | {_ms(r.time_min)} | "
            f"{_ms(r.time_median)} | {r.rounds} | "
            f"{_ms(r.cpu_user) if r.cpu_user is not None else '-'} | "
            f"{_ms(r.cpu_sys) if r.cpu_sys is not None else '-'} | "
            f"{r.info.get('ops', '-')} |"
        )
    return [*lines, "", "</details>"]


HOW_TO_READ = [
    "- `runtime_vs_N`, `runtime_vs_M`, `runtime_vs_b`, `runtime_vs_d`: time per call against the "
    "swept quantity (time per call as defined above), both axes logarithmic. Markers are "
    "measurements; the solid line of the same "
    "colour is the cost model's prediction for the same cases (one fit per implementation over "
    "all four sweeps, not a fit to this sweep alone). The thin dotted lines split hsa_fast's "
    "prediction into its terms: where one of them runs close to the solid line, that term is "
    "most of the time. The horizontal dash-dotted line in the M and b plots is dense SDPA at "
    "the same N (it has no tree). Hollow circles in the N plot: hsa_fast's user CPU time "
    f"(calls of {CPU_TIME_FLOOR_S * 1e3:.0f} ms or more).",
    "- `collapse`: every measured case against its prediction. A point on the diagonal is "
    f"predicted exactly; the grey band is ±{TARGET:.0%}. Points of all sweeps falling along the "
    "diagonal mean that one set of per-unit costs explains them all.",
]


def summary_markdown(
    runs: Sequence[Run],
    models: Mapping[str, Mapping[str, CostModel]],
    checks: Sequence[WorkCheck],
    figures: Mapping[str, str],
) -> str:
    """The whole of ``SUMMARY.md``; ``models`` per device, ``figures`` name -> caption."""
    lines = [
        "# Benchmark summary",
        "",
        "Written by `python -m bench.plots` from the sweeps' pytest-benchmark JSON "
        "(`python -m bench`).",
        "",
        "## What was run",
        "",
        *_what_was_run(runs),
        "",
        "Each case is one forward call on a batch of one with several heads (`Z` = heads), "
        "float32 (the reference: float64), under `torch.inference_mode()`. Four sweeps vary one "
        "quantity each: leaves N (balanced trees, fixed b), families M (fixed N and b; packed "
        "documents), branching b (balanced, fixed N) and head dimension d (d_k = d_v = d, "
        "`D` = d_k + d_v). Each case is timed over several rounds, after warm-up calls that "
        "last until a call no longer grows the process's memory.",
        "",
        "**Time per call.** On the CPU with one torch thread, the time of a call is its CPU "
        "time: the processor time the benchmark process itself spent on the call (user plus "
        "system time), in the round with the least of it. On a shared machine the wall-clock "
        "time of a call also counts the time it spent waiting for a core while other jobs ran; "
        "its CPU time does not. With several threads (whose CPU times add up over the cores) "
        "and on a GPU, the time of a call is the wall-clock time of its fastest round. The "
        "wall-clock times are listed too, and the speed-ups are given both ways.",
        "",
        "## How to read the plots",
        "",
        *HOW_TO_READ,
        "",
    ]
    for run in runs:
        dev_models = models.get(run.device, {})
        lines += [f"## {run.device}: {run.caption}", "", f"Source: `{run.path}`.", ""]
        if dev_models:
            lines += [
                "### The cost model",
                "",
                "Time per call = the sum of the terms below: each term an exact count of one "
                "kind of work (sizes, the layout's schedule, the operators the call dispatches, "
                "counted while it runs) times a cost per unit. The costs are fitted once per "
                "implementation over the points of all sweeps together, by least squares on the "
                "relative error with non-negative costs; intervals are 95% Student-t intervals "
                "of the terms left positive (a cost held at zero is too small to be seen next to "
                "the others; an interval reaching below zero means that the data cannot tell "
                "that cost from none). Sums run over the layout's buckets (`f` families, each "
                "padded to `w` children) or the forest's trees (`n_t` leaves, `c_t` children, "
                "`m_t` families).",
                "",
                *_model_table(dev_models),
                "",
                *_quality(dev_models),
                "",
                "What the model says, term by term, at each end of every sweep (largest term, "
                "its share of the prediction):",
                "",
                *_explanations(dev_models),
                "",
            ]
        else:
            lines += ["No cost model: this run's records carry no operator counts.", ""]
        measured, predicted = dense_crossovers(run, dev_models)
        wall = dense_crossovers(run, dev_models, wall=True)[0]
        if measured is not None:
            lines += [
                "### Crossover with dense attention",
                "",
                f"hsa_fast is faster than dense SDPA {measured.text()} as measured, and "
                + (
                    f"{predicted.text()} as the two models predict."
                    if predicted is not None
                    else "no prediction (no model for one of them)."
                )
                + (
                    f" In wall-clock time (fastest rounds) it is faster {wall.text()}."
                    if wall is not None and run.measure != "wall"
                    else ""
                ),
                "",
                *_speedups(run, dev_models),
                "",
            ]
        lines += [
            "### Power-law exponents",
            "",
            "Least-squares slopes on log-log axes with 95% t intervals, each over its own "
            "sweep's range. A straight line summarises a sweep only where one term of the "
            "model dominates throughout; the model above says which.",
            "",
            *_exponents(run),
            "",
            "### Figures",
            "",
        ]
        out = run.path.parent
        for name, caption in figures.items():
            if (out / f"{name}.png").exists():
                lines += [f"![{name}]({run.device}/{name}.png)", "", f"*{caption}*", ""]
        lines += ["### Rows for `bench/RESULTS.md`", "", "```", RESULTS_HEADER, results_row(run)]
        lines += ["", MODEL_RESULTS_HEADER, model_row(run, dev_models), "```", ""]
        lines += [*_measurements(run, dev_models), ""]
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
MODEL_RESULTS_HEADER = (
    "| date | machine (threads) | torch | profile "
    f"| points within ±{TARGET:.0%} of the cost model | crossover with SDPA, measured "
    "| crossover, predicted |"
)


def _machine_cells(run: Run) -> str:
    i = run.info
    return (
        f"| {i.get('date', '?')} | {i.get('accelerator', '?')} ({threads_text(i)}) | "
        f"{i.get('torch', '?')} | {i.get('profile', '?')} |"
    )


def results_row(run: Run) -> str:
    """One row of ``bench/RESULTS.md``'s runs (columns of ``RESULTS_HEADER``), in wall time like
    the rows before it; the speed-up is the ``N`` sweep's own, at its largest size where both
    ran."""
    fast = series_fit(run.select("N", "hsa_fast"), "N", "wall")
    cpu = series_fit(run.select("N", "hsa_fast"), "N", "cpu_user")
    dense = series_fit(run.select("N", "sdpa"), "N", "wall")
    pairs = _n_sweep_pairs(run)
    ratio = "-"
    if pairs:
        f, s = pairs[-1]
        ratio = f"{s.time_min / f.time_min:,.1f}x at N={_fmt_int(f.n)}"
    fast_n = run.select("N", "hsa_fast")
    largest = max(fast_n, key=lambda r: r.n) if fast_n else None
    big = f"{largest.time_min:.3g} s at N={_fmt_int(largest.n)}" if largest else "-"
    return (
        f"{_machine_cells(run)} {fast.label() if fast else '-'} | "
        f"{cpu.label() if cpu else '-'} | {dense.label() if dense else '-'} | {big} | {ratio} |"
    )


def model_row(run: Run, models: Mapping[str, CostModel]) -> str:
    """One row of ``bench/RESULTS.md``'s cost-model table (columns of ``MODEL_RESULTS_HEADER``)."""
    total = sum(len(m.records) for m in models.values())
    within = sum(m.within for m in models.values())
    each = ", ".join(f"{impl} {m.within}/{len(m.records)}" for impl, m in models.items())
    share = f"{within} of {total} ({each})" if total else "-"
    measured, predicted = dense_crossovers(run, models)
    return (
        f"{_machine_cells(run)} {share} | {measured.text() if measured else '-'} | "
        f"{predicted.text() if predicted else '-'} |"
    )
