"""The example ports of ``tests/ports`` through the conformance harness, each in its own process:
the JavaScript port over ``hsa-port/1`` (``--command``) and the JAX port served by
``--impl ... --framework jax``. A correct port passes every golden case and every property,
each property with examples that reached a verdict; each planted bug is rejected, and the
property that catches it is shrunk to a small tree.

The default run checks a few golden cases and every property on a few examples; ``-m slow``
runs the full default suite (every golden case, 100 examples per property), and shrinks the JAX
port's planted bug (a compilation for every new input shape makes that minutes long; the
default run rejects that bug on golden cases). Where ``node`` is not on the path, or jax (the
extra ``jax``, which ``nox -s tests`` does not install) is not importable, those tests skip.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from hsa_ref.conformance import PROPERTIES, main

PORTS = Path(__file__).resolve().parent / "ports"

JS_PORT = f"node {shlex.quote(str(PORTS / 'hsa_port.js'))}"
JAX_PORT = ["--impl", f"{PORTS / 'jax_port.py'}:hsa", "--framework", "jax"]
JAX_BUG = ["--impl", f"{PORTS / 'jax_port.py'}:uniform_child_weights", "--framework", "jax"]

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")


@pytest.fixture
def jax_installed() -> None:
    """Skips where jax is not installed (the extra ``jax``)."""
    pytest.importorskip("jax", reason="jax is not installed (extra 'jax')")


QUICK_CASES = [
    "pair",
    "unbalanced",
    "random_mixed",
    "forest_interleaved",
    "dv_not_dk",
    "huge_scores",
    "distance_far_from_origin",
    "positions_forest_distance",
]
"""Golden cases of the quick runs: one family, mixed depths, shuffled ids, a forest, d_v != d_k,
|s| = 1e4, the distance energy far from the origin, positions."""
QUICK_EXAMPLES = 4
GRADS = ("", ":grad_q", ":grad_k", ":grad_v")
"""The checks of a golden case: its output and the gradients of q, k and v."""


def _each(flag: str, values: list[str]) -> list[str]:
    return [a for value in values for a in (flag, value)]


def _conformance(tmp_path: Path, target: list[str], *args: str) -> tuple[int, dict]:
    """The harness's exit status and its JSON report for ``target`` (``--command ...`` or
    ``--impl ...``) and ``args``."""
    report = tmp_path / "report.json"
    status = main([*target, *args, "--quiet", "--report", str(report)])
    return status, json.loads(report.read_text(encoding="utf-8"))


def _assert_conforms(status: int, report: dict, examples: int) -> None:
    failed = [c for c in report["checks"] if c["status"] != "passed"]
    assert status == 0, failed
    assert report["passed"]
    assert report["summary"]["failed"] == report["summary"]["unsupported"] == 0
    ran = {c["name"]: c for c in report["checks"] if c["kind"] == "property"}
    assert set(ran) == set(PROPERTIES)
    for name, check in ran.items():
        assert check["status"] == "passed", (name, check)
        assert check["coverage"]["examples"] >= examples, (name, check)
        assert check["coverage"]["verdicts"] >= examples, (name, check)


def _quick(tmp_path: Path, target: list[str]) -> None:
    cases = _each("--case", QUICK_CASES)
    status, report = _conformance(tmp_path, target, *cases, "--examples", str(QUICK_EXAMPLES))
    _assert_conforms(status, report, QUICK_EXAMPLES)
    golden = {c["name"] for c in report["checks"] if c["kind"] == "golden"}
    assert golden >= {f"{name}{g}" for name in QUICK_CASES for g in GRADS}


def _full(tmp_path: Path, target: list[str]) -> None:
    status, report = _conformance(tmp_path, target)
    _assert_conforms(status, report, report["examples"])
    assert report["examples"] == 100


def _rejected(
    tmp_path: Path, target: list[str], prop: str, quantity: str, examples: int = 20
) -> None:
    """``target`` fails ``prop`` on ``quantity`` (``output``, ``gradient of k``, ...), shrunk
    to a tree of at most 8 leaves, saved as a replayable case."""
    saved = tmp_path / "failures"
    status, report = _conformance(
        tmp_path, target, "--properties-only", "--property", prop, "--examples", str(examples),
        "--save-failures", str(saved),
    )  # fmt: skip
    assert status == 1
    (check,) = report["checks"]
    assert check["status"] == "failed", check
    assert f"{quantity}: error above the limit" in check["detail"], check
    assert "minimal failing example" in check["detail"], check
    case = json.loads(Path(check["saved"]).read_text(encoding="utf-8"))
    assert case["format"] == "hsa-case/1"
    assert 2 <= case["tree"]["num_leaves"] <= 8, case["tree"]


# ------------------------------------------------------------------------------ JavaScript
@needs_node
def test_js_port_conforms(tmp_path):
    _quick(tmp_path, ["--command", JS_PORT])


@needs_node
@pytest.mark.parametrize(
    ("bug", "quantity"),
    [("leaf-self-term-dropped", "output"), ("keys-gradient-halved", "gradient of k")],
)
def test_js_port_planted_bugs_are_rejected(tmp_path, bug, quantity):
    _rejected(tmp_path, ["--command", f"{JS_PORT} --bug {bug}"], "matches_reference", quantity)


@needs_node
@pytest.mark.slow
def test_js_port_conforms_on_the_full_suite(tmp_path):
    _full(tmp_path, ["--command", JS_PORT])


# ------------------------------------------------------------------------------ JAX
@pytest.mark.usefixtures("jax_installed")
def test_jax_port_conforms(tmp_path):
    _quick(tmp_path, JAX_PORT)


@pytest.mark.usefixtures("jax_installed")
def test_jax_port_planted_bug_fails_the_golden_cases(tmp_path):
    cases = ["pair", "uneven_children", "unbalanced"]
    status, report = _conformance(tmp_path, JAX_BUG, "--golden-only", *_each("--case", cases))
    assert status == 1
    checks = {c["name"]: c for c in report["checks"]}
    failed = {name for name, c in checks.items() if c["status"] == "failed"}
    # weights 1/b and |B|/|A| agree where the children of every family have equal sizes
    assert failed == {f"{name}{g}" for name in cases[1:] for g in GRADS}
    assert "own-subtree share" in checks["uneven_children"]["diagnostic"]


@pytest.mark.usefixtures("jax_installed")
@pytest.mark.slow
def test_jax_port_planted_bug_is_shrunk_to_a_small_tree(tmp_path):
    # every new input shape costs the port a compilation: minutes of shrinking
    _rejected(tmp_path, JAX_BUG, "matches_reference", "output", examples=100)


@pytest.mark.usefixtures("jax_installed")
@pytest.mark.slow
def test_jax_port_conforms_on_the_full_suite(tmp_path):
    _full(tmp_path, JAX_PORT)
