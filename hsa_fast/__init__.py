"""hsa_fast: Hierarchical Self-Attention by the O(M b^2) dynamic programme (docs/HSA.md section 5).

``hsa(q, k, v, hierarchy)`` has the contract of ``hsa_ref.hsa_reference`` but never forms an
``N x N`` array, runs on any torch device, keeps the input dtype (accumulating in float32 or
wider) and is differentiable. ``hsa_fast.distributed.hsa_sharded`` is the sequence-parallel
form over the ranks of a ``torch.distributed`` process group (imported on its own).
"""

from .api import hsa
from .layout import FamilyBucket, HSALayout, compile_hierarchy
from .module import HierarchicalSelfAttention

__all__ = ["FamilyBucket", "HSALayout", "HierarchicalSelfAttention", "compile_hierarchy", "hsa"]
