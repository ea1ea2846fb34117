"""The experiment: every (hierarchy, replaced layers) configuration against the unmodified model."""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from hsa_fast.token_trees import HIERARCHIES

from .metrics import pair_similarities, retrieval_mrr, retrieval_top1, spearman
from .model import Encoder, encode_prepared, prepare, tokenize

__all__ = ["BACKEND", "alternating_layers", "label", "run_experiment"]

#: How HSA reaches the model: the registered ``transformers`` attention backend.
BACKEND = 'hsa_fast, attn_implementation="hsa"'


def alternating_layers(num_layers: int) -> list[tuple[int, ...]]:
    """Every other layer down from the last; the same within the upper half (7, 9, 11 of 12)."""
    every_other = tuple(range(num_layers - 1, 0, -2))[::-1]
    return [every_other, tuple(i for i in every_other if i >= num_layers // 2)]


def label(layers: Sequence[int], num_layers: int) -> str:
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
    base_sims = pair_similarities(base)
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
                "label": label(layers, num_layers),
                "k": layers[0] if layers == tuple(range(layers[0], num_layers)) else None,
                "saved_replaced": saved_replaced,
                "saved_model": 1 - flops["model"] / flops["dense"],
                "saved_model_with_means": 1 - (flops["model"] + flops["means"]) / flops["dense"],
                "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min()),
                "spearman": spearman(pair_similarities(emb), base_sims),
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
        "model": encoder.name,
        "corpus": "pydoc_data.topics prose paragraphs split into (first half, second half)",
        "num_pairs": p,
        "num_layers": num_layers,
        "num_texts": len(texts),
        "tokens_mean": float(np.mean(lengths)),
        "tokens_max": int(np.max(lengths)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backend": BACKEND,
        "baseline": {"top1": base_top1, "mrr": base_mrr, "dense_flops": base_flops["dense"]},
        "rows": rows,
    }
