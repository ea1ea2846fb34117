"""Choosing and running the backend of a call: the PyTorch programme or the Triton kernels.

:func:`run_backend` is the one place where ``hsa`` and the sequence-parallel ``hsa_sharded``
turn validated inputs and a compiled layout into HSA: it chooses the backend
(:func:`choose_backend`), centres q and k per tree for the distance energy
(:func:`centre_per_tree`) and runs it.
"""

from __future__ import annotations

import torch

from .layout import HSALayout
from .programme import accumulation_dtype, hsa_programme
from .triton import hsa_triton
from .triton.dispatch import triton_unsupported

__all__ = ["BACKENDS", "centre_per_tree", "choose_backend", "run_backend", "tree_centres"]

BACKENDS = ("auto", "torch", "triton")


def choose_backend(
    backend: object,
    q: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None,
    num_nodes: int,
) -> str:
    """``"torch"`` or ``"triton"`` for validated inputs over a hierarchy of ``num_nodes`` nodes.

    ``"auto"`` picks Triton for CUDA tensors whenever
    :func:`~hsa_fast.triton.dispatch.triton_unsupported` allows it; ``"triton"`` raises
    ``ValueError`` with the reason when it does not.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    reason = triton_unsupported(q, v, positions, num_nodes, explicit=backend == "triton")
    if reason is None:
        return "triton"
    if backend == "triton":
        raise ValueError(f"backend='triton' cannot run this call: {reason}")
    return "torch"


def tree_centres(q: torch.Tensor, k: torch.Tensor, layout: HSALayout) -> torch.Tensor:
    """``c_T`` ``(..., num_trees, d_k)``: the mean of ``(q + k) / 2`` over each tree's leaves,
    rounded to the input dtype and detached; non-finite entries are left out of the means (a
    NaN stays inside its tree)."""
    acc = accumulation_dtype(q.dtype)
    with torch.no_grad():
        mid = (q.to(acc) + k.to(acc)) * 0.5
        mid = torch.where(torch.isfinite(mid), mid, 0.0)
        sums = mid.new_zeros(*mid.shape[:-2], layout.num_trees, mid.shape[-1])
        sums.index_add_(-2, layout.leaf_tree, mid)
        return (sums / layout.tree_size.to(acc).unsqueeze(-1)).to(q.dtype)


def centre_per_tree(
    q: torch.Tensor, k: torch.Tensor, layout: HSALayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q - c_T, k - c_T`` with ``c_T`` the centre of each leaf's tree (:func:`tree_centres`).

    The distance energy is invariant under one common shift of every q and k of a tree, and no
    attention crosses trees, so the centred inputs give the same HSA; far from the origin they
    spare the block energies their cancellation. ``c_T`` is rounded to the input dtype (a
    difference of nearby floats is exact) and detached: the derivative of the output along a
    common shift is zero, so gradients are unchanged.
    """
    centre = tree_centres(q, k, layout).index_select(-2, layout.leaf_tree)
    return q - centre, k - centre


def run_backend(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: HSALayout,
    num_nodes: int,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None = None,
    return_log_partition: bool = False,
    centred: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """HSA of validated inputs over ``layout`` (a hierarchy of ``num_nodes`` nodes) on the
    backend :func:`choose_backend` picks for them; for the distance energy q and k are first
    centred per tree (:func:`centre_per_tree`) unless ``centred`` says the caller did.

    With ``return_log_partition`` also ``F`` of every node (:func:`hsa_programme`'s); the
    Triton kernels return none, so the PyTorch programme then runs too, for ``F`` alone.
    """
    chosen = choose_backend(backend, q, v, positions, num_nodes)
    if energy == "distance" and not centred:
        q, k = centre_per_tree(q, k, layout)
    kw = {"scale": scale, "energy": energy, "positions": positions}
    if chosen == "triton":
        y = hsa_triton(q, k, v, layout, **kw)
        if not return_log_partition:
            return y
        return y, hsa_programme(q, k, v, layout, return_log_partition=True, **kw)[1]
    return hsa_programme(q, k, v, layout, return_log_partition=return_log_partition, **kw)
