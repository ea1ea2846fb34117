"""The conformance harness: passes correct implementations, rejects every planted bug, cannot be
fooled or stopped, and says where a wrong implementation goes wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import harness_cheats
import planted_bugs
import pytest
import range_port
import torch

from hsa_fast import hsa
from hsa_ref import Hierarchy, hsa_reference
from hsa_ref.conformance import (
    OUTPUT_FORMAT,
    PROPERTIES,
    REPORT_FORMAT,
    Capabilities,
    ImplementationError,
    UsageError,
    load_impl,
    main,
    run,
)
from hsa_ref.conformance.formats import SET_VERSION
from hsa_ref.conformance.golden_set import load_cases
from hsa_ref.tolerance import DTYPES

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXAMPLES = 3  # per property; the full suite runs with more through the command line
FORWARD = Capabilities(gradients=False)
PORT = Capabilities(
    energies=("dot",),
    forests=False,
    positions=False,
    gradients=False,
    shuffled_leaves=False,
    batches=False,
)


pytestmark = pytest.mark.usefixtures("one_thread")


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
# Where a forward bug's error is below what the dtype can hide, the rule cannot see it.
HIDDEN = {
    ("relative_error", "bfloat16"),
    ("relative_error", "float16"),
    # F(A)'s children weighted 1/b: about 5% of the output, within bfloat16's rounding
    ("uniform_child_weights", "bfloat16"),
}
# What the first diagnostic of the failing golden case names.
DIAGNOSIS = {
    "leaf_self_term_dropped": "own-subtree share",
    "forest_leak": "weight crosses trees",
    "row_softmax": "not constant on sibling blocks",
    "no_max_subtraction": "NaN or inf",
    "relative_error": "rows do not sum to 1",
    "log_count_ignored": "leaf_beside_big_family",
}
GRADIENT_MUST_FAIL = {
    "keys_detached": ("pair", "pair:grad_k"),
    "dq_dk_swapped": ("unbalanced", "unbalanced:grad_q"),
    "gradients_in_float32": ("unbalanced", "unbalanced:grad_v"),
    "no_autograd": ("pair", "pair:grad_q"),
    "positions_gradient_dropped": ("positions", "positions:grad_positions"),
}


def reference_in_dtype(q, k, v, hierarchy, **kw):
    """The reference evaluated in the dtype of its inputs (``ref_t`` itself)."""
    return hsa_reference(q, k, v, hierarchy, **kw, dtype=q.dtype)


def no_positions(q, k, v, hierarchy, *, scale=None, energy="dot"):
    """The minimal signature of docs/HSA.md section 8, without geometry."""
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
        (hsa, "bfloat16"),
        (hsa, "float16"),
        (planted_bugs.correct, "float64"),
        (planted_bugs.correct, "float32"),
    ],
    ids=lambda x: x if isinstance(x, str) else getattr(x, "__name__", "planted"),
)
def test_correct_implementations_pass_outputs_and_gradients(impl, dtype):
    report = run(impl, dtype=dtype, examples=EXAMPLES, seed=1)
    assert report.passed, report.format(verbose=False)
    names = {o.name for o in report.outcomes}
    assert len(names) == len(report.outcomes)
    assert {f"pair:grad_{x}" for x in "qkv"} <= names
    assert "positions:grad_positions" in names
    assert {o.name for o in report.outcomes if o.kind == "property"} == set(PROPERTIES)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_the_reference_in_each_dtype_meets_the_rule(dtype):
    """``ref_t`` itself passes: the rule is consistent with the stored low-precision outputs."""
    report = run(reference_in_dtype, dtype=dtype, properties=[], capabilities=FORWARD)
    assert report.passed, report.format(verbose=False)


# ---------------------------------------------------------------- every planted bug is caught
@pytest.mark.parametrize("bug", sorted(planted_bugs.BUGS))
def test_golden_cases_reject_each_planted_bug(bug):
    report = run(getattr(planted_bugs, bug), properties=[], capabilities=FORWARD)
    assert not report.passed
    failed = {o.name: o for o in report.failures}
    assert MUST_FAIL[bug] in failed, sorted(failed)
    worst = failed[MUST_FAIL[bug]]
    assert worst.max_error is not None
    assert not worst.max_error <= worst.tolerance
    text = report.format(verbose=False)
    assert f"FAIL golden   {MUST_FAIL[bug]}" in text


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_each_forward_bug_is_rejected_in_every_dtype_that_can_see_it(dtype):
    """Exactly the bugs whose error exceeds what the dtype can hide are rejected."""
    rejected = {
        bug
        for bug in planted_bugs.BUGS
        if run(
            getattr(planted_bugs, bug), dtype=dtype, properties=[], capabilities=FORWARD
        ).failures
    }
    assert rejected == {bug for bug in planted_bugs.BUGS if (bug, dtype) not in HIDDEN}
    correct = run(planted_bugs.correct, dtype=dtype, properties=[], capabilities=FORWARD)
    assert correct.passed, correct.format(verbose=False)


@pytest.mark.parametrize("bug", sorted(DIAGNOSIS))
def test_the_first_diagnostic_names_what_is_wrong(bug):
    case = "leaf_beside_big_family" if bug == "log_count_ignored" else MUST_FAIL[bug]
    [outcome] = run(
        getattr(planted_bugs, bug), cases=[case], properties=[], capabilities=FORWARD
    ).outcomes
    assert outcome.status == "failed"
    first = outcome.diagnostic.splitlines()[0]
    if bug == "log_count_ignored":
        assert first.startswith(("own-subtree share", "sibling block"))
    else:
        assert DIAGNOSIS[bug] in first, outcome.diagnostic
    assert first in outcome.line()


@pytest.mark.parametrize("bug", sorted(planted_bugs.GRADIENT_BUGS))
def test_gradient_checks_reject_each_backward_bug(bug):
    case, quantity = GRADIENT_MUST_FAIL[bug]
    report = run(getattr(planted_bugs, bug), cases=[case], properties=[])
    status = {o.name: o.status for o in report.outcomes}
    assert status[case] == "passed"  # the forward pass is exact
    assert status[quantity] == "failed", report.format()
    if bug == "no_autograd":
        assert "no gradient" in report.failures[0].detail
    forward_only = run(
        getattr(planted_bugs, bug), cases=[case], properties=[], capabilities=FORWARD
    )
    assert forward_only.passed
    assert [o.name for o in forward_only.outcomes] == [case]
    assert "gradients not checked" in forward_only.header


@pytest.mark.parametrize(
    ("bug", "prop"),
    [
        ("forest_leak", "forest_is_trees_alone"),
        ("relative_error", "constant_values"),
        ("no_max_subtraction", "finite_at_huge_scores"),
        ("leaf_self_term_dropped", "one_family_is_softmax"),
        ("wrong_default_scale", "default_scale"),
        ("dq_dk_swapped", "matches_reference"),
        ("keys_detached", "one_family_is_softmax"),
        ("gradients_in_float32", "batch_is_per_example"),
    ],
)
def test_properties_alone_reject_planted_bugs(bug, prop):
    report = run(getattr(planted_bugs, bug), golden=False, properties=[prop], examples=25)
    [outcome] = report.outcomes
    assert outcome.status == "failed", outcome.line()
    assert "minimal failing example: HSACase(" in outcome.detail


# The inputs each size bug needs: the golden cases that reach them, and the property (with
# how many examples) whose strategy draws them often.
SIZE_BUG_CASES = {
    "wrong_for_head_sizes_over_9": ({"head_size_64", "head_size_128"}, "matches_reference", 10),
    "wrong_for_over_200_leaves": ({"many_leaves", "deep_and_wide", "wide_family_512"}, None, 0),
    "wrong_for_families_over_96": ({"wide_family_512"}, None, 0),
    "wrong_for_batches_over_3": (set(), "batch_is_per_example", 10),
    "wrong_for_positions_over_3": ({"positions_large"}, "matches_reference", 20),
}


@pytest.mark.parametrize("bug", sorted(planted_bugs.SIZE_BUGS))
def test_bugs_that_only_port_sized_inputs_show_are_rejected(bug):
    cases, prop, examples = SIZE_BUG_CASES[bug]
    if cases:
        report = run(getattr(planted_bugs, bug), properties=[], capabilities=FORWARD)
        assert {o.name for o in report.failures} == cases
    if prop:
        report = run(
            getattr(planted_bugs, bug),
            golden=False,
            properties=[prop],
            examples=examples,
            capabilities=FORWARD,
            shrink=False,
        )
        assert not report.passed, report.format()
        assert "failing example (not shrunk)" in report.failures[0].detail


def test_the_default_property_suite_reaches_large_trees():
    """Over 100 examples (the default), ``matches_reference`` draws trees of more than 200
    leaves and families of more than 96 children."""
    from hypothesis import given, seed, settings

    from hsa_ref.conformance.properties import PROPERTIES
    from hsa_ref.conformance.strategies import HSACase
    from hsa_ref.conformance.target import FULL

    drawn: list[HSACase] = []

    @seed(0)
    @settings(max_examples=100, database=None, deadline=None)
    @given(PROPERTIES["matches_reference"].strategy(torch.float64, FULL))
    def draw(case):
        drawn.append(case)

    draw()
    assert any(c.hierarchy.num_leaves > 200 for c in drawn)
    assert any(c.hierarchy.max_branching > 96 for c in drawn)
    assert any(c.q.shape[-1] >= 64 for c in drawn)
    assert any(c.q.shape[:-2].numel() > 3 for c in drawn)
    assert any(c.positions is not None and c.positions.abs().max() > 3 for c in drawn)


@pytest.mark.parametrize("port", ["lookup_table", "one_leaf_only"])
def test_ports_that_compute_no_attention_fail(port):
    report = run(getattr(planted_bugs, port), examples=3, capabilities=FORWARD, shrink=False)
    assert not report.passed
    properties = [o for o in report.outcomes if o.kind == "property"]
    assert properties
    assert all(o.status == "failed" for o in properties)
    assert all("refused an input inside" in o.detail for o in properties)


def test_implementation_errors_become_failures():
    report = run(raises, examples=2, cases=["pair"], properties=["matches_reference"])
    golden, prop = report.outcomes
    assert golden.status == prop.status == "failed"
    assert "RuntimeError('not implemented')" in golden.detail
    assert "minimal failing example" in prop.detail
    report = run(drops_a_column, examples=2, cases=["pair"], properties=["constant_values"])
    assert [o.status for o in report.outcomes] == ["failed", "failed"]
    assert all("shape" in o.detail for o in report.outcomes)


def test_implementations_without_positions():
    names = ["pair", "positions", "forest_interleaved", "positions_forest_distance"]
    report = run(no_positions, properties=[], cases=names, capabilities=FORWARD)
    assert sorted(o.name for o in report.failures) == ["positions", "positions_forest_distance"]
    caps = Capabilities(positions=False, gradients=False)
    report = run(no_positions, properties=[], cases=names, capabilities=caps)
    assert report.passed
    assert [o.name for o in report.outcomes] == ["pair", "forest_interleaved"]
    assert "positions (positions)" in report.header


# ---------------------------------------------------------------- capabilities
def test_a_limited_correct_port_passes_with_its_capabilities():
    report = run(range_port.hsa, capabilities=PORT, examples=EXAMPLES)
    assert report.passed, report.format(verbose=False)
    statuses = {o.name: o.status for o in report.outcomes if o.kind == "property"}
    assert statuses["forest_is_trees_alone"] == "unsupported"
    assert statuses["batch_is_per_example"] == "unsupported"  # declared: no batches
    assert "left out by the declared capabilities" in report.header
    assert "random_large (non-contiguous leaves)" in report.header
    # refusals inside what it declares are failures: capabilities are declared, not discovered
    undeclared = run(range_port.hsa, capabilities=FORWARD, properties=[])
    assert not undeclared.passed
    failed = {o.name: o for o in undeclared.failures}
    assert "random_mixed" in failed
    assert "refused an input inside its declared capabilities" in failed["random_mixed"].detail


def test_a_limited_port_with_a_bug_fails_with_a_diagnostic():
    report = run(range_port.no_self_share, capabilities=PORT, examples=EXAMPLES)
    assert not report.passed
    failed = {o.name: o for o in report.failures}
    first = failed["one_family"].diagnostic.splitlines()[0]
    assert first.startswith("own-subtree share mu(")
    assert "where the reference has" in first


def test_a_property_refused_inside_the_declared_capabilities_fails():
    report = run(
        harness_cheats.refuses_forests,
        golden=False,
        examples=5,
        properties=["forest_is_trees_alone"],
    )
    [outcome] = report.outcomes
    assert outcome.status == "failed"
    assert "refused an input inside its declared capabilities" in outcome.detail
    assert not report.passed
    command = ["--impl", "harness_cheats:refuses_forests", "--properties-only"]
    command += ["--property", "forest_is_trees_alone", "--examples", "3"]
    assert main(command) == 1
    declared = run(
        harness_cheats.refuses_forests,
        golden=False,
        examples=5,
        properties=["forest_is_trees_alone"],
        capabilities=Capabilities(forests=False),
    )
    assert [o.status for o in declared.outcomes] == ["unsupported"]
    assert main([*command, "--single-tree"]) == 2  # nothing left to check


# ---------------------------------------------------------------- the harness cannot be fooled
@pytest.mark.parametrize(
    ("cheat", "detail"),
    [
        ("exits", "SystemExit"),
        ("returns_meta", "meta tensor"),
        ("returns_sparse", "layout"),
        ("returns_a_list", "not a torch.Tensor"),
    ],
)
def test_cheats_fail_their_own_checks(cheat, detail):
    report = run(
        getattr(harness_cheats, cheat),
        cases=["pair", "unbalanced"],
        examples=2,
        properties=["matches_reference"],
    )
    assert [o.status for o in report.outcomes] == ["failed"] * 3
    assert all(detail in o.detail for o in report.outcomes)


def test_in_place_changes_cannot_fool_the_reference():
    report = run(
        harness_cheats.zeroes_v_in_place,
        golden=True,
        cases=["pair"],
        examples=5,
        capabilities=FORWARD,
    )
    assert {o.name for o in report.failures} >= {"pair", "matches_reference", "constant_values"}


def test_a_hanging_implementation_times_out():
    report = run(
        harness_cheats.sleeps,
        cases=["pair"],
        properties=["matches_reference"],
        examples=5,
        timeout=0.5,
    )
    assert [o.status for o in report.outcomes] == ["failed", "failed"]
    assert "timed out" in report.outcomes[0].detail
    assert "timed out" in report.outcomes[1].detail


def test_exits_on_import_is_a_failure_not_a_pass(capsys):
    with pytest.raises(ImplementationError, match="SystemExit"):
        load_impl("exits_on_import:hsa")
    assert main(["--impl", "exits_on_import:hsa", "--golden-only"]) == 1
    assert "SystemExit" in capsys.readouterr().err


def test_the_reference_keeps_non_finite_values_inside_their_tree():
    h = Hierarchy.forest([Hierarchy.balanced(4, 2), Hierarchy.balanced(3, 3)])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 3, generator=g, dtype=torch.float64) for _ in "qkv")
    clean = hsa_reference(q, k, v, h)
    q[5, 0], v[6, 1] = float("nan"), float("inf")
    dirty = hsa_reference(q, k, v, h)
    assert torch.equal(dirty[:4], clean[:4])
    assert not torch.isfinite(dirty[4:]).all()


# ---------------------------------------------------------------- outputs written by a port
def _write_outputs(folder: Path, impl, dtype: torch.dtype, label: str, grads: bool = False):
    folder.mkdir(exist_ok=True)
    for case in load_cases():
        inputs = [x.clone().requires_grad_(grads) for x in case.inputs(dtype)]
        kw = case.call_kwargs(dtype)
        out = impl(*inputs, case.hierarchy, **kw)
        obj = {"format": OUTPUT_FORMAT, "case": case.name, "dtype": label, "out": out.tolist()}
        if grads:
            raw = torch.autograd.grad(out, inputs, case.grad_out.to(dtype), allow_unused=True)
            dq, dk, dv = (
                torch.zeros_like(x) if g is None else g for x, g in zip(inputs, raw, strict=True)
            )
            obj |= {"grad_q": dq.tolist(), "grad_k": dk.tolist(), "grad_v": dv.tolist()}
        (folder / f"{case.name}.json").write_text(json.dumps(obj))


def test_output_folders(tmp_path):
    good64, good32, bad = tmp_path / "f64", tmp_path / "f32", tmp_path / "bad"
    _write_outputs(good64, planted_bugs.correct, torch.float64, "float64", grads=True)
    _write_outputs(good32, planted_bugs.correct, torch.float32, "float32")
    report = run(outputs=good64)
    assert report.passed, report.format(verbose=False)
    assert "pair:grad_k" in {o.name for o in report.outcomes}
    assert run(outputs=good32).passed
    # float32 numbers claimed as float64 are held to the float64 tolerance.
    _write_outputs(bad, planted_bugs.correct, torch.float32, "float64")
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
    edit("dk_one", lambda o: o["grad_v"][0].__setitem__(0, o["grad_v"][0][0] + 1e-3))
    (bad / "deep_chain.json").write_text("{not json")
    (bad / "custom_scale.json").write_text('{"format": "hsa-output/1", "out": ' + "[" * 200_000)
    big = json.loads((good64 / "tiny_scores.json").read_text())
    text = json.dumps(big).replace(str(big["out"][0][0]), "1" + "0" * 400, 1)
    (bad / "tiny_scores.json").write_text(text)
    (bad / "balanced_binary.json").unlink()
    names = ["pair", "unbalanced", "one_leaf", "one_family", "huge_scores", "deep_chain"]
    names += ["balanced_binary", "tiny_scores", "custom_scale", "dk_one"]
    report = run(outputs=bad, cases=names)
    verdict = {o.name: o for o in report.outcomes}
    assert [n for n in names if verdict[n].passed] == ["dk_one"]
    assert verdict["dk_one:grad_v"].status == "failed"
    assert verdict["pair"].max_error > verdict["pair"].tolerance
    assert "NaN" in verdict["unbalanced"].detail
    assert "rows" in verdict["one_leaf"].detail
    assert "'case'" in verdict["one_family"].detail
    assert "NaN" in verdict["huge_scores"].detail
    assert "JSON" in verdict["deep_chain"].detail
    assert "JSON" in verdict["custom_scale"].detail
    assert "NaN or inf" in verdict["tiny_scores"].detail
    assert "no file" in verdict["balanced_binary"].detail


# ---------------------------------------------------------------- report, saved cases, replay
def test_report_and_saved_failures_replay(tmp_path, capsys):
    saved, report_path = tmp_path / "saved", tmp_path / "report.json"
    argv = [
        "--impl",
        "planted_bugs:log_count_ignored",
        "--case",
        "leaf_beside_big_family",
        "--property",
        "matches_reference",
        "--examples",
        "20",
        "--forward-only",
        "--save-failures",
        str(saved),
        "--report",
        str(report_path),
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "saved as" in out
    report = json.loads(report_path.read_text())
    assert report["format"] == REPORT_FORMAT
    assert report["implementation"] == "planted_bugs:log_count_ignored"
    assert report["capabilities"]["gradients"] is False
    assert report["golden_set_version"] == SET_VERSION
    assert report["passed"] is False
    checks = {c["name"]: c for c in report["checks"]}
    golden = checks["leaf_beside_big_family"]
    assert golden["status"] == "failed"
    assert golden["max_error"] > golden["tolerance"]
    assert golden["diagnostic"]
    assert golden["saved"].endswith("leaf_beside_big_family.json")
    assert checks["matches_reference"]["saved"].endswith("matches_reference_minimal.json")
    replay = load_cases(saved)
    assert {c.name for c in replay} == {"leaf_beside_big_family", "matches_reference_minimal"}
    again = ["--golden", str(saved), "--golden-only", "--forward-only"]
    assert main(["--impl", "planted_bugs:log_count_ignored", *again]) == 1
    assert main(["--impl", "planted_bugs:correct", *again]) == 0


# ---------------------------------------------------------------- command line and usage errors
def test_load_impl():
    assert load_impl("hsa_ref:hsa_reference") is hsa_reference
    assert load_impl("hsa_ref.conformance.golden_set:GoldenCase.from_dict") is not None
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
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for argv in (
        ["--impl", "not-a-spec"],
        ["--impl", "no_such_module_xyz:hsa"],
        ["--impl", "hsa_fast:hsa", "--golden", str(tmp_path / "nowhere")],
        ["--outputs", str(tmp_path / "nowhere")],
        ["--outputs", str(outputs), "--properties-only"],  # nothing checked
        ["--impl", "hsa_fast:hsa", "--case", "no_such_case"],
        ["--impl", "hsa_fast:hsa", "--property", "no_such_property"],
        ["--impl", "hsa_fast:hsa", "--examples", "0"],
        ["--impl", "hsa_fast:hsa", "--timeout", "0"],
        ["--impl", "hsa_fast:hsa", "--device", "no-such-device"],
    ):
        assert main(argv) == 2, argv
        assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--impl", "hsa_fast:hsa", "--outputs", str(tmp_path)])
    assert exc.value.code == 2


def test_device_option_runs_on_that_device():
    golden_only = ["--golden-only", "--case", "positions", "--case", "pair"]
    assert main(["--impl", "hsa_fast:hsa", "--device", "cpu", *golden_only]) == 0
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
    exits = subprocess.run(
        [*cmd, "--impl", "harness_cheats:exits", "--case", "pair"],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert exits.returncode == 1
    assert "SystemExit" in exits.stdout


# ---------------------------------------------------------------- the pytest plugin
def test_pytest_plugin_is_registered():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    plugins = meta["project"]["entry-points"]["pytest11"]
    assert plugins == {"hsa_ref.conformance.pytest_plugin": "hsa_ref.conformance.pytest_plugin"}


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "hsa_ref.conformance.pytest_plugin",
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.run(
        [*cmd, "-rfs", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )


def test_pytest_option_runs_the_harness(tmp_path):
    run_ = _pytest(
        tmp_path,
        "--hsa-impl",
        "planted_bugs:forest_leak",
        "--hsa-dtype",
        "float32",
        "--hsa-examples",
        "3",
        "-m",
        "hsa_conformance",
        "-k",
        "pair or forest_interleaved or return_v or is_softmax",
    )
    assert run_.returncode == 1, run_.stdout[-3000:]
    total = len(load_cases()) + len(PROPERTIES)
    assert f"collected {total} items / {total - 4} deselected / 4 selected" in run_.stdout
    assert "2 failed, 2 passed" in run_.stdout
    assert "FAILED hsa-conformance::golden[forest_interleaved]" in run_.stdout
    assert "FAILED hsa-conformance::property[one_leaf_trees_return_v]" in run_.stdout
    assert "minimal failing example: HSACase(" in run_.stdout
    usage = _pytest(tmp_path, "--hsa-impl", "no_such_module_xyz:hsa")
    assert usage.returncode == pytest.ExitCode.USAGE_ERROR
    assert "cannot import" in usage.stderr


def test_porting_guide_names_every_case_property_flag_and_constant():
    from hsa_ref.rounding import LAMBDA, TRANSCENDENTAL
    from hsa_ref.tolerance import ATOL_FACTOR, MARGIN, MAX_ROUNDED_SCORE, REFERENCE_FACTOR

    guide = (ROOT / "docs" / "PORTING.md").read_text()
    rule = (ROOT / "docs" / "TOLERANCE.md").read_text()
    for case in load_cases():
        assert f"| `{case.name}` |" in guide
    for name in PROPERTIES:
        assert f"| `{name}` |" in guide
    for flag in (
        "--energy",
        "--single-tree",
        "--without-positions",
        "--contiguous-leaves",
        "--without-batches",
        "--forward-only",
        "--timeout",
        "--save-failures",
        "--report",
        "--dtype",
    ):
        assert f"`{flag}" in guide, flag
    assert f"`ATOL_FACTOR = {ATOL_FACTOR:g}`" in rule
    assert f"`MARGIN = {MARGIN:g}`" in rule
    assert f"| `LAMBDA` | {LAMBDA:g} |" in rule
    assert f"| `TRANSCENDENTAL` | {TRANSCENDENTAL:g} |" in rule
    assert f"| `MAX_ROUNDED_SCORE` | {MAX_ROUNDED_SCORE:g} |" in rule
    assert f"{REFERENCE_FACTOR['output']:g} for outputs, {REFERENCE_FACTOR['gradient']:g}" in rule
    assert "POWER_TABLE" not in rule
    for dtype in DTYPES:  # the recorded power table, one row per dtype
        assert f"| {dtype} | " in guide, dtype
    assert REPORT_FORMAT in guide
    assert "docs/PORTING.md" in (ROOT / "README.md").read_text()
