"""Splitting a hierarchy's leaves into contiguous shards for sequence-parallel HSA.

Shard ``r`` holds the leaf rows ``boundaries[r] .. boundaries[r + 1] - 1``. A node is *local*
to shard ``r`` when all its leaves lie in that range; the *cut nodes* of a shard are its
maximal local nodes (local, with a parent that is not, or a root). They are the roots of the
shard's local forest and together hold exactly its leaves. The *top tree* is everything above
the cut: the families whose leaves span several shards. Any contiguous split is exact; the
split decides how much is communicated, one summary per cut node that has a parent (cut nodes
that are whole trees send nothing). :func:`partition` picks boundaries near ``r N / P`` that
split as few families as possible, and refuses splits that would send too much.

Everything here is plain numpy and deterministic: every rank computes the same plan.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hsa_ref import Hierarchy

__all__ = ["Shard", "ShardPlan", "partition"]


@dataclass(frozen=True, eq=False)
class Shard:
    """One rank's part of a :class:`ShardPlan`.

    ``leaf_start .. leaf_stop - 1`` are its global leaf rows. ``local`` is its forest with
    leaves renumbered ``0 .. num_leaves - 1`` (global row ``leaf_start + i``) and families in
    increasing global id; its roots are the shard's cut nodes, whose global ids are ``cut``
    (in the order of ``local.roots``). ``leaf_cut[i]`` is the position in ``cut`` of local leaf
    ``i``'s cut node. ``sent`` lists the positions in ``cut`` of the cut nodes that have a
    parent (in the top tree); their summaries are what the shard communicates, in that order.
    """

    rank: int
    leaf_start: int
    leaf_stop: int
    local: Hierarchy
    cut: np.ndarray
    leaf_cut: np.ndarray
    sent: np.ndarray

    @property
    def num_leaves(self) -> int:
        return self.leaf_stop - self.leaf_start

    @cached_property
    def cut_local(self) -> np.ndarray:
        """Local ids of the cut nodes (the roots of ``local``), in ``cut`` order."""
        return np.asarray(self.local.roots, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class ShardPlan:
    """A hierarchy split into ``num_shards`` contiguous leaf ranges, and its top tree.

    The top tree is evaluated on a table of ``num_shards * slots + len(top_families)`` rows:
    row ``r * slots + j`` is the ``j``-th sent cut node of shard ``r`` (rows past a shard's
    count are padding), then one row per top family in ``top_families`` order (increasing
    height). ``top_levels`` groups the top families by height: per level the table rows of
    its families and of their children, ``(f, w)`` padded with ``-1``.
    """

    hierarchy: Hierarchy
    boundaries: tuple[int, ...]
    shards: tuple[Shard, ...]
    slots: int
    top_families: np.ndarray
    top_levels: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def num_sent(self) -> tuple[int, ...]:
        """Cut-node summaries each shard communicates."""
        return tuple(int(s.sent.size) for s in self.shards)

    @cached_property
    def fingerprint(self) -> int:
        """A 63-bit digest of the hierarchy and the boundaries, equal on every rank."""
        h = hashlib.blake2b(digest_size=8)
        h.update(np.int64(self.hierarchy.num_leaves).tobytes())
        h.update(self.hierarchy.parent_array.astype(np.int64).tobytes())
        h.update(np.asarray(self.boundaries, dtype=np.int64).tobytes())
        return int.from_bytes(h.digest(), "little") >> 1

    @cached_property
    def top_tree(self) -> Hierarchy:
        """The tree above the cut as a hierarchy over the table: its leaves are the
        ``num_shards * slots`` cut rows (padding rows are one-leaf trees), its families the
        top families, node ``num_shards * slots + i`` being ``top_families[i]``."""
        rows = self.num_shards * self.slots
        parent = np.full(rows + self.top_families.size, -1, dtype=np.int64)
        for fams, kids in self.top_levels:
            real = kids >= 0
            parent[kids[real]] = np.broadcast_to(fams[:, None], kids.shape)[real]
        return Hierarchy(parent, rows)

    @cached_property
    def table_counts(self) -> np.ndarray:
        """``|B|`` of every row of the top-tree table (1 in padding rows)."""
        counts = self.hierarchy.leaf_counts
        rows = np.ones(self.num_shards * self.slots + self.top_families.size, dtype=np.int64)
        for s in self.shards:
            base = s.rank * self.slots
            rows[base : base + s.sent.size] = counts[s.cut[s.sent]]
        rows[self.num_shards * self.slots :] = counts[self.top_families]
        return rows

    def __repr__(self) -> str:
        return (
            f"ShardPlan(num_shards={self.num_shards}, boundaries={list(self.boundaries)}, "
            f"num_sent={list(self.num_sent)}, top_families={self.top_families.size})"
        )


def _leaf_span(h: Hierarchy) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest leaf id under every node."""
    n = h.num_leaves
    lo = np.full(h.num_nodes, n, dtype=np.int64)
    hi = np.full(h.num_nodes, -1, dtype=np.int64)
    lo[:n] = hi[:n] = np.arange(n)
    parent = h.parent_array
    for nodes in reversed(h.nodes_by_depth[1:]):
        np.minimum.at(lo, parent[nodes], lo[nodes])
        np.maximum.at(hi, parent[nodes], hi[nodes])
    return lo, hi


