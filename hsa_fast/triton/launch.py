"""The launches of a forward and a backward: buffers, grids and kernel arguments, in order.

The schedule of :mod:`hsa_fast.programme` with each step one launch:

- up, one launch per bucket of the layout (children before parents): a program gathers the
  children of a few families, forms the ``w x w`` block energies, ``L(B)`` by log-sum-exp, the
  shares, ``F(A)``, the family means and each child's ``R(B)``, all in registers. The leaf
  bucket reads ``q, k, v`` once and writes ``R_i`` once;
- down, one launch per depth: ``log W`` and ``U``;
- leaves, one launch: ``y_i = U(A) + W(A) R_i``.

The backward: one launch per bucket for the adjoint of the down pass (children first: ``gU,
glogW`` and ``D(B) = W(A) gU(B) . R(B)``, the analogue of flash attention's ``rowsum(dO * O)``),
then one per bucket in reverse (parents first) recomputing each tile's shares from the saved
``L(B)`` and writing ``dq, dk, dv`` of leaves (and of family means for the level below).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..layout import HSALayout
from .arguments import Energy, NodeRows, Stats
from .dispatch import kernels
from .plan import TritonPlan, bucket_launch, pow2, triton_plan

__all__ = ["KernelLaunch", "Launcher", "Saved", "backward", "forward", "record_launches"]

MIN_DOT = 16  # tl.dot needs at least 16 along the reduced dimension
BLOCK_ELEMENTS = 2048  # about this many values per program of the down pass and the leaf step
NUM_WARPS = 4

Launcher = Callable[..., None]
"""``launch(kernel, grid, *args, **kwargs)``: runs ``kernel[grid](*args, **kwargs)`` or not."""


def _launch(kernel: Any, grid: tuple[int, int], *args: Any, **kwargs: Any) -> None:
    kernel[grid](*args, **kwargs)


def _block(d: int) -> int:
    return max(MIN_DOT, pow2(d))


def _energy(
    q: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None, distance: bool
) -> tuple[int, Energy]:
    """``d_p`` (1 without positions) and the :class:`Energy` of a call."""
    d_p = pos.shape[-1] if pos is not None else 1
    energy = Energy(
        BDK=_block(q.shape[-1]),
        BDV=_block(v.shape[-1]),
        BDP=_block(d_p),
        DISTANCE=distance,
        HAS_POS=pos is not None,
        F32_DOT="tf32x3" if q.dtype == torch.float32 else "tf32",
    )
    return d_p, energy


def _buffers(device: torch.device, zero: bool, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Contiguous float32 tensors of ``shapes`` carved from one allocation (zeroed if ``zero``),
    each starting on a 128-byte boundary."""
    sizes = [-(-math.prod(shape) // 32) * 32 for shape in shapes]
    flat = (torch.zeros if zero else torch.empty)(sum(sizes), device=device, dtype=torch.float32)
    parts = flat.split(sizes)
    return [part[: math.prod(shape)].view(shape) for part, shape in zip(parts, shapes, strict=True)]


@dataclass
class Saved:
    """Forward state the backward reads: the family rows of ``q, k, v`` (means), their
    :class:`Stats`, ``L`` of every node, ``R`` of every child and ``log W`` of every family."""

    Q: NodeRows
    K: NodeRows
    V: NodeRows
    stats: Stats
    lse: torch.Tensor
    R: NodeRows
    logw: torch.Tensor


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None,
    plan: TritonPlan,
    scale: float,
    distance: bool,
    keep: bool,
    launch: Launcher = _launch,
) -> tuple[torch.Tensor, Saved]:
    """HSA of contiguous ``q, k: (Z, N, d_k)``, ``v: (Z, N, d_v)``; ``pos`` float32 or None.

    Returns ``(Z, N, d_v)`` in the input dtype and the state for the backward; with ``keep``
    false the leaf products ``R_i`` are written straight into the output. Each kernel runs
    through ``launch(kernel, grid, *args, **kwargs)`` (:func:`record_launches`).
    """
    kern = kernels()
    z, n, d_k = q.shape
    d_v = v.shape[-1]
    m1 = plan.num_families + 1
    per_family = (z, m1) if distance else (0,)
    qf, kf, vf, sentf, ff, qvarf, kvarf, lse = _buffers(
        q.device, False, (z, m1, d_k), (z, m1, d_k), (z, m1, d_v), (z, m1, d_v), (z, m1),
        per_family, per_family, (z, n + m1 - 1),
    )  # fmt: skip
    logw, u = _buffers(q.device, True, (z, m1), (z, m1, d_v))  # W(root) = 1, U(root) = 0
    out = torch.empty(z, n, d_v, device=q.device, dtype=q.dtype)
    rloc = torch.empty_like(out) if keep else out
    Q, K, V, R = NodeRows(q, qf), NodeRows(k, kf), NodeRows(v, vf), NodeRows(rloc, sentf)
    stats = Stats(ff, qvarf, kvarf)
    d_p, energy = _energy(q, v, pos, distance)
    pos_arg = pos if pos is not None else ff
    for b in plan.buckets:
        programs, tile = bucket_launch(b, q.dtype, distance)
        launch(
            kern.hsa_up_kernel, (programs, z),
            Q, K, V, stats, R, lse, pos_arg, b.children,
            b.num_families, b.width, b.leaf_start, n, m1, d_k, d_v, d_p, scale,
            TILE=tile, E=energy, num_warps=NUM_WARPS,
        )  # fmt: skip
    bdv = _block(d_v)
    rows = max(1, BLOCK_ELEMENTS // bdv)
    for fams, parents, count in plan.down:
        launch(
            kern.hsa_down_kernel, (-(-count // rows), z),
            fams, parents, count, ff, lse, logw, u, sentf, n, m1, d_v, BF=rows, BDV=bdv,
        )  # fmt: skip
    launch(
        kern.hsa_leaf_kernel, (-(-n // rows), z),
        rloc, v, out, plan.leaf_parent, logw, u, n, m1, d_v, BN=rows, BDV=bdv,
    )  # fmt: skip
    return out, Saved(Q, K, V, stats, lse, R, logw)


def backward(
    gy: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None,
    plan: TritonPlan,
    scale: float,
    distance: bool,
    saved: Saved,
    launch: Launcher = _launch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of ``sum(gy * y)`` in ``q, k, v`` (input dtype) and ``pos`` (float32)."""
    kern = kernels()
    z, n, d_k = q.shape
    d_v = v.shape[-1]
    m1 = plan.num_families + 1
    gy = gy.contiguous()
    # adjoint of the down pass, children first
    guf, glogwf, dlt = _buffers(q.device, False, (z, m1, d_v), (z, m1), (z, n + m1 - 1))
    GU = NodeRows(gy, guf)
    for b in plan.buckets:
        programs, tile = bucket_launch(b, q.dtype, distance)
        launch(
            kern.hsa_down_bwd_kernel, (programs, z),
            GU, saved.R, saved.logw, glogwf, dlt, b.children,
            b.num_families, b.width, b.leaf_start, n, m1, d_v,
            BDV=_block(d_v), TILE=tile, num_warps=NUM_WARPS,
        )  # fmt: skip
    # adjoint of the up pass, parents first; roots get no gradient from above
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    d_p, energy = _energy(q, v, pos, distance)
    per_family = (z, m1) if distance else (0,)
    per_node_pos = (z, n + m1 - 1, d_p if pos is not None else 0)
    gqf, gkf, gvf, gff, gqvarf, gkvarf, gpos_r, gpos_c = _buffers(
        q.device, True, (z, m1, d_k), (z, m1, d_k), (z, m1, d_v), (z, m1),
        per_family, per_family, per_node_pos, per_node_pos,  # positions: row and column parts
    )  # fmt: skip
    DQ, DK, DV = NodeRows(dq, gqf), NodeRows(dk, gkf), NodeRows(dv, gvf)
    g_stats = Stats(gff, gqvarf, gkvarf)
    pos_arg = pos if pos is not None else gff
    for b in reversed(plan.buckets):
        programs, tile = bucket_launch(b, q.dtype, distance)
        launch(
            kern.hsa_up_bwd_kernel, (programs, z),
            saved.Q, saved.K, saved.V, saved.stats, pos_arg, saved.lse, saved.logw,
            GU, glogwf, dlt, DQ, DK, DV, g_stats, gpos_r, gpos_c, b.children,
            b.num_families, b.width, b.leaf_start, n, m1, d_k, d_v, d_p, scale,
            TILE=tile, E=energy, num_warps=NUM_WARPS,
        )  # fmt: skip
    if plan.root_leaves.numel():  # a one-leaf tree returns v
        roots = plan.root_leaves
        dq[:, roots] = 0
        dk[:, roots] = 0
        dv[:, roots] = gy[:, roots]
    gpos = (gpos_r + gpos_c).sum(0) if pos is not None else None
    return dq, dk, dv, gpos


@dataclass(frozen=True)
class KernelLaunch:
    """One launch the programme would make: the Triton kernel, its grid and its arguments."""

    kernel: Any
    grid: tuple[int, int]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def record_launches(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: HSALayout,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None = None,
) -> list[KernelLaunch]:
    """Every kernel launch of a forward and a backward on ``q, k: (Z, N, d_k)``,
    ``v: (Z, N, d_v)`` (contiguous, one dtype), in order, recorded instead of made.

    Nothing is computed, so the tensors may live on any device: this is what compiling the
    kernels ahead of time for a GPU needs on a machine without one. The buffers are allocated
    as for a real run, the output gradient uninitialised.
    """
    calls: list[KernelLaunch] = []

    def record(kernel: Any, grid: tuple[int, int], *args: Any, **kwargs: Any) -> None:
        calls.append(KernelLaunch(kernel, grid, args, kwargs))

    plan = triton_plan(layout)
    pos = positions.to(torch.float32).contiguous() if positions is not None else None
    distance = energy == "distance"
    _, saved = forward(q, k, v, pos, plan, scale, distance, keep=True, launch=record)
    backward(torch.empty_like(v), q, k, v, pos, plan, scale, distance, saved, launch=record)
    return calls
