"""Zero-shot HSA inside a pre-trained sentence encoder (all-MiniLM-L6-v2), no fine-tuning.

The model is loaded with ``attn_implementation="hsa"`` (:mod:`hsa_fast.transformers_attention`)
and called as ``model(**batch, hierarchy=trees, hsa_layers=layers)``: the softmax
self-attention of the chosen layers of the 6-layer MiniLM encoder becomes HSA on the same
queries, keys and values (same heads, same ``1/sqrt(d_head)`` scale), over a hierarchy built
from each input's own tokens by :mod:`hsa_fast.token_trees`: word pieces -> words -> clauses ->
sentences (split at punctuation), or fixed-size chunks; ``[CLS]`` and ``[SEP]`` are leaves
directly under the root. Each input's tree covers its real tokens only, and every pad is a
one-leaf tree, so padding never changes a real token's output.

For every hierarchy and every set of replaced layers (``layers >= k`` for ``k = 0..5``, and
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

Modules: :mod:`.model` (loading, batches, embeddings), :mod:`.flops`, :mod:`.corpus`,
:mod:`.metrics`, :mod:`.experiment`, :mod:`.report` (table and plot), :mod:`.cli`.
"""

from hsa_fast.token_trees import HIERARCHIES

from .cli import DEFAULT_PAIRS, RESULTS_DIR, main
from .corpus import load_corpus
from .experiment import BACKEND, alternating_layers, label, run_experiment
from .flops import attention_flops
from .metrics import pair_similarities, retrieval_mrr, retrieval_top1, spearman
from .model import (
    MODEL_NAME,
    Batch,
    Encoder,
    PreparedTexts,
    encode,
    encode_prepared,
    load_encoder,
    prepare,
    tokenize,
    transformer_layers,
)
from .report import plot, write_table

__all__ = [
    "BACKEND",
    "DEFAULT_PAIRS",
    "HIERARCHIES",
    "MODEL_NAME",
    "RESULTS_DIR",
    "Batch",
    "Encoder",
    "PreparedTexts",
    "alternating_layers",
    "attention_flops",
    "encode",
    "encode_prepared",
    "label",
    "load_corpus",
    "load_encoder",
    "main",
    "pair_similarities",
    "plot",
    "prepare",
    "retrieval_mrr",
    "retrieval_top1",
    "run_experiment",
    "spearman",
    "tokenize",
    "transformer_layers",
    "write_table",
]
