"""A padded batch as one forest: the layer's ``key_padding_mask`` and the ``transformers`` backend.

A batch of ``B`` sequences of length ``L`` with pads is attended as one forest over its
``B * L`` positions (row-major): the real positions of element ``b``, in order, are the leaves
of its tree, and every pad is a one-leaf tree, which returns its own value and changes nothing
else. :func:`restrict` cuts an element's pads out of a hierarchy over all ``L`` positions;
:func:`padded_forest` packs the elements' trees.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hsa_ref import Hierarchy

__all__ = ["PaddedForest", "padded_forest", "restrict"]


def restrict(hierarchy: Hierarchy, keep: np.ndarray) -> tuple[Hierarchy, np.ndarray]:
    """``hierarchy`` over the leaves where ``keep`` (``(N,)`` bool) holds, in order, without the
    families left with no such leaf; also the id in ``hierarchy`` of every node kept (leaves
    first, then families in increasing id).

    Raises ``ValueError`` when no leaf is kept.
    """
    n, parent = hierarchy.num_leaves, hierarchy.parent_array
    keep = np.asarray(keep, dtype=bool)
    if not keep.any():
        raise ValueError("every position is padding: nothing to attend over")
    real = np.zeros(hierarchy.num_nodes, dtype=np.int64)
    real[:n] = keep
    for nodes in reversed(hierarchy.nodes_by_depth[1:]):
        np.add.at(real, parent[nodes], real[nodes])
    kept = np.concatenate([np.flatnonzero(keep), n + np.flatnonzero(real[n:] > 0)])
    new_id = np.full(hierarchy.num_nodes, -1, dtype=np.int64)
    new_id[kept] = np.arange(kept.size)
    new_parent = np.where(parent[kept] >= 0, new_id[np.maximum(parent[kept], 0)], -1)
    return Hierarchy(new_parent, int(keep.sum())), kept


@dataclass(frozen=True)
class PaddedForest:
    """One forest over the ``B * L`` positions of a padded batch.

    ``element[x]`` is the batch element of forest node ``x`` and ``node[x]`` its id in that
    element's tree, or ``-1`` for a pad (a one-leaf tree).
    """

    forest: Hierarchy
    element: np.ndarray
    node: np.ndarray


def padded_forest(trees: Sequence[Hierarchy], real: np.ndarray) -> PaddedForest:
    """Pack ``trees[b]``, a tree over the real positions of element ``b`` (``real`` ``(B, L)``
    bool, ``True`` at real positions), into one forest over all ``B * L`` positions in which
    every pad is a one-leaf tree. Cached for the last few batches (every layer of a model call
    packs the same one).

    Raises ``ValueError`` when a tree's leaves do not match its element's real positions.
    """
    real = np.asarray(real, dtype=bool)
    return _packed(tuple(trees), real.tobytes(), real.shape)


@functools.lru_cache(maxsize=16)
def _packed(trees: tuple[Hierarchy, ...], mask: bytes, shape: tuple[int, int]) -> PaddedForest:
    real = np.frombuffer(mask, dtype=bool).reshape(shape)
    bsz, length = shape
    if len(trees) != bsz:
        raise ValueError(f"got {len(trees)} hierarchies for a batch of {bsz} inputs")
    n = bsz * length
    parent = np.full(n, -1, dtype=np.int64)  # pads: one-leaf trees
    element = [np.repeat(np.arange(bsz), length)]
    node = [np.full(n, -1, dtype=np.int64)]
    family_parents, next_family = [], n
    for b, tree in enumerate(trees):
        rows = b * length + np.flatnonzero(real[b])
        if tree.num_leaves != rows.size:
            raise ValueError(
                f"hierarchy[{b}] has {tree.num_leaves} leaves, but input {b} has {rows.size} "
                f"tokens (sequence length {length}, {length - rows.size} of them padding)"
            )
        m = tree.num_families
        # tree node x -> forest node: leaves to their positions, families after all leaves
        to_forest = np.concatenate([rows, next_family + np.arange(m)])
        tree_parent = tree.parent_array
        mapped = np.where(tree_parent >= 0, to_forest[np.maximum(tree_parent, 0)], -1)
        parent[rows] = mapped[: rows.size]
        node[0][rows] = np.arange(rows.size)
        family_parents.append(mapped[rows.size :])
        element.append(np.full(m, b))
        node.append(tree.num_leaves + np.arange(m))
        next_family += m
    all_parents = np.concatenate([parent, *family_parents])
    return PaddedForest(Hierarchy(all_parents, n), np.concatenate(element), np.concatenate(node))
