"""The conformance harness: passes correct implementations, rejects every planted bug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import planted_bugs
import pytest
import torch

from hsa_fast import hsa
from hsa_ref import hsa_reference
from hsa_ref.conformance import (
    OUTPUT_FORMAT,
    PROPERTIES,
    UsageError,
    accepts_positions,
    load_impl,
    main,
    on_device,
    run,
)
from hsa_ref.golden_cases import load_cases

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXAMPLES = 4  # per property; the full suite runs with more through the command line


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many tiny torch operations: one thread avoids stalls when cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# One golden case that each bug must fail (others fail too); the whole set must reject each.
MUST_FAIL = {
    "leaf_self_term_dropped": "one_family",
    "log_count_ignored": "leaf_beside_big_family",
    "log_mean_exp_energy": "balanced_binary",
    "row_softmax": "deep_chain",
    "uniform_child_weights": "leaf_beside_big_family",
    "no_max_subtraction": "huge_scores",
    "forest_leak": "forest_interleaved",
    "wrong_default_scale": "one_family",
    "relative_error": "one_leaf",
    "distance_norms_dropped": "distance_one_family",
    "positions_ignored": "positions",
}


def reference_in_dtype(q, k, v, hierarchy, **kw):
    """The reference evaluated in the dtype of its inputs (``ref_t`` itself)."""
    return hsa_reference(q, k, v, hierarchy, **kw, dtype=q.dtype)


def no_positions(q, k, v, hierarchy, *, scale=None, energy="dot"):
    """SPEC section 8's minimal signature, without geometry."""
    return hsa_reference(q, k, v, hierarchy, scale=scale, energy=energy)


