"""The ListOps training benchmark (``bench.train``): data, parse trees, models, pipeline."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from bench import train as tr
from bench.zero_shot.flops import attention_flops

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tr.PROFILES["tiny"]


# --------------------------------------------------------------- an independent evaluator
def _median_floor(values: list[int]) -> int:
    return int(np.median(values))


_OPERATIONS = {
    "[MIN": min,
    "[MAX": max,
    "[MED": _median_floor,
    "[SM": lambda values: sum(values) % 10,
}


def stack_value(tokens: tuple[str, ...]) -> int:
    """The value of a prefix expression by a stack machine (no recursion, no shared code)."""
    stack: list[object] = []
    for token in tokens:
        if token == "]":
            args: list[int] = []
            while not isinstance(stack[-1], str):
                args.append(stack.pop())  # type: ignore[arg-type]
            stack.append(_OPERATIONS[stack.pop()](args[::-1]))  # type: ignore[index]
        elif token in _OPERATIONS:
            stack.append(token)
        else:
            stack.append(int(token))
    assert len(stack) == 1
    return stack[0]  # type: ignore[return-value]


def stack_depth(tokens: tuple[str, ...]) -> int:
    level = deepest = 0
    for token in tokens:
        level += token in _OPERATIONS
        deepest = max(deepest, level)
        level -= token == "]"
    return deepest


@pytest.fixture(scope="module")
def splits() -> tr.Splits:
    return tr.make_splits(
        tr.DataConfig(
            max_depth=4,
            max_args=5,
            nest_probability=0.35,
            max_length=48,
            train=600,
            validation=100,
            test=100,
            seed=3,
        ),
        quiet=True,
    )


def test_labels_and_depths_match_a_stack_machine(splits):
    checked = 0
    for _, part in splits.items():
        for e in part:
            assert e.label == stack_value(e.tokens), e.text
            assert e.depth == stack_depth(e.tokens), e.text
            checked += 1
    assert checked == 800
    depths = {e.depth for e in splits.train}
    assert depths == {1, 2, 3, 4}  # every depth is exercised


A = tr.listops.Application


@pytest.mark.parametrize(
    ("tree", "text", "value"),
    [
        (A("[MAX", (2, 9, A("[MIN", (4, 7)), 0)), "[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        (A("[MED", (1, 8)), "[MED 1 8 ]", 4),  # even count: floor of the mean of the middle two
        (A("[MED", (3, 1, 2)), "[MED 3 1 2 ]", 2),
        (A("[MED", (9, 0, 7, 8)), "[MED 9 0 7 8 ]", 7),
        (A("[SM", (9, 9, 9)), "[SM 9 9 9 ]", 7),
        (A("[MIN", (A("[SM", (5, 5)), 3)), "[MIN [SM 5 5 ] 3 ]", 0),
    ],
)
def test_known_values(tree, text, value):
    assert " ".join(tr.to_tokens(tree)) == text
    assert tr.evaluate(tree) == value
    assert stack_value(tuple(text.split())) == value


def test_unknown_operator_raises():
    with pytest.raises(ValueError, match="unknown operator"):
        tr.apply_operator("[FIRST", [1, 2])
    with pytest.raises(ValueError, match="at least one argument"):
        tr.apply_operator("[MAX", [])


def test_splits_are_distinct_balanced_and_reproducible(splits):
    seen = [{e.tokens for e in part} for _, part in splits.items()]
    assert [len(s) for s in seen] == [600, 100, 100]  # no duplicates inside a split
    assert not (seen[0] & seen[1])
    assert not (seen[0] & seen[2])
    assert not (seen[1] & seen[2])
    for _, part in splits.items():
        counts = np.bincount([e.label for e in part], minlength=10)
        assert counts.max() - counts.min() <= 1
        assert all(4 <= len(e.tokens) <= 48 for e in part)
        assert max(e.depth for e in part) <= 4
    config = tr.DataConfig(max_depth=2, max_args=3, train=50, validation=20, test=20, seed=7)
    assert tr.make_splits(config, quiet=True) == tr.make_splits(config, quiet=True)
    other = tr.make_splits(
        tr.DataConfig(max_depth=2, max_args=3, train=50, validation=20, test=20, seed=8),
        quiet=True,
    )
    assert other.train != tr.make_splits(config, quiet=True).train


def test_impossible_split_raises():
    config = tr.DataConfig(
        max_depth=1, max_args=2, max_length=4, train=1000, validation=10, test=10
    )  # only 4 * 100 distinct expressions exist
    with pytest.raises(ValueError, match="distinct expressions"):
        tr.make_splits(config, max_draws=20_000, quiet=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_depth": 0}, ValueError, "max_depth"),
        ({"max_args": 1}, ValueError, "max_args"),
        ({"nest_probability": 1.5}, ValueError, "nest_probability"),
        ({"min_length": 10, "max_length": 8}, ValueError, "max_length must be at least 10"),
        ({"train": 0}, ValueError, "train"),
        ({"max_depth": 2.0}, TypeError, "max_depth"),
    ],
)
def test_bad_data_config_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        tr.DataConfig(**kwargs)


# --------------------------------------------------------------------------- parse trees
def test_parse_tree_of_a_known_expression():
    enc = tr.encode("[MAX 2 9 [MIN 4 7 ] 0 ]")
    assert [tr.VOCAB[i] for i in enc.ids] == ["[MAX", "2", "9", "[MIN", "4", "7", "]", "0", "]"]
    # leaves 0..8 are the tokens; family 9 is the MAX application (the root), family 10 the MIN
    # application: operator token, arguments, closing bracket
    assert enc.tree.parent == [9, 9, 9, 10, 10, 10, 10, 9, 9, -1, 9]
    assert enc.tree.children(9) == [0, 1, 2, 7, 8, 10]  # in id order
    assert enc.tree.children(10) == [3, 4, 5, 6]


def test_parse_trees_of_generated_expressions(splits):
    for e in splits.train[:200]:
        enc = tr.encode(e.tokens)
        tree = enc.tree
        assert tree.num_leaves == len(e.tokens)
        assert tree.num_trees == 1
        assert tree.num_families == sum(t.startswith("[") for t in e.tokens)
        assert tree.max_depth == e.depth  # leaves sit one below their application
        for f in tree.families:
            leaves = tree.leaves_under(f)
            assert leaves == list(range(leaves[0], leaves[-1] + 1))  # contiguous
            direct = [c for c in tree.children(f) if c < tree.num_leaves]
            assert e.tokens[leaves[0]].startswith("[")
            assert leaves[0] in direct
            assert e.tokens[leaves[-1]] == "]"
            assert leaves[-1] in direct
            assert len(tree.children(f)) >= 4  # operator, two or more arguments, bracket


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[MAX 1 2", "left open"),
        ("[MAX 1 2 ] 3", "follows the outermost"),
        ("3", "outside any application"),
        ("[MAX ]", "no argument"),
        ("[MAX 1 x ]", "unknown token 'x' at position 2"),
        ("[MAX 1 <pad> ]", "unknown token"),
        ("", "at least one token"),
    ],
)
def test_bad_expressions_raise(text, match):
    with pytest.raises(ValueError, match=match):
        tr.encode(text)


# ---------------------------------------------------------------------- batches, models
EXPRESSIONS = [
    "[MAX 2 9 [MIN 4 7 ] 0 ]",
    "[SM 3 [MED 1 8 [MAX 0 0 ] ] 4 [MIN 5 6 7 ] ]",
    "[MED 1 8 ]",
]


def _batch(attention: str, texts=EXPRESSIONS, chunk: int = 3) -> tr.Batch:
    encoded = [tr.encode(t) for t in texts]
    return tr.collate(encoded, [0] * len(texts), attention, chunk=chunk)


def _config(attention: str) -> tr.ModelConfig:
    return tr.ModelConfig(attention, dim=16, heads=2, layers=2, max_length=24, chunk=3)


def _model(attention: str, seed: int = 0) -> tr.Classifier:
    torch.manual_seed(seed)
    return tr.Classifier(_config(attention)).eval()


def test_pack_forest_places_each_tree_and_pads():
    a, b = tr.encode("[MED 1 8 ]").tree, tr.encode("[MAX 2 [SM 3 4 ] ]").tree
    forest = tr.pack_forest([a, b], 8)
    assert forest.num_leaves == 16
    assert forest.num_trees == 2 + (8 - 4) + (8 - 7)
    parent = forest.parent_array
    assert (parent[4:8] == -1).all()  # pads of the first example: one-leaf trees
    assert len({int(parent[i]) for i in range(4)}) == 1  # one family over [MED 1 8 ]
    assert forest.leaves_under(int(parent[8])) == list(range(8, 15))  # b, shifted; 15: a pad
    with pytest.raises(ValueError, match="more than the length"):
        tr.pack_forest([b], 4)


def test_masks_keep_examples_groups_and_pads_apart():
    soft, local = _batch("softmax"), _batch("block-local")
    lengths = [len(t.split()) for t in EXPRESSIONS]
    for b, n in enumerate(lengths):
        m = soft.mask[b, 0]
        assert m[:n, :n].all()
        assert not m[:n, n:].any()
        assert torch.equal(m[n:, n:], torch.eye(m.shape[0] - n, dtype=torch.bool))  # pads: self
    tree = tr.encode(EXPRESSIONS[0]).tree
    m = local.mask[0, 0]
    for i in range(9):
        for j in range(9):
            assert bool(m[i, j]) == (tree.parent[i] == tree.parent[j])


def test_every_attention_has_the_same_parameters_and_initial_values():
    states = {a: _model(a).state_dict() for a in tr.ATTENTIONS}
    first = states["softmax"]
    for state in states.values():
        assert state.keys() == first.keys()
        assert all(torch.equal(state[k], first[k]) for k in first)
    counts = {_model(a).num_parameters() for a in tr.ATTENTIONS}
    assert len(counts) == 1


def test_hsa_flat_gives_softmax_logits_at_initialisation():
    for seed in (0, 1):
        soft = _model("softmax", seed)(_batch("softmax"))
        flat = _model("hsa-flat", seed)(_batch("hsa-flat"))
        assert (soft - flat).abs().max() <= 1e-5 * soft.abs().max()
        parse = _model("hsa-parse", seed)(_batch("hsa-parse"))
        assert (soft - parse).abs().max() > 1e-3  # the tree really changes the attention


@pytest.mark.parametrize("attention", tr.ATTENTIONS)
def test_padding_and_batch_neighbours_change_nothing(attention):
    model = _model(attention)
    together = model(_batch(attention))
    for i, text in enumerate(EXPRESSIONS):
        alone = model(_batch(attention, [text]))
        assert (together[i] - alone[0]).abs().max() <= 1e-5


def test_model_refuses_a_batch_collated_for_another_attention():
    with pytest.raises(ValueError, match="needs a batch collated for it"):
        _model("softmax")(_batch("hsa-parse"))
    with pytest.raises(ValueError, match="needs a batch collated for it"):
        _model("hsa-parse")(_batch("block-local"))
    with pytest.raises(ValueError, match="unknown attention"):
        tr.ModelConfig("linear")
    with pytest.raises(ValueError, match="divisible"):
        tr.ModelConfig("softmax", dim=10, heads=4)


# ------------------------------------------------------------------------------ FLOPs
def test_flops_per_example_by_hand():
    split = tr.EncodedSplit.from_expressions(
        [tr.Expression(tuple(t.split()), 0, 1) for t in EXPRESSIONS]
    )
    config = _config("softmax")
    d, h, layers = config.head_dim, config.heads, config.layers
    lengths = [len(t.split()) for t in EXPRESSIONS]
    dense = sum(4 * d * h * n * n for n in lengths) * layers / 3
    flops = {a: tr.flops_per_example(_config(a), split) for a in tr.ATTENTIONS}
    assert flops["softmax"]["attention"] == flops["hsa-flat"]["attention"] == dense
    assert all(f["dense"] == dense for f in flops.values())
    # [MAX 2 9 [MIN 4 7 ] 0 ]: families of 6 (MAX: op, 2, 9, MIN, 0, ]) and 4 children
    energies = 9 + 6 * 5 + 4 * 3
    first = tr.EncodedSplit.from_expressions([tr.Expression(tuple(EXPRESSIONS[0].split()), 9, 2)])
    assert tr.flops_per_example(_config("hsa-parse"), first)["attention"] == (
        4 * d * h * energies * layers
    )
    # block-local: dense blocks of the 5 direct tokens of MAX and the 4 of MIN
    assert tr.flops_per_example(_config("block-local"), first)["attention"] == (
        4 * d * h * (5 * 5 + 4 * 4) * layers
    )
    tree = tr.encode(EXPRESSIONS[0]).tree
    assert tr.flops_per_example(_config("hsa-parse"), first)["means"] == (
        attention_flops([tree], d, h)["means"] * layers
    )


# --------------------------------------------------------------------- stats, progress
def test_mean_interval_is_the_t_interval():
    mean, low, high = tr.mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert mean == 2.0
    assert low == pytest.approx(2 - half, rel=1e-12)
    assert high == pytest.approx(2 + half, rel=1e-12)
    assert math.isnan(tr.mean_interval([0.5])[1])
    with pytest.raises(ValueError, match="non-empty"):
        tr.mean_interval([])


def test_progress_bar_reports_counts():
    stream = io.StringIO()
    bar = tr.Progress(4, "steps", stream=stream)
    bar.update(3, note="run 1/2")
    bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("steps [########################] 4/4 100%")
    assert lines[-1].endswith("run 1/2")
    with pytest.raises(ValueError, match="total"):
        tr.Progress(0, "nothing")


# ------------------------------------------------------------ training, checkpoints, CLI
@pytest.fixture(scope="module")
def tiny_splits() -> dict[str, tr.EncodedSplit]:
    return tr.encode_splits(TINY)


def test_checkpoint_reloads_to_identical_predictions(tmp_path, tiny_splits):
    path = tmp_path / "model.pt"
    for attention in ("hsa-parse", "softmax"):
        config = TINY.model_config(attention)
        result = tr.train_run(config, TINY.train, tiny_splits, 5, checkpoint=path)
        model, extra = tr.load_checkpoint(path)
        assert extra == {"seed": 5, "steps": TINY.train.steps}
        assert model.config == config
        batches = tiny_splits["test"].batches(attention, chunk=config.chunk, batch_size=7)
        assert tr.predict(model, batches, "cpu").tolist() == result["test_predictions"]
    torch.save({"format": "something else"}, path)
    with pytest.raises(ValueError, match="not a hsa-listops-classifier/1 checkpoint"):
        tr.load_checkpoint(path)


def test_training_is_deterministic_and_hsa_flat_tracks_softmax(tiny_splits):
    runs = {
        a: tr.train_run(TINY.model_config(a), TINY.train, tiny_splits, 0)
        for a in ("softmax", "hsa-flat")
    }
    again = tr.train_run(TINY.model_config("softmax"), TINY.train, tiny_splits, 0)
    assert again["curve"] == runs["softmax"]["curve"]
    assert again["test_predictions"] == runs["softmax"]["test_predictions"]
    assert abs(runs["hsa-flat"]["train_loss"] - runs["softmax"]["train_loss"]) <= 1e-4


def test_the_whole_pipeline_on_the_tiny_profile(tmp_path, capsys):
    out = tmp_path / "train"
    assert tr.main(["--profile", "tiny", "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    for name in ("table.md", "results.json", "learning_curves.png", "accuracy_by_depth.png"):
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "results.json").read_text())
    labels = np.array(result["data"]["test_labels"])
    assert list(result["models"]) == list(tr.ATTENTIONS)
    for attention, m in result["models"].items():
        assert m["seeds"] == list(TINY.seeds)
        for s in TINY.seeds:
            assert tr.checkpoint_path(out, attention, s).is_file()
            pred = np.array(m["test_predictions"][str(s)])
            assert m["test_accuracy"][m["seeds"].index(s)] == float((pred == labels).mean())
            steps = [step for step, _ in m["curves"][str(s)]]
            assert steps == [0, 2, 4]
        assert sum(v["count"] for v in m["by_depth"].values()) == len(labels)
        for other, pair in m["paired"].items():
            theirs = result["models"][other]["test_accuracy"]
            assert pair["differences"] == pytest.approx(np.subtract(m["test_accuracy"], theirs))
    assert result["models"]["softmax"]["paired"]["hsa-flat"]["same_predictions"] == [1.0, 1.0]
    table = (out / "table.md").read_text()
    assert all(f"| `{a}` |" in table for a in tr.ATTENTIONS)
    assert "| row minus column |" in table
    assert "wrote" in capsys.readouterr().out


def test_worker_processes_give_the_same_results(tmp_path):
    profile = TINY.replace(attentions=("hsa-parse", "block-local"), seeds=(0,))
    one = tr.run_experiment(profile, tmp_path / "a", jobs=1, quiet=True)
    two = tr.run_experiment(profile, tmp_path / "b", jobs=2, quiet=True)
    for attention in profile.attentions:
        assert one["models"][attention]["curves"] == two["models"][attention]["curves"]
        assert (
            one["models"][attention]["test_predictions"]
            == two["models"][attention]["test_predictions"]
        )


def test_cli_rejects_bad_options(tmp_path):
    with pytest.raises(SystemExit):
        tr.main(["--profile", "tiny", "--out", str(tmp_path), "--seeds", "0"])
    with pytest.raises(SystemExit):
        tr.main(["--profile", "tiny", "--out", str(tmp_path), "--jobs", "0"])
    with pytest.raises(SystemExit):  # before any data is made or any worker started
        tr.main(["--profile", "tiny", "--out", str(tmp_path / "cpu"), "--device", "no-such"])
    assert not (tmp_path / "cpu").exists()


def test_replot_redraws_from_the_stored_results(tmp_path):
    out = tmp_path / "train"
    profile = TINY.replace(attentions=("softmax", "hsa-parse"), seeds=(0, 1, 2))
    result = tr.run_experiment(profile, out, quiet=True)
    (out / "results.json").write_text(json.dumps(result))
    assert tr.main(["--out", str(out), "--replot"]) == 0
    table = (out / "table.md").read_text()
    assert "| `hsa-parse` |" in table
    assert (out / "learning_curves.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        tr.main(["--out", str(tmp_path / "empty"), "--replot"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a device that fails in the worker")
def test_a_failing_run_in_a_worker_ends_the_experiment(tmp_path):
    profile = TINY.replace(attentions=("softmax", "hsa-parse"), seeds=(0, 1))
    # torch built without CUDA: AssertionError; with CUDA but no GPU: RuntimeError
    with pytest.raises((AssertionError, RuntimeError), match=r"(?i)cuda"):
        tr.run_experiment(profile, tmp_path, jobs=2, device="cuda", quiet=True)
