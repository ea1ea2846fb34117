"""Automation for hsa-suite: ``nox -s tests``, ``nox -s lint`` and friends.

Every session installs the CPU build of torch first (``torch==2.13.0``), so a test run never
pulls a multi-gigabyte CUDA build.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
TORCH = "torch==2.13.0"


def _install(session: nox.Session, extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (pass pytest arguments after ``--``)."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Lint and format-check with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def main(session: nox.Session) -> None:
    """The main job: the verification summary."""
    _install(session, "test")
    session.run("python", "-m", "hsa_ref.summary", *session.posargs)
