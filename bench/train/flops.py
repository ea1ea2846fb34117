"""Attention FLOPs per example of each attention, counted as in the zero-shot experiment.

:func:`bench.zero_shot.flops.attention_flops` counts dense attention as ``4 d n^2`` per layer
and head and HSA as ``4 d E`` (``E = n + sum_f b_f (b_f - 1)`` energies), with the node means of
``q, k, v`` as a separate overhead. Here ``softmax`` is dense attention over the expression,
``block-local`` dense attention inside each parse family (each family's tokens as one dense
block), and the HSA attentions are counted over their hierarchies.
"""

from __future__ import annotations

import numpy as np

from bench.zero_shot.flops import attention_flops
from hsa_ref import Hierarchy

from .attentions import HSA_ATTENTIONS, check_attention, groups_of, tree_of
from .batching import EncodedSplit
from .model import ModelConfig

__all__ = ["flops_per_example"]


def flops_per_example(config: ModelConfig, split: EncodedSplit) -> dict[str, float]:
    """Mean attention FLOPs per example of ``split`` over all of ``config``'s layers and heads.

    ``attention``: what ``config.attention`` computes; ``means``: HSA's node means (0 for the
    softmax attentions); ``dense``: dense softmax attention over the same examples.
    """
    name = check_attention(config.attention)
    if not len(split):
        raise ValueError("the split has no examples")
    flat = [Hierarchy.one_family(e.length) for e in split.examples]
    dense = attention_flops(flat, config.head_dim, config.heads)["dense"]
    means = 0
    if name in HSA_ATTENTIONS:
        counts = attention_flops(
            [tree_of(name, e, config.chunk) for e in split.examples], config.head_dim, config.heads
        )
        attention, means = counts["hsa"], counts["means"]
    elif name == "block-local":
        blocks = [
            Hierarchy.one_family(int(size))
            for e in split.examples
            for size in np.unique(groups_of(name, e), return_counts=True)[1]
        ]
        attention = attention_flops(blocks, config.head_dim, config.heads)["dense"]
    else:
        attention = dense
    scale = config.layers / len(split)
    return {"attention": attention * scale, "means": means * scale, "dense": dense * scale}
