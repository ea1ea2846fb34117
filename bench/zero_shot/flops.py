"""Attention FLOPs of dense attention and of HSA over given hierarchies (package docstring)."""

from __future__ import annotations

from collections.abc import Sequence

from hsa_ref import Hierarchy

__all__ = ["attention_flops"]


def attention_flops(trees: Sequence[Hierarchy], head_dim: int, num_heads: int) -> dict[str, int]:
    """Attention FLOPs of one layer over the inputs ``trees`` (module docstring's convention).

    ``dense``: ``4 d n^2`` per head and input; ``hsa``: ``4 d E`` with ``E = tree.num_energies``;
    ``means``: the node means of ``q, k, v``, ``3 d (edges + families)``.
    """
    dense = hsa = means = 0
    for tree in trees:
        n, m = tree.num_leaves, tree.num_families
        dense += 4 * head_dim * n * n
        hsa += 4 * head_dim * tree.num_energies
        means += 3 * head_dim * ((tree.num_nodes - tree.num_trees) + m)
    return {"dense": dense * num_heads, "hsa": hsa * num_heads, "means": means * num_heads}
