"""Hypothesis strategies for valid HSA inputs, reusable by other packages and ports.

``hierarchies()`` draws hard valid forests: unbalanced and mixed-depth trees, chains of
single-child families, branching from 1 to large, several trees whose leaves interleave in the
row order, and shuffled internal-node ids; ``large_hierarchies()`` the sizes ports are written
for (hundreds to thousands of leaves, families of up to 512 children, deep and wide at once).
``hsa_cases()`` adds ``q, k, v``, an upstream gradient and the options: both energies, scores
from 1e-3 to 1e4, ties, batch dimensions, head sizes up to 128, positional vectors, ``q`` and
``k`` sharing a large common offset (far from the origin), and ``v`` far from zero.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import assume
from hypothesis import strategies as st

from ..hierarchy import Hierarchy
from ..validation import ENERGIES

__all__ = ["HEAD_SIZES", "LARGE_LEAVES", "HSACase", "hierarchies", "hsa_cases", "large_hierarchies"]

HEAD_SIZES = (16, 32, 64, 64, 128, 128)
"""Head sizes drawn as often as all others together when ``head_sizes`` is on."""
LARGE_LEAVES = 256
"""Over more leaves than this, ``hsa_cases`` with ``head_sizes`` draws small feature sizes and
no batch (the reference and its error bound are quadratic in N)."""


def _capacity(branching: int, depth: int) -> int:
    return branching**depth


def _split(draw: st.DrawFn, total: int, parts: int, cap: int) -> list[int]:
    """``total`` leaves drawn into ``parts`` non-empty groups of at most ``cap`` each."""
    sizes, left = [], total
    for i in range(parts):
        rest = parts - i - 1
        size = draw(st.integers(max(1, left - cap * rest), min(cap, left - rest)))
        sizes.append(size)
        left -= size
    return sizes


@st.composite
def _nested_tree(draw: st.DrawFn, num_leaves: int, max_branching: int, depth_left: int) -> Any:
    """A nested-list tree over ``num_leaves`` placeholder leaves (``None``), depth <= depth_left."""
    if num_leaves == 1:
        # A leaf, or a short chain of single-child families above it.
        chain = draw(st.integers(0, min(2, depth_left))) if draw(st.integers(0, 3)) == 0 else 0
        node: Any = None
        for _ in range(chain):
            node = [node]
        return node
    cap_below = _capacity(max_branching, depth_left - 1)
    lo = max(1 if depth_left > 1 else num_leaves, -(-num_leaves // cap_below))
    hi = min(num_leaves, max_branching)
    sizes = _split(draw, num_leaves, draw(st.integers(lo, hi)), cap_below)
    return [draw(_nested_tree(size, max_branching, depth_left - 1)) for size in sizes]


def _number_leaves(nested: Any, ids: list[int]) -> Any:
    if nested is None:
        return ids.pop()
    return [_number_leaves(child, ids) for child in nested]


@st.composite
def hierarchies(
    draw: st.DrawFn,
    *,
    min_leaves: int = 1,
    max_leaves: int = 24,
    max_branching: int = 8,
    max_depth: int = 5,
    max_trees: int = 3,
    shuffle: bool = True,
    min_families: int = 0,
) -> Hierarchy:
    """Random valid :class:`Hierarchy` objects (forests of up to ``max_trees`` trees).

    Branching ranges over ``1 .. max_branching`` (1 = single-child families), depth over
    ``0 .. max_depth``. With ``shuffle`` the leaf rows and internal ids are permuted, so trees
    of a forest interleave in the row order; without it every subtree's leaves are a contiguous
    range of rows. ``min_families`` asks for at least that many families with two or more
    children (so that block energies between siblings matter).
    """
    if not 1 <= min_leaves <= max_leaves:
        raise ValueError("need 1 <= min_leaves <= max_leaves")
    if max_branching < 1 or max_depth < 0 or max_trees < 1:
        raise ValueError("need max_branching >= 1, max_depth >= 0, max_trees >= 1")
    num_trees = draw(st.integers(1, min(max_trees, max_leaves)))
    depth = draw(st.integers(0, max_depth))
    cap = _capacity(max(max_branching, 1), depth) if max_branching > 1 else 1
    lo = max(min_leaves, num_trees)
    hi = min(max_leaves, cap * num_trees)
    if lo > hi:
        num_trees, depth = 1, max_depth
        cap = _capacity(max_branching, depth) if max_branching > 1 else 1
        lo, hi = min_leaves, min(max_leaves, cap)
    num_leaves = draw(st.integers(lo, max(lo, hi)))
    trees = []
    for size in _split(draw, num_leaves, num_trees, cap):
        nested = draw(_nested_tree(size, max_branching, depth))
        trees.append(Hierarchy.from_nested(_number_leaves(nested, list(range(size))[::-1])))
    h = Hierarchy.forest(trees)
    if min_families:
        wide = int((h.branching[h.num_leaves :] >= 2).sum())
        assume(wide >= min_families)
    if shuffle:
        leaf_map = draw(st.permutations(range(h.num_leaves)))
        fam_ids = range(h.num_leaves, h.num_nodes)
        family_map = draw(st.permutations(fam_ids)) if h.num_families else []
        h = h.relabel(leaf_map, family_map)
    return h


def _spread(draw: st.DrawFn, lo: int, hi: int) -> int:
    """An integer in ``lo .. hi`` spread evenly (Hypothesis favours the small end of a range;
    it still shrinks towards ``lo``)."""
    return lo + draw(st.integers(0, 2**16 - 1)) % (hi - lo + 1)


@st.composite
def large_hierarchies(
    draw: st.DrawFn, *, max_leaves: int = 1024, max_branching: int = 512, shuffle: bool = True
) -> Hierarchy:
    """One large tree: balanced (b from 2 to 128), wide (one family of up to ``max_branching``
    children, leaves or small subtrees) or random deep-and-wide (families of up to 256
    children, depth up to 7), with ``64 .. max_leaves`` leaves."""
    from .golden_set.specs import random_tree

    kind = draw(st.sampled_from(["balanced", "wide", "deep_and_wide"]))
    seed = draw(st.integers(0, 2**16))
    if kind == "wide":
        b = _spread(draw, 64, min(max_branching, max_leaves))
        extra = _spread(draw, 0, min(max_leaves - b, 2 * b))
        rng = random.Random(seed)
        sizes = [1] * b
        for _ in range(extra):
            sizes[rng.randrange(b)] += 1
        h = Hierarchy.from_segments([sizes])
    else:
        n = _spread(draw, 64, max_leaves)
        if kind == "balanced":
            h = Hierarchy.balanced(n, draw(st.sampled_from([2, 4, 8, 16, 32, 128])))
        else:
            h = random_tree(seed, n, min(256, max_branching), 7)
    if shuffle:
        rng = random.Random(seed)
        leaves, families = list(range(h.num_leaves)), list(h.families)
        rng.shuffle(leaves)
        rng.shuffle(families)
        h = h.relabel(leaves, families)
    return h


@dataclass
class HSACase:
    """One drawn input: tensors, hierarchy and options. ``describe()`` names it in failures."""

    hierarchy: Hierarchy
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float | None
    energy: str
    seed: int
    score_magnitude: float
    notes: dict[str, Any] = field(default_factory=dict)
    positions: torch.Tensor | None = None
    grad_out: torch.Tensor | None = None
    offset: float = 0.0

    def kwargs(self) -> dict[str, Any]:
        """``scale``, ``energy`` and, in geometry cases, ``positions``."""
        kw: dict[str, Any] = {"scale": self.scale, "energy": self.energy}
        if self.positions is not None:
            kw["positions"] = self.positions
        return kw

    def describe(self) -> str:
        h = self.hierarchy
        extra = ""
        if self.positions is not None:
            extra += f", positions={tuple(self.positions.shape)}"
        if self.offset:
            extra += f", offset={self.offset:g}"
        return (
            f"HSACase(seed={self.seed}, q={tuple(self.q.shape)}, v={tuple(self.v.shape)}, "
            f"dtype={self.q.dtype}, energy={self.energy!r}, scale={self.scale}, "
            f"score_magnitude~{self.score_magnitude:g}{extra}, hierarchy={h.to_json()})"
        )

    def __repr__(self) -> str:
        return self.describe()


OFFSETS = {torch.float64: 1e6, torch.float32: 1e3, torch.float16: 1e2, torch.bfloat16: 1e2}


@st.composite
def _batch_shape(draw: st.DrawFn, max_batch_dims: int, max_batch: int) -> tuple[int, ...]:
    """Up to ``max_batch_dims`` batch dimensions of at most ``max_batch`` elements in all."""
    shape, left = [], max_batch
    for _ in range(draw(st.integers(0, max_batch_dims))):
        if left < 1:
            break
        size = draw(st.integers(1, min(3, left) if max_batch <= 3 else left))
        shape.append(size)
        left //= size
    return tuple(shape)


def _size(draw: st.DrawFn, lo: int, hi: int, head_sizes: bool, large: bool) -> int:
    """A feature size: ``lo .. hi``; with ``head_sizes`` half the time one of
    :data:`HEAD_SIZES`, else ``lo .. 8``; over a large tree ``lo .. 8`` only."""
    if large:
        return draw(st.integers(lo, max(lo, min(hi, 8))))
    if not head_sizes:
        return draw(st.integers(lo, max(lo, hi)))
    if draw(st.booleans()):
        return draw(st.sampled_from([d for d in HEAD_SIZES if lo <= d <= hi] or [hi]))
    return draw(st.integers(lo, max(lo, min(hi, 8))))


@st.composite
def hsa_cases(
    draw: st.DrawFn,
    *,
    hierarchy: st.SearchStrategy[Hierarchy] | None = None,
    dtype: torch.dtype = torch.float64,
    energies: tuple[str, ...] = ENERGIES,
    max_batch_dims: int = 2,
    max_batch: int = 3,
    min_dim: int = 1,
    max_dim: int = 8,
    head_sizes: bool = False,
    score_magnitudes: tuple[float, ...] = (1e-3, 1.0, 5.0, 30.0),
    positions: bool = False,
    positions_scales: tuple[float, ...] = (0.5,),
    offsets: bool = False,
    value_offsets: bool = False,
) -> HSACase:
    """An :class:`HSACase` with float64 random ``q, k, v`` and ``grad_out`` cast to ``dtype``.

    The scale is chosen so that typical scores have the drawn magnitude (``1e4`` tests overflow
    safety); sometimes keys repeat queries or rows repeat, giving ties. Batch shapes have up to
    ``max_batch_dims`` dimensions (each of at most 3 elements, or with ``max_batch > 3`` at most
    ``max_batch`` elements in all). Feature sizes lie in ``min_dim .. 8``; with ``head_sizes``
    half the draws are head sizes of :data:`HEAD_SIZES` up to ``max_dim`` (64 and 128 most
    often), except over more than :data:`LARGE_LEAVES` leaves (no batch there either). With
    ``positions``, some cases carry ``(N + M, d_p)`` positional vectors of standard deviation
    drawn from ``positions_scales``; with ``offsets``, some add one common vector to every
    ``q`` and ``k`` (up to 1e6 in float64, 1e3 in float32, 1e2 in half precision), which leaves
    the distance energy unchanged and shifts the dot energy; with ``value_offsets``, some add
    5 or -5 to every entry of ``v`` (an output far from zero).
    """
    h = draw(hierarchy if hierarchy is not None else hierarchies())
    n = h.num_leaves
    large = head_sizes and n > LARGE_LEAVES  # the reference is quadratic in N
    batch = () if large else draw(_batch_shape(max_batch_dims, max_batch))
    d_k = _size(draw, min_dim, max_dim, head_sizes, large)
    d_v = _size(draw, 1, max_dim, head_sizes, large)
    seed = draw(st.integers(0, 2**31 - 1))
    energy = draw(st.sampled_from(energies))
    magnitude = draw(st.sampled_from(score_magnitudes))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, n, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(*batch, n, d_k, generator=gen, dtype=torch.float64)
    v = torch.randn(*batch, n, d_v, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(*batch, n, d_v, generator=gen, dtype=torch.float64)
    tie = draw(st.sampled_from(["none", "keys_are_queries", "repeated_rows"]))
    if tie == "keys_are_queries":
        k = q.clone()
    elif tie == "repeated_rows" and n > 1:
        q[..., 1:, :] = q[..., :1, :]
    notes: dict[str, Any] = {"ties": tie}
    offset = 0.0
    if offsets and energy == "distance":
        offset = draw(st.sampled_from([0.0, 10.0, OFFSETS.get(dtype, 1e2)]))
        direction = torch.randn(d_k, generator=gen, dtype=torch.float64)
        shift = offset * direction / direction.norm()
        q, k = q + shift, k + shift
    if value_offsets:
        v_offset = draw(st.sampled_from([0.0, 0.0, 5.0, -5.0]))
        if v_offset:
            v = v + v_offset
            notes["v_offset"] = v_offset
    pos = None
    if positions and draw(st.booleans()):
        d_p = draw(st.integers(1, 3))
        spread = draw(st.sampled_from(positions_scales))
        pos = spread * torch.randn(h.num_nodes, d_p, generator=gen, dtype=torch.float64)
    default_scale = draw(st.booleans())
    # Typical |s| for unit-normal entries is about scale * sqrt(d_k) (dot) or scale * d_k.
    typical = (d_k**0.5) if energy == "dot" else float(d_k)
    scale = None if default_scale and magnitude == 1.0 else magnitude / typical
    return HSACase(
        hierarchy=h,
        q=q.to(dtype),
        k=k.to(dtype),
        v=v.to(dtype),
        scale=scale,
        energy=energy,
        seed=seed,
        score_magnitude=magnitude,
        notes=notes,
        positions=None if pos is None else pos.to(dtype),
        grad_out=grad_out.to(dtype),
        offset=offset,
    )
