"""The benchmark tooling: power-law fits, sweep shapes, work counts and the plots' checks.

No test here times anything: work counts are exact, fits are checked on synthetic data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import plots
from bench.cases import PROFILES, cases
from bench.fit import fit_power_law, t_cdf, t_quantile
from bench.shapes import balanced_work, build, dense_work, programme_work
from hsa_ref import Hierarchy

# ----------------------------------------------------------------------------------- fitting

# Two-sided 95% points of Student's t (standard tables).
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 5: 2.5706, 7: 2.3646, 10: 2.2281, 30: 2.0423}


@pytest.mark.parametrize(("df", "expected"), sorted(T_975.items()))
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_t_cdf_limits() -> None:
    assert t_cdf(0.0, 3) == 0.5
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(1.96, 1e6) == pytest.approx(0.9750021, abs=1e-6)  # the normal limit
    assert t_cdf(-2.0, 5) == pytest.approx(1 - t_cdf(2.0, 5), abs=1e-14)


# Closed forms of the t distribution that do not go through the series in bench.fit, each written
# in a form that keeps its digits in the lower tail: df -> (P(T <= -t) for t >= 0, the p-quantile
# for p < 1/2).
CLOSED_FORMS = {
    1: (
        lambda t: math.atan2(1.0, t) / math.pi,
        lambda p: -1.0 / math.tan(math.pi * p) if p < 0.25 else math.tan(math.pi * (p - 0.5)),
    ),
    2: (
        lambda t: 1.0 / (math.hypot(t, math.sqrt(2)) * (math.hypot(t, math.sqrt(2)) + t)),
        lambda p: (2 * p - 1) / math.sqrt(2 * p * (1 - p)),
    ),
}
TAIL_T = [0.0, 1e-9, 1e-3, 0.3, 1.0, 2.0, 7.5, 40.0, 1e3, 1e8]
TAIL_P = [1e-300, 1e-12, 1e-6, 1e-3, 0.025, 0.1, 0.25, 0.4, 0.5 - 2**-30]


def closed_form_errors(cdf, quantile) -> tuple[float, float]:
    """Largest relative errors of ``cdf`` and ``quantile`` against :data:`CLOSED_FORMS`."""
    cdf_err = quantile_err = 0.0
    for df, (lower, ppf) in CLOSED_FORMS.items():
        for t in TAIL_T:
            for got, want in ((cdf(-t, df), lower(t)), (cdf(t, df), 1 - lower(t))):
                cdf_err = max(cdf_err, abs(got - want) / want)
        for p in TAIL_P:
            quantile_err = max(quantile_err, abs(quantile(p, df) / ppf(p) - 1))
    return cdf_err, quantile_err


def test_t_distribution_matches_closed_forms() -> None:
    cdf_err, quantile_err = closed_form_errors(t_cdf, t_quantile)
    assert cdf_err <= 1e-14
    assert quantile_err <= 1e-14


def test_closed_form_check_rejects_a_perturbed_t_distribution() -> None:
    off_by_one = closed_form_errors(
        lambda t, df: t_cdf(t, df + 1), lambda p, df: t_quantile(p, df + 1)
    )
    assert min(off_by_one) > 1e-3
    nudged = closed_form_errors(
        lambda t, df: t_cdf(t, df) * (1 + 1e-12), lambda p, df: t_quantile(p, df) * (1 + 1e-12)
    )
    assert min(nudged) > 1e-14


def scipy_errors(cdf, quantile) -> tuple[float, float]:
    """Largest absolute CDF and relative quantile errors against ``scipy.stats.t``."""
    stats = pytest.importorskip("scipy.stats")
    # Away from t = 0, where scipy's own df = 1 CDF loses digits.
    ts = np.concatenate([-np.geomspace(0.05, 1e4, 60), np.geomspace(0.05, 1e4, 60)])
    ps = [1e-9, 1e-4, 0.005, 0.025, 0.1, 0.3, 0.6, 0.9, 0.975, 0.995, 1 - 1e-4]
    cdf_err = quantile_err = 0.0
    for df in [1, 2, 3, 4, 5, 6, 7, 10, 15, 30]:
        want = stats.t.cdf(ts, df)
        cdf_err = max(
            cdf_err, max(abs(cdf(float(t), df) - w) for t, w in zip(ts, want, strict=True))
        )
        want = stats.t.ppf(ps, df)
        quantile_err = max(
            quantile_err, max(abs(quantile(p, df) / w - 1) for p, w in zip(ps, want, strict=True))
        )
    return cdf_err, quantile_err


def test_t_distribution_matches_scipy() -> None:
    cdf_err, quantile_err = scipy_errors(t_cdf, t_quantile)
    assert cdf_err <= 1e-15
    assert quantile_err <= 1e-13


def test_scipy_check_rejects_a_perturbed_t_distribution() -> None:
    off_by_one = scipy_errors(lambda t, df: t_cdf(t, df + 1), lambda p, df: t_quantile(p, df + 1))
    assert min(off_by_one) > 1e-3
    nudged = scipy_errors(
        lambda t, df: t_cdf(t, df) + 1e-14, lambda p, df: t_quantile(p, df) * (1 + 1e-12)
    )
    assert min(nudged) > 1e-14


def test_t_quantile_is_odd_and_inverts_the_cdf() -> None:
    for df in [1, 3, 8, 25]:
        for p in [2**-40, 2**-10, 3 / 128, 0.3125, 0.5 - 2**-20]:  # 1 - p is exact for these
            t = t_quantile(p, df)
            assert t_quantile(1 - p, df) == -t
            assert t_cdf(t, df) == pytest.approx(p, rel=1e-13)
    assert t_quantile(0.5, 4) == 0.0
    assert t_quantile(1e-320, 1) == -math.inf  # beyond the largest double: -1 / (pi p)
    assert t_cdf(math.inf, 2) == 1.0
    assert t_cdf(-math.inf, 2) == 0.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: t_cdf(1.0, 2.5), ValueError, "whole number"),
        (lambda: t_cdf(1.0, 0), ValueError, "whole number"),
        (lambda: t_cdf(1.0, math.inf), ValueError, "whole number"),
        (lambda: t_cdf(math.nan, 3), ValueError, "NaN"),
        (lambda: t_cdf("1", 3), TypeError, "t must be a real number"),
        (lambda: t_cdf(1.0, "3"), TypeError, "df must be a real number"),
        (lambda: t_quantile(1.0, 3), ValueError, "p must lie"),
        (lambda: t_quantile(0.9, -1), ValueError, "whole number"),
    ],
)
def test_bad_t_input_raises(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(("exponent", "prefactor"), [(1.0, 3e-7), (2.0, 1e-9), (-0.5, 4.0)])
def test_exact_power_law_is_recovered(exponent: float, prefactor: float) -> None:
    x = np.geomspace(1e3, 1e6, 7)
    fit = fit_power_law(x, prefactor * x**exponent)
    assert fit.exponent == pytest.approx(exponent, abs=1e-12)
    assert fit.prefactor == pytest.approx(prefactor, rel=1e-9)
    assert fit.ci[0] == pytest.approx(exponent, abs=1e-9)
    assert fit.ci[1] == pytest.approx(exponent, abs=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit(2e3) == pytest.approx(prefactor * 2e3**exponent, rel=1e-9)


def test_interval_is_the_textbook_one() -> None:
    rng = np.random.default_rng(1)
    x = np.geomspace(10, 1e5, 9)
    y = 2.0 * x**1.3 * np.exp(rng.normal(0, 0.2, x.size))
    fit = fit_power_law(x, y)
    design = np.column_stack([np.ones(x.size), np.log(x)])
    coef, rss, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    cov = rss[0] / (x.size - 2) * np.linalg.inv(design.T @ design)
    assert fit.exponent == pytest.approx(coef[1], abs=1e-12)
    assert fit.stderr == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-9)
    assert fit.half_width == pytest.approx(T_975[7] * fit.stderr, rel=1e-4)


def test_interval_covers_the_true_exponent_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2025)
    x = np.geomspace(1e3, 1e6, 6)
    trials = 1000
    hits = 0
    for _ in range(trials):
        y = 1e-6 * x**1.1 * np.exp(rng.normal(0, 0.3, x.size))
        lo, hi = fit_power_law(x, y).ci
        hits += lo <= 1.1 <= hi
    # Binomial(1000, 0.95) has standard deviation 0.0069: allow four of them.
    assert abs(hits / trials - 0.95) < 0.028


def test_two_points_have_no_interval() -> None:
    fit = fit_power_law([1.0, 10.0], [2.0, 200.0])
    assert fit.exponent == pytest.approx(2.0)
    assert math.isnan(fit.ci[0])
    assert fit.label() == "2.00"


@pytest.mark.parametrize(
    ("x", "y"),
    [([1.0], [1.0]), ([1.0, 2.0], [1.0, 0.0]), ([1.0, 1.0], [1.0, 2.0]), ([1, 2], [1, 2, 3])],
)
def test_bad_fit_input_raises(x: list[float], y: list[float]) -> None:
    with pytest.raises(ValueError, match=r"fit needs|must be 1-D"):
        fit_power_law(x, y)


# ----------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("b", [2, 3, 4, 7, 16, 64])
def test_balanced_work_mirrors_the_hierarchy(b: int) -> None:
    for n in (1, 2, 5, 16, 17, 100, 255, 256, 1000, 4096):
        h = Hierarchy.balanced(n, b)
        bf = h.branching[n:]
        assert h.num_energies == n + int((bf * (bf - 1)).sum())
        assert balanced_work(n, b) == h.num_energies


@pytest.mark.parametrize(("n", "b", "trees"), [(64, 4, 1), (64, 4, 4), (4096, 16, 16), (300, 3, 7)])
def test_packed_shape(n: int, b: int, trees: int) -> None:
    h = build("packed", n, b, trees)
    assert h.num_leaves == n
    assert h.num_families == trees * (b + 1)
    assert h.num_trees == trees + n - trees * b * b
    assert set(h.branching[n:].tolist()) == {b}
    assert h.num_energies == n + h.num_families * b * (b - 1)
    w = programme_work(h, d_k=8, d_v=4, heads=2)
    assert w.flops == 2 * 2 * 12 * (w.energies + n + h.num_families)


def test_packed_shape_rejects_too_many_trees() -> None:
    with pytest.raises(ValueError, match="trees"):
        build("packed", 100, 4, 7)


def test_programme_work_matches_hsa_fast_layout() -> None:
    """The energies counted for the sweeps are the real slots of the programme's buckets."""
    import torch

    hsa_fast = pytest.importorskip("hsa_fast")
    for h in (build("balanced", 1000, 16), build("packed", 600, 4, 20), build("balanced", 77, 3)):
        slots = h.num_leaves
        for bucket in hsa_fast.compile_hierarchy(h).up:
            real = torch.isfinite(bucket.log_size).sum(1)
            slots += int((real * (real - 1)).sum())
        assert programme_work(h, d_k=4, d_v=4, heads=1).energies == slots


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_work_exponents_of_every_profile(profile: str) -> None:
    p = PROFILES[profile]
    n = np.array(p.n_fast)
    prog = fit_power_law(n, [balanced_work(int(x), 16) for x in n])
    assert abs(prog.exponent - 1) <= 0.05
    nd = np.array(p.n_dense)
    dense = fit_power_law(nd, [dense_work(int(x), d_k=64, d_v=64, heads=8).energies for x in nd])
    assert dense.exponent == pytest.approx(2.0, abs=1e-12)


