"""hsa_ref: the nested-signal hierarchy and the naive float64 reference for HSA.

The reference evaluates Hierarchical Self-Attention (Amizadeh et al., NeurIPS 2025,
arXiv 2509.15448) literally, in O(N^2) per tree; it is the oracle that ``hsa_fast`` and ports to
other languages are checked against.
"""

from .hierarchy import TREE_FORMAT, Hierarchy
from .reference import (
    attention_from_shares,
    family_shares,
    hsa_attention_matrix,
    hsa_reference,
    kl_to_softmax,
    log_partition,
    score_matrix,
    sibling_log_partition,
    softmax_kl_lower_bound,
)
from .validation import ENERGIES, check_attention_inputs

__all__ = [
    "ENERGIES",
    "TREE_FORMAT",
    "Hierarchy",
    "attention_from_shares",
    "check_attention_inputs",
    "family_shares",
    "hsa_attention_matrix",
    "hsa_reference",
    "kl_to_softmax",
    "log_partition",
    "score_matrix",
    "sibling_log_partition",
    "softmax_kl_lower_bound",
]

__version__ = "0.1.0"