def raises(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    raise RuntimeError("not implemented")


def drops_a_column(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    out = hsa_reference(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)
    return out[..., :-1]


# ---------------------------------------------------------------- correct implementations pass
@pytest.mark.parametrize(
    ("impl", "dtype"),
    [
        (hsa_reference, "float64"),
        (hsa, "float64"),
        (hsa, "float32"),
        (planted_bugs.correct, "float64"),
    ],
    ids=["reference", "hsa_fast", "hsa_fast-float32", "planted-without-bug"],
)
def test_correct_implementations_pass(impl, dtype):
    report = run(impl, dtype=dtype, examples=EXAMPLES, seed=1)
    assert report.passed, report.format(verbose=False)
    assert len(report.outcomes) == len(load_cases()) + len(PROPERTIES)


def test_the_float32_reference_meets_the_float32_rule():
    """``ref_t`` itself passes: the rule is consistent with the stored float32 outputs."""
    report = run(
        reference_in_dtype, dtype="float32", examples=EXAMPLES, properties=["matches_reference"]
    )
    assert report.passed, report.format(verbose=False)


# ---------------------------------------------------------------- every planted bug is caught
@pytest.mark.parametrize("bug", sorted(planted_bugs.BUGS))
def test_golden_cases_reject_each_planted_bug(bug):
    report = run(getattr(planted_bugs, bug), properties=[])
    assert not report.passed
    failed = {o.name: o for o in report.failures}
    assert MUST_FAIL[bug] in failed, sorted(failed)
    worst = failed[MUST_FAIL[bug]]
    assert worst.max_error is not None
    assert not worst.max_error <= worst.tolerance
    text = report.format(verbose=False)
    assert f"FAIL golden   {MUST_FAIL[bug]}" in text
    assert "max error" in text
    assert "tolerance" in text


@pytest.mark.parametrize("bug", sorted(planted_bugs.BUGS))
def test_float32_golden_tolerance_rejects_each_planted_bug(bug):
    """The looser float32 tolerance still rejects each bug on the case that shows it."""
    name = MUST_FAIL[bug]
    [outcome] = run(
        getattr(planted_bugs, bug), dtype="float32", cases=[name], properties=[]
    ).outcomes
    assert not outcome.passed, outcome.line()
    [fine] = run(planted_bugs.correct, dtype="float32", cases=[name], properties=[]).outcomes
    assert fine.passed, fine.line()


@pytest.mark.parametrize(
    ("bug", "prop"),
    [
        ("forest_leak", "forest_is_trees_alone"),
        ("relative_error", "constant_values"),
        ("no_max_subtraction", "one_family_is_softmax"),
        ("leaf_self_term_dropped", "one_family_is_softmax"),
    ],
)
def test_properties_alone_reject_planted_bugs(bug, prop):
    report = run(getattr(planted_bugs, bug), golden=False, properties=[prop], examples=25)
    [outcome] = report.outcomes
    assert not outcome.passed
    assert "minimal failing example: HSACase(" in outcome.detail
    assert outcome.max_error is not None
    assert not outcome.max_error <= outcome.tolerance


def test_implementation_errors_become_failures():
    report = run(raises, examples=2, cases=["pair"], properties=["matches_reference"])
    golden, prop = report.outcomes
    assert not golden.passed
    assert "RuntimeError('not implemented')" in golden.detail
    assert not prop.passed
    assert "minimal failing example" in prop.detail
    report = run(drops_a_column, examples=2, cases=["pair"], properties=["constant_values"])
    assert [o.passed for o in report.outcomes] == [False, False]
    assert all("shape" in o.detail for o in report.outcomes)


def test_implementations_without_positions():
    names = ["pair", "positions", "forest_interleaved", "positions_forest_distance"]
    report = run(no_positions, properties=[], cases=names)
    failed = sorted(o.name for o in report.failures)
    assert failed == ["positions", "positions_forest_distance"]
    assert "--without-positions" in report.failures[0].detail
    report = run(no_positions, properties=[], cases=names, without_positions=True)
    assert report.passed
    assert [o.name for o in report.outcomes] == ["pair", "forest_interleaved"]


# ---------------------------------------------------------------- outputs written by a port
def _write_outputs(folder: Path, impl, dtype: torch.dtype, label: str) -> None:
    folder.mkdir(exist_ok=True)
    for case in load_cases():
        out = impl(*case.inputs(dtype), case.hierarchy, **case.call_kwargs(dtype))
        obj = {"format": OUTPUT_FORMAT, "case": case.name, "dtype": label, "out": out.tolist()}
        (folder / f"{case.name}.json").write_text(json.dumps(obj))


def test_output_folders(tmp_path):
    good64, good32, bad = tmp_path / "f64", tmp_path / "f32", tmp_path / "bad"
    _write_outputs(good64, hsa, torch.float64, "float64")
    _write_outputs(good32, hsa, torch.float32, "float32")
    assert run(outputs=good64).passed
    assert run(outputs=good32).passed
    # float32 numbers claimed as float64 are held to the float64 tolerance.
    _write_outputs(bad, hsa, torch.float32, "float64")
    assert not run(outputs=bad, cases=["pair"]).passed

    def edit(name: str, change) -> None:
        path = bad / f"{name}.json"
        obj = json.loads((good64 / f"{name}.json").read_text())
        change(obj)
        path.write_text(json.dumps(obj))

    edit("pair", lambda o: o["out"][1].__setitem__(0, o["out"][1][0] * (1 + 1e-4)))
    edit("unbalanced", lambda o: o["out"][0].__setitem__(0, float("nan")))
    edit("one_leaf", lambda o: o.__setitem__("out", o["out"][:0]))
    edit("one_family", lambda o: o.__setitem__("case", "pair"))
    edit("huge_scores", lambda o: o["out"][2].__setitem__(1, None))
    (bad / "deep_chain.json").write_text("{not json")
    (bad / "balanced_binary.json").unlink()
    names = ["pair", "unbalanced", "one_leaf", "one_family", "huge_scores", "deep_chain"]
    names += ["balanced_binary", "tiny_scores"]
    report = run(outputs=bad, cases=names)
    verdict = {o.name: o for o in report.outcomes}
    assert [n for n in names if verdict[n].passed] == []
    assert verdict["pair"].max_error > verdict["pair"].tolerance
    assert "NaN" in verdict["unbalanced"].detail
    assert "rows" in verdict["one_leaf"].detail
    assert "'case'" in verdict["one_family"].detail
    assert "NaN" in verdict["huge_scores"].detail
    assert "JSON" in verdict["deep_chain"].detail
    assert "no file" in verdict["balanced_binary"].detail


# ---------------------------------------------------------------- command line and usage errors
def test_load_impl():
    assert load_impl("hsa_ref:hsa_reference") is hsa_reference
    assert load_impl("hsa_ref.golden_cases:GoldenCase.from_dict") is not None
    for spec, match in [
        ("hsa_ref.hsa_reference", "must look like"),
        ("hsa_ref:", "must look like"),
        ("hsa ref:x", "must look like"),
        ("no_such_module_xyz:f", "cannot import"),
        ("hsa_ref:no_such_function", "no attribute"),
        ("hsa_ref:__version__", "not a callable"),
    ]:
        with pytest.raises(UsageError, match=match):
            load_impl(spec)


def test_main_exit_status(tmp_path, capsys):
    golden_only = ["--golden-only", "--case", "forest_interleaved", "--case", "pair"]
    assert main(["--impl", "hsa_fast:hsa", *golden_only]) == 0
    assert main(["--impl", "planted_bugs:forest_leak", *golden_only]) == 1
    out = capsys.readouterr().out
    assert "FAIL golden   forest_interleaved" in out
    assert "ok   golden   pair" in out
    assert "failed: golden forest_interleaved" in out
    assert main(["--impl", "hsa_fast:hsa", "--properties-only", "--examples", "2"]) == 0
    for argv in (
        ["--impl", "not-a-spec"],
        ["--impl", "no_such_module_xyz:hsa"],
        ["--impl", "hsa_fast:hsa", "--golden", str(tmp_path / "nowhere")],
        ["--outputs", str(tmp_path / "nowhere")],
        ["--impl", "hsa_fast:hsa", "--case", "no_such_case"],
        ["--impl", "hsa_fast:hsa", "--property", "no_such_property"],
        ["--impl", "hsa_fast:hsa", "--examples", "0"],
    ):
        assert main(argv) == 2, argv
        assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--impl", "hsa_fast:hsa", "--outputs", str(tmp_path)])
    assert exc.value.code == 2


def test_device_option_moves_inputs_and_output():
    golden_only = ["--golden-only", "--case", "positions", "--case", "pair"]
    assert main(["--impl", "hsa_fast:hsa", "--device", "cpu", *golden_only]) == 0
    seen = []

    def spy(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
        seen.append({t.device.type for t in (q, k, v)})
        return hsa(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)

    moved = on_device(spy, "cpu")
    assert accepts_positions(moved)
    assert not run(moved, cases=["positions"], properties=[]).failures
    assert seen == [{"cpu"}]
    with pytest.raises(UsageError, match="not available"):
        on_device(hsa, "no-such-device")
    if not torch.cuda.is_available():
        assert main(["--impl", "hsa_fast:hsa", "--device", "cuda", *golden_only]) == 2


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_python_dash_m_entry_point():
    cmd = [sys.executable, "-m", "hsa_ref.conformance", "--quiet", "--golden-only"]
    failing = subprocess.run(
        [*cmd, "--impl", "planted_bugs:no_max_subtraction", "--case", "huge_scores"],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert failing.returncode == 1, failing.stderr
    assert "FAIL golden   huge_scores " in failing.stdout


# ---------------------------------------------------------------- the pytest plugin
def test_pytest_plugin_is_registered():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    plugins = meta["project"]["entry-points"]["pytest11"]
    assert plugins == {"hsa_ref.pytest_plugin": "hsa_ref.pytest_plugin"}


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    cmd = [sys.executable, "-m", "pytest", "-p", "hsa_ref.pytest_plugin", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*cmd, "-rf", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )


def test_pytest_option_runs_the_harness(tmp_path):
    run_ = _pytest(
        tmp_path, "--hsa-impl", "planted_bugs:forest_leak", "--hsa-dtype", "float32",
        "--hsa-examples", "3", "-m", "hsa_conformance",
        "-k", "pair or forest_interleaved or return_v or is_softmax",
    )  # fmt: skip
    assert run_.returncode == 1, run_.stdout[-3000:]
    total = len(load_cases()) + len(PROPERTIES)
    assert f"collected {total} items / {total - 4} deselected / 4 selected" in run_.stdout
    assert "2 failed, 2 passed" in run_.stdout
    assert "FAILED hsa-conformance::golden[forest_interleaved]" in run_.stdout
    assert "FAILED hsa-conformance::property[one_leaf_trees_return_v]" in run_.stdout
    assert "minimal failing example: HSACase(" in run_.stdout
    assert "golden[pair]" not in run_.stdout.split("short test summary")[-1]
    usage = _pytest(tmp_path, "--hsa-impl", "no_such_module_xyz:hsa")
    assert usage.returncode == pytest.ExitCode.USAGE_ERROR
    assert "cannot import" in usage.stderr


def test_porting_guide_names_every_case_property_and_constant():
    from hsa_ref.tolerance import ATOL_FACTOR, FLOAT32_RELATIVE, FLOAT32_RELATIVE_MAX_SCORE

    guide = (ROOT / "docs" / "PORTING.md").read_text()
    for case in load_cases():
        assert f"| `{case.name}` |" in guide
    for name in PROPERTIES:
        assert f"| `{name}` |" in guide
    formula = f"{ATOL_FACTOR:g} * eps[t] * (1 + score_max) * value_max"
    assert formula in guide
    assert f"`{FLOAT32_RELATIVE:.0e}`".replace("e-0", "e-") in guide  # `1e-5`
    assert f"score_max <= {FLOAT32_RELATIVE_MAX_SCORE:g}" in guide
    assert "docs/PORTING.md" in (ROOT / "README.md").read_text()
