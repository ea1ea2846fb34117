"""A hierarchy compiled once into device tensors for the dynamic programme.

The upward pass runs height by height (a family's children all have smaller heights); within a
height, families are grouped into buckets of similar branching and padded only up to the largest
branching of their bucket, so a bucket is a handful of batched tensor ops. The downward pass runs
depth by depth over families, then once over all leaves.

Leaves and families are stored apart: per-leaf data stays in the caller's ``(Z, N, d)`` tensors,
per-family data in buffers of ``M + 1`` rows whose last row (``pad = M``) is a padding family
that roots point to. Children of a bucket are addressed by flat slot ``family * width + j``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from hsa_ref import Hierarchy

__all__ = ["FamilyBucket", "HSALayout", "compile_hierarchy", "compile_weighted", "derived"]


@dataclass(frozen=True)
class FamilyBucket:
    """Families of one height with similar branching, padded to ``width`` children.

    Family ids are local (``node - N``). ``log_size`` ``(f, width)`` holds ``log|C|`` (``-inf``
    in padded slots), ``weight`` ``(f, width)`` holds ``|B| / |A|`` (0 in padded slots).
    Children are read in one of three ways: ``leaf_start`` is set when slot ``s`` holds leaf
    ``leaf_start + s`` for every slot (a view, no copy); otherwise ``slot_leaf`` / ``slot_family``
    ``(f * width,)`` name the leaf / family read by each slot (0 / ``pad`` where the slot holds
    something else) and ``slot_is_leaf`` says which applies. ``leaf_slots, leaf_ids`` and
    ``family_slots, family_ids`` list the real slots of each kind, for writing results back.
    ``unit_sizes``: every slot holds a child of one leaf (``log_size`` is all zero).
    """

    family: torch.Tensor
    width: int
    log_size: torch.Tensor
    weight: torch.Tensor
    leaf_start: int | None
    slot_leaf: torch.Tensor | None
    slot_family: torch.Tensor | None
    slot_is_leaf: torch.Tensor | None
    leaf_slots: torch.Tensor
    leaf_ids: torch.Tensor
    family_slots: torch.Tensor
    family_ids: torch.Tensor
    has_leaves: bool
    has_families: bool
    unit_sizes: bool

    @property
    def num_families(self) -> int:
        return int(self.family.shape[0])


@dataclass(frozen=True)
class HSALayout:
    """Everything the programme needs about one hierarchy, on one device.

    ``up``: buckets ordered so that every child is final before its family is processed;
    ``down``: per family depth ``t >= 1``, ``(families, parents)`` as local ids;
    ``leaf_parent``: ``(N,)`` local parent of each leaf (``pad`` for a one-leaf tree);
    ``root_leaves``: the leaves that are one-leaf trees;
    ``leaf_tree``: ``(N,)`` the tree of each leaf, numbered ``0 .. num_trees - 1``;
    ``tree_size``: ``(num_trees,)`` float64, the number of leaves of each tree (the sum of its
    leaves' sizes in a :func:`compile_weighted` layout).
    ``num_energies`` is the number of energies the programme evaluates,
    :attr:`Hierarchy.num_energies <hsa_ref.Hierarchy.num_energies>` (leaf self terms and sibling
    blocks, padding excluded); ``num_padded_energies`` counts the buckets' slots, padding included.
    """

    num_leaves: int
    num_families: int
    up: tuple[FamilyBucket, ...]
    down: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    leaf_parent: torch.Tensor
    root_leaves: torch.Tensor
    leaf_tree: torch.Tensor
    tree_size: torch.Tensor
    num_trees: int
    device: torch.device
    num_energies: int
    num_padded_energies: int
    _derived: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def pad(self) -> int:
        return self.num_families


def _bucket_key(branching: np.ndarray) -> np.ndarray:
    """Bins 1, 2, 3-4, 5-8, 9-16, ...: padding never doubles a family's width."""
    return np.ceil(np.log2(np.maximum(branching, 1))).astype(np.int64)


def _bucket(
    h: Hierarchy, fam: np.ndarray, counts: np.ndarray, device: torch.device
) -> tuple[FamilyBucket, int]:
    n, m = h.num_leaves, h.num_families
    offsets, order = h.children_csr
    b = h.branching[fam]
    width = int(b.max())
    valid = np.arange(width)[None, :] < b[:, None]
    first = offsets[fam][:, None] + np.arange(width)[None, :]
    kids = np.where(valid, order[np.minimum(first, len(order) - 1)], -1)
    kid_counts = np.where(valid, counts[np.maximum(kids, 0)], 1.0)
    is_leaf = valid & (kids < n)
    is_family = valid & (kids >= n)
    flat_kids, flat_leaf, flat_fam = kids.reshape(-1), is_leaf.reshape(-1), is_family.reshape(-1)
    leaf_slots, family_slots = np.flatnonzero(flat_leaf), np.flatnonzero(flat_fam)

    def t(x, dtype=torch.long):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)

    leaf_start = None
    if flat_leaf.all() and np.array_equal(flat_kids, flat_kids[0] + np.arange(flat_kids.size)):
        leaf_start = int(flat_kids[0])
    bucket = FamilyBucket(
        family=t(fam - n),
        width=width,
        log_size=t(np.where(valid, np.log(kid_counts), -np.inf), torch.float64),
        weight=t(np.where(valid, kid_counts / counts[fam][:, None], 0.0), torch.float64),
        leaf_start=leaf_start,
        slot_leaf=None if leaf_start is not None else t(np.where(flat_leaf, flat_kids, 0)),
        slot_family=None if leaf_start is not None else t(np.where(flat_fam, flat_kids - n, m)),
        slot_is_leaf=None if leaf_start is not None else t(flat_leaf, torch.bool),
        leaf_slots=t(leaf_slots),
        leaf_ids=t(flat_kids[leaf_slots]),
        family_slots=t(family_slots),
        family_ids=t(flat_kids[family_slots] - n),
        has_leaves=bool(leaf_slots.size),
        has_families=bool(family_slots.size),
        unit_sizes=bool(valid.all() and (kid_counts == 1).all()),
    )
    return bucket, len(fam) * width * (width - 1)


