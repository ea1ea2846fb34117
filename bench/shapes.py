"""Tree shapes for the sweeps and their work counts (docs/HSA.md section 5).

Shapes:

- ``balanced``: :meth:`Hierarchy.balanced` over ``n`` leaves with branching ``b``; the sweeps in
  ``N`` (fixed ``b``), in ``b`` (fixed ``N``) and in ``d`` use it.
- ``packed``: ``trees`` documents, each a full two-level ``b``-ary tree over ``b * b`` leaves
  (``b + 1`` families of exactly ``b`` children), followed by ``n - trees * b * b`` one-leaf
  trees. At fixed ``n`` and ``b`` the number of families ``M = trees * (b + 1)`` varies over two
  orders of magnitude while every family keeps exactly ``b`` children, so the programme's work
  ``N + M b (b - 1)`` is affine in ``M``. (In one tree whose families all have ``b`` children,
  ``M = (N - 1) / (b - 1)`` is fixed by ``N`` and ``b``; packing is what frees ``M``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hsa_ref import Hierarchy

__all__ = [
    "SHAPES",
    "TreeSums",
    "Work",
    "balanced_work",
    "build",
    "dense_work",
    "programme_work",
    "tree_sums",
]

SHAPES = ("balanced", "packed")


@lru_cache(maxsize=64)
def build(shape: str, n: int, b: int, trees: int = 0) -> Hierarchy:
    """The hierarchy named by ``(shape, n, b, trees)`` (cached: sweeps reuse them)."""
    if shape == "balanced":
        return Hierarchy.balanced(n, b)
    if shape == "packed":
        return _packed(n, b, trees)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _packed(n: int, b: int, trees: int) -> Hierarchy:
    if b < 2:
        raise ValueError(f"packed shape needs b >= 2, got {b}")
    size = b * b
    if not 1 <= trees <= n // size:
        raise ValueError(f"packed shape: trees must lie in 1..{n // size} for n={n}, b={b}")
    fams_per_tree = b + 1
    m = trees * fams_per_tree
    parent = np.full(n + m, -1, dtype=np.int64)
    t = np.arange(trees)
    # Tree t: leaves t*b*b .. (t+1)*b*b - 1; families n + t*(b+1) + j, j = 0..b-1 the lower level
    # (family j holds leaves j*b .. j*b + b - 1 of the tree), j = b the root.
    base = n + t * fams_per_tree
    leaves = np.arange(trees * size)
    tree_of, pos = divmod(leaves, size)
    parent[leaves] = base[tree_of] + pos // b
    lower = (base[:, None] + np.arange(b)[None, :]).ravel()
    parent[lower] = np.repeat(base + b, b)
    return Hierarchy.from_parents(parent, n)


@dataclass(frozen=True)
class Work:
    """Work counts of one attention call.

    ``energies``: scores evaluated per head (``N + sum_f b_f (b_f - 1)`` for the programme,
    ``N**2`` for dense attention). ``flops``: a model, ``2 * heads * (d_k + d_v) * units`` with
    ``units = energies + N + M`` for the programme (each energy is a ``d_k`` dot product and its
    share a ``d_v`` update; each node has ``O(d_k + d_v)`` mean and down-pass work) and
    ``units = N**2`` for dense attention.
    """

    energies: int
    flops: int


def programme_work(h: Hierarchy, *, d_k: int, d_v: int, heads: int) -> Work:
    """Work of the dynamic programme on ``h`` (docs/HSA.md section 5)."""
    e = h.num_energies
    units = e + h.num_leaves + h.num_families
    return Work(energies=e, flops=2 * heads * (d_k + d_v) * units)


def dense_work(n: int, *, d_k: int, d_v: int, heads: int) -> Work:
    """Work of dense attention over ``n`` leaves: ``n**2`` scores, ``2 n**2 (d_k + d_v)`` flops."""
    return Work(energies=n * n, flops=2 * heads * (d_k + d_v) * n * n)


def balanced_work(n: int, b: int) -> int:
    """``Hierarchy.balanced(n, b).num_energies`` without building it.

    Mirrors :meth:`Hierarchy.balanced`: each level of ``m`` nodes becomes ``g = ceil(m / b)``
    families whose sizes differ by at most one.
    """
    total, m = n, n
    while m > 1:
        g = -(-m // b)
        size, extra = divmod(m, g)
        total += extra * (size + 1) * size + (g - extra) * size * (size - 1)
        m = g
    return total


@dataclass(frozen=True)
class TreeSums:
    """Sums over the trees ``t`` of a forest, for work that is quadratic within each tree (the
    float64 reference evaluates every tree on its own over its ``n_t x n_t`` scores).

    ``trees``: the number of trees; ``leaves_sq``: ``sum_t n_t**2``; ``children_leaves_sq``:
    ``sum_t c_t n_t**2`` with ``c_t`` the tree's children (its nodes but the root), one
    ``n_t x n_t`` pass per child; ``families_leaves_sq``: ``sum_t m_t n_t**2`` with ``m_t`` the
    tree's families, one pass per family; ``trees_nodes``: ``trees * (N + M)``.
    """

    trees: int
    leaves_sq: int
    children_leaves_sq: int
    families_leaves_sq: int
    trees_nodes: int


def tree_sums(h: Hierarchy) -> TreeSums:
    """The per-tree sums of ``h`` (exact integers)."""
    _, tree = np.unique(h.root_of, return_inverse=True)
    tree = tree.reshape(-1)
    leaves = np.bincount(tree[: h.num_leaves], minlength=h.num_trees).astype(object)
    nodes = np.bincount(tree, minlength=h.num_trees).astype(object)
    square = leaves**2
    return TreeSums(
        trees=h.num_trees,
        leaves_sq=int(square.sum()),
        children_leaves_sq=int(((nodes - 1) * square).sum()),
        families_leaves_sq=int(((nodes - leaves) * square).sum()),
        trees_nodes=h.num_trees * h.num_nodes,
    )
