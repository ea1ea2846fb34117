"""The golden hsa-case/1 files: drift against a fresh generation, coverage, format and precision."""

from __future__ import annotations

import json

import pytest
import torch

from hsa_ref.conformance.golden_set import (
    CASE_FORMAT,
    GOLDEN_DIR,
    STRUCTURE_MAX_LEAVES,
    GoldenCase,
    case_specs,
    cli,
    drift,
    generate,
    load_cases,
    load_index,
    write_cases,
)
from hsa_ref.tolerance import DTYPES, limits

pytestmark = pytest.mark.usefixtures("one_thread")


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
    nudged_out = GoldenCase(**{**fields, "expected": {**case.expected, "out": case.out + 1e-9}})
    nudged_grad = GoldenCase(
        **{**fields, "expected": {**case.expected, "grad_k": case.expected["grad_k"] + 1e-9}}
    )
    low = {**case.references["bfloat16"], "out": case.references["bfloat16"]["out"] + 0.5}
    nudged_low = GoldenCase(**{**fields, "references": {**case.references, "bfloat16": low}})
    other_q = case.q.clone()
    other_q[0, 0] += 2**-20
    changed_q = GoldenCase(**{**fields, "q": other_q})
    other_tree = GoldenCase(**{**fields, "hierarchy": stored[0].hierarchy})
    bad_tol = GoldenCase(
        **{**fields, "tolerance": {**case.tolerance, "score_max": case.tolerance["score_max"] * 2}}
    )
    assert drift(case, case) == []
    assert any("out:" in p for p in drift(nudged_out, case))
    assert any("grad_k:" in p for p in drift(nudged_grad, case))
    assert any("references.bfloat16.out" in p for p in drift(nudged_low, case))
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
    assert max(h.max_branching for h in hs) >= 512  # the widest families ports are written for
    assert max(h.num_leaves for h in hs) >= 500  # many leaves
    assert {64, 128} <= {c.q.shape[1] for c in stored}  # head sizes
    assert any(c.positions is not None and c.positions.abs().max() >= 8 for c in stored)
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
    # outputs far from zero where half precision cannot resolve the scores: zeros fail there
    assert all((c.v.amin(0) > 0).any() or (c.v.amax(0) < 0).any() for c in huge)
    assert by_name["ties_keys_are_queries"].k.equal(by_name["ties_keys_are_queries"].q)


def test_set_is_small(stored):
    """Every entry of every quantity carries its limit in four dtypes: a few megabytes."""
    size = sum(p.stat().st_size for p in GOLDEN_DIR.glob("*.json"))
    assert size < 8e6
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
        keys = {"tree", "energy", "scale", "q", "k", "v", "grad_out", "out", "grad_q", "grad_k"}
        assert set(obj) >= keys | {"grad_v", "references", "tolerance"}
        assert ("grad_positions" in obj) == ("positions" in obj)
        assert set(obj["references"]) == {"float32", "bfloat16", "float16"}
        for key in ("q", "k", "v", "out", "grad_q"):
            assert all(type(x) is float for row in obj[key] for x in row)
        n = obj["tree"]["num_leaves"]
        assert len(obj["q"]) == len(obj["out"]) == len(obj["grad_out"]) == n
        assert len(obj["out"][0]) == len(obj["v"][0]) == len(obj["grad_out"][0])
        limits = obj["tolerance"]["limits"]
        assert set(limits) == set(DTYPES)
        assert all(set(by_quantity) == set(case.quantities) for by_quantity in limits.values())


def test_inputs_are_exact_in_every_dtype(stored):
    for case in stored:
        for t in (case.q, case.k, case.v, case.positions, case.grad_out):
            if t is None:
                continue
            for dtype in DTYPES.values():
                assert torch.equal(t.to(dtype).double(), t), (case.name, dtype)
        for label, by_quantity in case.references.items():
            for t in by_quantity.values():
                assert torch.equal(t.to(DTYPES[label]).double(), t), (case.name, label)


def test_stored_limits_are_the_rule_of_hsa_ref_tolerance(stored):
    """A port applying the stored limits gets what ``hsa_ref.tolerance`` computes: each stored
    limit is the rule's limit rounded up to three significant digits."""
    names = {"pair", "huge_scores", "distance_huge_scores", "positions", "forest_interleaved"}
    for case in (c for c in stored if c.name in names):
        for dtype in DTYPES.values():
            q, k, v = case.inputs(dtype)
            kw = case.call_kwargs(dtype)
            rules = limits(q, k, v, case.hierarchy, dtype=dtype, grad_out=case.grad_out, **kw)
            for name, rule in rules.items():
                quantity = "out" if name == "out" else f"grad_{name}"
                kept = case.limit(dtype, quantity)
                assert kept.checkable == rule.checkable, (case.name, dtype, quantity)
                assert torch.all(kept.limit >= rule.limit), (case.name, dtype, quantity)
                assert torch.all(kept.limit <= rule.limit * 1.01), (case.name, dtype, quantity)
    for case in stored:
        for label, by_quantity in case.tolerance["limits"].items():
            for quantity, record in by_quantity.items():
                assert record["checkable"] == (record["reason"] == ""), (case.name, quantity)
                assert record["reference"] == ("float32" if label == "float64" else label)


