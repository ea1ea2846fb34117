"""A port runs in its own process (hsa-port/1): the messages, the process's failures, and
nothing a port does in its process reaching the harness's verdict."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hsa_ref import Hierarchy
from hsa_ref.conformance import PortTarget, UsageError, main, run
from hsa_ref.conformance.formats import GOLDEN_DIR, digests, load_cases
from hsa_ref.conformance.process import PortFailure, PortProcess
from hsa_ref.conformance.protocol import (
    ProtocolError,
    StartError,
    decode_array,
    encode_array,
    parse_declaration,
    parse_reply,
    request,
)

TESTS = Path(__file__).resolve().parent
CHEATS = TESTS / "harness_cheats.py"
BUGS = TESTS / "planted_bugs.py"
FORWARD = ["--forward-only"]

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- messages
@pytest.mark.parametrize("encoding", ["json", "base64"])
def test_arrays_round_trip_exactly(encoding):
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    x[0, 0, 0] = 2.0**-1074  # the smallest subnormal
    back = decode_array(json.loads(json.dumps(encode_array(x, encoding))), "x")
    assert np.array_equal(back, x.numpy())
    assert back.shape == (2, 3, 4)


def test_non_finite_numbers_read_as_nan_and_inf():
    obj = {"shape": [4], "data": [None, "NaN", "Infinity", "-Infinity"]}
    values = decode_array(obj, "out")
    assert math.isnan(values[0])
    assert math.isnan(values[1])
    assert values[2] == math.inf
    assert values[3] == -math.inf


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([1, 2], "array object"),
        ({"shape": [2], "data": [1.0]}, "2 numbers"),
        ({"shape": [1], "data": ["one"]}, "not a number"),
        ({"shape": [-1], "data": []}, "non-negative"),
        ({"shape": [2], "base64": "AAAA"}, "bytes"),
    ],
)
def test_malformed_arrays_are_named(obj, match):
    with pytest.raises(ProtocolError, match=match):
        decode_array(obj, "out")


def test_declarations():
    line = json.dumps(
        {
            "format": "hsa-port/1",
            "name": "p",
            "version": "1",
            "dtypes": ["float32"],
            "capabilities": {"energies": ["dot"], "forests": False},
        }
    )
    d = parse_declaration(line)
    assert d.dtypes == ("float32",)
    assert d.energies == ("dot",)
    assert not d.forests
    assert d.gradients
    assert d.encoding == "json"
    for bad, match in [
        ("hello", "not JSON"),
        ('{"format": "other"}', "hsa-port/1"),
        ('{"format": "hsa-port/1", "dtypes": ["float8"]}', "dtypes"),
        ('{"format": "hsa-port/1", "dtypes": ["float64"], "capabilities": {"x": 1}}', "unknown"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            parse_declaration(bad)
    with pytest.raises(StartError, match="no such"):
        parse_declaration('{"format": "hsa-port/1", "error": "no such module", "usage": true}')


def test_requests_and_replies():
    h = Hierarchy.balanced(4, 2)
    q = torch.randn(4, 3, dtype=torch.float64)
    line = request(7, q, q, q, h, {"scale": None, "energy": "dot"}, dtype="float32")
    obj = json.loads(line)
    assert obj["id"] == 7
    assert obj["dtype"] == "float32"
    assert obj["scale"] is None
    assert obj["tree"] == h.to_dict()
    assert obj["grad_out"] is None
    reply = parse_reply(json.dumps({"id": 7, "out": encode_array(q)}), 7)
    assert np.array_equal(reply.out, q.numpy())
    assert parse_reply('{"id": 7, "unsupported": "forests"}', 7).unsupported == "forests"
    assert "boom" in parse_reply('{"id": 7, "error": "boom"}', 7).error
    with pytest.raises(ProtocolError, match="id"):
        parse_reply(json.dumps({"id": 8, "out": encode_array(q)}), 7)
    with pytest.raises(ProtocolError, match="not JSON"):
        parse_reply("Traceback (most recent call last):", 7)


# ---------------------------------------------------------------------------- the process
def _script(tmp_path: Path, body: str) -> list[str]:
    """A tiny port: declares itself, then runs ``body`` for each request line."""
    path = tmp_path / "port.py"
    path.write_text(
        textwrap.dedent(
            """
            import json, os, signal, sys, time
            print(json.dumps({"format": "hsa-port/1", "name": "t", "version": "0",
                              "dtypes": ["float64"]}), flush=True)
            for line in sys.stdin:
                request = json.loads(line)
            """
        )
        + textwrap.indent(textwrap.dedent(body), " " * 4)
    )
    return [sys.executable, str(path)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("sys.exit(3)", "exited with status 3"),
        ("os.kill(os.getpid(), signal.SIGSEGV)", "signal 11"),
        ("print('oops', flush=True)", "not JSON"),
        ("time.sleep(60)", "timed out: the port did not send its reply within 1 s"),
        ("sys.stderr.write('it went wrong here'); sys.stderr.flush(); sys.exit(1)",
         "it went wrong here"),
    ],
)  # fmt: skip
def test_a_failing_port_fails_that_check_and_is_restarted(tmp_path, body, expected):
    target = PortTarget(_script(tmp_path, body), timeout=1.0)
    with target:
        h = Hierarchy.balanced(2, 2)
        q = torch.zeros(2, 1, dtype=torch.float64)
        for _ in range(2):  # the second call runs in a fresh process
            got = target(q, q, q, h, {"scale": None, "energy": "dot"})
            assert expected in got.problem, got.problem
        assert target.process.restarts >= 1


def test_a_port_that_never_declares_itself_cannot_start(tmp_path):
    silent = tmp_path / "silent.py"
    silent.write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(Exception, match="declaration within 1 s"):
        PortTarget([sys.executable, str(silent)], timeout=1.0)
    with pytest.raises(Exception, match="declares the dtypes"):
        PortTarget(_script(tmp_path, "pass"), dtype=torch.float16)


def test_the_process_is_ended_with_its_children(tmp_path):
    with PortProcess(_script(tmp_path, "pass"), timeout=5.0) as port:
        port.start()
        proc = port._proc
        assert proc is not None
        assert proc.poll() is None
    assert proc.poll() is not None
    with pytest.raises(PortFailure, match="cannot start"):
        PortProcess(["/no/such/program"], timeout=1.0).start()


# ---------------------------------------------------------------------------- python ports
def test_a_python_implementation_runs_in_a_child_process():
    report = run("hsa_fast:hsa", cases=["pair", "unbalanced"], examples=2, properties=[])
    assert report.passed, report.format()
    wrong = run(f"{BUGS}:forest_leak", cases=["forest_interleaved"], properties=[])
    assert not wrong.passed
    with pytest.raises(UsageError, match="has no attribute"):
        run(f"{BUGS}:no_such_function", properties=[])


@pytest.mark.parametrize(
    "cheat",
    ["patches_the_registry", "patches_the_rule", "exits_cleanly_at_exit", "agreeable_tensor",
     "keeps_writing"],
)  # fmt: skip
def test_nothing_a_port_does_in_its_process_reaches_the_verdict(cheat):
    """Each answers zeros and tries to make the harness accept them; each fails, every time."""
    for _ in range(2):
        report = run(
            f"{CHEATS}:{cheat}",
            cases=["pair", "unbalanced"],
            properties=["matches_reference"],
            examples=3,
            shrink=False,
        )
        assert not report.passed
        assert {o.name for o in report.failures} >= {"pair", "unbalanced", "matches_reference"}


def test_a_segfault_fails_its_check_and_the_run_goes_on():
    report = run(f"{CHEATS}:segfaults", cases=["pair", "one_leaf"], properties=[])
    assert [o.status for o in report.outcomes if o.kind == "golden"][:2] == ["failed", "failed"]
    assert all("signal 11" in o.detail for o in report.failures)


def test_a_port_cannot_rewrite_the_golden_set(tmp_path, monkeypatch):
    """The cases are read before the port starts; a set that was rewritten since it shipped is
    refused, so a second run cannot pass on tampered answers."""
    import hsa_ref.conformance.formats as formats
    import hsa_ref.conformance.golden_set.shipped as shipped

    copy = tmp_path / "golden"
    shutil.copytree(GOLDEN_DIR, copy)
    monkeypatch.setattr(formats, "GOLDEN_DIR", copy)
    monkeypatch.setattr(shipped, "SHA256", digests(copy))
    monkeypatch.setenv("HSA_CHEAT_GOLDEN", str(copy))
    first = run(f"{CHEATS}:rewrites_the_golden_set", golden_dir=copy, properties=[], cases=["pair"])
    assert not first.passed  # judged on the cases as they were when the run began
    assert json.loads((copy / "pair.json").read_text())["out"][0][0] == 0.0
    with pytest.raises(UsageError, match="not the one this version of hsa-suite ships"):
        run("hsa_fast:hsa", golden_dir=copy, properties=[])
    assert load_cases()  # the package's own set is untouched


def test_a_port_that_leaves_a_thread_does_not_keep_the_harness(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hsa_ref.conformance", "--impl", f"{CHEATS}:leaves_a_thread",
         "--case", "pair", "--golden-only", *FORWARD],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 checks: 1 passed" in done.stdout


# ---------------------------------------------------------------------------- nothing lost
def test_saving_failures_never_writes_into_a_golden_folder_or_over_files(tmp_path):
    golden = tmp_path / "golden"
    shutil.copytree(GOLDEN_DIR, golden)
    before = sorted(p.name for p in golden.iterdir())
    argv = ["--impl", f"{BUGS}:forest_leak", "--golden", str(golden), "--golden-only"]
    assert main([*argv, "--save-failures", str(golden)]) == 2
    assert sorted(p.name for p in golden.iterdir()) == before
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert main([*argv, "--save-failures", str(full)]) == 2
    assert (full / "notes.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    assert main([*argv, "--case", "forest_interleaved", "--save-failures", str(fresh)]) == 1
    assert (fresh / "forest_interleaved.json").is_file()
    assert sorted(p.name for p in golden.iterdir()) == before
