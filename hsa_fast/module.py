"""``HierarchicalSelfAttention``: a drop-in multi-head layer, like ``nn.MultiheadAttention``."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from hsa_ref import Hierarchy, hsa_attention_matrix
from hsa_ref.validation import ENERGIES, check_dtype, check_tensor

from .api import hsa
from .packing import padded_forest, restrict

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


def _restricted(
    hierarchy: object, positions: object, pads: np.ndarray
) -> list[tuple[Hierarchy, np.ndarray]]:
    """Each element's hierarchy without its pads and the ids of the nodes it keeps
    (:func:`~hsa_fast.packing.restrict`), after checking ``hierarchy`` and ``positions``
    against the padded sequence."""
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"hierarchy must be an hsa_ref.Hierarchy, got {type(hierarchy).__name__}")
    length = pads.shape[1]
    if length != hierarchy.num_leaves:
        raise ValueError(
            f"the sequence has {length} positions but the hierarchy has "
            f"{hierarchy.num_leaves} leaves"
        )
    if positions is not None and (
        not isinstance(positions, torch.Tensor)
        or positions.dim() != 2
        or positions.shape[0] != hierarchy.num_nodes
    ):
        raise ValueError(
            f"positions must be a (N + M, d_p) = ({hierarchy.num_nodes}, d_p) tensor, one row "
            "per node of the hierarchy"
        )
    return [restrict(hierarchy, ~row) for row in pads]


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
    Bad arguments raise ``TypeError`` (wrong types: ``embed_dim=16.0``, ``num_heads=True``,
    ``dtype=torch.int64``, inputs of another dtype than the parameters) or ``ValueError``
    (non-positive sizes, ``kdim=0``, wrong embedding sizes), naming the argument.
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
        if dtype is not None:
            check_dtype(dtype, "dtype")
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
        hierarchy sets who attends to whom (separate trees keep positions apart). Inputs must
        have the dtype and device of the layer's parameters.
        """
        query, key, value, unbatched = self._inputs(query, key, value, attn_mask, is_causal)
        pads = _padding(key_padding_mask, *query.shape[:2], unbatched)
        parts = None if pads is None else _restricted(hierarchy, positions, pads)
        inputs = zip(self._projections, (query, key, value), strict=True)
        q, k, v = (self._heads(proj(x)) for proj, x in inputs)
        y = self._attend(q, k, v, hierarchy, positions, pads, parts)
        out = self.out_proj(y.transpose(1, 2).flatten(2))
        weights = None
        if need_weights:
            weights = self._weights(q, k, hierarchy, positions, parts, average_attn_weights)
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    @property
    def _projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj

    def _inputs(
        self,
        query: object,
        key: object,
        value: object,
        attn_mask: object,
        is_causal: object,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Checked ``query, key, value`` as ``(B, L, E)`` and whether they were unbatched."""
        if attn_mask is not None or is_causal:
            raise ValueError(
                "attn_mask and is_causal are not supported: HSA's attention pattern is the "
                "hierarchy's (positions attend within their tree, by sibling blocks); use "
                "separate trees (Hierarchy.forest) to keep positions apart"
            )
        key = query if key is None else key
        value = key if value is None else value
        named = (("query", query), ("key", key), ("value", value))
        for name, x in named:
            check_tensor(name, x)
        if query.dim() > 3:
            raise ValueError(f"query must be 2-D or 3-D, got shape {tuple(query.shape)}")
        for (name, x), size, arg, proj in zip(
            named, (self.embed_dim, self.kdim, self.vdim), ("embed_dim", "kdim", "vdim"),
            self._projections, strict=True,
        ):  # fmt: skip
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
            weight = proj.weight
            if x.dtype != weight.dtype:
                raise TypeError(
                    f"{name} has dtype {x.dtype} but the layer's parameters are {weight.dtype}: "
                    f"convert one to the other (layer.to({weight.dtype}) or {name}.to(...))"
                )
            if x.device != weight.device:
                raise ValueError(
                    f"{name} is on {x.device} but the layer's parameters are on {weight.device}"
                )
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if unbatched or not self.batch_first:  # to (B, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if key.shape[:2] != query.shape[:2] or value.shape[:2] != query.shape[:2]:
            raise ValueError(
                "self-attention over one hierarchy: query, key and value need the same batch and "
                f"sequence sizes, got {tuple(query.shape)}, {tuple(key.shape)}, "
                f"{tuple(value.shape)}"
            )
        return query, key, value, unbatched

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, E)`` to ``(B, num_heads, L, head_dim)``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        hierarchy: Hierarchy,
        positions: torch.Tensor | None,
        pads: np.ndarray | None,
        parts: list[tuple[Hierarchy, np.ndarray]] | None,
    ) -> torch.Tensor:
        """HSA of every head, ``(B, num_heads, L, head_dim)``; with pads, the batch attends as
        one forest (:func:`~hsa_fast.packing.padded_forest`)."""
        kw = {"scale": None, "energy": self.energy}  # None: 1/sqrt(head_dim)
        if pads is None:
            return hsa(q, k, v, hierarchy, positions=positions, **kw)
        batch, length = q.shape[0], q.shape[2]
        packed = padded_forest([tree for tree, _ in parts], ~pads)
        pos = None
        if positions is not None:  # each forest node's row: its node of the hierarchy
            kept = [ids for _, ids in parts]
            first = np.cumsum([0] + [ids.size for ids in kept[:-1]])
            origin = np.arange(packed.node.size) % length  # a pad: its own leaf
            real = packed.node >= 0
            origin[real] = np.concatenate(kept)[first[packed.element[real]] + packed.node[real]]
            pos = positions[torch.as_tensor(origin, device=positions.device)]

        def rows(x: torch.Tensor) -> torch.Tensor:  # (B, H, L, e) -> (H, B L, e)
            return x.transpose(0, 1).flatten(1, 2)

        y = hsa(rows(q), rows(k), rows(v), packed.forest, positions=pos, **kw)
        return y.unflatten(1, (batch, length)).transpose(0, 1)

    def _weights(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        hierarchy: Hierarchy,
        positions: torch.Tensor | None,
        parts: list[tuple[Hierarchy, np.ndarray]] | None,
        average: bool,
    ) -> torch.Tensor:
        """HSA's attention matrix by the reference, ``(B, L, L)`` averaged over heads or
        ``(B, num_heads, L, L)``; a pad's row and column are zero but for its own entry."""
        kw = {"scale": None, "energy": self.energy}
        if parts is None:
            theta = hsa_attention_matrix(q, k, hierarchy, positions=positions, **kw)
        else:
            theta = q.new_zeros(*q.shape[:3], q.shape[2], dtype=torch.float64)
            for b, (tree, kept) in enumerate(parts):
                rows = torch.as_tensor(kept[: tree.num_leaves], device=q.device)
                pos = None
                if positions is not None:
                    pos = positions[torch.as_tensor(kept, device=positions.device)]
                part = hsa_attention_matrix(q[b][:, rows], k[b][:, rows], tree, positions=pos, **kw)
                theta[b][:, rows[:, None], rows[None, :]] = part
                pads = np.setdiff1d(np.arange(q.shape[2]), kept[: tree.num_leaves])
                pads = torch.as_tensor(pads, device=q.device)
                theta[b][:, pads, pads] = 1  # a pad is a one-leaf tree
        theta = theta.to(q.dtype)
        return theta.mean(1) if average else theta