def test_check_and_write_commands(fresh, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "generate", lambda: fresh)
    assert cli.main(["--write", str(tmp_path)]) == 0
    assert cli.main(["--check", str(tmp_path)]) == 0
    path = tmp_path / "pair.json"
    obj = json.loads(path.read_text())
    obj["out"][0][0] += 1e-6
    path.write_text(json.dumps(obj))
    assert cli.main(["--check", str(tmp_path)]) == 1
    assert "DRIFT pair: out" in capsys.readouterr().out
    assert cli.main(["--check", str(tmp_path / "missing")]) == 2
    assert cli.main(["--path"]) == 0
    assert capsys.readouterr().out.strip() == str(GOLDEN_DIR)


def test_malformed_case_objects_are_rejected(stored):
    obj = stored[0].to_dict()
    with pytest.raises(ValueError, match="not an hsa-case/1"):
        GoldenCase.from_dict({**obj, "format": "hsa-case/2"})
    with pytest.raises(ValueError, match="lacks"):
        GoldenCase.from_dict({k: v for k, v in obj.items() if k != "out"})
    with pytest.raises(ValueError, match="'q' must be"):
        GoldenCase.from_dict({**obj, "q": obj["q"] + obj["q"]})


def test_low_precision_references_meet_their_own_stored_limits(stored):
    """The limits are attainable: each stored reference in ``t`` passes the limits of ``t``."""
    for case in stored:
        for label, by_quantity in case.references.items():
            dtype = DTYPES[label]
            for quantity, result in by_quantity.items():
                verdict = case.judge(result, dtype, quantity)
                assert verdict.status in ("passed", "not checkable"), (case.name, label, quantity)
                if verdict.checkable and quantity == "out":
                    assert verdict.max_error <= 0.5 * verdict.tolerance, (case.name, label)


def test_every_dtype_can_check_most_of_the_set(stored):
    """Outputs: every case in float64 and float32; in float16 all but those whose scores it
    cannot resolve; in bfloat16, whose worst-case rounding is 8 times coarser, three in four."""
    huge = {c.name for c in stored if c.tolerance["score_max"] * 2**-10 > 1}
    for label, dtype in DTYPES.items():
        unresolved = {c.name for c in stored if not c.limit(dtype, "out").checkable}
        if label in ("float64", "float32"):
            assert unresolved == set(), label
        elif label == "float16":
            assert unresolved == huge
        else:
            assert len(unresolved) <= len(stored) // 4, sorted(unresolved)
        gradients = [
            c.limit(dtype, q).checkable for c in stored for q in c.quantities if q != "out"
        ]
        if label in ("float64", "float32"):  # dq and dk vanish under nearly hard attention
            assert sum(gradients) >= len(gradients) - 2 * len(huge), label


def test_small_cases_carry_the_recursion_step_by_step(stored):
    """``structure``: theta reproduces ``out``, mu is what theta keeps, F and L obey docs/HSA.md
    section 3."""
    from hsa_ref.conformance.diagnostics import family_table

    small = [c for c in stored if c.hierarchy.num_leaves <= STRUCTURE_MAX_LEAVES]
    assert len(small) >= 20
    assert all(c.structure is None for c in stored if c not in small)
    for case in small:
        h, st = case.hierarchy, case.structure
        theta = torch.tensor(st["theta"], dtype=torch.float64)
        assert (theta @ case.v - case.out).abs().max() <= 1e-12 * (1 + case.v.abs().max())
        for a in h.families:
            kids = h.children(a)
            f_a = sum(h.leaf_counts[b] / h.leaf_counts[a] * st["L"][b] for b in kids)
            assert st["F"][a] == pytest.approx(f_a, rel=1e-9, abs=1e-9), case.name
            if len(kids) > 1 and case.tolerance["score_max"] < 100:
                table = family_table(theta, h, a)
                kept = (table.diagonal() / table.sum(1)).tolist()
                assert kept == pytest.approx([st["mu"][b] for b in kids], abs=1e-9), case.name
        assert [st["mu"][r] for r in h.roots] == [None] * h.num_trees
