"""The public entry point: validation, then the programme on the input's device.

``backend="auto"`` runs the Triton kernels (:mod:`hsa_fast.triton`) on CUDA tensors
when Triton is installed and the inputs suit them, and the PyTorch programme otherwise."""

from __future__ import annotations

import torch

from hsa_ref import Hierarchy, check_attention_inputs
from hsa_ref.validation import check_dtype

from .backends import choose_backend
from .layout import HSALayout, compile_hierarchy
from .programme import accumulation_dtype, hsa_programme
from .triton import hsa_triton

__all__ = ["centre_per_tree", "hsa"]


def centre_per_tree(
    q: torch.Tensor, k: torch.Tensor, layout: HSALayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q - c_T, k - c_T`` with ``c_T`` the mean of ``(q + k) / 2`` over each tree's leaves.

    The distance energy is invariant under one common shift of every q and k of a tree, and no
    attention crosses trees, so the centred inputs give the same HSA; far from the origin they
    spare the block energies ``scale <qbar, kbar> - scale/2 (|q|^2 + |k|^2)`` their cancellation.
    ``c_T`` is rounded to the input dtype (a difference of nearby floats is exact) and detached:
    the derivative of the output along a common shift is zero, so gradients are unchanged.
    Non-finite entries are left out of the means and stay inside their tree.
    """
    acc = accumulation_dtype(q.dtype)
    with torch.no_grad():
        mid = (q.to(acc) + k.to(acc)) * 0.5
        mid = torch.where(torch.isfinite(mid), mid, 0.0)
        sums = mid.new_zeros(*mid.shape[:-2], layout.num_trees, mid.shape[-1])
        sums.index_add_(-2, layout.leaf_tree, mid)
        centre = (
            (sums / layout.tree_size.to(acc).unsqueeze(-1))
            .to(q.dtype)
            .index_select(-2, layout.leaf_tree)
        )
    return q - centre, k - centre


def hsa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Hierarchical self-attention of ``q, k, v`` over the leaves of ``hierarchy``.

    Args:
        q, k: ``(..., N, d_k)``; v: ``(..., N, d_v)``; batch dimensions broadcast, as in
            ``torch.nn.functional.scaled_dot_product_attention``. float64, float32, float16 or
            bfloat16 (other dtypes raise ``TypeError``), all one dtype and device; ``N`` is
            ``hierarchy.num_leaves``. For ``energy="distance"`` q and k are first centred per
            tree (:func:`centre_per_tree`), which leaves HSA unchanged and keeps the energy
            exact far from the origin.
        hierarchy: an ``hsa_ref.Hierarchy`` (a forest: no attention crosses trees).
        scale: score temperature, default ``1/sqrt(d_k)``.
        energy: ``"dot"`` (``s_ij = scale <q_i, k_j>``) or ``"distance"``
            (``s_ij = -scale/2 ||q_i - k_j||^2``).
        positions: optional ``(N + M, d_p)`` per-node vectors; ``<p_B, p_C>`` is added to the
            block energy of siblings ``B, C`` and ``<p_i, p_i>`` to ``s_ii``.
        backend: ``"auto"`` (Triton kernels for float32 / float16 / bfloat16 CUDA tensors when
            Triton is installed, else the PyTorch programme; float64 always takes the PyTorch
            programme), ``"torch"`` or ``"triton"`` (raises ``ValueError`` where the kernels
            cannot run; CPU tensors only under ``TRITON_INTERPRET=1``, for testing).

    Returns:
        ``(..., N, d_v)`` in the dtype of ``q``.

    Raises:
        TypeError, ValueError: for bad arguments, naming the argument at fault.
    """
    checked = check_attention_inputs(
        q, k, v, hierarchy, scale=scale, energy=energy, positions=positions
    )
    check_dtype(checked.q.dtype, "the dtype of q, k and v")
    layout = compile_hierarchy(hierarchy, checked.q.device)
    chosen = choose_backend(backend, checked.q, checked.v, checked.positions, hierarchy.num_nodes)
    run = hsa_triton if chosen == "triton" else hsa_programme
    q, k = checked.q, checked.k
    if checked.energy == "distance":
        q, k = centre_per_tree(q, k, layout)
    return run(
        q,
        k,
        checked.v,
        layout,
        scale=checked.scale,
        energy=checked.energy,
        positions=checked.positions,
    )