def test_work_grows_linearly_in_m_at_fixed_n_and_b() -> None:
    n, b = 4096, 16
    ms, es = [], []
    for t in (1, 2, 4, 8, 16):
        h = build("packed", n, b, t)
        ms.append(h.num_families)
        es.append(h.num_energies - n)
    assert fit_power_law(ms, es).exponent == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cases_are_well_formed(profile: str, device: str) -> None:
    cs = cases(profile, device)
    assert len({c.id for c in cs}) == len(cs)
    assert {c.sweep for c in cs} == {"N", "M", "b", "d"}
    assert (device == "cpu") == any(c.impl == "hsa_reference" for c in cs)
    p = PROFILES[profile]
    dense_n = {c.n for c in cs if c.impl == "sdpa" and c.d == 64}
    assert p.fixed_n_fast in dense_n  # the dense baseline of the M and b sweeps
    for c in cs:
        if c.shape == "packed":
            assert c.trees * c.b * c.b <= c.n


# ----------------------------------------------------------------------------------- plots


def _fake_benchmark(case, seconds: float) -> dict:
    h = build(case.shape, case.n, case.b, case.trees)
    if case.impl == "sdpa":
        work = dense_work(case.n, d_k=case.d, d_v=case.d, heads=case.heads)
    else:
        work = programme_work(h, d_k=case.d, d_v=case.d, heads=case.heads)
    dense = dense_work(case.n, d_k=case.d, d_v=case.d, heads=case.heads)
    extra = {
        "sweep": case.sweep,
        "impl": case.impl,
        "N": case.n,
        "M": 0 if case.impl == "sdpa" else h.num_families,
        "b": 0 if case.impl == "sdpa" else h.max_branching,
        "d": case.d,
        "heads": case.heads,
        "dtype": case.dtype,
        "device": "cpu",
        "energies": work.energies,
        "flops": work.flops,
        "dense_flops": dense.flops,
    }
    stats = {"min": seconds, "median": seconds * 1.1, "rounds": 3}
    return {"name": case.id, "extra_info": extra, "stats": stats}


