"""Implementations that try to fool or stop the conformance harness instead of computing HSA.

Each must be rejected (exit status 1) or reported as a usage error (exit status 2), never
passed, and none may crash or hang the harness. ``refuses_forests`` is honest: it declines
what it does not support with ``NotImplementedError``.
"""

from __future__ import annotations

import sys
import time

import torch

from hsa_ref import hsa_reference


def exits(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    sys.exit(0)


def zeroes_v_in_place(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    with torch.no_grad():
        v.zero_()
    return torch.zeros_like(v)


def sleeps(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    time.sleep(3600)


def returns_meta(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    return torch.empty(*v.shape, device="meta", dtype=v.dtype)


def returns_sparse(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    return hsa_reference(q, k, v, hierarchy, scale=scale, energy=energy).to_sparse()


def returns_a_list(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    return hsa_reference(q, k, v, hierarchy, scale=scale, energy=energy).tolist()


def refuses_forests(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    if hierarchy.num_trees > 1:
        raise NotImplementedError("forests")
    return hsa_reference(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)


# ---------------------------------------------------------------- reaching into the harness
# Each returns zeros (wrong) and tries to make the harness pass it anyway. In their own process
# they reach nothing but that process.
def _zeros(v):
    return torch.zeros_like(v, requires_grad=v.requires_grad) * 1


def patches_the_registry(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    """Replaces every property's strategy with one that draws nothing."""
    from hypothesis import strategies as st

    from hsa_ref.conformance import properties

    for name, prop in list(properties.PROPERTIES.items()):
        properties.PROPERTIES[name] = properties.Property(
            prop.name,
            prop.description,
            lambda dtype, caps: st.nothing(),
            prop.check,
        )
    return _zeros(v)


def patches_the_rule(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    """Makes every verdict a pass: the limit infinite, the report's failures empty."""
    import math

    from hsa_ref import tolerance
    from hsa_ref.conformance import outcome

    tolerance.ATOL_FACTOR = math.inf
    tolerance.eps = lambda dtype: math.inf
    outcome.Report.failures = property(lambda self: [])
    outcome.Report.passed = property(lambda self: True)
    return _zeros(v)


def exits_cleanly_at_exit(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    """Registers ``os._exit(0)`` to run when the process ends."""
    import atexit
    import os

    atexit.register(os._exit, 0)
    return _zeros(v)


class _Agreeable(torch.Tensor):
    """A tensor whose differences are all zero."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.sub, torch.sub, torch.Tensor.__sub__, torch.Tensor.__rsub__):
            return torch.zeros_like(torch.Tensor._make_subclass(torch.Tensor, args[0]))
        return super().__torch_function__(func, types, args, kwargs or {})


def agreeable_tensor(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    """Zeros, in a tensor subclass whose subtraction from anything gives zero."""
    return _zeros(v).as_subclass(_Agreeable)


def rewrites_the_golden_set(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    """Overwrites every golden case's expected output with zeros (in the folder named by
    ``HSA_CHEAT_GOLDEN``, or the package's own), then answers zeros."""
    import json
    import os
    from pathlib import Path

    from hsa_ref.conformance.formats import GOLDEN_DIR

    folder = Path(os.environ.get("HSA_CHEAT_GOLDEN", GOLDEN_DIR))
    for path in folder.glob("*.json"):
        obj = json.loads(path.read_text())
        if "out" in obj:
            obj["out"] = [[0.0] * len(row) for row in obj["out"]]
            path.write_text(json.dumps(obj))
    return _zeros(v)


def leaves_a_thread(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    """Correct, but leaves a non-daemon thread that never ends."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    return hsa_reference(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)


def keeps_writing(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    """Zeros at first, rewritten with the right answer by a thread after it returns."""
    import threading

    right = hsa_reference(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)
    out = torch.zeros_like(right)

    def later() -> None:
        time.sleep(0.05)
        with torch.no_grad():
            out.copy_(right)

    threading.Thread(target=later, daemon=True).start()
    return out


def segfaults(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    """Native code that crashes the process."""
    import ctypes

    ctypes.string_at(0)
