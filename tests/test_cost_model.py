"""The cost model of the benchmarks: exact counts, the fit, and the report written from them.

Nothing here times anything: counts are checked against hand counts, the fit against synthetic
data with known coefficients, and the report against a stored benchmark run
(``tests/data/bench_quick.json``, a quick-profile run) without asserting on its times.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import plots
from bench.cost_model import MODELS, TARGET, crossover, fit_model, held_out
from bench.counts import count_dispatch, schedule_counts
from bench.fit import MAX_TERMS, fit_nonnegative
from bench.records import load_run
from bench.shapes import tree_sums
from hsa_fast import compile_hierarchy, hsa
from hsa_ref import Hierarchy

STORED = Path(__file__).parent / "data" / "bench_quick.json"

# ----------------------------------------------------------------------------------- counts


def test_dispatch_count_matches_a_hand_count() -> None:
    x = torch.ones(3, 4)

    def three_kernels_and_a_view() -> torch.Tensor:
        y = x.add(1)  # 12 elements written
        y.mul_(2)  # 12, in place
        y.t()  # a view: no kernel
        return y.sum()  # 1

    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            count = count_dispatch(three_kernels_and_a_view)
        assert (count.ops, count.views, count.elements) == (4, 1, 25)


@pytest.mark.parametrize(
    ("hierarchy", "expected"),
    [
        # families {0,1} (b=2) and {2,3,4} (b=3) fall in different buckets; the root is a third
        (Hierarchy.from_nested([[0, 1], [2, 3, 4]]), (3, 1, 3, 2 + 3 + 2, 4 + 9 + 4)),
        # four families of four, then the root over them
        (Hierarchy.balanced(16, 4), (2, 1, 5, 16 + 4, 4 * 16 + 16)),
        # b=3 and b=4 share a bucket padded to width 4: 2 * 4 slots, 2 * 16 entries
        (Hierarchy.from_nested([[0, 1, 2], [3, 4, 5, 6]]), (2, 1, 3, 8 + 2, 32 + 4)),
        # three levels of b=2 over 8 leaves: 4 + 2 + 1 families, two depths below the root
        (Hierarchy.balanced(8, 2), (3, 2, 7, 8 + 4 + 2, 16 + 8 + 4)),
        (Hierarchy.from_parents([-1], 1), (0, 0, 0, 0, 0)),
    ],
)
def test_schedule_counts_match_hand_counts(hierarchy: Hierarchy, expected: tuple) -> None:
    c = schedule_counts(compile_hierarchy(hierarchy))
    assert (c.buckets, c.depths, c.families, c.slots, c.block_entries) == expected


def test_schedule_counts_rejects_a_hierarchy() -> None:
    with pytest.raises(TypeError, match="HSALayout"):
        schedule_counts(Hierarchy.balanced(4, 2))


def test_tree_sums_match_a_hand_count() -> None:
    # trees of 4 leaves (3 families, 6 children), 1 leaf, 3 leaves (1 family, 3 children)
    h = Hierarchy.forest(
        [Hierarchy.balanced(4, 2), Hierarchy.balanced(1, 2), Hierarchy.one_family(3)]
    )
    s = tree_sums(h)
    assert s.trees == 3
    assert s.leaves_sq == 16 + 1 + 9
    assert s.children_leaves_sq == 6 * 16 + 0 + 3 * 9
    assert s.families_leaves_sq == 3 * 16 + 0 + 1 * 9
    assert s.trees_nodes == 3 * (8 + 4)


def _programme_ops(h: Hierarchy, heads: int, d: int) -> int:
    q, k, v = (torch.randn(1, heads, h.num_leaves, d) for _ in range(3))
    with torch.inference_mode():
        return count_dispatch(lambda: hsa(q, k, v, h)).ops


def test_programme_operators_follow_the_schedule_not_the_sizes() -> None:
    """The programme's operators are launched per bucket and per depth (how many depends on how
    a bucket reads its children): copies of a tree packed into one forest share its buckets,
    read alike, and its depths, so they dispatch exactly as many operators, and neither the head
    count nor d changes the number."""
    tree = Hierarchy.balanced(27, 3)
    forest = Hierarchy.forest([tree] * 5)
    one, five = (schedule_counts(compile_hierarchy(h)) for h in (tree, forest))
    assert (five.buckets, five.depths) == (one.buckets, one.depths)
    assert five.block_entries == 5 * one.block_entries
    ops = _programme_ops(tree, 2, 8)
    assert ops > 0
    assert _programme_ops(forest, 2, 8) == ops
    assert _programme_ops(tree, 3, 16) == ops
    deeper = Hierarchy.balanced(81, 3)  # one more bucket and depth
    assert _programme_ops(deeper, 2, 8) > ops


# ----------------------------------------------------------------------------------- the fit


def _design(rng: np.random.Generator, points: int, terms: int) -> np.ndarray:
    return rng.uniform(1.0, 100.0, (points, terms)) * np.geomspace(1, 1e6, terms)


def test_fit_recovers_exact_coefficients_and_keeps_a_zero_at_zero() -> None:
    rng = np.random.default_rng(7)
    x = _design(rng, 30, 5)
    true = np.array([2e-3, 0.0, 5e-6, 3e-9, 1e-11])
    fit = fit_nonnegative(x, x @ true)
    np.testing.assert_allclose(fit.coef, true, rtol=1e-9, atol=1e-20)
    assert fit.support == (True, False, True, True, True)
    assert math.isnan(fit.ci[1][0])
    assert fit.dof == 30 - 4
    assert np.abs(fit.relative_residuals).max() < 1e-12
    for c, (lo, hi) in zip(true, fit.ci, strict=True):
        if c > 0:
            assert lo == pytest.approx(c, rel=1e-6)
            assert hi == pytest.approx(c, rel=1e-6)


def test_fit_holds_at_zero_a_term_that_would_fit_negative() -> None:
    x = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0], [1.0, 4.0]])
    y = np.array([4.0, 3.0, 2.0, 1.5])  # falling: the second term's slope would be negative
    fit = fit_nonnegative(x, y)
    assert fit.coef[1] == 0.0
    # with the first term alone, the least relative error is sum(1/y) / sum(1/y**2)
    assert fit.coef[0] == pytest.approx(np.sum(1 / y) / np.sum(1 / y**2), rel=1e-12)


def test_fit_intervals_cover_the_true_coefficients_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2026)
    true = np.array([1e-3, 2e-6, 4e-9])
    trials, hits = 400, np.zeros(3)
    for _ in range(trials):
        x = _design(rng, 12, 3)
        y = x @ true * (1 + rng.normal(0, 0.05, 12))
        fit = fit_nonnegative(x, y)
        hits += [lo <= c <= hi for c, (lo, hi) in zip(true, fit.ci, strict=True)]
    # Binomial(400, 0.95) has standard deviation 0.011: allow four of them
    assert np.all(np.abs(hits / trials - 0.95) < 4 * math.sqrt(0.95 * 0.05 / trials))


def test_fit_matches_scipy_nnls() -> None:
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = _design(rng, 15, 4)
        y = x @ rng.uniform(-1, 1, 4).clip(0) * 1e-6 + rng.uniform(0.5, 1.5, 15) * 1e-3
        fit = fit_nonnegative(x, y)
        a = x / y[:, None]
        ref, _ = optimize.nnls(a, np.ones(len(y)))
        assert np.sum((a @ fit.coef - 1) ** 2) == pytest.approx(
            np.sum((a @ ref - 1) ** 2), rel=1e-9, abs=1e-15
        )


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([[1.0], [2.0]], [1.0], "points, terms"),
        ([[1.0], [-2.0]], [1.0, 2.0], "non-negative x"),
        ([[1.0], [2.0]], [1.0, 0.0], "positive y"),
        ([[1.0], [np.nan]], [1.0, 2.0], "non-negative x"),
        (np.ones((20, MAX_TERMS + 1)), np.ones(20), "terms"),
    ],
)
def test_bad_fit_input_raises(x, y, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_nonnegative(x, y)


# ----------------------------------------------------------------------------------- crossover


def test_crossover_hand_cases() -> None:
    sizes = [64, 128, 256, 512]
    # first is twice as slow at 64 and twice as fast at 128: the crossing is their log midpoint
    c = crossover(sizes, [2.0, 1.0, 1.0, 1.0], [1.0, 2.0, 4.0, 8.0])
    assert c.side == "between"
    assert (c.lo, c.hi) == (64, 128)
    assert c.n == pytest.approx(math.sqrt(64 * 128))
    assert crossover(sizes, [1, 1, 1, 1], [2, 2, 2, 2]).side == "below"
    assert crossover(sizes, [3, 3, 3, 3], [2, 2, 2, 2]).side == "above"
    # faster, slower, then faster for good: the last crossing counts
    late = crossover(sizes, [1, 3, 1, 1], [2, 2, 2, 2])
    assert (late.lo, late.hi) == (128, 256)
    assert "between 128 and 256" in late.text()
    with pytest.raises(ValueError, match="increasing"):
        crossover([2, 1], [1, 1], [1, 1])


# ----------------------------------------------------------------------------------- the model


def _stored_run(tmp_path: Path) -> Path:
    (tmp_path / "cpu").mkdir()
    shutil.copy(STORED, tmp_path / "cpu" / "benchmark.json")
    return tmp_path / "cpu" / "benchmark.json"


def test_every_model_fits_back_known_costs_on_the_stored_cases(tmp_path) -> None:
    """Times made from each model's own terms with chosen costs give those costs back."""
    run = load_run(_stored_run(tmp_path))
    for impl, terms in MODELS.items():
        records = run.select(impl=impl)
        x = np.array([[t.value(r) for t in terms] for r in records])
        true = 1.0 / x.max(axis=0) * np.linspace(0.5, 2.0, len(terms))  # every term matters
        true[1] = 0.0  # and one is absent
        fake = [replace(r, time=float(t)) for r, t in zip(records, x @ true, strict=True)]
        model = fit_model(impl, fake)
        assert model is not None
        np.testing.assert_allclose(model.fit.coef, true, rtol=1e-6, atol=1e-9 * true.max())
        assert model.within == len(fake)
        assert held_out(model).worst < 1e-6


