"""HSA through the Triton kernels as a differentiable function (first-order gradients).

Accumulation is float32; float16 / bfloat16 leaf tiles are multiplied on the tensor cores.
float64 inputs are left to the PyTorch programme (``backend="auto"``), which keeps float64.
On CPU tensors the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set
before Triton is imported), which is how the tests exercise them without a GPU.
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from ..layout import HSALayout
from .launch import backward, forward
from .plan import triton_plan

__all__ = ["hsa_triton"]


class _HSATriton(torch.autograd.Function):
    """Forward and backward through the Triton kernels (double backward is not supported)."""

    @staticmethod
    def forward(ctx, q, k, v, pos, plan, scale, distance):
        keep = any(ctx.needs_input_grad[:4])
        out, saved = forward(q, k, v, pos, plan, scale, distance, keep)
        if keep:
            ctx.save_for_backward(q, k, v, pos)
            ctx.state = (plan, scale, distance, saved)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        q, k, v, pos = ctx.saved_tensors
        plan, scale, distance, saved = ctx.state
        dq, dk, dv, dpos = backward(gy, q, k, v, pos, plan, scale, distance, saved)
        return dq, dk, dv, dpos, None, None, None


def hsa_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: HSALayout,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """HSA of validated ``q, k: (..., N, d_k)``, ``v: (..., N, d_v)`` through the kernels.

    The contract of :func:`hsa_fast.programme.hsa_programme` for float32, float16 and bfloat16
    (float32 accumulation), differentiable in ``q, k, v`` and ``positions`` (first order).
    Inputs are read as contiguous ``(Z, N, d)`` (a copy when their layout is not that).
    ``torch.compile`` runs the kernels as they are, between graphs.
    """
    run = _outside_compiled_graphs(_hsa_triton)
    return run(q, k, v, layout, scale=scale, energy=energy, positions=positions)


@functools.cache
def _outside_compiled_graphs(fn):
    # Applied on first use: torch.compiler.disable imports torch._dynamo, over a second of
    # start-up that ``import hsa_fast`` should not pay.
    return torch.compiler.disable(fn)


def _hsa_triton(q, k, v, layout, *, scale, energy, positions):
    batch, n = q.shape[:-2], q.shape[-2]
    d_v = v.shape[-1]
    q3, k3, v3 = (x.reshape(-1, n, x.shape[-1]).contiguous() for x in (q, k, v))
    pos = positions.to(torch.float32).contiguous() if positions is not None else None
    plan = triton_plan(layout)
    distance = energy == "distance"
    tracked = (q3, k3, v3) + ((pos,) if pos is not None else ())
    if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
        out = _HSATriton.apply(q3, k3, v3, pos, plan, float(scale), distance)
    else:
        out, _ = forward(q3, k3, v3, pos, plan, float(scale), distance, keep=False)
    return out.reshape(*batch, n, d_v)
