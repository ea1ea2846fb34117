"""``HierarchicalSelfAttention``: a drop-in multi-head layer, like ``nn.MultiheadAttention``."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from hsa_ref import Hierarchy, hsa_attention_matrix
from hsa_ref.validation import ENERGIES

from .api import hsa

__all__ = ["HierarchicalSelfAttention"]


def _positive_int(value: object, name: str, *, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "a positive int or None" if optional else "a positive int"
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def without_pads(hierarchy: Hierarchy, pads: np.ndarray) -> tuple[Hierarchy, np.ndarray]:
    """``hierarchy`` with the leaves where ``pads`` (``(N,)`` bool) is true cut out as one-leaf
    trees, and families left without leaves dropped; also the original id of every node kept."""
    n, parent = hierarchy.num_leaves, hierarchy.parent_array
    real = np.zeros(hierarchy.num_nodes, dtype=np.int64)
    real[:n] = ~pads
    for nodes in reversed(hierarchy.nodes_by_depth[1:]):
        np.add.at(real, parent[nodes], real[nodes])
    kept = np.concatenate([np.arange(n), n + np.flatnonzero(real[n:] > 0)])
    new_id = np.full(hierarchy.num_nodes, -1, dtype=np.int64)
    new_id[kept] = np.arange(kept.size)
    new_parent = np.where(parent[kept] >= 0, new_id[np.maximum(parent[kept], 0)], -1)
    new_parent[:n][pads] = -1
    return Hierarchy(new_parent, n), kept


def _padding(mask: object, batch: int, length: int, unbatched: bool) -> np.ndarray | None:
    """``key_padding_mask`` as a ``(B, L)`` bool array, checked."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"key_padding_mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"key_padding_mask must be a bool tensor (True marks a pad), got {mask.dtype}: "
            "additive float masks are not supported"
        )
    expected = (length,) if unbatched else (batch, length)
    if tuple(mask.shape) != expected:
        raise ValueError(f"key_padding_mask must have shape {expected}, got {tuple(mask.shape)}")
    return mask.reshape(batch, length).cpu().numpy()


