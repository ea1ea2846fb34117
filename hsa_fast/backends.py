"""Choosing the backend of a call: the PyTorch programme or the Triton kernels."""

from __future__ import annotations

import torch

from .triton.dispatch import triton_unsupported

__all__ = ["BACKENDS", "choose_backend"]

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
