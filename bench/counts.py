"""Exact counts of what one attention call does, for the cost model (:mod:`bench.cost_model`).

Two sources, both read at run time, so they follow the code that actually runs:

- :func:`count_dispatch` runs a call once under a ``TorchDispatchMode`` and counts the ATen
  operators it dispatches (each one a fixed cost on the host: argument checks, dispatch,
  allocation), the views among them (metadata only) and the elements the others write;
- :func:`schedule_counts` reads the schedule of an ``hsa_fast`` layout: its buckets (up pass), its
  depths (down pass), the child slots ``sum f w`` and the block entries ``sum f w**2`` that the
  buckets form, padding included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hsa_fast.layout import HSALayout

__all__ = ["DispatchCount", "ScheduleCounts", "count_dispatch", "schedule_counts"]


@dataclass(frozen=True)
class DispatchCount:
    """Operators dispatched by one call: ``ops`` in all, ``views`` of them (no kernel runs), and
    ``elements``, the sum of the output sizes of the other ``ops - views`` (in-place ones too)."""

    ops: int
    views: int
    elements: int


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = self.views = self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        if func.is_view:
            self.views += 1
        else:
            self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def count_dispatch(fn: Callable[[], Any]) -> DispatchCount:
    """Call ``fn()`` once and count the ATen operators it dispatches (its result is dropped).

    Operators that a composite one decomposes into are counted as they are dispatched; code that
    launches kernels without going through ATen (Triton kernels) is not seen.
    """
    counter = _Counter()
    with counter:
        fn()
    return DispatchCount(ops=counter.ops, views=counter.views, elements=counter.elements)


@dataclass(frozen=True)
class ScheduleCounts:
    """The schedule of one layout.

    ``buckets``: batches of families of the up pass; ``depths``: steps of the down pass;
    ``families``: ``M``; ``slots``: ``sum over buckets of f * w`` (children read, padding
    included); ``block_entries``: ``sum over buckets of f * w**2`` (the entries of the ``w x w``
    energy blocks, diagonal and padding included).
    """

    buckets: int
    depths: int
    families: int
    slots: int
    block_entries: int


def schedule_counts(layout: HSALayout) -> ScheduleCounts:
    """Count the schedule of ``layout`` (``TypeError`` for anything else)."""
    if not isinstance(layout, HSALayout):
        raise TypeError(f"layout must be an hsa_fast HSALayout, got {type(layout).__name__}")
    return ScheduleCounts(
        buckets=len(layout.up),
        depths=len(layout.down),
        families=layout.num_families,
        slots=sum(b.num_families * b.width for b in layout.up),
        block_entries=sum(b.num_families * b.width**2 for b in layout.up),
    )
