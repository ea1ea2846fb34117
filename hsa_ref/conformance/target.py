"""The implementation under test: what it supports, how it is called (in its own process
through ``hsa-port/1``, or in the harness's own for debugging), and what its attention matrix
says when an output fails."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..hierarchy import Hierarchy
from ..reference import hsa_attention_matrix
from ..tolerance import DTYPES, eps, low_precision_dtype
from ..validation import ENERGIES
from .calling import DEFAULT_TIMEOUT, Call, call
from .diagnostics import diagnose
from .loading import ImplementationError, UsageError, device_or_usage_error, load_impl
from .process import PortFailure, PortProcess
from .protocol import Declaration, ProtocolError, parse_reply, request

__all__ = [
    "FULL",
    "Capabilities",
    "Impl",
    "ImplementationError",
    "InProcessTarget",
    "PortTarget",
    "Target",
    "UsageError",
    "device_or_usage_error",
    "dtype_or_usage_error",
    "leaves_contiguous",
    "load_impl",
    "python_port_command",
    "python_port_environment",
    "theta_diagnostic",
]

Impl = Callable[..., Any]


# ---------------------------------------------------------------------------- capabilities
def leaves_contiguous(h: Hierarchy) -> bool:
    """Whether every node's leaves are a contiguous range of rows (as a recursion over token
    ranges assumes)."""
    for node in range(h.num_nodes):
        leaves = h.leaves_under(node)
        if leaves[-1] - leaves[0] + 1 != len(leaves):
            return False
    return True


@dataclass(frozen=True)
class Capabilities:
    """What an implementation supports; inputs outside it are not run."""

    energies: tuple[str, ...] = ENERGIES
    forests: bool = True
    positions: bool = True
    gradients: bool = True
    shuffled_leaves: bool = True
    batches: bool = True

    def excludes(
        self, h: Hierarchy, energy: str, has_positions: bool, batched: bool = False
    ) -> str:
        """Why an input lies outside the declared set ("" when it does not)."""
        if not self.batches and batched:
            return "batch dimensions"
        if energy not in self.energies:
            return f"the {energy} energy"
        if not self.forests and h.num_trees > 1:
            return "a forest"
        if not self.positions and has_positions:
            return "positions"
        if not self.shuffled_leaves and not leaves_contiguous(h):
            return "non-contiguous leaves"
        return ""

    def flags(self) -> list[str]:
        """The command-line flags that declare these capabilities."""
        out = [f"--energy {e}" for e in self.energies] if self.energies != ENERGIES else []
        out += ["--single-tree"] * (not self.forests) + ["--without-positions"] * (
            not self.positions
        )
        out += ["--contiguous-leaves"] * (not self.shuffled_leaves)
        out += ["--without-batches"] * (not self.batches)
        out += ["--forward-only"] * (not self.gradients)
        return out

    @classmethod
    def declared(cls, declaration: Declaration) -> Capabilities:
        """What a port's declaration says it supports."""
        return cls(
            energies=declaration.energies,
            forests=declaration.forests,
            positions=declaration.positions,
            gradients=declaration.gradients,
            shuffled_leaves=declaration.shuffled_leaves,
            batches=declaration.batches,
        )

    def __and__(self, other: Capabilities) -> Capabilities:
        """What both support."""
        return Capabilities(
            energies=tuple(e for e in self.energies if e in other.energies),
            forests=self.forests and other.forests,
            positions=self.positions and other.positions,
            gradients=self.gradients and other.gradients,
            shuffled_leaves=self.shuffled_leaves and other.shuffled_leaves,
            batches=self.batches and other.batches,
        )


FULL = Capabilities()
"""The capabilities of an implementation that supports everything (the default)."""


# ---------------------------------------------------------------------------- options
def dtype_or_usage_error(name: str) -> torch.dtype:
    """The torch dtype named ``name``, one of the checked dtypes, or :class:`UsageError`."""
    if name not in DTYPES:
        raise UsageError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


class Target:
    """How the implementation under test is called: ``target(q, k, v, hierarchy, kwargs,
    grad_out)`` gives a :class:`~.calling.Call`. ``dtype`` is what inputs are given in,
    ``capabilities`` what the implementation supports."""

    dtype: torch.dtype
    capabilities: Capabilities

    def __call__(
        self, q, k, v, hierarchy: Hierarchy, kwargs: dict[str, Any], grad_out=None
    ) -> Call:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the target holds (a child process)."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class InProcessTarget(Target):
    """A Python callable run in the harness's own process (``--in-process``): for a
    debugger or a profiler. It could reach the harness's memory; its calls get fresh copies
    of their inputs and a time limit (:func:`~.calling.call`), not a process of their own."""

    impl: Impl
    dtype: torch.dtype = torch.float64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout: float | None = DEFAULT_TIMEOUT
    capabilities: Capabilities = FULL

    def __call__(
        self, q, k, v, hierarchy: Hierarchy, kwargs: dict[str, Any], grad_out=None
    ) -> Call:
        wants = grad_out if self.capabilities.gradients else None
        return call(
            self.impl,
            q,
            k,
            v,
            hierarchy,
            kwargs,
            grad_out=wants,
            device=self.device,
            timeout=self.timeout,
        )


