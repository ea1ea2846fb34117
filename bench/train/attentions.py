"""The attentions compared, by name, and the structure each one takes from an expression.

- ``softmax``: dense softmax attention over the expression's tokens (SDPA);
- ``hsa-parse``: HSA over the parse tree (:mod:`.tokenizer`);
- ``hsa-chunks``: HSA over runs of about ``chunk`` tokens, runs of runs, and so on up to one
  root (``Hierarchy.balanced(n, chunk)``): a hierarchy of the same kind with no syntax in it;
- ``hsa-flat``: HSA over one family of all tokens, which is softmax attention (up to rounding);
- ``block-local``: softmax attention restricted to the token's own family of the parse tree (the
  operator token, the digits and the closing bracket of one application attend to each other
  and nothing else), i.e. the parse tree's blocks without HSA's coupling between levels.
"""

from __future__ import annotations

import numpy as np

from hsa_ref import Hierarchy

from .tokenizer import Encoded

__all__ = ["ATTENTIONS", "HSA_ATTENTIONS", "check_attention", "groups_of", "tree_of"]

ATTENTIONS = ("softmax", "hsa-parse", "hsa-chunks", "hsa-flat", "block-local")
HSA_ATTENTIONS = ("hsa-parse", "hsa-chunks", "hsa-flat")


def check_attention(name: object) -> str:
    """``name`` if it is one of :data:`ATTENTIONS`; ``TypeError``/``ValueError`` otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"attention must be a str, got {type(name).__name__}")
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; expected one of {ATTENTIONS}")
    return name


def tree_of(name: str, example: Encoded, chunk: int) -> Hierarchy:
    """The hierarchy an HSA attention runs over for ``example`` (``ValueError`` for the others)."""
    if check_attention(name) == "hsa-parse":
        return example.tree
    if name == "hsa-chunks":
        return Hierarchy.balanced(example.length, chunk)
    if name == "hsa-flat":
        return Hierarchy.one_family(example.length)
    raise ValueError(f"{name!r} is not an HSA attention; expected one of {HSA_ATTENTIONS}")


def groups_of(name: str, example: Encoded) -> np.ndarray:
    """``(n,)`` ints: tokens with equal values attend to each other under a softmax attention
    (one group for ``softmax``, the parse family for ``block-local``; ``ValueError`` for HSA)."""
    if check_attention(name) == "softmax":
        return np.zeros(example.length, dtype=np.int64)
    if name == "block-local":
        return example.tree.parent_array[: example.length].copy()
    raise ValueError(f"{name!r} is not a softmax attention; expected 'softmax' or 'block-local'")
