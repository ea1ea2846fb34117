"""The README's Python examples, and the shell commands of README.md and docs/PORTING.md, run as
written.

Every line of a fenced ``bash`` block is a command (a line ending in ``\\`` continues on the
next). Each runs verbatim with bash from the repository root, with ``python`` the interpreter of
this test run and without ``PYTHONPATH``, so that it works from a fresh checkout; it must exit
with the status its comment states (``# exit status 1``), 0 where none is stated. When a
``text`` block follows a ``bash`` block of one command, it is what the command prints on
stdout, word for word except for the run's duration on the last line. The commands too long,
or needing what a test run does not have, are listed in :data:`EXCLUDED` with the reason; those
needing an optional program or module (:data:`NEEDS`) are skipped where it is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = (README, ROOT / "docs" / "PORTING.md")

EXCLUDED: dict[str, str] = {
    "python3.11 -m pip install nox && nox -s main": (
        "nox: installs packages from the network, then runs the verification summary and the "
        "benchmarks (about twenty minutes)"
    ),
    "python3.11 -m pip install nox && nox -s tests": (
        "nox: installs packages from the network, then runs this test suite"
    ),
    "nox -s bench -- --quick && nox -s plots": "nox; about a minute of timed sweeps",
    "nox -s bench && nox -s plots": "nox; a few minutes of timed sweeps",
    "nox -s bench -- --full && nox -s plots": "nox; sweeps to N = 1,048,576, hours on a CPU",
    "python -m bench --device cuda --full": "needs a CUDA GPU",
    "nox -s zeroshot": "nox; about five minutes",
    "python -m bench.zero_shot": "about five minutes of the pre-trained model on 160 paragraphs",
    "nox -s train": "nox; trains fifteen models, about twenty minutes",
    "python -m bench.train --full --device cuda": "needs a CUDA GPU",
    "python -m bench.train --replot": "rewrites the recorded figures of results/train/",
}
"""Documented commands that this test does not run, each with the reason (the comment of the
command is left out of the key)."""

NEEDS: dict[str, tuple[str, str]] = {
    "python -m hsa_ref.conformance --command node tests/ports/hsa_port.js --examples 10 --quiet": (
        "program",
        "node",
    ),
    "python -m hsa_ref.conformance --impl tests/ports/jax_port.py:hsa --framework jax "
    "--examples 10 --quiet": ("module", "jax"),
}
"""Documented commands that need an optional program or Python module: run where it is
present, skipped with the reason where not."""


def _missing(need: tuple[str, str] | None) -> str:
    """Why a command cannot run here (empty when it can)."""
    if need is None:
        return ""
    kind, name = need
    found = shutil.which(name) if kind == "program" else importlib.util.find_spec(name)
    return "" if found else f"needs the {kind} {name!r}, which is not installed"


DURATION = re.compile(r"^\(\d+(\.\d+)? s\)$", re.M)


@dataclass(frozen=True)
class Command:
    """One documented command: where it is, its text, its exit status and, when the docs show
    it, its stdout."""

    doc: str
    line: int
    text: str
    status: int
    stdout: str | None

    @property
    def key(self) -> str:
        """The command without its comment, words separated by one space."""
        return " ".join(shlex.split(self.text.replace("\\\n", " "), comments=True))


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The lines of the fenced block opening at ``start`` and the index after its end."""
    end = lines.index("```", start + 1)
    return lines[start + 1 : end], end + 1


def documented_commands(path: Path) -> list[Command]:
    """The commands of the ``bash`` blocks of ``path``, with the ``text`` block after each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Command] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        body_start = i + 1
        body, i = _block(lines, i)
        after = i
        while after < len(lines) and not lines[after].strip():
            after += 1
        shown = None
        if after < len(lines) and lines[after].strip() == "```text":
            text, i = _block(lines, after)
            shown = "\n".join(text) + "\n"
        commands: list[tuple[int, str]] = []
        pending = ""
        for offset, line in enumerate(body):
            if not pending:
                first = body_start + offset  # 0-based index of the command's first line
            pending += line
            if line.endswith("\\"):
                pending += "\n"
                continue
            if shlex.split(pending.replace("\\\n", " "), comments=True):  # not a comment line
                commands.append((first, pending))
            pending = ""
        if shown is not None:
            assert len(commands) == 1, f"{path.name}: output shown after several commands"
        for first, text in commands:
            stated = re.search(r"#[^\n]*\bexit status (\d+)", text)
            found.append(
                Command(
                    doc=_name(path),
                    line=first + 1,
                    text=text,
                    status=int(stated.group(1)) if stated else 0,
                    stdout=shown,
                )
            )
    return found


COMMANDS = [c for doc in DOCS for c in documented_commands(doc)]
RUN = [c for c in COMMANDS if c.key not in EXCLUDED]


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README has no Python example"
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)
    assert namespace["y_fast"].shape == namespace["y"].shape


def test_every_documented_command_is_run_or_excluded_with_a_reason():
    keys = {c.key for c in COMMANDS}
    assert not set(EXCLUDED) - keys, "exclusions of commands the docs no longer show"
    assert not set(NEEDS) - keys, "needs of commands the docs no longer show"
    for doc in DOCS:
        ran = [c for c in RUN if c.doc == _name(doc)]
        assert any(c.key.startswith("python -m hsa_ref.conformance ") for c in ran), doc
    assert any(c.status == 1 and c.stdout for c in RUN), "no documented failure is checked"
    assert not [c.key for c in RUN if "..." in c.text], "a command with an ellipsis"


def test_documented_command_parsing(tmp_path):
    doc = tmp_path / "DOC.md"
    doc.write_text(
        "text\n\n```bash\npython -m a --x \\\n    --y   # exit status 1\n```\n\n```text\nout\n"
        "(1.5 s)\n```\n\n```bash\nls   # a comment\n\nnox -s main\n```\n"
    )
    found = documented_commands(doc)
    assert [(c.line, c.key, c.status) for c in found] == [
        (4, "python -m a --x --y", 1),
        (14, "ls", 0),
        (16, "nox -s main", 0),
    ]
    assert found[0].stdout == "out\n(1.5 s)\n"
    assert found[1].stdout is None


@pytest.fixture(scope="module")
def shell_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a fresh shell in which ``python`` is this run's interpreter."""
    bin_dir = tmp_path_factory.mktemp("bin")
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("command", RUN, ids=[f"{c.doc}:{c.line}" for c in RUN])
def test_documented_command_runs(command, shell_env):
    if reason := _missing(NEEDS.get(command.key)):
        pytest.skip(reason)
    done = subprocess.run(
        ["bash", "-c", command.text],
        cwd=ROOT,
        env=shell_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    where = (
        f"{command.doc}:{command.line}: {command.key}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    assert done.returncode == command.status, where
    if command.stdout is not None:
        got = DURATION.sub("(<duration>)", done.stdout)
        assert got == DURATION.sub("(<duration>)", command.stdout), where