class HierarchicalSelfAttention(nn.Module):
    """Multi-head HSA with input and output projections.

    Mirrors ``nn.MultiheadAttention(embed_dim, num_heads, bias=..., kdim=..., vdim=...,
    batch_first=...)``; ``forward`` takes the hierarchy over the sequence positions (its leaves)
    and returns ``(output, weights)``: ``weights`` is ``None`` unless ``need_weights=True``,
    which forms HSA's ``N x N`` attention matrix with the reference
    (:func:`hsa_ref.hsa_attention_matrix`); ``key_padding_mask`` turns pads into one-leaf
    trees. Self-attention only: query, key and value share the
    sequence of ``hierarchy.num_leaves`` positions.

    Shapes: ``(L, B, E)`` or, with ``batch_first=True``, ``(B, L, E)``; unbatched ``(L, E)``.
    Bad arguments raise ``TypeError`` (wrong types: ``embed_dim=16.0``, ``num_heads=True``) or
    ``ValueError`` (non-positive sizes, ``kdim=0``, wrong embedding sizes), naming the argument.
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
        embed_dim = _positive_int(embed_dim, "embed_dim")
        num_heads = _positive_int(num_heads, "num_heads")
        kdim = _positive_int(kdim, "kdim", optional=True)
        vdim = _positive_int(vdim, "vdim", optional=True)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if energy not in ENERGIES:
            raise ValueError(f"energy must be one of {ENERGIES}, got {energy!r}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
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
        need_weights: bool = False,
        average_attn_weights: bool = True,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over ``hierarchy``; ``key`` and ``value`` default to ``query``.

        ``key_padding_mask``: bool ``(B, L)`` (``(L,)`` unbatched), ``True`` at pads. Each
        element attends over ``hierarchy`` without its pads (families left without real
        positions are dropped) and every pad is a one-leaf tree, so pads change no real output
        and a pad's output is its own projected value. ``need_weights=True`` also returns HSA's
        attention matrix, ``(B, L, L)`` averaged over heads (``(B, num_heads, L, L)`` with
        ``average_attn_weights=False``; no batch dimension for unbatched input), formed in
        O(L^2) memory by the reference. ``attn_mask`` and ``is_causal`` are refused: the
        hierarchy sets who attends to whom (separate trees keep positions apart).
        """
        if attn_mask is not None or is_causal:
            raise ValueError(
                "attn_mask and is_causal are not supported: HSA's attention pattern is the "
                "hierarchy's (positions attend within their tree, by sibling blocks); use "
                "separate trees (Hierarchy.forest) to keep positions apart"
            )
        key = query if key is None else key
        value = key if value is None else value
        for name, x in (("query", query), ("key", key), ("value", value)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be 2-D or 3-D, got shape {tuple(query.shape)}")
        for name, x, size, arg in (
            ("query", query, self.embed_dim, "embed_dim"),
            ("key", key, self.kdim, "kdim"),
            ("value", value, self.vdim, "vdim"),
        ):
            if x.dim() != query.dim():
                raise ValueError(
                    f"{name} must have as many dimensions as query ({query.dim()}), got shape "
                    f"{tuple(x.shape)}"
                )
            if x.shape[-1] != size:
                raise ValueError(
                    f"{name} has embedding size {x.shape[-1]} (shape {tuple(x.shape)}), "
                    f"expected {arg} = {size}"
                )
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if unbatched or not self.batch_first:  # to (B, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        batch, length, _ = query.shape
        if key.shape[:2] != (batch, length) or value.shape[:2] != (batch, length):
            raise ValueError(
                "self-attention over one hierarchy: query, key and value need the same batch and "
                f"sequence sizes, got {tuple(query.shape)}, {tuple(key.shape)}, "
                f"{tuple(value.shape)}"
            )

        pads = _padding(key_padding_mask, batch, length, unbatched)
        if pads is not None and not isinstance(hierarchy, Hierarchy):
            raise TypeError(
                f"hierarchy must be an hsa_ref.Hierarchy, got {type(hierarchy).__name__}"
            )
        if pads is not None and length != hierarchy.num_leaves:
            raise ValueError(
                f"the sequence has {length} positions but the hierarchy has "
                f"{hierarchy.num_leaves} leaves"
            )
        if pads is not None and positions is not None:
            n_nodes = hierarchy.num_nodes if isinstance(hierarchy, Hierarchy) else None
            if (
                not isinstance(positions, torch.Tensor)
                or positions.dim() != 2
                or (positions.shape[0] != n_nodes)
            ):
                raise ValueError(
                    f"positions must be a (N + M, d_p) = ({n_nodes}, d_p) tensor, one row per "
                    "node of the hierarchy"
                )

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        kw = {"scale": None, "energy": self.energy}  # None: 1/sqrt(head_dim)
        if pads is None:
            y = hsa(q, k, v, hierarchy, positions=positions, **kw)
        else:  # one forest for the batch: element b on leaves b L .. b L + L - 1
            parts = [without_pads(hierarchy, row) for row in pads]
            n = hierarchy.num_leaves
            origin = np.concatenate([o[:n] for _, o in parts] + [o[n:] for _, o in parts])
            pos = (
                None
                if positions is None
                else positions[torch.as_tensor(origin, device=positions.device)]
            )
            forest = Hierarchy.forest([tree for tree, _ in parts])

            def packed(x: torch.Tensor) -> torch.Tensor:  # (B, H, L, e) -> (H, B L, e)
                return x.transpose(0, 1).reshape(self.num_heads, batch * length, -1)

            y = hsa(packed(q), packed(k), packed(v), forest, positions=pos, **kw)
            y = y.view(self.num_heads, batch, length, self.head_dim).transpose(0, 1)
        y = self.out_proj(y.transpose(1, 2).reshape(batch, length, self.embed_dim))
        weights = None
        if need_weights:
            if pads is None:
                theta = hsa_attention_matrix(q, k, hierarchy, positions=positions, **kw)
            else:
                theta = torch.stack(
                    [
                        hsa_attention_matrix(
                            q[b],
                            k[b],
                            tree,
                            positions=None
                            if positions is None
                            else positions[torch.as_tensor(kept, device=positions.device)],
                            **kw,
                        )
                        for b, (tree, kept) in enumerate(parts)
                    ]
                )
            theta = theta.to(q.dtype)  # (B, H, L, L)
            weights = theta.mean(1) if average_attn_weights else theta
            if unbatched:
                weights = weights.squeeze(0)
        if unbatched:
            return y.squeeze(0), weights
        return (y if self.batch_first else y.transpose(0, 1)), weights
