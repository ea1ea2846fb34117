"""The groups of arguments the Triton kernels take, as named tuples (Triton passes them through).

Tensor groups (:class:`NodeRows`, :class:`Stats`, :class:`Bucket`) hold pointers; the constexpr
groups (:class:`Tile`, :class:`Energy`) are compile-time options, one compiled kernel per value.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Bucket", "Energy", "NodeRows", "Stats", "Tile"]


class NodeRows(NamedTuple):
    """One per-node quantity: ``leaf`` rows ``(Z, N, d)`` in the input dtype and ``family`` rows
    ``(Z, M + 1, d)`` in float32 (family ``A`` is row ``A``, node ``N + A``; the last row pads)."""

    leaf: Any
    family: Any


class Stats(NamedTuple):
    """Per-family float32 scalars ``(Z, M + 1)``: ``F(A)`` and the variances
    ``Vq(A) = mean over i in A of |q_i - qbar_A|^2`` and ``Vk(A)`` (``(0,)`` unless the energy
    is the distance), or their gradients."""

    f: Any
    q_var: Any
    k_var: Any


class Bucket(NamedTuple):
    """The children of a bucket's ``f`` families of width ``w``: ``families (f,)`` int32;
    ``slots (f w,)`` int32, the node of each child slot (``-1`` pads; unused when the children are
    the contiguous leaves ``leaf_start ..``); ``weight`` ``|B|/|A|`` and ``log_size`` ``log|B|``
    ``(f w,)`` float32."""

    families: Any
    slots: Any
    weight: Any
    log_size: Any


class Tile(NamedTuple):
    """How a program covers a bucket: ``G`` families of ``W`` slots (the width rounded up to a
    power of two), swept in ``NUM_CHUNKS`` tiles of ``BR`` slots. ``CONTIG``: slot ``s`` is leaf
    ``leaf_start + s``; ``HAS_LEAVES`` / ``HAS_FAMILIES``: kinds of children present; ``HALF``:
    products in the half-precision input dtype (a leaf-only bucket of float16 / bfloat16, dot
    energy)."""

    W: int
    G: int
    BR: int
    NUM_CHUNKS: int
    CONTIG: bool
    HAS_LEAVES: bool
    HAS_FAMILIES: bool
    HALF: bool


class Energy(NamedTuple):
    """The energy of a call: blocks ``BDK, BDV, BDP`` covering ``d_k, d_v, d_p`` (powers of two,
    at least 16), ``DISTANCE`` (else the dot energy), ``HAS_POS``, and ``F32_DOT``, the
    ``input_precision`` of float32 products (``"tf32x3"`` or ``"tf32"``)."""

    BDK: int
    BDV: int
    BDP: int
    DISTANCE: bool
    HAS_POS: bool
    F32_DOT: str