def python_port_environment() -> dict[str, str]:
    """The environment of a served Python implementation: this one, with ``PYTHONPATH`` set
    to this process's ``sys.path``, so that ``--impl`` finds every module the harness itself
    can import (a test folder put on the path by pytest, for instance)."""
    paths = dict.fromkeys(p or os.getcwd() for p in sys.path)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def python_port_command(
    spec: str,
    capabilities: Capabilities = FULL,
    *,
    framework: str = "torch",
    device: str = "cpu",
    python: str = sys.executable,
) -> list[str]:
    """The command that serves the Python callable ``spec`` over ``hsa-port/1``
    (:mod:`.serve`) with these capabilities declared."""
    command = [python, "-m", "hsa_ref.conformance.serve", "--impl", spec]
    command += ["--framework", framework, "--device", device, "--encoding", "base64"]
    for flag in capabilities.flags():
        command += flag.split()
    return command


class PortTarget(Target):
    """A port in its own process (:class:`~.process.PortProcess`), any language: started
    here, its declaration read, then one request per call. ``capabilities`` narrow what it
    declares (never widen it)."""

    def __init__(
        self,
        command: Sequence[str] | str,
        *,
        dtype: torch.dtype = torch.float64,
        timeout: float | None = DEFAULT_TIMEOUT,
        capabilities: Capabilities = FULL,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if isinstance(command, str):
            command = shlex.split(command)
        self.dtype = dtype
        self.process = PortProcess(command, timeout=timeout, cwd=cwd, env=env)
        self._next = 0
        try:
            declaration = self.process.start()
        except PortFailure as exc:
            self.process.close()
            if exc.usage:
                raise UsageError(str(exc)) from None
            raise ImplementationError(str(exc)) from None
        name = str(dtype).removeprefix("torch.")
        if name not in declaration.dtypes:
            self.process.close()
            raise UsageError(f"the port declares the dtypes {list(declaration.dtypes)}, not {name}")
        self.declaration = declaration
        self.capabilities = Capabilities.declared(declaration) & capabilities

    @property
    def name(self) -> str:
        d = self.declaration
        return f"{d.name} {d.version}".strip()

    def __call__(
        self, q, k, v, hierarchy: Hierarchy, kwargs: dict[str, Any], grad_out=None
    ) -> Call:
        wants = grad_out if self.capabilities.gradients else None
        self._next += 1
        line = request(
            self._next,
            q,
            k,
            v,
            hierarchy,
            kwargs,
            dtype=str(self.dtype).removeprefix("torch."),
            grad_out=wants,
            encoding=self.declaration.encoding,
        )
        try:
            reply = parse_reply(self.process.exchange(line), self._next)
        except PortFailure as exc:
            return Call(problem=str(exc))
        except ProtocolError as exc:
            self.process.close()  # out of step: the next call starts afresh
            return Call(problem=f"the port broke the protocol: {exc}")
        if reply.unsupported:
            return Call(unsupported=reply.unsupported)
        if reply.error:
            return Call(problem=f"raised {reply.error}")
        assert reply.out is not None
        result = Call(out=torch.from_numpy(reply.out))
        if wants is not None:
            names = ["q", "k", "v"] + (["positions"] if "positions" in kwargs else [])
            missing = [n for n in names if n not in reply.grads]
            if missing:
                result.problem = f"no gradient for {', '.join(missing)} in the reply"
                return result
            result.grads = {n: torch.from_numpy(np.asarray(reply.grads[n])) for n in names}
        return result

    def close(self) -> None:
        self.process.close()


# ---------------------------------------------------------------------------- diagnostics
def theta_diagnostic(target: Target, q, k, hierarchy: Hierarchy, kwargs: dict) -> str:
    """The first three of :func:`.diagnostics.diagnose`'s findings for ``q, k`` (2-D), one a
    line, most telling first."""
    n = hierarchy.num_leaves
    eye = torch.eye(n, dtype=q.dtype)
    got = target(q, k, eye, hierarchy, kwargs)
    if not got.ok:
        return f"(theta could not be read with v = I: {got.problem or got.unsupported})"
    kw = {key: kwargs[key] for key in ("scale", "energy", "positions") if key in kwargs}
    expected = hsa_attention_matrix(q, k, hierarchy, **kw)
    low = hsa_attention_matrix(q, k, hierarchy, **kw, dtype=low_precision_dtype(q.dtype))
    scaling = eps(q.dtype) / eps(low_precision_dtype(q.dtype))
    limit = 2 * (low.double() - expected).abs().max().item() * scaling + 8 * eps(q.dtype)
    found = diagnose(got.out, expected, hierarchy, limit)
    return "\n".join(found[:3])
