"""Batches of expressions of different lengths, padded, with each attention's structure.

A batch of ``B`` expressions is a ``(B, L)`` array of token ids, ``L`` the longest, padded with
:data:`~.tokenizer.PAD`. Pads never reach a real token: under HSA the batch is one forest over
the ``B * L`` positions (example ``b`` on positions ``b L .. b L + L - 1``) in which each
example is its own tree and every pad a one-leaf tree; under softmax attention a boolean mask
lets a token attend to the tokens of its own example and group only, and a pad to itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hsa_ref import Hierarchy

from .attentions import HSA_ATTENTIONS, check_attention, groups_of, tree_of
from .listops import Expression
from .tokenizer import PAD, Encoded, encode

__all__ = ["Batch", "EncodedSplit", "collate", "pack_forest"]


@dataclass(frozen=True)
class Batch:
    """``tokens``: ``(B, L)`` int64; ``real``: ``(B, L)`` bool (``False`` at pads); ``labels``:
    ``(B,)`` int64. Exactly one of ``forest`` (HSA: a forest over ``B * L`` leaves) and ``mask``
    (softmax: ``(B, 1, L, L)`` bool, ``True`` where a query may attend to a key) is set."""

    tokens: torch.Tensor
    real: torch.Tensor
    labels: torch.Tensor
    forest: Hierarchy | None = None
    mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        mask = None if self.mask is None else self.mask.to(device)
        return Batch(
            self.tokens.to(device), self.real.to(device), self.labels.to(device), self.forest, mask
        )


def pack_forest(trees: Sequence[Hierarchy], length: int) -> Hierarchy:
    """One forest over ``len(trees) * length`` leaves: tree ``b`` on leaves ``b * length ..``,
    the leaves it does not cover one-leaf trees; ``ValueError`` if a tree has more leaves."""
    size = len(trees) * length
    leaves = np.full(size, -1, dtype=np.int64)
    families: list[np.ndarray] = []
    offset = size
    for b, tree in enumerate(trees):
        n, m = tree.num_leaves, tree.num_families
        if n > length:
            raise ValueError(f"tree {b} has {n} leaves, more than the length {length}")
        remap = np.concatenate([b * length + np.arange(n), offset + np.arange(m)])
        parent = tree.parent_array
        mapped = np.where(parent >= 0, remap[np.maximum(parent, 0)], -1)
        leaves[b * length : b * length + n] = mapped[:n]
        families.append(mapped[n:])
        offset += m
    return Hierarchy.from_parents(np.concatenate([leaves, *families]), size)


def collate(
    examples: Sequence[Encoded], labels: Sequence[int], attention: str, *, chunk: int
) -> Batch:
    """Pad ``examples`` into a :class:`Batch` carrying ``attention``'s structure (module
    docstring); ``chunk`` is the run length of ``hsa-chunks``."""
    check_attention(attention)
    if not examples:
        raise ValueError("a batch needs at least one example")
    if len(labels) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(labels)} labels")
    length = max(e.length for e in examples)
    tokens = np.full((len(examples), length), PAD, dtype=np.int64)
    for b, e in enumerate(examples):
        tokens[b, : e.length] = e.ids
    tokens_t = torch.from_numpy(tokens)
    real = tokens_t != PAD
    labels_t = torch.as_tensor(list(labels), dtype=torch.int64)
    if attention in HSA_ATTENTIONS:
        forest = pack_forest([tree_of(attention, e, chunk) for e in examples], length)
        return Batch(tokens_t, real, labels_t, forest=forest)
    groups = -1 - np.arange(tokens.size, dtype=np.int64).reshape(tokens.shape)  # a pad: alone
    for b, e in enumerate(examples):
        groups[b, : e.length] = groups_of(attention, e)  # >= 0
    g = torch.from_numpy(groups)
    mask = (g[:, :, None] == g[:, None, :]).unsqueeze(1)
    return Batch(tokens_t, real, labels_t, mask=mask)


@dataclass(frozen=True)
class EncodedSplit:
    """A split ready for batching: encoded ``examples``, ``labels`` and ``depths`` (``(n,)``
    int64 each, in the same order)."""

    examples: tuple[Encoded, ...]
    labels: np.ndarray
    depths: np.ndarray

    @classmethod
    def from_expressions(cls, expressions: Sequence[Expression]) -> EncodedSplit:
        return cls(
            tuple(encode(e.tokens) for e in expressions),
            np.array([e.label for e in expressions], dtype=np.int64),
            np.array([e.depth for e in expressions], dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: Sequence[int], attention: str, *, chunk: int) -> Batch:
        """The examples at ``indices``, collated for ``attention``."""
        return collate(
            [self.examples[i] for i in indices],
            [int(self.labels[i]) for i in indices],
            attention,
            chunk=chunk,
        )

    @property
    def lengths(self) -> np.ndarray:
        """``(n,)`` int64: the number of tokens of every example."""
        return np.array([e.length for e in self.examples], dtype=np.int64)

    def batches(
        self, attention: str, *, chunk: int, batch_size: int
    ) -> list[tuple[np.ndarray, Batch]]:
        """The whole split, ``batch_size`` examples a batch (the last may be smaller), examples
        of similar length together: ``(indices, batch)`` pairs, indices into the split."""
        order = np.argsort(self.lengths, kind="stable")
        return [
            (idx, self.batch(idx, attention, chunk=chunk))
            for idx in (order[s : s + batch_size] for s in range(0, len(self), batch_size))
        ]

    def training_order(
        self, rng: np.random.Generator, batch_size: int, *, pool: int = 50
    ) -> Iterator[np.ndarray]:
        """Endless training batches (index arrays of ``batch_size``): each epoch a fresh
        permutation from ``rng``, cut into pools of ``pool`` batches, each pool sorted by
        length and cut into batches (little padding), the batches of the epoch shuffled. The
        last ``len(self) % batch_size`` examples of a pool's permutation wait for the next
        epoch."""
        if len(self) < batch_size:
            raise ValueError(f"the split has {len(self)} examples, fewer than one batch")
        lengths = self.lengths
        while True:
            perm = rng.permutation(len(self))
            cut: list[np.ndarray] = []
            for start in range(0, len(perm), batch_size * pool):
                part = perm[start : start + batch_size * pool]
                part = part[np.argsort(lengths[part], kind="stable")]
                cut += [
                    part[i : i + batch_size]
                    for i in range(0, len(part) - batch_size + 1, batch_size)
                ]
            for j in rng.permutation(len(cut)):
                yield cut[j]
