"""``HierarchicalSelfAttention``: a drop-in multi-head layer, like ``nn.MultiheadAttention``."""

from __future__ import annotations

import torch
from torch import nn

from hsa_ref import Hierarchy

from .api import hsa

__all__ = ["HierarchicalSelfAttention"]


class HierarchicalSelfAttention(nn.Module):
    """Multi-head HSA with input and output projections.

    Mirrors ``nn.MultiheadAttention(embed_dim, num_heads, bias=..., kdim=..., vdim=...,
    batch_first=...)``; ``forward`` takes the hierarchy over the sequence positions (its leaves)
    and returns ``(output, None)``: HSA's attention weights are never formed. Self-attention
    only: query, key and value share the sequence of ``hierarchy.num_leaves`` positions.

    Shapes: ``(L, B, E)`` or, with ``batch_first=True``, ``(B, L, E)``; unbatched ``(L, E)``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        energy: str = "dot",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(
                f"embed_dim and num_heads must be positive, got {embed_dim}, {num_heads}"
            )
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if energy not in ("dot", "distance"):
            raise ValueError(f"energy must be 'dot' or 'distance', got {energy!r}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.batch_first, self.energy = batch_first, energy
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        *,
        hierarchy: Hierarchy,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """Attend over ``hierarchy``; ``key`` and ``value`` default to ``query``."""
        key = query if key is None else key
        value = key if value is None else value
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        elif query.dim() != 3:
            raise ValueError(f"query must be 2-D or 3-D, got shape {tuple(query.shape)}")
        if unbatched or not self.batch_first:  # to (B, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        batch, length, _ = query.shape
        if key.shape[:2] != (batch, length) or value.shape[:2] != (batch, length):
            raise ValueError(
                "self-attention over one hierarchy: query, key and value need the same batch and "
                f"sequence sizes, got {tuple(query.shape)}, {tuple(key.shape)}, "
                f"{tuple(value.shape)}"
            )

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        y = hsa(q, k, v, hierarchy, energy=self.energy, positions=positions)
        y = self.out_proj(y.transpose(1, 2).reshape(batch, length, self.embed_dim))
        if unbatched:
            return y.squeeze(0), None
        return (y if self.batch_first else y.transpose(0, 1)), None
