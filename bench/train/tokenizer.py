"""Token ids and the parse tree of a ListOps expression, as an ``hsa_ref.Hierarchy``.

Every token is a leaf, in order. Every operator application is a family whose children are, in
order, its operator token, its arguments (a digit is a leaf, a nested application its own
family) and its closing bracket. The opening bracket is not a token of its own: as in the
original ListOps data it is fused with the operator (``[MAX``), so the application's first
child both opens it and names its operation. The outermost application is the root.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hsa_ref import Hierarchy

from .listops import CLOSE, DIGITS, OPERATORS

__all__ = ["PAD", "VOCAB", "Encoded", "encode", "parse_parents"]

PAD = 0
VOCAB: tuple[str, ...] = ("<pad>", *DIGITS, *OPERATORS, CLOSE)
_IDS = {token: i for i, token in enumerate(VOCAB)}


@dataclass(frozen=True)
class Encoded:
    """``ids``: ``(n,)`` int64 token ids (never :data:`PAD`); ``tree``: the parse tree (``n``
    leaves, one family per application)."""

    ids: np.ndarray
    tree: Hierarchy

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


def parse_parents(tokens: Sequence[str]) -> list[int]:
    """The parent list of the parse tree of ``tokens`` (module docstring; families numbered
    ``n, n + 1, ...`` in the order they open).

    ``ValueError`` naming the position for an unknown token, a digit or ``]`` outside an
    application, an application with no argument, tokens after the outermost ``]`` or an
    unclosed application.
    """
    n = len(tokens)
    if n == 0:
        raise ValueError("an expression needs at least one token")
    parent: list[int] = [-1] * n
    open_families: list[int] = []
    arguments: list[int] = []
    closed = False
    for i, token in enumerate(tokens):
        if token not in _IDS or token == VOCAB[PAD]:
            raise ValueError(f"unknown token {token!r} at position {i}; vocabulary: {VOCAB[1:]}")
        if closed:
            raise ValueError(f"token {token!r} at position {i} follows the outermost ']'")
        if token in OPERATORS:
            family = len(parent)
            parent.append(open_families[-1] if open_families else -1)
            if open_families:
                arguments[-1] += 1
            parent[i] = family
            open_families.append(family)
            arguments.append(0)
            continue
        if not open_families:
            raise ValueError(f"token {token!r} at position {i} lies outside any application")
        parent[i] = open_families[-1]
        if token == CLOSE:
            if arguments[-1] == 0:
                raise ValueError(f"application closed at position {i} has no argument")
            open_families.pop()
            arguments.pop()
            closed = not open_families
        else:
            arguments[-1] += 1
    if open_families:
        raise ValueError(f"{len(open_families)} application(s) left open at the end")
    return parent


def encode(tokens: Sequence[str] | str) -> Encoded:
    """Token ids and parse tree of one expression (a token sequence or space-separated text)."""
    if isinstance(tokens, str):
        tokens = tokens.split()
    parent = parse_parents(tokens)
    ids = np.array([_IDS[t] for t in tokens], dtype=np.int64)
    return Encoded(ids, Hierarchy.from_parents(parent, len(tokens)))
