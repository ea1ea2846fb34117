"""Hierarchies over a fast tokenizer's output: word pieces, words, clauses, sentences, chunks.

Each input's tree covers its real tokens only (those with ``attention_mask == 1``), in order,
so it fits ``model(..., hierarchy=trees)`` of :mod:`hsa_fast.transformers_attention` whatever
the padding. Special tokens (``word_ids()`` gives ``None``: ``[CLS]``, ``[SEP]``, ``<s>``...)
are leaves directly under the root; the runs of content tokens between them are grouped:

- ``words``: the word pieces of a word under one family;
- ``sentences``: words under sentences (a sentence ends at ``.``, ``!`` or ``?`` followed by
  space and a capital, digit, quote or bracket);
- ``clauses``: words under clauses under sentences (a clause also ends at ``,``, ``;``, ``:``);
- ``chunks-c``: consecutive runs of ``c`` content tokens;
- ``flat``: one family over all real tokens (HSA then equals softmax attention).

A group with one member is replaced by that member (a one-child family changes nothing).
Words come from ``encoding.word_ids(b)``; sentences and clauses from
``encoding["offset_mapping"]`` and the input texts. Needs no ``transformers`` import: any object
with a fast tokenizer's ``BatchEncoding`` interface works.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hsa_ref import Hierarchy

__all__ = [
    "CLAUSE_BREAK",
    "HIERARCHIES",
    "SENTENCE_BREAK",
    "TokenStructure",
    "build_tree",
    "build_trees",
    "token_structures",
]

#: Hierarchy kinds understood by :func:`build_tree`.
HIERARCHIES = ("flat", "words", "sentences", "clauses", "chunks-4", "chunks-8", "chunks-16")

#: Where a new sentence starts (after ``.!?`` and space, before a capital, digit, quote, bracket).
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")
#: Where a new clause starts within a sentence (after ``,;:`` and space).
CLAUSE_BREAK = re.compile(r"(?<=[,;:])\s+")


@dataclass(frozen=True)
class TokenStructure:
    """Where each real token of one input sits, in order (``n`` tokens).

    ``word[t]``: the tokenizer's word id, ``None`` for a special token. ``sentence[t]``,
    ``clause[t]``: running sentence and clause numbers (``None`` when built without texts).
    """

    word: tuple[int | None, ...]
    sentence: tuple[int, ...] | None = None
    clause: tuple[int, ...] | None = None

    @property
    def n(self) -> int:
        return len(self.word)


def _break_starts(text: str, pattern: re.Pattern[str]) -> np.ndarray:
    """Character offsets where a new segment starts."""
    return np.asarray([m.end() for m in pattern.finditer(text)], dtype=np.int64)


def token_structures(encoding: Any, texts: Sequence[str] | None = None) -> list[TokenStructure]:
    """One :class:`TokenStructure` per input of a fast tokenizer's ``BatchEncoding``.

    ``texts[b]`` must be the string tokenized as input ``b``; with it, sentences and clauses are
    found from ``encoding["offset_mapping"]`` (tokenize with ``return_offsets_mapping=True``).
    Raises ``ValueError`` if the encoding has no ``word_ids`` (a slow tokenizer) or the texts or
    offsets do not match it.
    """
    if not callable(getattr(encoding, "word_ids", None)):
        raise ValueError("need a fast tokenizer's BatchEncoding (with word_ids()), got no word_ids")
    batch = len(encoding["input_ids"])
    mask = encoding.get("attention_mask") if hasattr(encoding, "get") else None
    masks = [list(map(int, row)) for row in _as_list(mask)] if mask is not None else None
    offsets = None
    if texts is not None:
        texts = list(texts)
        if len(texts) != batch:
            raise ValueError(f"got {len(texts)} texts for an encoding of {batch} inputs")
        if "offset_mapping" not in encoding:
            raise ValueError("sentences and clauses need return_offsets_mapping=True")
        offsets = _as_list(encoding["offset_mapping"])
    out = []
    for b in range(batch):
        words = encoding.word_ids(b)
        real = [t for t in range(len(words)) if masks is None or masks[b][t]]
        word = tuple(words[t] for t in real)
        sentence = clause = None
        if offsets is not None:
            starts = np.asarray([int(offsets[b][t][0]) for t in real], dtype=np.int64)
            sentence_at = _break_starts(texts[b], SENTENCE_BREAK)
            clause_at = np.union1d(sentence_at, _break_starts(texts[b], CLAUSE_BREAK))
            sentence = tuple(np.searchsorted(sentence_at, starts, side="right").tolist())
            clause = tuple(np.searchsorted(clause_at, starts, side="right").tolist())
        out.append(TokenStructure(word, sentence, clause))
    return out


def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _group(tokens: list[int], keys: list[tuple[int, ...]], level: int) -> list[Any]:
    """Nested lists: consecutive tokens grouped by ``keys[.][level]``, then the next level."""
    if not keys or level == len(keys[0]):
        return list(tokens)
    groups: list[Any] = []
    start = 0
    for t in range(1, len(tokens) + 1):
        if t == len(tokens) or keys[t][level] != keys[start][level]:
            inner = _group(tokens[start:t], keys[start:t], level + 1)
            groups.append(inner[0] if len(inner) == 1 else inner)
            start = t
    return groups


def _keys(kind: str, structure: TokenStructure, run: list[int]) -> list[tuple[int, ...]]:
    """The grouping keys of the content tokens ``run`` (outermost level first)."""
    if kind.startswith("chunks-"):
        try:
            size = int(kind.removeprefix("chunks-"))
        except ValueError:
            size = 0
        if size < 1:
            raise ValueError(f"chunk size must be an integer >= 1, got {kind!r}")
        return [(i // size,) for i in range(len(run))]
    word = [structure.word[t] for t in run]
    if kind == "words":
        return [(w,) for w in word]
    if kind not in ("sentences", "clauses"):
        raise ValueError(f"unknown hierarchy {kind!r}; expected one of {HIERARCHIES}")
    if structure.sentence is None or structure.clause is None:
        raise ValueError(f"hierarchy {kind!r} needs the texts (token_structures(encoding, texts))")
    sentence = [structure.sentence[t] for t in run]
    if kind == "sentences":
        return list(zip(sentence, word, strict=True))
    return list(zip(sentence, [structure.clause[t] for t in run], word, strict=True))


def build_tree(kind: str, structure: TokenStructure) -> Hierarchy:
    """The hierarchy ``kind`` (one of :data:`HIERARCHIES`) over one input's real tokens.

    The root's children are the special tokens and the top-level groups of each run of content
    tokens between them, in token order. Raises ``ValueError`` for an unknown kind, an input
    without tokens, or ``sentences`` / ``clauses`` without texts.
    """
    n = structure.n
    if n == 0:
        raise ValueError("an input without real tokens has no hierarchy")
    if kind == "flat":
        return Hierarchy.from_nested(list(range(n)))
    top: list[Any] = []
    run: list[int] = []
    for t in [*range(n), None]:
        if t is not None and structure.word[t] is not None:
            run.append(t)
            continue
        if run:
            top.extend(_group(run, _keys(kind, structure, run), 0))
            run = []
        if t is not None:
            top.append(t)
    if kind not in HIERARCHIES and not kind.startswith("chunks-"):
        raise ValueError(f"unknown hierarchy {kind!r}; expected one of {HIERARCHIES}")
    return Hierarchy.from_nested(top)


def build_trees(kind: str, encoding: Any, texts: Sequence[str] | None = None) -> list[Hierarchy]:
    """:func:`build_tree` for every input of ``encoding`` (see :func:`token_structures`)."""
    return [build_tree(kind, s) for s in token_structures(encoding, texts)]
