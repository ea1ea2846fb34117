"""HSA as a ``transformers`` attention backend: zero-shot HSA in a pre-trained model.

::

    from hsa_fast.transformers_attention import register
    register()  # attn_implementation="hsa"
    model = AutoModel.from_pretrained(path, attn_implementation="hsa")
    out = model(**batch, hierarchy=trees, hsa_layers=(3, 4, 5))

:func:`hsa_attention_forward` follows ``transformers``' attention-function convention (that of
``sdpa_attention_forward``): it receives the attention module (with ``layer_idx`` and
``config``), ``query``, ``key``, ``value`` of shape ``(batch, heads, seq, head_dim)``, the
attention mask built for SDPA, ``scaling``, ``dropout`` and the model call's keyword arguments,
and returns ``(attn_output, None)`` with ``attn_output`` of shape ``(batch, seq, heads,
head_dim)``. Two keyword arguments of the model call steer it:

- ``hierarchy``: one ``hsa_ref.Hierarchy`` per input over its real tokens (those the padding
  mask keeps, in order; :mod:`hsa_fast.token_trees` builds them), a single ``Hierarchy`` for a
  batch of one, or one forest over all ``batch * seq`` positions (row-major) in which every pad
  is a one-leaf tree and no tree spans two inputs. Pads are one-leaf trees either way: padding
  changes no real token's output.
- ``hsa_layers``: the layer indices that run HSA (default: ``model.config.hsa_layers`` if set,
  else every layer). The other layers, and every layer when no hierarchy is given, return what
  ``sdpa`` returns.

Imported only where ``transformers`` is installed; ``import hsa_fast`` never imports it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hsa_ref import Hierarchy

from .api import hsa
from .packing import padded_forest

__all__ = ["hsa_attention_forward", "register"]


def register(name: str = "hsa") -> str:
    """Register :func:`hsa_attention_forward` as ``attn_implementation=name``; returns ``name``.

    The attention mask is built as for ``sdpa`` (a boolean ``(batch, 1, seq, seq)`` mask, or
    ``None`` without padding). Registering twice is harmless.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    AttentionInterface.register(name, hsa_attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def hsa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    hierarchy: Hierarchy | Sequence[Hierarchy] | None = None,
    hsa_layers: Collection[int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """HSA over ``hierarchy`` in the chosen layers, SDPA elsewhere (module docstring).

    Raises ``ValueError`` for a hierarchy whose leaves do not match the sequence, a layer index
    out of range, cross-attention, a causal or otherwise non-padding mask, or attention dropout
    (HSA has no attention matrix to drop from: call ``model.eval()``) in an HSA layer.
    """
    if hierarchy is None or not _runs_hsa(module, hsa_layers):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    bsz, heads, length, _ = query.shape
    if key.shape[2] != length:
        raise ValueError(
            f"HSA is self-attention: got {length} queries but {key.shape[2]} keys "
            "(cross-attention or a cache)"
        )
    if dropout:
        raise ValueError(f"HSA has no attention dropout (got dropout={dropout}); call eval()")
    if kwargs.get("output_attentions"):
        raise ValueError(
            "output_attentions=True: the HSA layers form no attention matrix; call the model "
            "without it, or form HSA's matrix with hsa_ref.hsa_attention_matrix"
        )
    if attention_mask is None and getattr(module, "is_causal", False):
        raise ValueError("HSA is bidirectional; this attention module is causal")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    real = _padding_mask(attention_mask, bsz, length, query.device)

    def rows(x: torch.Tensor) -> torch.Tensor:  # (B, H, L, d) -> (H, B * L, d)
        return x.transpose(0, 1).reshape(heads, bsz * length, x.shape[-1])

    q, k, v = rows(query), rows(key), rows(value)
    if isinstance(hierarchy, Hierarchy) and hierarchy.num_leaves == bsz * length and bsz > 1:
        _check_batch_forest(hierarchy, real)
        forest = hierarchy
    else:  # a pad is a one-leaf tree: it returns its own value
        forest = padded_forest(_per_input(hierarchy, bsz, length), real.cpu().numpy()).forest
    out = hsa(q, k, v, forest, scale=scaling)
    out = out.reshape(heads, bsz, length, -1).permute(1, 2, 0, 3)
    return out.contiguous(), None


def _runs_hsa(module: torch.nn.Module, hsa_layers: Collection[int] | None) -> bool:
    """Whether this module's layer is one of ``hsa_layers`` (default: the config's, or all)."""
    config = getattr(module, "config", None)
    if hsa_layers is None:
        hsa_layers = getattr(config, "hsa_layers", None)
    if hsa_layers is None:
        return True
    if isinstance(hsa_layers, int | str) or not all(
        isinstance(i, int | np.integer) and not isinstance(i, bool) for i in hsa_layers
    ):
        raise TypeError(f"hsa_layers must be a collection of ints, got {hsa_layers!r}")
    num_layers = getattr(config, "num_hidden_layers", None)
    if num_layers is not None:
        bad = sorted(int(i) for i in hsa_layers if not 0 <= i < num_layers)
        if bad:
            raise ValueError(f"hsa_layers {bad} out of range 0..{num_layers - 1}")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx, so hsa_layers cannot apply")
    return layer in {int(i) for i in hsa_layers}


def _padding_mask(
    mask: torch.Tensor | None, bsz: int, length: int, device: torch.device
) -> torch.Tensor:
    """``(B, L)`` bool, True for real tokens, from the SDPA mask (bool, or additive float)."""
    if mask is None:
        return torch.ones(bsz, length, dtype=torch.bool, device=device)
    keep = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    if keep.dim() != 4 or keep.shape[-2:] != (length, length):
        raise ValueError(
            f"expected a (batch, 1, {length}, {length}) attention mask, got {tuple(mask.shape)}"
        )
    keep = keep.expand(bsz, -1, -1, -1)
    real = keep[:, 0, 0, :]
    if not bool((keep == real[:, None, None, :]).all()):
        raise ValueError(
            "HSA supports padding masks only (every query keeps the same keys); this mask "
            "varies across queries (causal, sliding-window or custom)"
        )
    return real


def _per_input(
    hierarchy: Hierarchy | Sequence[Hierarchy], bsz: int, length: int
) -> tuple[Hierarchy, ...]:
    """One tree per input (over its real tokens; the packer checks their number)."""
    if isinstance(hierarchy, Hierarchy):
        if bsz != 1:
            raise ValueError(
                f"hierarchy has {hierarchy.num_leaves} leaves, but the batch has {bsz} inputs of "
                f"length {length}: give one hierarchy per input, or a forest of "
                f"{bsz * length} leaves"
            )
        hierarchy = [hierarchy]
    if isinstance(hierarchy, str | bytes) or not isinstance(hierarchy, Sequence):
        raise TypeError(f"hierarchy must be a Hierarchy or a sequence of them, got {hierarchy!r}")
    trees = tuple(hierarchy)
    for b, tree in enumerate(trees):
        if not isinstance(tree, Hierarchy):
            raise TypeError(f"hierarchy[{b}] is a {type(tree).__name__}, not a Hierarchy")
    return trees


def _check_batch_forest(forest: Hierarchy, real: torch.Tensor) -> None:
    """A forest over all ``B * L`` positions: pads are one-leaf trees, no tree spans inputs."""
    bsz, length = real.shape
    n = forest.num_leaves
    pads = (~real).reshape(-1).nonzero().squeeze(-1).cpu().numpy()
    parent = forest.parent_array
    joined = pads[parent[pads] != -1]
    if joined.size:
        raise ValueError(
            f"position {int(joined[0]) % length} of input {int(joined[0]) // length} is padding "
            "but not a one-leaf tree of the forest"
        )
    root = forest.root_of[:n]
    example = np.arange(n) // length
    first = np.full(forest.num_nodes, bsz, dtype=np.int64)
    last = np.full(forest.num_nodes, -1, dtype=np.int64)
    np.minimum.at(first, root, example)
    np.maximum.at(last, root, example)
    spans = np.nonzero((last >= 0) & (first != last))[0]
    if spans.size:
        raise ValueError(
            f"tree rooted at node {int(spans[0])} spans inputs {int(first[spans[0]])} and "
            f"{int(last[spans[0]])}; attention cannot cross inputs"
        )
