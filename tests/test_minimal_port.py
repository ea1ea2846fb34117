"""The minimal port of docs/PORTING.md ("The port protocol"): the page shows the file as it is,
the harness passes it, and rejects it with one planted mistake."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from hsa_ref.conformance import main

ROOT = Path(__file__).resolve().parents[1]
PORT = ROOT / "tests" / "ports" / "minimal_port.py"
PORTING = ROOT / "docs" / "PORTING.md"
SECTION = "## The port protocol: `hsa-port/1`"

# One line of the port, and what replaces it: F(A) weighs its children alike instead of by
# their sizes |B| / |A|.
CORRECT = "        F[a] = size @ lse / size.sum()\n"
UNIFORM = "        F[a] = lse.mean()\n"

pytestmark = pytest.mark.usefixtures("one_thread")


def _section() -> str:
    text = PORTING.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end >= 0 else len(text)]


def _command(path: Path) -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))}"


def test_the_page_shows_the_port_as_it_is():
    blocks = re.findall(r"^```python\n(.*?)^```$", _section(), re.M | re.S)
    assert len(blocks) == 1, "the section shows one Python block"
    assert blocks[0] == PORT.read_text(encoding="utf-8")


def test_the_minimal_port_passes_a_short_run(capsys):
    status = main(["--command", _command(PORT), "--examples", "5", "--quiet"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "0 failed" in out
    assert "gradients not checked" in out


def test_the_minimal_port_with_uniform_child_weights_fails(tmp_path, capsys):
    source = PORT.read_text(encoding="utf-8")
    assert source.count(CORRECT) == 1
    mutant = tmp_path / "uniform_children.py"
    mutant.write_text(source.replace(CORRECT, UNIFORM), encoding="utf-8")
    args = ["--command", _command(mutant), "--golden-only", "--quiet"]
    status = main([*args, "--case", "leaf_beside_big_family", "--case", "one_family"])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "FAIL golden   leaf_beside_big_family" in out
    assert "FAIL golden   one_family" not in out  # one family: its children are all leaves
