"""The golden table: every case of the set, as the recipe that makes it (:class:`CaseSpec`).

A case is named, described, given a tree, sizes, options and the seed of its inputs; the trees
are fixed or drawn by :func:`random_tree`, which is the same on every machine. A change to the
table that a port must notice raises :data:`hsa_ref.conformance.formats.SET_VERSION`;
regenerate the files with ``python -m hsa_ref.conformance.golden_set --write``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ...hierarchy import Hierarchy

__all__ = ["HUGE_SCORE", "CaseSpec", "case_specs", "random_tree"]

HUGE_SCORE = 1e4


@dataclass(frozen=True)
class CaseSpec:
    """How one golden case is made: its tree, sizes, options and the seed of its inputs.

    ``scale=None`` means the default ``1/sqrt(d_k)`` (implementations are called with
    ``scale=None``); ``max_score`` instead picks the scale so that the largest ``|s_ij|`` within
    a tree equals it. ``inputs`` is ``"normal"``, ``"keys_are_queries"`` or ``"repeated_rows"``;
    ``offset`` is added to every entry of ``q`` and ``k`` (inputs far from the origin),
    ``value_offset`` to every entry of ``v`` (outputs far from zero: zeros fail everywhere);
    positional vectors are ``positions_scale`` times standard normal.
    """

    name: str
    description: str
    hierarchy: Hierarchy
    d_k: int
    d_v: int
    seed: int
    energy: str = "dot"
    scale: float | None = None
    max_score: float | None = None
    positions_dim: int = 0
    inputs: str = "normal"
    value_scale: float = 1.0
    offset: float = 0.0
    value_offset: float = 0.0
    positions_scale: float = 0.5


def _random_nested(rng: random.Random, n: int, max_b: int, depth_left: int) -> Any:
    """A random nested-list tree over ``n`` placeholder leaves with some single-child families."""
    if n == 1:
        node: Any = None
        for _ in range(rng.choice([0, 0, 0, 1, 2]) if depth_left > 0 else 0):
            node = [node]
            depth_left -= 1
        return node
    if depth_left <= 1:
        return [None] * n
    if rng.random() < 0.1:
        return [_random_nested(rng, n, max_b, depth_left - 1)]
    b = rng.randint(2, min(n, max_b))
    cuts = sorted(rng.sample(range(1, n), b - 1))
    sizes = [hi - lo for lo, hi in zip([0, *cuts], [*cuts, n], strict=True)]
    return [_random_nested(rng, size, max_b, depth_left - 1) for size in sizes]


def _number(nested: Any, counter: list[int]) -> Any:
    if nested is None:
        counter[0] += 1
        return counter[0] - 1
    return [_number(child, counter) for child in nested]


def _shuffled(h: Hierarchy, seed: int) -> Hierarchy:
    """``h`` with leaf rows and family ids permuted (trees of a forest interleave)."""
    rng = random.Random(seed)
    leaves = list(range(h.num_leaves))
    families = list(h.families)
    rng.shuffle(leaves)
    rng.shuffle(families)
    return h.relabel(leaves, families)


def random_tree(seed: int, num_leaves: int, max_branching: int, max_depth: int) -> Hierarchy:
    """A deterministic random tree (the same on every machine: Python's ``random``)."""
    rng = random.Random(seed)
    nested = _random_nested(rng, num_leaves, max_branching, max_depth)
    return Hierarchy.from_nested(_number(nested, [0]) if nested is not None else 0)


def _caterpillar(depth: int) -> Hierarchy:
    nested: Any = [0, 1]
    for leaf in range(2, depth + 1):
        nested = [nested, leaf]
    return Hierarchy.from_nested(nested)


def case_specs() -> list[CaseSpec]:
    """The golden set: every shape and option that an implementation can get wrong."""
    one_family = Hierarchy.one_family
    unbalanced = Hierarchy.from_nested(
        [0, [1, 2, [3, 4, 5, [6]]], [[7, 8], 9], [[[10]]], [11, 12, 13, 14, 15, 16]]
    )
    single_children = Hierarchy.from_nested([[[[0, 1]]], [[2]], [3, [[4, 5]]], [[[6, 7, 8]]]])
    big_and_small = Hierarchy.from_nested([0, list(range(1, 21)), [21, [22, 23]]])
    large_b_deep = Hierarchy.from_nested(
        [list(range(40)), [[40, 41], [42, [43, 44, 45]]], [[[46]]], 47]
    )
    interleaved = _shuffled(
        Hierarchy.forest(
            [
                Hierarchy.balanced(4, 2),
                Hierarchy.from_nested([[0, 1], 2, [3, [4]]]),
                Hierarchy.from_parents([-1], 1),
                Hierarchy.from_nested([[[0]]]),
                Hierarchy.balanced(6, 3),
            ]
        ),
        7,
    )
    chains_forest = _shuffled(
        Hierarchy.forest([_caterpillar(5), Hierarchy.from_nested([[[[0]]]]), unbalanced]), 11
    )
    singletons = Hierarchy.from_parents([-1] * 5, 5)
    mixed = _shuffled(random_tree(3, 30, 5, 5), 3)
    big = _shuffled(random_tree(5, 200, 9, 6), 5)
    deep_and_wide = _shuffled(random_tree(41, 400, 160, 6), 41)
    return [
        # trees: every shape of family, depth and forest
        CaseSpec(
            "one_leaf",
            "a one-leaf tree (the root is a leaf): returns v",
            Hierarchy.from_parents([-1], 1),
            d_k=3,
            d_v=2,
            seed=1,
        ),
        CaseSpec(
            "one_leaf_under_chain",
            "one leaf under three single-child families: returns v",
            Hierarchy.from_nested([[[0]]]),
            d_k=4,
            d_v=3,
            seed=2,
        ),
        CaseSpec("pair", "the smallest family: two leaves", one_family(2), d_k=4, d_v=4, seed=3),
        CaseSpec(
            "one_family",
            "one family over 7 leaves: softmax attention",
            one_family(7),
            d_k=4,
            d_v=5,
            seed=4,
        ),
        CaseSpec(
            "one_family_large_b",
            "one family with b = 96: softmax attention",
            one_family(96),
            d_k=4,
            d_v=3,
            seed=5,
            scale=0.75,
        ),
        CaseSpec(
            "balanced_binary",
            "balanced binary tree, N = 32, depth 5",
            Hierarchy.balanced(32, 2),
            d_k=6,
            d_v=4,
            seed=6,
        ),
        CaseSpec(
            "balanced_ternary",
            "balanced ternary tree, N = 27",
            Hierarchy.balanced(27, 3),
            d_k=4,
            d_v=4,
            seed=7,
        ),
        CaseSpec(
            "balanced_b8",
            "balanced tree of b = 8 over 64 leaves",
            Hierarchy.balanced(64, 8),
            d_k=8,
            d_v=4,
            seed=8,
        ),
        CaseSpec(
            "uneven_segments",
            "tokens / sentences / paragraphs of uneven lengths",
            Hierarchy.from_segments([[3, 5, 2, 4, 1, 3, 6], [2, 3, 2]]),
            d_k=5,
            d_v=3,
            seed=9,
        ),
        CaseSpec(
            "deep_chain",
            "caterpillar of depth 12: each family a subtree and one leaf",
            _caterpillar(12),
            d_k=4,
            d_v=3,
            seed=10,
        ),
        CaseSpec(
            "single_child_families",
            "chains of single-child families at several depths",
            single_children,
            d_k=4,
            d_v=3,
            seed=11,
        ),
        CaseSpec(
            "unbalanced",
            "unbalanced, mixed-depth tree with leaves beside families",
            unbalanced,
            d_k=4,
            d_v=4,
            seed=12,
        ),
        CaseSpec(
            "leaf_beside_big_family",
            "children of sizes 1, 20 and 3: the |B|/|A| weights",
            big_and_small,
            d_k=4,
            d_v=3,
            seed=13,
        ),
        CaseSpec(
            "uneven_children",
            "a family with children of 1 and 30 leaves beside a family of 8, max |s| = 5: "
            "F(A) weighs its children by their sizes",
            Hierarchy.from_nested([[0, list(range(1, 31))], list(range(31, 39))]),
            d_k=4,
            d_v=3,
            seed=43,
            max_score=5.0,
        ),
        CaseSpec(
            "large_b_in_deep_tree",
            "a family of 40 leaves beside small deep subtrees",
            large_b_deep,
            d_k=4,
            d_v=3,
            seed=14,
        ),
        CaseSpec(
            "random_mixed",
            "random tree, N = 30, b <= 5, shuffled ids",
            mixed,
            d_k=4,
            d_v=4,
            seed=15,
        ),
        CaseSpec(
            "random_large",
            "random tree, N = 200, b <= 9, depth <= 6, shuffled ids",
            big,
            d_k=4,
            d_v=2,
            seed=16,
        ),
        CaseSpec(
            "forest_interleaved",
            "forest of 5 trees (two one-leaf) with interleaved rows",
            interleaved,
            d_k=4,
            d_v=3,
            seed=17,
        ),
        CaseSpec(
            "forest_of_one_leaf_trees",
            "5 one-leaf trees and no family: returns v",
            singletons,
            d_k=3,
            d_v=3,
            seed=18,
        ),
        CaseSpec(
            "forest_with_chains",
            "forest of a caterpillar, a chained leaf, an unbalanced tree",
            chains_forest,
            d_k=4,
            d_v=3,
            seed=19,
        ),
        # sizes and scales
        CaseSpec(
            "dv_not_dk", "d_k = 3, d_v = 9", unbalanced, d_k=3, d_v=9, seed=20, value_scale=3.0
        ),
        CaseSpec("dk_one", "d_k = 1, d_v = 5", Hierarchy.balanced(9, 3), d_k=1, d_v=5, seed=21),
        CaseSpec(
            "custom_scale", "explicit scale 0.8125", unbalanced, d_k=6, d_v=3, seed=22, scale=0.8125
        ),
        CaseSpec(
            "negative_scale",
            "explicit negative scale -1.5",
            Hierarchy.balanced(12, 3),
            d_k=4,
            d_v=3,
            seed=23,
            scale=-1.5,
        ),
        CaseSpec(
            "tiny_scores",
            "scale 1e-6: close to uniform averaging",
            unbalanced,
            d_k=4,
            d_v=3,
            seed=24,
            scale=1e-6,
        ),
        # the sizes ports are written for: head sizes, wide families, many leaves
        CaseSpec(
            "head_size_64",
            "d_k = d_v = 64 on a random tree of 24 leaves",
            random_tree(37, 24, 6, 4),
            d_k=64,
            d_v=64,
            seed=37,
        ),
        CaseSpec(
            "head_size_128",
            "d_k = d_v = 128, balanced b = 4 over 16 leaves",
            Hierarchy.balanced(16, 4),
            d_k=128,
            d_v=128,
            seed=38,
        ),
        CaseSpec(
            "wide_family_512",
            "one family of b = 512 leaves: softmax attention over 512",
            one_family(512),
            d_k=4,
            d_v=2,
            seed=39,
        ),
        CaseSpec(
            "many_leaves",
            "N = 512, balanced b = 8, depth 3",
            Hierarchy.balanced(512, 8),
            d_k=2,
            d_v=2,
            seed=40,
        ),
        CaseSpec(
            "deep_and_wide",
            "random tree of 400 leaves (families of up to 61 children, depth 7), shuffled ids",
            deep_and_wide,
            d_k=3,
            d_v=2,
            seed=41,
        ),
        # scores up to 1e4: no overflow
        CaseSpec(
            "huge_scores",
            "max |s| = 1e4 on an unbalanced tree: no overflow",
            unbalanced,
            d_k=4,
            d_v=3,
            seed=25,
            max_score=HUGE_SCORE,
            value_offset=4.0,
        ),
        CaseSpec(
            "huge_scores_one_family",
            "max |s| = 1e4 on one family",
            one_family(10),
            d_k=4,
            d_v=3,
            seed=26,
            max_score=HUGE_SCORE,
            value_offset=-4.0,
        ),
        CaseSpec(
            "huge_scores_forest",
            "max |s| = 1e4 on an interleaved forest",
            interleaved,
            d_k=4,
            d_v=3,
            seed=27,
            max_score=HUGE_SCORE,
            value_offset=4.0,
        ),
        # the distance energy
        CaseSpec(
            "distance_one_family",
            "distance energy, one family",
            one_family(8),
            d_k=4,
            d_v=3,
            seed=28,
            energy="distance",
        ),
        CaseSpec(
            "distance_mixed",
            "distance energy, random mixed-depth tree",
            mixed,
            d_k=5,
            d_v=3,
            seed=29,
            energy="distance",
        ),
        CaseSpec(
            "distance_forest",
            "distance energy, forest with chains, scale 0.3",
            chains_forest,
            d_k=4,
            d_v=4,
            seed=30,
            energy="distance",
            scale=0.3,
        ),
        CaseSpec(
            "distance_far_from_origin",
            "distance energy, q and k = 40 + noise: no cancellation",
            mixed,
            d_k=5,
            d_v=3,
            seed=36,
            energy="distance",
            offset=40.0,
        ),
        CaseSpec(
            "distance_huge_scores",
            "distance energy, max |s| = 1e4",
            unbalanced,
            d_k=4,
            d_v=3,
            seed=31,
            energy="distance",
            max_score=HUGE_SCORE,
            value_offset=4.0,
        ),
        # ties
        CaseSpec(
            "ties_keys_are_queries",
            "k = q: equal scores on the diagonal",
            unbalanced,
            d_k=4,
            d_v=3,
            seed=32,
            inputs="keys_are_queries",
        ),
        CaseSpec(
            "ties_repeated_rows",
            "every query row equal",
            Hierarchy.balanced(16, 4),
            d_k=4,
            d_v=3,
            seed=33,
            inputs="repeated_rows",
        ),
        # positional vectors
        CaseSpec(
            "positions",
            "positional vectors (d_p = 3) on a mixed-depth tree",
            unbalanced,
            d_k=4,
            d_v=3,
            seed=34,
            positions_dim=3,
        ),
        CaseSpec(
            "positions_large",
            "positional vectors of entries up to about 10 (d_p = 2), v far from zero",
            Hierarchy.balanced(27, 3),
            d_k=4,
            d_v=3,
            seed=42,
            positions_dim=2,
            positions_scale=4.0,
            value_offset=3.0,
        ),
        CaseSpec(
            "positions_forest_distance",
            "positions on an interleaved forest, distance energy",
            interleaved,
            d_k=4,
            d_v=3,
            seed=35,
            energy="distance",
            positions_dim=2,
        ),
    ]
