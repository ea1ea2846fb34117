"""The public entry point: validation, then the backend's HSA on the input's device.

``backend="auto"`` runs the Triton kernels (:mod:`hsa_fast.triton`) on CUDA tensors
when Triton is installed and the inputs suit them, and the PyTorch programme otherwise."""

from __future__ import annotations

import torch

from hsa_ref import Hierarchy, check_attention_inputs

from .backends import centre_per_tree, run_backend
from .layout import compile_hierarchy

__all__ = ["centre_per_tree", "hsa"]


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
            ``torch.nn.functional.scaled_dot_product_attention``. Dense tensors of float64,
            float32, float16 or bfloat16 (``hsa_ref.validation.DTYPES``; others raise
            ``TypeError``), all one dtype and device; ``N`` is
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
        ``(..., N, d_v)`` in the dtype of ``q``, differentiable (first-order gradients) in
        ``q, k, v`` and ``positions``.

    Raises:
        TypeError, ValueError: for bad arguments, naming the argument at fault.
    """
    checked = check_attention_inputs(
        q, k, v, hierarchy, scale=scale, energy=energy, positions=positions
    )
    return run_backend(
        backend,
        checked.q,
        checked.k,
        checked.v,
        compile_hierarchy(hierarchy, checked.q.device),
        hierarchy.num_nodes,
        scale=checked.scale,
        energy=checked.energy,
        positions=checked.positions,
    )