def test_fit_model_needs_the_counts(tmp_path) -> None:
    run = load_run(_stored_run(tmp_path))
    stripped = [replace(r, info={}) for r in run.select(impl="hsa_fast")]
    assert fit_model("hsa_fast", stripped) is None
    with pytest.raises(ValueError, match="no cost model"):
        fit_model("flash", run.records)


# ----------------------------------------------------------------------------------- the report


def test_report_from_the_stored_run(tmp_path, capsys) -> None:
    path = _stored_run(tmp_path)
    run = load_run(path)
    assert plots.main(["--results", str(tmp_path)]) == 0
    for name in plots.FIGURES:
        for ext in ("png", "svg"):
            assert (tmp_path / "cpu" / f"{name}.{ext}").stat().st_size > 0
    model = json.loads((tmp_path / "cpu" / "model.json").read_text())
    assert model["format"] == "hsa-bench-model/1"
    assert set(model["models"]) == set(MODELS)
    assert len(model["points"]) == len(run.records)
    for point in model["points"]:
        assert point["predicted_s"] == pytest.approx(sum(point["terms_s"].values()))
    for impl, m in model["models"].items():
        assert [t["name"] for t in m["terms"]] == [t.name for t in MODELS[impl]]
        assert all(t["seconds_per_unit"] >= 0 for t in m["terms"])
    summary = (tmp_path / "SUMMARY.md").read_text()
    for impl, terms in MODELS.items():
        for t in terms:
            assert f"| {impl} | {t.name} | `{t.counts}` |" in summary
    within = sum(m["within_target"] for m in model["models"].values())
    assert f"Points within ±{TARGET:.0%} of the model: {within} of {len(run.records)}" in summary
    assert "### Crossover with dense attention" in summary
    assert "in the round with least of it" not in summary
    for name, caption in plots.CAPTIONS.items():
        assert f"![{name}](cpu/{name}.png)" in summary
        assert f"*{caption}*" in summary
    assert "FAIL" not in summary
    assert "summary: " in capsys.readouterr().out