def _build(h: Hierarchy, device: torch.device, leaf_sizes: np.ndarray | None = None) -> HSALayout:
    n, total = h.num_leaves, h.num_nodes
    m = total - n
    if leaf_sizes is None:
        counts = h.leaf_counts.astype(np.float64)
    else:  # |B| of every node when leaf i stands for leaf_sizes[i] leaves
        counts = np.zeros(total, dtype=np.float64)
        counts[:n] = leaf_sizes
        for nodes in reversed(h.nodes_by_depth[1:]):
            np.add.at(counts, h.parent_array[nodes], counts[nodes])
    families = np.arange(n, total)
    height = h.height[families]
    key = _bucket_key(h.branching[families])
    up, num_padded = [], n
    for level in np.unique(height):
        at_level = height == level
        for k in np.unique(key[at_level]):
            bucket, padded = _bucket(h, families[at_level & (key == k)], counts, device)
            up.append(bucket)
            num_padded += padded
    parent = h.parent_array
    down = []
    for nodes in h.nodes_by_depth[1:]:
        fam_nodes = nodes[nodes >= n]
        if fam_nodes.size:
            down.append(
                (
                    torch.as_tensor(fam_nodes - n, dtype=torch.long, device=device),
                    torch.as_tensor(parent[fam_nodes] - n, dtype=torch.long, device=device),
                )
            )
    leaf_parent = np.where(parent[:n] >= 0, parent[:n] - n, m)
    roots, leaf_tree = np.unique(h.root_of[:n], return_inverse=True)
    leaf_tree = leaf_tree.reshape(-1)
    return HSALayout(
        num_leaves=n,
        num_families=m,
        up=tuple(up),
        down=tuple(down),
        leaf_parent=torch.as_tensor(leaf_parent, dtype=torch.long, device=device),
        root_leaves=torch.as_tensor(
            np.flatnonzero(parent[:n] < 0), dtype=torch.long, device=device
        ),
        leaf_tree=torch.as_tensor(leaf_tree, dtype=torch.long, device=device),
        tree_size=torch.as_tensor(
            np.bincount(leaf_tree, weights=counts[:n], minlength=len(roots)),
            dtype=torch.float64,
            device=device,
        ),
        num_trees=len(roots),
        device=device,
        num_energies=h.num_energies,
        num_padded_energies=num_padded,
    )


_CACHE: weakref.WeakKeyDictionary[Hierarchy, dict[torch.device, HSALayout]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()
_DERIVED_LOCK = threading.Lock()
T = TypeVar("T")


def compile_hierarchy(hierarchy: Hierarchy, device: torch.device | str = "cpu") -> HSALayout:
    """The layout of ``hierarchy`` on ``device``, built once and cached.

    The cache keeps one layout per (hierarchy, device) for as long as the hierarchy object
    lives; equal hierarchies share it. Its tensors are ordinary ones even when the first call
    comes under ``torch.inference_mode()``, so a later call that needs autograd can save them.
    """
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"hierarchy must be an hsa_ref.Hierarchy, got {type(hierarchy).__name__}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _LOCK:
        per_device = _CACHE.setdefault(hierarchy, {})
        layout = per_device.get(device)
        if layout is None:
            with torch.inference_mode(False):
                layout = per_device[device] = _build(hierarchy, device)
    return layout


def compile_weighted(
    hierarchy: Hierarchy, leaf_sizes: np.ndarray, device: torch.device | str = "cpu"
) -> HSALayout:
    """The layout of ``hierarchy`` whose leaf ``i`` stands for ``leaf_sizes[i] >= 1`` leaves
    (a subtree summarised by its means, as in the tree above a sequence-parallel cut): the
    weights ``|B| / |A|`` and ``log|C|`` count them. Not cached."""
    sizes = np.asarray(leaf_sizes, dtype=np.float64)
    if sizes.shape != (hierarchy.num_leaves,) or not (sizes >= 1).all():
        raise ValueError(
            f"leaf_sizes must hold {hierarchy.num_leaves} sizes >= 1, got shape {sizes.shape}"
        )
    with torch.inference_mode(False):
        return _build(hierarchy, torch.device(device), sizes)


def derived(layout: HSALayout, name: str, build: Callable[[HSALayout], T]) -> T:
    """``build(layout)``, computed once per layout and kept on it under ``name``.

    For a backend's own form of a layout (the Triton kernels' plan): it lives exactly as long
    as the layout, which :func:`compile_hierarchy`'s cache keeps while the hierarchy lives.
    Built outside inference mode, like the layout itself.
    """
    value = layout._derived.get(name)
    if value is None:
        with _DERIVED_LOCK:
            value = layout._derived.get(name)
            if value is None:
                with torch.inference_mode(False):
                    value = layout._derived[name] = build(layout)
    return value
