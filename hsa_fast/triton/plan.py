"""A compiled layout in the form the Triton kernels read, and how programs tile its buckets."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..layout import FamilyBucket, HSALayout, derived
from .arguments import Bucket, Tile
from .dispatch import triton_interpreted

__all__ = ["BucketPlan", "TritonPlan", "bucket_launch", "triton_plan"]

HALF_TILE = 64  # families of up to 64 children are one tile of half-precision products,
F32_TILE = 32  # of up to 32 of float32 products (their tiles take more registers and memory);
CHUNK = 32  # wider families are swept in chunks of 32 children,
MIN_ROWS = 32  # and narrower ones packed several to a tile of 32 slots


def pow2(x: int) -> int:
    """The least power of two ``>= x`` (1 for ``x <= 1``)."""
    return 1 << max(0, int(x) - 1).bit_length()


@dataclass(frozen=True)
class BucketPlan:
    """A layout bucket as the kernels read it: its children table ``children``, ``num_families``
    families of ``width`` children (``padded``: rounded up to a power of two), whether they are the
    contiguous leaves ``leaf_start ..``, and which kinds of children it holds."""

    children: Bucket
    num_families: int
    width: int
    leaf_start: int
    contiguous: bool
    has_leaves: bool
    has_families: bool
    padded: int
    launch: dict = field(default_factory=dict, compare=False, repr=False)  # by dtype, energy


@dataclass(frozen=True)
class TritonPlan:
    """A compiled :class:`HSALayout` in the int32 / float32 form the kernels read.

    ``down``: per depth ``(families, parents, count)``; ``leaf_parent`` ``(N,)`` int32 (``M``
    for a one-leaf tree); ``root_leaves`` the one-leaf trees' leaves (int64).
    """

    num_leaves: int
    num_families: int
    buckets: tuple[BucketPlan, ...]
    down: tuple[tuple[torch.Tensor, torch.Tensor, int], ...]
    leaf_parent: torch.Tensor
    root_leaves: torch.Tensor


def triton_plan(layout: HSALayout) -> TritonPlan:
    """The :class:`TritonPlan` of ``layout``, built once per layout and kept while it lives."""
    return derived(layout, "triton_plan", _build_plan)


def _build_plan(layout: HSALayout) -> TritonPlan:
    n, m = layout.num_leaves, layout.num_families
    return TritonPlan(
        num_leaves=n,
        num_families=m,
        buckets=tuple(_plan_bucket(b, n, m) for b in layout.up),
        down=tuple(
            (fams.to(torch.int32), parents.to(torch.int32), int(fams.numel()))
            for fams, parents in layout.down
        ),
        leaf_parent=layout.leaf_parent.to(torch.int32),
        root_leaves=torch.nonzero(layout.leaf_parent == m).flatten(),
    )


def _plan_bucket(b: FamilyBucket, n: int, m: int) -> BucketPlan:
    if b.leaf_start is not None:
        slots = b.family.to(torch.int32)  # never read; any int32 pointer will do
    else:
        family_node = torch.where(b.slot_family < m, b.slot_family + n, -1)
        slots = torch.where(b.slot_is_leaf, b.slot_leaf, family_node).to(torch.int32)
    children = Bucket(
        families=b.family.to(torch.int32),
        slots=slots.contiguous(),
        weight=b.weight.to(torch.float32).reshape(-1).contiguous(),
        log_size=b.log_size.to(torch.float32).reshape(-1).contiguous(),
    )
    return BucketPlan(
        children=children,
        num_families=b.num_families,
        width=b.width,
        leaf_start=b.leaf_start or 0,
        contiguous=b.leaf_start is not None,
        has_leaves=b.has_leaves or b.leaf_start is not None,
        has_families=b.has_families,
        padded=pow2(b.width),
    )


def _half(b: BucketPlan, dtype: torch.dtype, distance: bool) -> bool:
    """Tensor-core products in the input dtype: leaf-only buckets of float16 / bfloat16 inputs
    under the dot energy (the distance energy multiplies rows centred in float32; Triton's
    interpreter multiplies bfloat16 blocks as integers, so not there)."""
    if distance or (dtype == torch.bfloat16 and triton_interpreted()):
        return False
    return dtype in (torch.float16, torch.bfloat16) and not b.has_families


def _tiling(padded: int, half: bool) -> tuple[int, int, int]:
    """``(group, rows, chunks)``: a program owns ``group`` families of ``padded`` slots, swept in
    ``chunks`` tiles of ``rows`` slots (one tile unless the families are wider than a tile)."""
    if padded <= (HALF_TILE if half else F32_TILE):
        rows = max(padded, MIN_ROWS)
        return rows // padded, rows, 1
    return 1, CHUNK, padded // CHUNK


def bucket_launch(b: BucketPlan, dtype: torch.dtype, distance: bool = False) -> tuple[int, Tile]:
    """The number of programs over bucket ``b`` and their :class:`Tile` for inputs of ``dtype``
    and the distance energy or not (computed once for each)."""
    launch = b.launch.get((dtype, distance))
    if launch is not None:
        return launch
    half = _half(b, dtype, distance)
    group, rows, chunks = _tiling(b.padded, half)
    tile = Tile(
        W=b.padded,
        G=group,
        BR=rows,
        NUM_CHUNKS=chunks,
        CONTIG=b.contiguous,
        HAS_LEAVES=b.has_leaves,
        HAS_FAMILIES=b.has_families,
        HALF=half,
    )
    return b.launch.setdefault((dtype, distance), (-(-b.num_families // group), tile))
