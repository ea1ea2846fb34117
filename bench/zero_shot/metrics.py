"""Fidelity metrics: Spearman's rank correlation and retrieval top-1 / mean reciprocal rank."""

from __future__ import annotations

import torch

__all__ = ["pair_similarities", "retrieval_mrr", "retrieval_top1", "spearman"]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks ``0..n-1`` of a 1-D tensor, ties given their average rank."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    average = first.to(torch.float64) + (counts.to(torch.float64) - 1) / 2
    del values
    return average[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally long 1-D tensors (average ranks for ties)."""
    if a.shape != b.shape or a.dim() != 1 or a.numel() < 2:
        raise ValueError(f"need two 1-D tensors of one length >= 2, got {a.shape} and {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = torch.sqrt((ra * ra).sum() * (rb * rb).sum())
    if denom == 0:
        raise ValueError("Spearman's correlation is undefined for a constant input")
    return float((ra * rb).sum() / denom)


def retrieval_top1(queries: torch.Tensor, documents: torch.Tensor) -> float:
    """Fraction of queries ``i`` whose most similar document (cosine) is document ``i``."""
    sims = queries @ documents.T
    return float((sims.argmax(-1) == torch.arange(len(queries))).double().mean())


def retrieval_mrr(queries: torch.Tensor, documents: torch.Tensor) -> float:
    """Mean over queries ``i`` of ``1 / rank`` of document ``i`` (rank 1: the most similar)."""
    sims = queries @ documents.T
    own = sims.diagonal().unsqueeze(-1)
    rank = 1 + (sims > own).sum(-1).double()
    return float((1 / rank).mean())


def pair_similarities(emb: torch.Tensor) -> torch.Tensor:
    iu = torch.triu_indices(len(emb), len(emb), offset=1)
    return (emb @ emb.T)[iu[0], iu[1]].double()
