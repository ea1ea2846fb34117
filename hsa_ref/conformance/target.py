"""The implementation under test: what it supports, how it is loaded and called, and what
its attention matrix says when an output fails."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hierarchy import Hierarchy
from ..reference import hsa_attention_matrix
from ..tolerance import (
    DTYPES,
    eps,
    low_precision_dtype,
)
from ..validation import ENERGIES
from .calling import DEFAULT_TIMEOUT, Call, call
from .diagnostics import diagnose

__all__ = [
    "FULL",
    "Capabilities",
    "Impl",
    "ImplementationError",
    "Target",
    "UsageError",
    "device_or_usage_error",
    "dtype_or_usage_error",
    "leaves_contiguous",
    "load_impl",
    "theta_diagnostic",
]

Impl = Callable[..., Any]


class UsageError(Exception):
    """Bad arguments: a malformed ``--impl``, a folder that does not exist, nothing to check."""


class ImplementationError(Exception):
    """The implementation could not even be loaded (it raised, or exited, on import)."""


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


FULL = Capabilities()
"""The capabilities of an implementation that supports everything (the default)."""


# ---------------------------------------------------------------------------- loading
def load_impl(spec: str) -> Impl:
    """The callable named by ``"package.module:function"`` (or ``module:Class.attribute``).

    Raises :class:`UsageError` for a malformed string, a missing module or attribute, or
    something that is not callable, and :class:`ImplementationError` when the module raises
    (or calls ``sys.exit``) while it is imported.
    """
    module_name, sep, attr_path = spec.partition(":")
    parts = attr_path.split(".")
    if (
        not sep
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in parts)
    ):
        raise UsageError(f"--impl must look like package.module:function, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
        raise ImplementationError(f"importing {module_name!r} raised {exc!r}") from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise ImplementationError(f"importing {module_name!r} raised {exc!r}") from None
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj


def dtype_or_usage_error(name: str) -> torch.dtype:
    """The torch dtype named ``name``, one of the checked dtypes, or :class:`UsageError`."""
    if name not in DTYPES:
        raise UsageError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def device_or_usage_error(name: str) -> torch.device:
    """The torch device named ``name`` when it is available, or :class:`UsageError`."""
    try:
        dev = torch.device(name)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise UsageError(f"device {name!r} is not available: {exc}") from None
    return dev


@dataclass(frozen=True)
class Target:
    """How the implementation under test is called: dtype, device, time limit, capabilities."""

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


# ---------------------------------------------------------------------------- diagnostics
def theta_diagnostic(target: Target, q, k, hierarchy: Hierarchy, kwargs: dict) -> str:
    """The first three of :func:`.diagnostics.diagnose`'s findings for ``q, k`` (2-D), one a
    line, most telling first."""
    n = hierarchy.num_leaves
    eye = torch.eye(n, dtype=q.dtype)
    got = call(
        target.impl, q, k, eye, hierarchy, kwargs, device=target.device, timeout=target.timeout
    )
    if not got.ok:
        return f"(theta could not be read with v = I: {got.problem or got.unsupported})"
    kw = {key: kwargs[key] for key in ("scale", "energy", "positions") if key in kwargs}
    expected = hsa_attention_matrix(q, k, hierarchy, **kw)
    low = hsa_attention_matrix(q, k, hierarchy, **kw, dtype=low_precision_dtype(q.dtype))
    scaling = eps(q.dtype) / eps(low_precision_dtype(q.dtype))
    limit = 2 * (low.double() - expected).abs().max().item() * scaling + 8 * eps(q.dtype)
    found = diagnose(got.out, expected, hierarchy, limit)
    return "\n".join(found[:3])