def test_speedups_come_from_the_n_sweep_alone(tmp_path) -> None:
    """A faster time for the same N and d in another sweep must not reach the speed-up table."""
    path = _stored_run(tmp_path)
    fast_n = {r.n: r.time for r in load_run(path).select("N", "hsa_fast")}
    data = json.loads(path.read_text())
    planted = 0
    for b in data["benchmarks"]:
        x = b["extra_info"]
        if x["impl"] == "hsa_fast" and x["sweep"] != "N" and x["N"] in fast_n and x["d"] == 64:
            b["stats"]["min"] = x["cpu_s"] = fast_n[x["N"]] / 1000
            planted += 1
    assert planted
    path.write_text(json.dumps(data))
    assert plots.main(["--results", str(tmp_path)]) == 0
    summary = (tmp_path / "SUMMARY.md").read_text()
    table = summary.split("SDPA / hsa_fast, measured")[1].split("\n\n")[0]
    rows = re.findall(r"^\| ([\d,]+) \| ([\d.,]+) \|", table, re.M)
    assert rows
    for n, ms in rows:
        t = fast_n[int(n.replace(",", ""))]
        assert ms == (f"{t * 1e3:,.1f}" if t < 10 else f"{t * 1e3:,.0f}")


def test_time_per_call_is_cpu_time_on_one_core_and_wall_time_otherwise(tmp_path) -> None:
    path = _stored_run(tmp_path)
    run = load_run(path)
    assert run.measure == "cpu"
    assert all(r.time == r.info["cpu_s"] for r in run.records)
    data = json.loads(path.read_text())
    data["machine_info"]["hsa_bench"]["torch_threads"] = 2  # CPU times add up over cores
    path.write_text(json.dumps(data))
    run = load_run(path)
    assert run.measure == "wall"
    assert all(r.time == r.time_min for r in run.records)
