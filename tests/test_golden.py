"""The golden hsa-case/1 files: drift against a fresh generation, coverage, format and precision."""

from __future__ import annotations

import json

import pytest
import torch

from hsa_ref import golden_cases
from hsa_ref.golden_cases import (
    CASE_FORMAT,
    GOLDEN_DIR,
    GoldenCase,
    case_specs,
    drift,
    generate,
    load_cases,
    load_index,
    write_cases,
)
from hsa_ref.tolerance import compare_to_reference


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many tiny torch operations: one thread avoids stalls when cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stored() -> list[GoldenCase]:
    return load_cases()


@pytest.fixture(scope="module")
def fresh() -> list[GoldenCase]:
    return generate()


def test_stored_cases_equal_a_fresh_generation(stored, fresh):
    assert [c.name for c in stored] == [c.name for c in fresh] == [s.name for s in case_specs()]
    problems = {c.name: drift(c, f) for c, f in zip(stored, fresh, strict=True)}
    assert {name: p for name, p in problems.items() if p} == {}


def test_drift_is_detected(stored):
    case = next(c for c in stored if c.name == "unbalanced")
    fields = case.__dict__
    nudged_out = GoldenCase(**{**fields, "out": case.out + 1e-9})
    other_q = case.q.clone()
    other_q[0, 0] += 2**-20
    changed_q = GoldenCase(**{**fields, "q": other_q})
    other_tree = GoldenCase(**{**fields, "hierarchy": stored[0].hierarchy})
    bad_tol = GoldenCase(
        **{**fields, "tolerance": {**case.tolerance, "score_max": case.tolerance["score_max"] * 2}}
    )
    assert drift(case, case) == []
    assert any("out:" in p for p in drift(nudged_out, case))
    assert any(p.startswith("q:") for p in drift(changed_q, case))
    assert any(p.startswith("hierarchy") for p in drift(other_tree, case))
    assert any("score_max" in p for p in drift(bad_tol, case))


def _interleaved(h) -> bool:
    """Rows of different trees alternate more often than tree by tree."""
    roots = h.root_of[: h.num_leaves]
    return int((roots[1:] != roots[:-1]).sum()) > h.num_trees - 1


def test_set_covers_the_hard_shapes_and_options(stored):
    by_name = {c.name: c for c in stored}
    hs = [c.hierarchy for c in stored]
    assert {c.energy for c in stored} == {"dot", "distance"}
    assert any(h.num_families == 1 and h.num_leaves > 2 for h in hs)  # one family
    assert any(h.num_leaves == 1 and h.num_families == 0 for h in hs)  # a one-leaf tree
    assert any(h.num_leaves == 1 and h.num_families > 0 for h in hs)  # leaf under a chain
    assert max(h.max_branching for h in hs) >= 64  # large b
    assert max(h.max_depth for h in hs) >= 10  # deep chain
    assert any((h.branching[h.num_leaves :] == 1).any() for h in hs)  # single-child families
    assert any(len(set(h.depth[: h.num_leaves].tolist())) > 2 for h in hs)  # mixed depth
    assert any(h.num_trees > 1 and h.num_families == 0 for h in hs)  # forest of one-leaf trees
    assert any(_interleaved(h) for h in hs)
    assert any(c.q.shape[1] != c.v.shape[1] for c in stored)
    assert any(c.scale_is_default for c in stored)
    assert any(c.scale < 0 for c in stored)
    assert sum(c.scale_is_default and c.q.shape[1] >= 2 for c in stored) >= 10  # 1/d_k is wrong
    assert any(c.positions is not None for c in stored)
    huge = [c for c in stored if c.tolerance["score_max"] >= 1e4 * 0.99]
    assert {c.energy for c in huge} == {"dot", "distance"}
    assert by_name["ties_keys_are_queries"].k.equal(by_name["ties_keys_are_queries"].q)


def test_set_is_small(stored):
    size = sum(p.stat().st_size for p in GOLDEN_DIR.glob("*.json"))
    assert size < 5e6
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.json")) == sorted(
        [c.name for c in stored] + ["index"]
    )