def _split_cost(h: Hierarchy, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``cost[t]``: children of the families split by a boundary before leaf ``t``."""
    n = h.num_leaves
    fam = np.arange(n, h.num_nodes)
    diff = np.zeros(n + 2, dtype=np.int64)
    np.add.at(diff, lo[fam] + 1, h.branching[fam])
    np.add.at(diff, hi[fam] + 1, -h.branching[fam])
    return np.cumsum(diff)[: n + 1]


def _choose_boundaries(h: Hierarchy, p: int, max_imbalance: float, cost: np.ndarray) -> list[int]:
    n = h.num_leaves
    slack = int(max_imbalance * n / p / 2)
    bounds = [0]
    for r in range(1, p):
        ideal = round(r * n / p)
        cand = np.arange(max(bounds[-1] + 1, ideal - slack), min(n - (p - r), ideal + slack) + 1)
        if cand.size == 0:
            cand = np.array([bounds[-1] + 1])
        # fewest split children, then nearest the ideal, then the smaller position
        key = np.lexsort((cand, np.abs(cand - ideal), cost[cand]))
        bounds.append(int(cand[key[0]]))
    bounds.append(n)
    return bounds


def _check_boundaries(boundaries: object, n: int, p: int) -> list[int]:
    if isinstance(boundaries, str | bytes) or not hasattr(boundaries, "__iter__"):
        raise TypeError(f"boundaries must be a sequence of integers, got {type(boundaries)}")
    out = []
    for i, b in enumerate(boundaries):
        if isinstance(b, bool) or not isinstance(b, numbers.Integral):
            raise TypeError(f"boundaries[{i}] must be an integer, got {b!r}")
        out.append(int(b))
    if len(out) != p + 1:
        raise ValueError(
            f"boundaries must have num_shards + 1 = {p + 1} entries (0, ..., {n}), got {len(out)}"
        )
    if out[0] != 0 or out[-1] != n:
        raise ValueError(f"boundaries must start at 0 and end at N = {n}, got {out}")
    for r in range(p):
        if out[r + 1] <= out[r]:
            raise ValueError(
                f"shard {r} would be empty or reversed: boundaries[{r}] = {out[r]}, "
                f"boundaries[{r + 1}] = {out[r + 1]} (boundaries must increase strictly)"
            )
    return out


def _why_too_many(
    h: Hierarchy, shard: Shard, parent: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> str:
    """Which family makes ``shard`` send many summaries, and whether leaves interleave."""
    sent_nodes = shard.cut[shard.sent]
    fams, per_fam = np.unique(parent[sent_nodes], return_counts=True)
    worst = int(fams[np.argmax(per_fam)])
    reason = (
        f"family {worst} has {int(h.branching[worst])} children, {int(per_fam.max())} of them "
        f"on shard {shard.rank} (a family split across shards sends one summary per child)"
    )
    anc = worst
    while anc >= 0:
        if hi[anc] - lo[anc] + 1 != h.leaf_counts[anc]:
            reason += (
                f"; the leaves of node {anc} are not contiguous in row order (it holds leaves "
                f"{int(lo[anc])} and {int(hi[anc])} but not all rows between them), so its "
                "subtrees are scattered over the shards"
            )
            break
        anc = int(parent[anc])
    return reason


def partition(
    hierarchy: Hierarchy,
    num_shards: int,
    *,
    boundaries: list[int] | None = None,
    max_imbalance: float = 0.1,
    max_sent: int | None = None,
) -> ShardPlan:
    """Split ``hierarchy`` into ``num_shards`` contiguous, balanced leaf ranges.

    Each boundary ``r`` lies within ``max_imbalance * N / (2 P)`` rows of ``round(r N / P)``
    (so every shard holds ``N / P`` leaves up to a fraction ``max_imbalance``), at the place
    that splits the fewest children of families. ``boundaries`` (``0 = b_0 < ... < b_P = N``)
    fixes the split instead. The result is exact for any split; ``max_sent`` bounds the cut
    summaries one shard may communicate.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for fewer leaves than shards, bad boundaries, or a split where a shard
            would send more than ``max_sent`` summaries (naming the family at fault, and a node
            whose leaves are not contiguous in row order if that is why).
    """
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"hierarchy must be an hsa_ref.Hierarchy, got {type(hierarchy).__name__}")
    if isinstance(num_shards, bool) or not isinstance(num_shards, numbers.Integral):
        raise TypeError(f"num_shards must be an integer, got {num_shards!r}")
    p, n = int(num_shards), hierarchy.num_leaves
    if p < 1:
        raise ValueError(f"num_shards must be at least 1, got {p}")
    if n < p:
        raise ValueError(f"cannot split {n} leaves into {p} non-empty shards")
    if not isinstance(max_imbalance, numbers.Real) or not 0 <= max_imbalance < 1:
        raise ValueError(f"max_imbalance must be a number in [0, 1), got {max_imbalance!r}")
    if max_sent is not None and (
        isinstance(max_sent, bool) or not isinstance(max_sent, numbers.Integral) or max_sent < 0
    ):
        raise ValueError(f"max_sent must be a non-negative integer or None, got {max_sent!r}")
    lo, hi = _leaf_span(hierarchy)
    if boundaries is None:
        bounds = _choose_boundaries(
            hierarchy, p, float(max_imbalance), _split_cost(hierarchy, lo, hi)
        )
    else:
        bounds = _check_boundaries(boundaries, n, p)
    return _plan(hierarchy, bounds, lo, hi, max_sent)


def _plan(
    h: Hierarchy, bounds: list[int], lo: np.ndarray, hi: np.ndarray, max_sent: int | None
) -> ShardPlan:
    p = len(bounds) - 1
    parent = h.parent_array
    starts = np.asarray(bounds[:-1])
    shard_lo = np.searchsorted(starts, lo, side="right") - 1
    shard_hi = np.searchsorted(starts, hi, side="right") - 1
    is_local = shard_lo == shard_hi
    parent_local = np.where(parent >= 0, is_local[np.maximum(parent, 0)], False)
    is_cut = is_local & ~parent_local
    shards = []
    for r in range(p):
        mine = np.flatnonzero(is_local & (shard_lo == r))  # leaves first, then families
        new_id = np.full(h.num_nodes, -1, dtype=np.int64)
        new_id[mine] = np.arange(mine.size)
        local_parent = np.where(is_cut[mine], -1, new_id[np.maximum(parent[mine], 0)])
        local = Hierarchy(local_parent, bounds[r + 1] - bounds[r])
        roots = np.asarray(local.roots, dtype=np.int64)
        cut = mine[roots]
        position = np.full(mine.size, -1, dtype=np.int64)
        position[roots] = np.arange(roots.size)
        leaf_cut = position[local.root_of[: local.num_leaves]]
        sent = np.flatnonzero(parent[cut] >= 0)
        shards.append(Shard(r, bounds[r], bounds[r + 1], local, cut, leaf_cut, sent))
    slots = max(s.sent.size for s in shards)
    if max_sent is not None and slots > max_sent:
        worst = max(shards, key=lambda s: s.sent.size)
        raise ValueError(
            f"shard {worst.rank} (leaves {worst.leaf_start}..{worst.leaf_stop - 1}) would send "
            f"{worst.sent.size} summaries, more than max_sent = {max_sent}: "
            + _why_too_many(h, worst, parent, lo, hi)
        )
    top = np.flatnonzero(~is_local)
    top = top[np.argsort(h.height[top], kind="stable")]
    row = np.full(h.num_nodes, -1, dtype=np.int64)
    for s in shards:
        row[s.cut[s.sent]] = s.rank * slots + np.arange(s.sent.size)
    row[top] = p * slots + np.arange(top.size)
    offsets, order = h.children_csr
    levels = []
    for height in np.unique(h.height[top]):
        fams = top[h.height[top] == height]
        width = int(h.branching[fams].max())
        kids = np.full((fams.size, width), -1, dtype=np.int64)
        for i, a in enumerate(fams.tolist()):
            ch = order[offsets[a] : offsets[a + 1]]
            kids[i, : ch.size] = row[ch]
        levels.append((row[fams], kids))
    return ShardPlan(h, tuple(bounds), tuple(shards), slots, top, tuple(levels))
