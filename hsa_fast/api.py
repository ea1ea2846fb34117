"""The public entry point: validation, then the programme on the input's device."""

from __future__ import annotations

import torch

from hsa_ref import Hierarchy, check_attention_inputs

from .layout import compile_hierarchy
from .programme import hsa_programme

__all__ = ["hsa"]


def hsa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hierarchical self-attention of ``q, k, v`` over the leaves of ``hierarchy``.

    Args:
        q, k: ``(..., N, d_k)``; v: ``(..., N, d_v)``; batch dimensions broadcast, as in
            ``torch.nn.functional.scaled_dot_product_attention``. float64, float32, float16 or
            bfloat16, all one dtype and device; ``N`` is ``hierarchy.num_leaves``.
        hierarchy: an ``hsa_ref.Hierarchy`` (a forest: no attention crosses trees).
        scale: score temperature, default ``1/sqrt(d_k)``.
        energy: ``"dot"`` (``s_ij = scale <q_i, k_j>``) or ``"distance"``
            (``s_ij = -scale/2 ||q_i - k_j||^2``).
        positions: optional ``(N + M, d_p)`` per-node vectors; ``<p_B, p_C>`` is added to the
            block energy of siblings ``B, C`` and ``<p_i, p_i>`` to ``s_ii``.

    Returns:
        ``(..., N, d_v)`` in the dtype of ``q``.

    Raises:
        TypeError, ValueError: for bad arguments, naming the argument at fault.
    """
    checked = check_attention_inputs(
        q, k, v, hierarchy, scale=scale, energy=energy, positions=positions
    )
    layout = compile_hierarchy(hierarchy, checked.q.device)
    return hsa_programme(
        checked.q,
        checked.k,
        checked.v,
        layout,
        scale=checked.scale,
        energy=checked.energy,
        positions=checked.positions,
    )