def test_plots_from_synthetic_runs(tmp_path, capsys) -> None:
    benches = []
    for c in cases("quick", "cpu"):
        w = _fake_benchmark(c, 1.0)
        flops = w["extra_info"]["dense_flops" if c.impl == "sdpa" else "flops"]
        w["stats"]["min"] = 2e-2 + flops / 2e10  # overhead plus a fixed rate
        w["extra_info"].update(cpu_user_s=0.9 * w["stats"]["min"], cpu_sys_s=1e-4)
        benches.append(w)
    info = {"hsa_bench": {"device": "cpu", "torch": "x", "date": "2000-01-01", "profile": "t"}}
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "benchmark.json").write_text(
        json.dumps({"machine_info": info, "benchmarks": benches, "datetime": "2000-01-01"})
    )
    assert plots.main(["--results", str(tmp_path)]) == 0
    for name in plots.FIGURES:
        for ext in ("png", "svg"):
            assert (tmp_path / "cpu" / f"{name}.{ext}").stat().st_size > 0
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "| N | hsa_fast |" in summary
    assert "user CPU time per call" not in summary  # a plot label, not a table entry
    fast_n = next(line for line in summary.splitlines() if line.startswith("| N | hsa_fast |"))
    assert fast_n.count("[") == 2  # timing and user-CPU-time exponents, each with an interval
    assert "FAIL" not in summary
    assert str(tmp_path / "SUMMARY.md") in capsys.readouterr().out

    # A programme whose energies grew like N**2 fails the work-count check.
    for w in benches:
        x = w["extra_info"]
        if x["impl"] == "hsa_fast" and x["sweep"] == "N":
            x["energies"] = x["N"] ** 2
    (tmp_path / "cpu" / "benchmark.json").write_text(
        json.dumps({"machine_info": info, "benchmarks": benches, "datetime": "2000-01-01"})
    )
    assert plots.main(["--results", str(tmp_path)]) == 1


