"""The nested-signal hierarchy: constructors, derived facts, JSON, and every validation error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hsa_ref import TREE_FORMAT, Hierarchy
from hsa_ref.conformance.strategies import hierarchies


def test_from_parents_facts():
    # Leaves 0..4; family 5 = {0, 1}, family 6 = {2, 3, 5}, root 7 = {6, 4}.
    h = Hierarchy.from_parents([5, 5, 6, 6, 7, 6, 7, -1], num_leaves=5)
    assert h.parent == [5, 5, 6, 6, 7, 6, 7, -1]
    assert all(type(x) is int for x in h.parent)
    assert (h.num_leaves, h.num_families, h.num_nodes) == (5, 3, 8)
    assert h.max_branching == 3
    assert h.roots == [7]
    assert h.children(6) == [2, 3, 5]
    assert h.children(0) == []
    assert h.leaf_counts.tolist() == [1, 1, 1, 1, 1, 2, 4, 5]
    assert h.depth.tolist() == [3, 3, 2, 2, 1, 2, 1, 0]
    assert h.height.tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert h.max_depth == 3
    assert h.leaves_under(6) == [0, 1, 2, 3]
    assert h.ancestors(0) == [0, 5, 6, 7]
    assert h.sibling_block(0, 1) == (0, 1)
    assert h.sibling_block(0, 2) == (5, 2)
    assert h.sibling_block(2, 0) == (2, 5)
    assert h.sibling_block(1, 4) == (6, 4)
    assert h.sibling_block(3, 3) == (3, 3)


def test_balanced_power_and_non_power():
    h = Hierarchy.balanced(16, 4)
    assert h.num_families == 5
    assert sorted(set(h.branching[16:].tolist())) == [4]
    h = Hierarchy.balanced(10, 3)  # 10 -> 4 groups (3, 3, 2, 2) -> 2 groups -> root
    assert h.num_families == 7
    assert h.max_branching == 3
    assert h.leaf_counts[h.roots[0]] == 10
    assert Hierarchy.balanced(1, 2).num_families == 0


def test_from_nested_and_segments_agree():
    nested = Hierarchy.from_nested([[0, 1, 2], [3, 4], [5, 6, 7, 8]])
    segments = Hierarchy.from_segments([[3, 2, 4]])
    # from_nested numbers families depth-first (root first); from_segments level by level.
    assert nested == segments.relabel(family_map=[10, 11, 12, 9])
    # tokens -> sentences -> paragraphs -> document
    doc = Hierarchy.from_segments([[2, 3, 1, 4], [2, 2]])
    assert doc.num_leaves == 10
    assert doc.num_families == 4 + 2 + 1
    assert doc.num_trees == 1
    batch = Hierarchy.from_segments([[2, 3, 1, 4], [2, 2]], root=False)
    assert batch.num_trees == 2


def test_forest_packs_trees():
    a, b = Hierarchy.balanced(3, 2), Hierarchy.from_nested([0, [1, 2]])
    f = Hierarchy.forest([a, b, Hierarchy.balanced(1, 2)])
    assert f.num_leaves == 7
    assert f.num_trees == 3
    roots = f.root_of[:7].tolist()
    assert roots[0] == roots[1] == roots[2]
    assert roots[3] == roots[4] == roots[5] != roots[0]
    assert roots[6] == 6
    assert f.sibling_block(0, 4) is None


def test_one_leaf_trees():
    h = Hierarchy.from_parents([-1], 1)
    assert (h.num_families, h.max_branching, h.max_depth, h.roots) == (0, 0, 0, [0])
    assert Hierarchy.from_nested(0) == h


def test_one_family():
    assert Hierarchy.one_family(4) == Hierarchy.from_parents([4, 4, 4, 4, -1], 4)
    assert Hierarchy.one_family(1).parent == [1, -1]  # a family with a single child
    assert Hierarchy.one_family(9).num_energies == 81  # softmax's N^2
    with pytest.raises(ValueError, match="num_leaves"):
        Hierarchy.one_family(0)
    with pytest.raises(TypeError, match="num_leaves"):
        Hierarchy.one_family(2.0)


def test_json_round_trip_and_format():
    h = Hierarchy.from_segments([[2, 1, 3], [2, 1]])
    obj = json.loads(h.to_json())
    assert obj == {"format": TREE_FORMAT, "num_leaves": 6, "parent": h.parent}
    assert Hierarchy.from_json(h.to_json()) == h
    assert Hierarchy.from_json(h.to_json().encode()) == h


@given(hierarchies(max_leaves=40, max_branching=12))
def test_strategy_hierarchies_are_consistent(h):
    assert Hierarchy.from_json(h.to_json()) == h
    assert hash(Hierarchy.from_json(h.to_json())) == hash(h)
    counts = h.leaf_counts
    for a in h.families:
        kids = h.children(a)
        assert counts[a] == sum(counts[c] for c in kids)
        assert h.height[a] == 1 + max(h.height[c] for c in kids)
        assert all(h.depth[c] == h.depth[a] + 1 for c in kids)
    assert sum(counts[r] for r in h.roots) == h.num_leaves
    assert h.max_branching == max((len(h.children(a)) for a in h.families), default=0)


@given(hierarchies(max_leaves=12))
def test_num_energies_counts_the_distinct_sibling_blocks(h):
    """One energy per leaf (its block with itself) and per ordered pair of distinct siblings."""
    n = h.num_leaves
    blocks = {h.sibling_block(i, j) for i in range(n) for j in range(n)} - {None}
    assert h.num_energies == len(blocks)


@given(hierarchies(max_leaves=12), st.data())
def test_sibling_blocks_partition_each_tree(h, data):
    i = data.draw(st.integers(0, h.num_leaves - 1))
    j = data.draw(st.integers(0, h.num_leaves - 1))
    block = h.sibling_block(i, j)
    if h.root_of[i] != h.root_of[j]:
        assert block is None
        return
    b, c = block
    assert i in h.leaves_under(b)
    assert j in h.leaves_under(c)
    if i != j:
        assert b != c
        assert h.parent[b] == h.parent[c]


def test_relabel_permutes():
    h = Hierarchy.from_nested([[0, 1], [2, [3, 4]]])
    r = h.relabel([4, 3, 2, 1, 0], [8, 7, 6, 5])
    assert (r.num_leaves, r.num_families) == (5, 4)
    assert sorted(r.leaves_under(r.roots[0])) == [0, 1, 2, 3, 4]
    assert r.sibling_block(4, 3) == (4, 3)  # old leaves 0 and 1 are siblings


# ---------------------------------------------------------------- validation, one test each
@pytest.mark.parametrize(
    ("parent", "num_leaves", "match"),
    [
        ([2, 3, 3, 2], 2, "cycle"),  # 2 -> 3 -> 2
        ([1, 1, -1], 1, "cycle: node 1 is its own parent"),
        ([2, 5, -1], 2, "out of range"),
        ([2, -2, -1], 2, "out of range"),
        ([1, -1, -1], 2, "leaf 1 has a child"),
        ([2, 2, -1, -1], 2, "internal node 3 has no children"),
        ([2, 2, -1], 4, "num_leaves = 4 exceeds"),
        ([2, 2, -1], 3, "leaf 2 has a child"),  # num_leaves too large by one
        ([3, 3, 4, 4, -1], 2, "internal node 2 has no children"),  # too small
        ([], 1, "empty hierarchy"),
        ([-1], 0, "num_leaves must be at least 1"),
    ],
)
def test_invalid_parents_raise_value_error(parent, num_leaves, match):
    with pytest.raises(ValueError, match=match):
        Hierarchy.from_parents(parent, num_leaves)


@pytest.mark.parametrize(
    ("parent", "num_leaves"),
    [
        ([2.0, 2, -1], 2),
        (["2", 2, -1], 2),
        ([True, 2, -1], 2),
        ([2, 2, -1], 2.0),
        (None, 2),
        ("21", 2),
    ],
)
def test_non_integer_ids_raise_type_error(parent, num_leaves):
    with pytest.raises(TypeError):
        Hierarchy.from_parents(parent, num_leaves)


def test_numpy_and_tensor_parents_accepted():
    h = Hierarchy.from_parents(np.array([2, 2, -1]), np.int64(2))
    assert h == Hierarchy.from_parents(torch.tensor([2, 2, -1]), 2)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "malformed"),
        ("[1, 2]", "must be an object"),
        ('{"format": "hsa-tree/2", "num_leaves": 1, "parent": [-1]}', "format"),
        ('{"num_leaves": 1, "parent": [-1]}', "format"),
        ('{"format": "hsa-tree/1", "parent": [-1]}', "lacks"),
        ('{"format": "hsa-tree/1", "num_leaves": 1, "parent": [-1], "x": 1}', "unknown keys"),
        ('{"format": "hsa-tree/1", "num_leaves": 1, "parent": 5}', "must be a list"),
        ('{"format": "hsa-tree/1", "num_leaves": 2, "parent": [-1]}', "exceeds"),
    ],
)
def test_bad_json_raises_value_error(text, match):
    with pytest.raises(ValueError, match=match):
        Hierarchy.from_json(text)


def test_from_json_wrong_type():
    with pytest.raises(TypeError):
        Hierarchy.from_json({"format": TREE_FORMAT})


@pytest.mark.parametrize(
    ("nested", "error", "match"),
    [
        ([[0, 1], []], ValueError, "empty family"),
        ([0, 0], ValueError, "duplicated"),
        ([0, 2], ValueError, "missing"),
        ([0, "a"], TypeError, "integer"),
        ([0, 1.5], TypeError, "integer"),
    ],
)
def test_bad_nested(nested, error, match):
    with pytest.raises(error, match=match):
        Hierarchy.from_nested(nested)


@pytest.mark.parametrize(
    ("levels", "error", "match"),
    [
        ([], ValueError, "empty"),
        ([[2, 0]], ValueError, ">= 1"),
        ([[2, 2], [3]], ValueError, "adds up to 3"),
        ([[2, 2.5]], TypeError, "integer"),
        ([[]], ValueError, "empty"),
    ],
)
def test_bad_segments(levels, error, match):
    with pytest.raises(error, match=match):
        Hierarchy.from_segments(levels)


@pytest.mark.parametrize(
    ("args", "error"),
    [((0, 2), ValueError), ((5, 1), ValueError), ((5, 2.0), TypeError)],
)
def test_bad_balanced(args, error):
    with pytest.raises(error):
        Hierarchy.balanced(*args)


def test_bad_queries():
    h = Hierarchy.balanced(4, 2)
    with pytest.raises(ValueError, match="out of range"):
        h.children(7)
    with pytest.raises(ValueError, match="not a leaf"):
        h.sibling_block(0, 4)
    with pytest.raises(ValueError, match="permutation"):
        h.relabel([0, 0, 1, 2])
    with pytest.raises(TypeError):
        Hierarchy.forest([h, "tree"])


# ---------------------------------------------------------------- hardened constructors
@pytest.mark.parametrize("huge", [2**63, 10**39, -(2**70)])
def test_huge_ids_raise_value_error(huge):
    with pytest.raises(ValueError, match=r"parent\[0\] = -?\d+ is out of range"):
        Hierarchy.from_parents([huge, 2, -1], 2)
    text = json.dumps({"format": TREE_FORMAT, "num_leaves": 2, "parent": [2, huge, -1]})
    with pytest.raises(ValueError, match=r"parent\[1\] = -?\d+ is out of range"):
        Hierarchy.from_json(text)
    with pytest.raises(ValueError, match="exceeds"):
        Hierarchy.from_parents([2, 2, -1], huge if huge > 0 else 10**40)


@pytest.mark.parametrize("parent", [{0: 2, 1: 2, 2: -1}, {2, -1}, frozenset({-1})])
def test_mappings_and_sets_are_not_parent_lists(parent):
    with pytest.raises(TypeError, match=f"got {type(parent).__name__}"):
        Hierarchy.from_parents(parent, 2)


def test_forest_of_a_non_sequence():
    for bad in (None, 3, Hierarchy.balanced(4, 2)):
        with pytest.raises(TypeError, match="sequence of Hierarchy objects"):
            Hierarchy.forest(bad)


def test_long_cycle_message_is_cut():
    n = 300_000  # leaf 0 under family 1; families 1 .. n-1 form one cycle
    parent = [1, *range(2, n), 1]
    with pytest.raises(ValueError, match="cycle among nodes") as info:
        Hierarchy.from_parents(parent, 1)
    assert len(str(info.value)) < 300
    assert f"({n - 1} in all)" in str(info.value)


def test_from_nested_any_depth():
    chain = 0
    for _ in range(100_000):
        chain = [chain]
    h = Hierarchy.from_nested(chain)
    assert (h.num_leaves, h.num_families, h.max_depth) == (1, 100_000, 100_000)
    assert h == Hierarchy.from_parents([100_000, -1, *range(1, 100_000)], 1)


def test_from_nested_numbers_families_depth_first():
    h = Hierarchy.from_nested([[0, [1, 2]], [3]])  # families in pre-order: 4, 5, 6, 7
    assert h.parent == [5, 6, 6, 7, -1, 4, 5, 4]


def test_from_nested_refuses_self_containing_and_shared_lists():
    loop = [[0, 1], [2]]
    loop[1].append(loop)
    with pytest.raises(ValueError, match=r"list at nested\[1\]\[1\] appears more than once"):
        Hierarchy.from_nested(loop)
    shared = [1]
    with pytest.raises(ValueError, match="more than once"):
        Hierarchy.from_nested([[0], shared, [shared]])


def test_from_nested_messages_stay_short():
    deep = "x"
    for _ in range(5_000):
        deep = [deep]
    with pytest.raises(TypeError, match=r"\(depth 5001\) must be an integer") as info:
        Hierarchy.from_nested([0, deep])
    assert len(str(info.value)) < 200
    with pytest.raises(ValueError, match=r"\(\d+ in all\)") as info:
        Hierarchy.from_nested([0] * 50 + list(range(100, 150)))
    assert len(str(info.value)) < 400
