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