def test_plots_without_results_fails(tmp_path) -> None:
    assert plots.main(["--results", str(tmp_path)]) == 1


# ----------------------------------------------------------------------------------- memory
def test_memory_baseline_is_the_programme_of_that_revision(tmp_path):
    """bench.memory extracts a revision's programme into a module that runs on today's layout:
    HEAD's programme gives HEAD's output, and the child reports a byte count."""
    import torch

    from bench import memory
    from hsa_fast import compile_hierarchy
    from hsa_fast.programme import hsa_programme

    old = memory.load_programme(memory.baseline_file("HEAD", str(tmp_path)))
    assert old is not hsa_programme
    layout = compile_hierarchy(Hierarchy.balanced(50, 7))
    q, k, v = (torch.randn(1, 50, 4) for _ in range(3))
    torch.testing.assert_close(
        old(q, k, v, layout, scale=0.5, energy="dot"),
        hsa_programme(q, k, v, layout, scale=0.5, energy="dot"),
    )
    result = memory.child({"n": 64, "b": 8, "d": 4, "backward": True})
    assert isinstance(result["extra_bytes"], int)


def test_block_sdpa_times_every_contender_and_prints_the_ratios(capsys):
    """``python -m bench.block_sdpa`` on a tiny case: every contender timed (wall and CPU), one
    table row per programme with both ratios; no timing is asserted."""
    from bench import block_sdpa

    best = block_sdpa.time_case(64, 8, heads=2, d=4, repeats=1)
    assert set(best) == {"hsa", "sdpa", "hsa+backward", "sdpa+backward"}
    assert all(wall > 0 and cpu >= 0 for wall, cpu in best.values())
    assert block_sdpa.main(["--n", "64", "--b", "8", "--heads", "2", "--d", "4", "--repeats", "1",
                            "--baseline", "HEAD"]) == 0  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["current", "HEAD"]
    for row in rows[2:]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == "8"
        for ratio in (cells[4], cells[7]):  # "wall (cpu)"
            wall, cpu = ratio.replace("(", "").replace(")", "").split()
            assert float(wall) > 0
            assert float(cpu) >= 0


# ----------------------------------------------------------------------------------- summary
def test_summary_fails_a_planted_programme(monkeypatch):
    """``python -m bench.summary``: the real programme passes its comparisons with the
    reference; one that returns zeros fails them, and the exit status says so."""
    import io

    import torch

    from bench import summary

    fast = [c for c in summary.CHECKS if c.name.startswith("hsa_fast vs reference, float64")]
    assert len(fast) == 1
    assert all(r.passed for r in summary.run_checks(tuple(fast), stream=io.StringIO()))

    def zeros(q, k, v, h, **kwargs):
        return torch.zeros_like(v)

    monkeypatch.setattr(summary, "hsa", zeros)
    out = io.StringIO()
    (result,) = summary.run_checks(tuple(fast), stream=out)
    assert not result.passed
    assert "FAIL" in out.getvalue()
    monkeypatch.setattr(summary, "run_checks", lambda: [result])
    assert summary.main([]) == 1
