"""A small pre-norm transformer encoder that classifies expressions; its attention by name.

Token embedding plus a learned position embedding; ``layers`` blocks of ``x + attn(norm(x))``
and ``x + mlp(norm(x))`` (GELU, hidden size ``mlp_ratio * dim``); a final norm; the mean over
an example's real tokens; a linear head. Every attention of :data:`~.attentions.ATTENTIONS` has
the same modules (query, key, value and output projections of ``dim x dim`` with biases), so
every model has the same parameters and, from the same seed, the same initial values: only what
the attention computes from ``q, k, v`` differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hsa_fast import hsa

from .attentions import HSA_ATTENTIONS, check_attention
from .batching import Batch
from .checks import check_int
from .dataset import NUM_CLASSES
from .tokenizer import PAD, VOCAB

__all__ = ["Classifier", "ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    """The classifier's shape. ``chunk`` is the run length of ``hsa-chunks`` (the structure it
    is trained with); ``max_length`` the longest expression it takes (position embeddings)."""

    attention: str
    dim: int = 64
    heads: int = 4
    layers: int = 4
    mlp_ratio: int = 4
    max_length: int = 64
    chunk: int = 5

    def __post_init__(self) -> None:
        check_attention(self.attention)
        for name in ("dim", "heads", "layers", "mlp_ratio", "max_length"):
            check_int(getattr(self, name), name, 1)
        check_int(self.chunk, "chunk", 2)
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SelfAttention(nn.Module):
    """Multi-head self-attention whose pattern is the batch's: HSA over ``batch.forest`` or
    softmax (SDPA) under ``batch.mask``; ``(B, L, dim) -> (B, L, dim)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(dim, dim) for _ in range(4)
        )

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        size, length, dim = x.shape
        heads, head_dim = self.config.heads, self.config.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, dim) -> (B, H, L, d)
            return t.view(size, length, heads, head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if batch.forest is not None:

            def packed(t: torch.Tensor) -> torch.Tensor:  # (B, H, L, d) -> (H, B L, d)
                return t.transpose(0, 1).reshape(heads, size * length, head_dim)

            y = hsa(packed(q), packed(k), packed(v), batch.forest)
            y = y.view(heads, size, length, head_dim).transpose(0, 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.mask)
        return self.out_proj(y.transpose(1, 2).reshape(size, length, dim))


class Block(nn.Module):
    """``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.dim
        self.norm1 = nn.LayerNorm(config.dim)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, hidden), nn.GELU(), nn.Linear(hidden, config.dim)
        )

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), batch)
        return x + self.mlp(self.norm2(x))


class Classifier(nn.Module):
    """``Classifier(config)(batch)`` -> ``(B, 10)`` logits for the batch's expressions.

    ``ValueError`` if the batch carries another attention's structure (a forest for a softmax
    model, a mask for an HSA model) or is longer than ``config.max_length``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(len(VOCAB), config.dim, padding_idx=PAD)
        self.positions = nn.Embedding(config.max_length, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, NUM_CLASSES)

    def forward(self, batch: Batch) -> torch.Tensor:
        is_hsa = self.config.attention in HSA_ATTENTIONS
        if is_hsa != (batch.forest is not None) or is_hsa == (batch.mask is not None):
            raise ValueError(
                f"a {self.config.attention!r} model needs a batch collated for it "
                f"({'a forest' if is_hsa else 'a mask'}); got "
                f"{'a forest' if batch.forest is not None else 'a mask'}"
            )
        length = batch.tokens.shape[1]
        if length > self.config.max_length:
            raise ValueError(
                f"batch of length {length} is longer than max_length {self.config.max_length}"
            )
        where = torch.arange(length, device=batch.tokens.device)
        x = self.tokens(batch.tokens) + self.positions(where)
        for block in self.blocks:
            x = block(x, batch)
        x = self.norm(x)
        real = batch.real.unsqueeze(-1).to(x.dtype)
        pooled = (x * real).sum(1) / real.sum(1)
        return self.head(pooled)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
