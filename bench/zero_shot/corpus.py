"""The experiment's text: prose paragraphs of Python's own documentation, split in halves."""

from __future__ import annotations

import re

import numpy as np

from hsa_fast.token_trees import SENTENCE_BREAK

__all__ = ["load_corpus"]


def load_corpus(max_pairs: int | None = None) -> list[tuple[str, str]]:
    """Prose paragraphs of Python's own documentation (``pydoc_data.topics``), split in two.

    Paragraphs of 30-160 words with at least two sentences, no code and no indentation; each
    gives ``(first half of its sentences, second half)``. With ``max_pairs``, that many
    paragraphs evenly spaced over all of them. Deterministic for a Python version.
    """
    import pydoc_data.topics

    pairs = []
    for key in sorted(pydoc_data.topics.topics):
        for block in re.split(r"\n\s*\n", pydoc_data.topics.topics[key]):
            lines = block.split("\n")
            if any(line.startswith(" ") or not line.strip() for line in lines):
                continue
            text = " ".join(line.strip() for line in lines).replace("*", "")
            text = re.sub(r"\s+", " ", text)
            if not text[:1].isupper() or not text.endswith(".") or re.search(r"[=<>{}|]", text):
                continue
            sentences = SENTENCE_BREAK.split(text)
            if len(sentences) < 2 or not 30 <= len(text.split()) <= 160:
                continue
            half = len(sentences) // 2
            pairs.append((" ".join(sentences[:half]), " ".join(sentences[half:])))
    if max_pairs is not None and max_pairs < len(pairs):
        keep = np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)
        pairs = [pairs[i] for i in keep]
    return pairs