def test_files_are_the_exact_serialisation_of_their_values(stored, tmp_path):
    """Parsing and writing again gives the same bytes: every float is stored as its repr."""
    write_cases(stored, tmp_path)
    for case in stored:
        assert (tmp_path / f"{case.name}.json").read_text() == (
            GOLDEN_DIR / f"{case.name}.json"
        ).read_text()
    assert load_index(tmp_path) == load_index()


def test_case_objects_follow_the_format(stored):
    for case in stored:
        obj = json.loads((GOLDEN_DIR / f"{case.name}.json").read_text())
        assert obj["format"] == CASE_FORMAT
        assert obj["tree"]["format"] == "hsa-tree/1"
        assert set(obj) >= {"tree", "energy", "scale", "q", "k", "v", "out", "tolerance"}
        for key in ("q", "k", "v", "out", "out_float32"):
            assert all(type(x) is float for row in obj[key] for x in row)
        n = obj["tree"]["num_leaves"]
        assert len(obj["q"]) == len(obj["out"]) == n
        assert len(obj["out"][0]) == len(obj["v"][0])


def test_inputs_are_exact_in_float32(stored):
    for case in stored:
        for t in (case.q, case.k, case.v, case.positions, case.out_float32):
            if t is not None:
                assert torch.equal(t.float().double(), t), case.name


def test_stored_tolerance_is_the_rule_of_hsa_ref_tolerance(stored):
    """A port applying the stored numbers gets what ``compare_to_reference`` would compute."""
    names = {"pair", "huge_scores", "distance_huge_scores", "positions", "forest_interleaved"}
    for case in (c for c in stored if c.name in names):
        tol = case.tolerance
        for label, dtype in golden_cases.DTYPES.items():
            q, k, v = case.inputs(dtype)
            kw = case.call_kwargs(dtype)
            rule = compare_to_reference(case.out.to(dtype), q, k, v, case.hierarchy, **kw)
            assert rule.atol == pytest.approx(tol["atol"][label], rel=1e-12), case.name
            assert rule.relative_limit == tol["relative_limit"][label]
            assert tol["max_abs_error"][label] == 2 * tol["ref_error"][label] + tol["atol"][label]
            if dtype == torch.float64:
                assert rule.tolerance == pytest.approx(tol["max_abs_error"][label], rel=1e-12)
    for case in stored:
        tol = case.tolerance
        assert tol["ref_error"]["float32"] == (case.out_float32 - case.out).abs().max().item()
        assert tol["value_max"] == case.v.abs().max().item()


def test_check_and_write_commands(fresh, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(golden_cases, "generate", lambda: fresh)
    assert golden_cases.main(["--write", str(tmp_path)]) == 0
    assert golden_cases.main(["--check", str(tmp_path)]) == 0
    path = tmp_path / "pair.json"
    obj = json.loads(path.read_text())
    obj["out"][0][0] += 1e-6
    path.write_text(json.dumps(obj))
    assert golden_cases.main(["--check", str(tmp_path)]) == 1
    assert "DRIFT pair: out" in capsys.readouterr().out
    assert golden_cases.main(["--check", str(tmp_path / "missing")]) == 2
    assert golden_cases.main(["--path"]) == 0
    assert capsys.readouterr().out.strip() == str(GOLDEN_DIR)


def test_malformed_case_objects_are_rejected(stored):
    obj = stored[0].to_dict()
    with pytest.raises(ValueError, match="not an hsa-case/1"):
        GoldenCase.from_dict({**obj, "format": "hsa-case/2"})
    with pytest.raises(ValueError, match="lacks"):
        GoldenCase.from_dict({k: v for k, v in obj.items() if k != "out"})
    with pytest.raises(ValueError, match="'q' must be"):
        GoldenCase.from_dict({**obj, "q": obj["q"] + obj["q"]})


def test_float32_reference_meets_its_own_stored_limits(stored):
    """The float32 limits are attainable: ``out_float32`` passes them with a wide margin."""
    for case in stored:
        tol = case.tolerance
        err = (case.out_float32 - case.out).abs().max().item()
        assert err <= 0.5 * tol["max_abs_error"]["float32"], case.name
        if tol["relative_limit"]["float32"] is not None:
            rel = ((case.out_float32 - case.out).norm() / case.out.norm()).item()
            assert rel <= 0.1 * tol["relative_limit"]["float32"], case.name
