"""Whether the Triton kernels can run, and whether they can take a given call."""

from __future__ import annotations

import functools
import math
from types import ModuleType

import torch

__all__ = [
    "MAX_BATCH",
    "MAX_FEATURES",
    "kernels",
    "triton_interpreted",
    "triton_module",
    "triton_unsupported",
]

MAX_FEATURES = 256  # d_k, d_v, d_p above this go to the PyTorch programme
MAX_BATCH = 65535  # the batch is the second grid dimension


@functools.cache
def triton_module() -> ModuleType | None:
    """The ``triton`` package, or ``None`` when it is not installed."""
    try:
        import triton
    except ImportError:
        return None
    return triton


@functools.cache
def kernels() -> ModuleType:
    """The kernel module, imported on first use: Triton decides at definition time whether the
    kernels are compiled or interpreted (``TRITON_INTERPRET``)."""
    from . import kernels as module

    return module


def triton_interpreted() -> bool:
    """True when Triton is installed and its kernels run under the interpreter (on CPU)."""
    triton = triton_module()
    return triton is not None and not isinstance(
        kernels().hsa_up_kernel, triton.runtime.JITFunction
    )


def triton_unsupported(
    q: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None,
    num_nodes: int,
    *,
    explicit: bool,
) -> str | None:
    """Why the Triton path cannot take these validated inputs over a hierarchy of ``num_nodes``
    nodes, or ``None`` when it can.

    ``explicit``: the caller asked for ``backend="triton"``, which also allows CPU tensors when
    the kernels run under Triton's interpreter.
    """
    if triton_module() is None:
        return "Triton is not installed"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the Triton kernels take float32, float16 or bfloat16, got {q.dtype}"
    if q.device.type != "cuda" and not (explicit and triton_interpreted()):
        return (
            f"tensors are on {q.device}: the Triton kernels need CUDA tensors "
            "(or, for testing, CPU tensors with TRITON_INTERPRET=1 set before Triton is imported)"
        )
    widths = {"d_k": q.shape[-1], "d_v": v.shape[-1]}
    if positions is not None:
        widths["d_p"] = positions.shape[-1]
    too_wide = {name: d for name, d in widths.items() if d > MAX_FEATURES}
    if too_wide:
        return f"feature sizes above {MAX_FEATURES} are not supported, got {too_wide}"
    batch = math.prod(q.shape[:-2])
    if batch > MAX_BATCH:
        return f"the flattened batch {batch} exceeds {MAX_BATCH}"
    if num_nodes * max(widths.values()) >= 2**31:  # offsets within a batch row are int32
        return f"{num_nodes} nodes x feature size {max(widths.values())} overflow int32 offsets"
    return None
