"""The structure of a nested signal: a forest whose leaves carry the vectors.

Nodes are numbered ``0 .. N+M-1``. Leaves are ``0 .. N-1`` (the rows of ``q``, ``k``, ``v``);
internal nodes (families) are ``N .. N+M-1`` in any order. ``parent[x]`` is a node id, or ``-1``
for a root. Several roots are independent trees packed together: attention never crosses trees.
"""

from __future__ import annotations

import json
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Set
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["MAX_NODES", "TREE_FORMAT", "Hierarchy"]

TREE_FORMAT = "hsa-tree/1"

MAX_NODES = 2**31 - 1
"""The most nodes a hierarchy may have: node ids fit a signed 32-bit integer, as the GPU
kernels address them. Larger requests raise ``ValueError`` before anything is allocated."""

MAX_JSON_DIGITS = 1000
"""The longest integer (in decimal digits) that hierarchy JSON may hold. Longer ones are refused
before they are converted (no id or count comes near it; Python's own default limit, 4,300
digits, would fail with a message about its settings)."""


def _as_int(value: Any, what: str) -> int:
    """``value`` as a plain int; ``TypeError`` for bools, floats, strings and the like."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


MAX_LISTED = 10
"""Error messages list at most this many ids."""


def _check_size(num_nodes: int, what: str) -> None:
    if num_nodes > MAX_NODES:
        raise ValueError(
            f"{what} is too large: it needs at least {num_nodes:,} nodes, more than "
            f"MAX_NODES = {MAX_NODES:,}"
        )


def _listed(ids: Sequence[int]) -> str:
    """``ids`` for an error message, cut to :data:`MAX_LISTED` entries."""
    if len(ids) <= MAX_LISTED:
        return str(list(ids))
    return f"[{', '.join(map(str, ids[:MAX_LISTED]))}, ...] ({len(ids)} in all)"


def _json_int(digits: str) -> int:
    """An integer of hierarchy JSON; ``ValueError`` past :data:`MAX_JSON_DIGITS` digits."""
    length = len(digits.lstrip("-"))
    if length > MAX_JSON_DIGITS:
        raise ValueError(
            f"an integer of {length} digits, more than the {MAX_JSON_DIGITS} allowed (no id or "
            "count comes near)"
        )
    return int(digits)


def _as_int_list(values: Any, what: str) -> list[int]:
    if isinstance(values, str | bytes | Mapping | Set) or not isinstance(values, Iterable):
        raise TypeError(
            f"{what} must be a sequence of integers (list, tuple, array), "
            f"got {type(values).__name__}"
        )
    if hasattr(values, "tolist") and not isinstance(values, list):  # numpy arrays, torch tensors
        values = values.tolist()
    return [_as_int(x, f"{what}[{i}]") for i, x in enumerate(values)]


class Hierarchy:
    """An immutable, validated forest over ``num_leaves`` leaves.

    Build one with :meth:`from_parents`, :meth:`balanced`, :meth:`from_nested`,
    :meth:`from_segments`, :meth:`forest` or :meth:`from_json`. Invalid structures raise
    ``ValueError`` (``TypeError`` for values of the wrong type) naming the offending node.
    Instances are hashable and compare by structure, so they can key caches.
    """

    __slots__ = ("__dict__", "__weakref__", "_num_leaves", "_parent")

    def __init__(self, parent: Sequence[int], num_leaves: int) -> None:
        num_leaves = _as_int(num_leaves, "num_leaves")
        par = _as_int_list(parent, "parent")
        n = len(par)
        if n == 0:
            raise ValueError(
                "empty hierarchy: parent has no entries (a tree needs at least one leaf)"
            )
        if num_leaves < 1:
            raise ValueError(f"num_leaves must be at least 1, got {num_leaves}")
        if num_leaves > n:
            raise ValueError(
                f"num_leaves = {num_leaves} exceeds the number of nodes len(parent) = {n}"
            )
        bad = next((x for x, p in enumerate(par) if not -1 <= p < n), None)
        if bad is not None:
            raise ValueError(
                f"parent[{bad}] = {par[bad]} is out of range: ids are -1 (root) or 0..{n - 1}"
            )
        arr = np.asarray(par, dtype=np.int64)
        selfloop = np.flatnonzero(arr == np.arange(n))
        if selfloop.size:
            x = int(selfloop[0])
            raise ValueError(f"cycle: node {x} is its own parent")
        leaf_parent = np.flatnonzero((arr >= 0) & (arr < num_leaves))
        if leaf_parent.size:
            x = int(leaf_parent[0])
            raise ValueError(
                f"leaf {par[x]} has a child (node {x}); leaves are 0..{num_leaves - 1} and have "
                "no children (is num_leaves right?)"
            )
        num_children = np.bincount(arr[arr >= 0], minlength=n)
        childless = np.flatnonzero(num_children[num_leaves:] == 0)
        if childless.size:
            x = int(childless[0]) + num_leaves
            raise ValueError(
                f"internal node {x} has no children; internal nodes are {num_leaves}..{n - 1} and "
                "each needs at least one child (is num_leaves right?)"
            )
        self._parent = arr
        self._parent.setflags(write=False)
        self._num_leaves = num_leaves
        self._check_acyclic()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_parents(cls, parent: Sequence[int], num_leaves: int) -> Hierarchy:
        """The forest given by a parent list (docs/HSA.md section 1)."""
        return cls(parent, num_leaves)

    @classmethod
    def one_family(cls, num_leaves: int) -> Hierarchy:
        """One family over all ``num_leaves`` leaves (node ``num_leaves`` is the root): HSA on
        it is softmax attention (docs/HSA.md section 4). One leaf gives a family with a single
        child."""
        num_leaves = _as_int(num_leaves, "num_leaves")
        if num_leaves < 1:
            raise ValueError(f"num_leaves must be at least 1, got {num_leaves}")
        _check_size(num_leaves + 1, f"one_family({num_leaves})")
        return cls([num_leaves] * num_leaves + [-1], num_leaves)

    @classmethod
    def balanced(cls, num_leaves: int, branching: int) -> Hierarchy:
        """A balanced ``branching``-ary tree over ``num_leaves`` leaves.

        Level by level, consecutive nodes are split into ``ceil(n / branching)`` groups whose
        sizes differ by at most one, until one root is left. ``num_leaves`` need not be a power
        of ``branching``; for ``branching ** depth`` leaves every family has exactly
        ``branching`` children. One leaf gives a one-leaf tree.
        """
        num_leaves = _as_int(num_leaves, "num_leaves")
        branching = _as_int(branching, "branching")
        if num_leaves < 1:
            raise ValueError(f"num_leaves must be at least 1, got {num_leaves}")
        if branching < 2:
            raise ValueError(f"branching must be at least 2, got {branching}")
        total, width = num_leaves, num_leaves
        while width > 1 and total <= MAX_NODES:
            width = -(-width // branching)
            total += width
        _check_size(total, f"balanced({num_leaves}, {branching})")
        parent: list[int] = [-1] * num_leaves
        level = list(range(num_leaves))
        while len(level) > 1:
            groups = -(-len(level) // branching)
            size, extra = divmod(len(level), groups)
            nxt, start = [], 0
            for g in range(groups):
                stop = start + size + (g < extra)
                fam = len(parent)
                parent.append(-1)
                for child in level[start:stop]:
                    parent[child] = fam
                nxt.append(fam)
                start = stop
            level = nxt
        return cls(parent, num_leaves)

    @classmethod
    def from_nested(cls, nested: Any) -> Hierarchy:
        """One tree from nested lists: an ``int`` is a leaf id, a list is a family.

        Every leaf id ``0 .. N-1`` must appear exactly once. ``[[0, 1], [2, [3, 4]]]`` is a root
        with two families; a bare ``0`` is a one-leaf tree. Families are numbered in
        depth-first order from ``N``. Any depth works (no recursion); a list that appears twice
        (one that contains itself, say) raises ``ValueError``.
        """
        fam_parent: list[int] = []  # parent family of each family (-1 for the root)
        where: list[tuple[int, int]] = []  # (parent family, index in it) of each family
        leaves: list[tuple[int, int]] = []  # (leaf id, parent family)
        seen: set[int] = set()

        def path(up: int, index: int) -> str:
            steps = [] if up < 0 else [index]
            while up >= 0:
                up, index = where[up]
                if up >= 0:
                    steps.append(index)
            steps.reverse()
            if len(steps) > 2 * MAX_LISTED:
                head = "".join(f"[{i}]" for i in steps[:MAX_LISTED])
                tail = "".join(f"[{i}]" for i in steps[-MAX_LISTED:])
                return f"nested{head}...{tail} (depth {len(steps)})"
            return "nested" + "".join(f"[{i}]" for i in steps)

        stack: list[tuple[Any, int, int]] = [(nested, -1, 0)]
        while stack:
            node, up, index = stack.pop()
            if isinstance(node, list | tuple):
                if id(node) in seen:
                    raise ValueError(
                        f"the list at {path(up, index)} appears more than once in nested "
                        "(does a list contain itself?): a family has one place in the tree"
                    )
                seen.add(id(node))
                if len(node) == 0:
                    raise ValueError(
                        f"empty family at {path(up, index)}: a family needs at least one child"
                    )
                fam = len(fam_parent)
                fam_parent.append(up)
                where.append((up, index))
                stack.extend((node[i], fam, i) for i in range(len(node) - 1, -1, -1))
            elif isinstance(node, bool | np.bool_) or not isinstance(node, numbers.Integral):
                raise TypeError(
                    f"leaf id at {path(up, index)} must be an integer, got {node!r} "
                    f"({type(node).__name__})"
                )
            else:
                leaves.append((int(node), up))
        n = len(leaves)
        ids = [leaf for leaf, _ in leaves]
        if sorted(ids) != list(range(n)):
            dup = sorted(x for x, c in Counter(ids).items() if c > 1)
            missing = sorted(set(range(n)) - set(ids))
            raise ValueError(
                f"leaf ids must be 0..{n - 1}, each exactly once; duplicated: {_listed(dup)}, "
                f"missing: {_listed(missing)}"
            )
        parent = [-1] * n + [n + up if up >= 0 else -1 for up in fam_parent]
        for leaf, up in leaves:
            parent[leaf] = n + up if up >= 0 else -1
        return cls(parent, n)

    @classmethod
    def from_segments(cls, levels: Sequence[Sequence[int]], *, root: bool = True) -> Hierarchy:
        """A hierarchy from per-level segment lengths, bottom level first.

        ``levels[0]`` groups consecutive leaves (tokens into sentences), ``levels[1]`` groups
        consecutive level-0 groups (sentences into paragraphs), and so on; the lengths of level
        ``l`` must add up to the number of groups of level ``l-1`` (of leaves, for level 0).
        With ``root=True`` the top-level groups are joined under one root when there are several;
        with ``root=False`` each top-level group is its own tree (a packed batch).
        """
        if isinstance(levels, str | bytes) or not isinstance(levels, Sequence):
            raise TypeError("levels must be a sequence of sequences of segment lengths")
        if len(levels) == 0:
            raise ValueError("levels is empty: give at least one level of segment lengths")
        lengths = [_as_int_list(level, f"levels[{l}]") for l, level in enumerate(levels)]
        for l, level in enumerate(lengths):
            if not level:
                raise ValueError(f"levels[{l}] is empty")
            for i, length in enumerate(level):
                if length < 1:
                    raise ValueError(f"levels[{l}][{i}] = {length}: segment lengths must be >= 1")
        num_leaves = sum(lengths[0])
        _check_size(num_leaves + sum(map(len, lengths)), "from_segments(levels)")
        parent: list[int] = [-1] * num_leaves
        below = list(range(num_leaves))
        for l, level in enumerate(lengths):
            if sum(level) != len(below):
                raise ValueError(
                    f"levels[{l}] adds up to {sum(level)} but the level below has {len(below)} "
                    f"{'leaves' if l == 0 else 'groups'}"
                )
            groups = []
            start = 0
            for length in level:
                fam = len(parent)
                parent.append(-1)
                for child in below[start : start + length]:
                    parent[child] = fam
                start += length
                groups.append(fam)
            below = groups
        if root and len(below) > 1:
            top = len(parent)
            parent.append(-1)
            for g in below:
                parent[g] = top
        return cls(parent, num_leaves)

    @classmethod
    def forest(cls, trees: Sequence[Hierarchy]) -> Hierarchy:
        """Pack hierarchies side by side: leaves of ``trees[t]`` follow those of ``trees[t-1]``."""
        if isinstance(trees, Hierarchy) or not isinstance(trees, Iterable):
            raise TypeError(
                f"forest() takes a sequence of Hierarchy objects, got {type(trees).__name__}"
            )
        trees = list(trees)
        if not trees:
            raise ValueError("forest() needs at least one hierarchy")
        for t, h in enumerate(trees):
            if not isinstance(h, Hierarchy):
                raise TypeError(f"trees[{t}] is a {type(h).__name__}, not a Hierarchy")
        n_total = sum(h.num_leaves for h in trees)
        parent = [-1] * n_total
        leaf_off, fam_off = 0, n_total
        for h in trees:
            n = h.num_leaves
            remap = np.concatenate([np.arange(n) + leaf_off, np.arange(h.num_families) + fam_off])
            par = h._parent
            mapped = np.where(par >= 0, remap[np.maximum(par, 0)], -1)
            parent[leaf_off : leaf_off + n] = mapped[:n].tolist()
            parent.extend(mapped[n:].tolist())
            leaf_off += n
            fam_off += h.num_families
        return cls(parent, n_total)

    def relabel(
        self, leaf_map: Sequence[int] | None = None, family_map: Sequence[int] | None = None
    ) -> Hierarchy:
        """The same forest with renamed nodes.

        ``leaf_map[i]`` is the new id of leaf ``i`` (a permutation of ``0 .. N-1``);
        ``family_map[a - N]`` is the new id of family ``a`` (a permutation of ``N .. N+M-1``).
        Rows of leaf tensors move with their leaves: ``q_new[leaf_map[i]] = q[i]``.
        """
        n, m = self._num_leaves, self.num_families
        maps = []
        for name, mapping, lo, size in (
            ("leaf_map", leaf_map, 0, n),
            ("family_map", family_map, n, m),
        ):
            if mapping is None:
                maps.append(np.arange(lo, lo + size))
                continue
            arr = np.asarray(_as_int_list(mapping, name), dtype=np.int64)
            if arr.shape != (size,) or not np.array_equal(np.sort(arr), np.arange(lo, lo + size)):
                raise ValueError(f"{name} must be a permutation of {lo}..{lo + size - 1}")
            maps.append(arr)
        new_id = np.concatenate(maps)
        parent = np.full(self.num_nodes, -1, dtype=np.int64)
        has = self._parent >= 0
        parent[new_id[has]] = new_id[self._parent[has]]
        return Hierarchy(parent, n)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        """``{"format": "hsa-tree/1", "num_leaves": N, "parent": [...]}`` (docs/HSA.md
        section 7)."""
        return json.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"format": TREE_FORMAT, "num_leaves": self._num_leaves, "parent": self.parent}

    @classmethod
    def from_json(cls, text: str | bytes) -> Hierarchy:
        """Parse ``hsa-tree/1`` JSON (a string, or UTF-8 / UTF-16 / UTF-32 bytes).

        ``ValueError`` for malformed JSON (undecodable bytes, nesting too deep for the parser,
        integers longer than :data:`MAX_JSON_DIGITS` digits included) or a wrong format tag.
        """
        if not isinstance(text, str | bytes | bytearray):
            raise TypeError(f"from_json expects str or bytes, got {type(text).__name__}")
        try:
            obj = json.loads(text, parse_int=_json_int)
        except RecursionError:
            raise ValueError(
                "malformed hierarchy JSON: nested too deeply to parse (hsa-tree/1 is an object "
                "holding one flat list of parents)"
            ) from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"hierarchy JSON bytes are not valid text: {exc}") from None
        except ValueError as exc:  # json.JSONDecodeError, or an integer too long
            raise ValueError(f"malformed hierarchy JSON: {exc}") from None
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Any) -> Hierarchy:
        """The hierarchy of an already parsed ``hsa-tree/1`` object."""
        if not isinstance(obj, dict):
            raise ValueError(f"hierarchy JSON must be an object, got {type(obj).__name__}")
        if obj.get("format") != TREE_FORMAT:
            raise ValueError(
                f"hierarchy JSON has format {obj.get('format')!r}; expected {TREE_FORMAT!r}"
            )
        missing = {"num_leaves", "parent"} - obj.keys()
        if missing:
            raise ValueError(f"hierarchy JSON lacks {sorted(missing)}")
        extra = obj.keys() - {"format", "num_leaves", "parent"}
        if extra:
            raise ValueError(f"hierarchy JSON has unknown keys {sorted(extra)}")
        if not isinstance(obj["parent"], list):
            raise ValueError("hierarchy JSON: 'parent' must be a list of integers")
        return cls(obj["parent"], obj["num_leaves"])

    # ------------------------------------------------------------------ basic facts
    @property
    def parent(self) -> list[int]:
        """The parent list of docs/HSA.md section 1 as plain ints (a fresh copy)."""
        return self._parent.tolist()

    @property
    def parent_array(self) -> np.ndarray:
        """The parent list as a read-only ``int64`` array."""
        return self._parent

    @property
    def num_leaves(self) -> int:
        return self._num_leaves

    @property
    def num_nodes(self) -> int:
        return int(self._parent.shape[0])

    @property
    def num_families(self) -> int:
        return self.num_nodes - self._num_leaves

    @cached_property
    def roots(self) -> list[int]:
        """Root ids in increasing order (one per tree)."""
        return np.flatnonzero(self._parent < 0).tolist()

    @property
    def num_trees(self) -> int:
        return len(self.roots)

    @property
    def families(self) -> range:
        """Ids of the internal nodes."""
        return range(self._num_leaves, self.num_nodes)

    @cached_property
    def children_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, order)``: the children of ``x`` are ``order[offsets[x]:offsets[x + 1]]``."""
        has_parent = np.flatnonzero(self._parent >= 0)
        order = has_parent[np.argsort(self._parent[has_parent], kind="stable")]
        counts = np.bincount(self._parent[has_parent], minlength=self.num_nodes)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return offsets, order

    def children(self, node: int) -> list[int]:
        """Children of ``node`` in increasing id order (empty for a leaf)."""
        node = self._check_node(node)
        offsets, order = self.children_csr
        return order[offsets[node] : offsets[node + 1]].tolist()

    @cached_property
    def branching(self) -> np.ndarray:
        """Number of children of every node (0 for leaves), shape ``(N+M,)``."""
        offsets, _ = self.children_csr
        return np.diff(offsets)

    @cached_property
    def num_energies(self) -> int:
        """``N + sum_f b_f (b_f - 1)``: the energies HSA evaluates (docs/HSA.md section 5), one
        per leaf and one per ordered pair of siblings. Dense attention evaluates ``N ** 2``."""
        b = self.branching.astype(np.int64)
        return self.num_leaves + int((b * (b - 1)).sum())

    @property
    def max_branching(self) -> int:
        """``b``: the largest number of children of any family (0 when there is no family)."""
        return int(self.branching.max(initial=0))

    @cached_property
    def depth(self) -> np.ndarray:
        """Distance of every node from its root (roots have depth 0), shape ``(N+M,)``."""
        return self._levels()[0]

    @cached_property
    def root_of(self) -> np.ndarray:
        """The root of every node's tree, shape ``(N+M,)``."""
        return self._levels()[1]

    @cached_property
    def height(self) -> np.ndarray:
        """Longest distance down to a leaf (leaves have height 0), shape ``(N+M,)``."""
        h = np.zeros(self.num_nodes, dtype=np.int64)
        for nodes in reversed(self.nodes_by_depth[1:]):
            np.maximum.at(h, self._parent[nodes], h[nodes] + 1)
        return h

    @cached_property
    def leaf_counts(self) -> np.ndarray:
        """``|B|``: the number of leaves under every node, shape ``(N+M,)``."""
        c = np.zeros(self.num_nodes, dtype=np.int64)
        c[: self._num_leaves] = 1
        for nodes in reversed(self.nodes_by_depth[1:]):
            np.add.at(c, self._parent[nodes], c[nodes])
        return c

    @cached_property
    def nodes_by_depth(self) -> list[np.ndarray]:
        """``nodes_by_depth[t]``: the ids of all nodes at depth ``t``, increasing."""
        depth = self.depth
        order = np.argsort(depth, kind="stable")
        bounds = np.searchsorted(depth[order], np.arange(int(depth.max()) + 2))
        return [order[bounds[t] : bounds[t + 1]] for t in range(len(bounds) - 1)]

    @property
    def max_depth(self) -> int:
        """Depth of the deepest node (0 for a forest of one-leaf trees)."""
        return len(self.nodes_by_depth) - 1

    def leaves_under(self, node: int) -> list[int]:
        """The leaf ids under ``node`` in increasing order (``[node]`` for a leaf)."""
        node = self._check_node(node)
        return self._leaf_sets[node].tolist()

    @cached_property
    def _leaf_sets(self) -> list[np.ndarray]:
        sets: list[list[int]] = [[i] for i in range(self._num_leaves)]
        sets += [[] for _ in range(self.num_families)]
        for nodes in reversed(self.nodes_by_depth[1:]):
            for x in nodes.tolist():
                sets[self._parent[x]].extend(sets[x])
        return [np.sort(np.asarray(s, dtype=np.int64)) for s in sets]

    def ancestors(self, node: int) -> list[int]:
        """``[node, parent, ..., root]``."""
        node = self._check_node(node)
        path = [node]
        while self._parent[path[-1]] >= 0:
            path.append(int(self._parent[path[-1]]))
        return path

    def sibling_block(self, i: int, j: int) -> tuple[int, int] | None:
        """The sibling pair ``(B, C)`` whose block ``B x C`` holds the leaf pair ``(i, j)``.

        ``B`` is the child of the lowest common ancestor of ``i`` and ``j`` on ``i``'s side,
        ``C`` the one on ``j``'s side. ``(i, i)`` for ``i == j``; ``None`` when ``i`` and ``j``
        lie in different trees.
        """
        for name, x in (("i", i), ("j", j)):
            x = _as_int(x, name)
            if not 0 <= x < self._num_leaves:
                raise ValueError(f"{name} = {x} is not a leaf id (0..{self._num_leaves - 1})")
        i, j = int(i), int(j)
        if i == j:
            return (i, i)
        up_i, up_j = self.ancestors(i), self.ancestors(j)
        if up_i[-1] != up_j[-1]:
            return None
        # Walk down from the common root while the two paths agree.
        a, b = up_i[::-1], up_j[::-1]
        t = 0
        while a[t + 1] == b[t + 1]:
            t += 1
        return (a[t + 1], b[t + 1])

    # ------------------------------------------------------------------ equality
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hierarchy):
            return NotImplemented
        return self._num_leaves == other._num_leaves and np.array_equal(self._parent, other._parent)

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash((self._num_leaves, self._parent.tobytes()))

    def __repr__(self) -> str:
        return (
            f"Hierarchy(num_leaves={self._num_leaves}, num_families={self.num_families}, "
            f"num_trees={self.num_trees}, max_branching={self.max_branching}, "
            f"max_depth={self.max_depth})"
        )

    # ------------------------------------------------------------------ internals
    def _check_node(self, node: int) -> int:
        node = _as_int(node, "node")
        if not 0 <= node < self.num_nodes:
            raise ValueError(f"node {node} is out of range 0..{self.num_nodes - 1}")
        return node

    def _check_acyclic(self) -> None:
        # Pointer doubling: anc[x] is the 2^r-th ancestor of x, or -1 past the root. In a forest
        # every chain is shorter than n, so ceil(log2(n)) + 1 doublings reach -1 everywhere.
        n = self.num_nodes
        anc = self._parent.copy()
        for _ in range(int(n).bit_length() + 1):
            alive = np.flatnonzero(anc >= 0)
            if alive.size == 0:
                return
            anc[alive] = anc[anc[alive]]
        stuck = np.flatnonzero(anc >= 0)
        if stuck.size:
            cycle = self._find_cycle(int(stuck[0]))
            raise ValueError(
                f"cycle among nodes {_listed(cycle)}: every node must reach a root (-1)"
            )

    def _find_cycle(self, start: int) -> list[int]:
        seen: dict[int, int] = {}
        path: list[int] = []
        x = start
        while x >= 0 and x not in seen:
            seen[x] = len(path)
            path.append(x)
            x = int(self._parent[x])
        return path[seen[x] :] if x >= 0 else path

    def _levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Depth and root of every node, by pointer doubling (O((N+M) log depth))."""
        n = self.num_nodes
        up = self._parent.copy()
        dist = (up >= 0).astype(np.int64)  # dist[x] = number of steps from x to up[x]
        top = np.where(up >= 0, up, np.arange(n))  # highest ancestor found so far
        while True:
            alive = np.flatnonzero(up >= 0)
            if alive.size == 0:
                break
            nxt_up, nxt_dist = up.copy(), dist.copy()
            nxt_dist[alive] = dist[alive] + dist[up[alive]]
            nxt_up[alive] = up[up[alive]]
            up, dist = nxt_up, nxt_dist
        while True:
            nxt = top[top]
            if np.array_equal(nxt, top):
                break
            top = nxt
        return dist, top
