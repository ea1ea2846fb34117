"""Automation for hsa-suite: ``nox -s tests``, ``nox -s lint`` and friends.

Every session installs the CPU build of torch first (``torch==2.13.0``), so a test run never
pulls a multi-gigabyte CUDA build. Sessions install ``hsa_ref`` and ``hsa_fast``; ``bench`` and
``proofs`` are not installed and run as ``python -m ...`` from the checkout's root, where nox
runs every command.
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
    """Run the test suite (pass pytest arguments after ``--``); with jax, so that the JAX
    port is checked too."""
    _install(session, "test,jax")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def proofs(session: nox.Session) -> None:
    """Run the SymPy derivations and write their report (``-- --output PATH`` to move it)."""
    _install(session, "test")
    session.run("python", "-m", "proofs", *session.posargs)


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """HSA conformance harness: ``-- --impl package.module:function`` or ``-- --outputs DIR``.

    Without either, checks ``hsa_fast:hsa``; other options pass through (docs/PORTING.md).
    """
    _install(session, "test")
    args = list(session.posargs)
    if not any(a.split("=")[0] in ("--impl", "--outputs") for a in args):
        args = ["--impl", "hsa_fast:hsa", *args]
    session.run("python", "-m", "hsa_ref.conformance", *args)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Lint and format-check with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def main(session: nox.Session) -> None:
    """The main job: the verification summary, then the benchmark sweep and its plots."""
    _install(session, "bench")
    session.run("python", "-m", "bench.summary", *session.posargs)
    session.run("python", "-m", "bench")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark sweeps (pytest-benchmark): ``-- --quick`` for CI, ``-- --full`` for N to 2**20."""
    _install(session, "bench")
    session.run("python", "-m", "bench", "--no-plots", *session.posargs)


@nox.session(python=PYTHON)
def plots(session: nox.Session) -> None:
    """Plots, fitted exponents and work-count checks from results/bench/<device>/benchmark.json."""
    session.install("numpy>=1.26", "matplotlib>=3.8")
    session.run("python", "-m", "bench.plots", *session.posargs)


@nox.session(python=PYTHON)
def zeroshot(session: nox.Session) -> None:
    """Zero-shot HSA in the pre-trained all-MiniLM-L6-v2: table and plot in results/zero_shot/."""
    _install(session, "zeroshot")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    session.run("python", "-m", "bench.zero_shot", *session.posargs, env=env)


@nox.session(python=PYTHON)
def train(session: nox.Session) -> None:
    """HSA against softmax, trained from scratch on ListOps: results/train/ (``-- --full``: GPU)."""
    _install(session, "train")
    session.run("python", "-m", "bench.train", *session.posargs)
