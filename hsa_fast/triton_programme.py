"""The dynamic programme of SPEC section 5 as Triton kernels: forward and backward.

The same schedule as :mod:`hsa_fast.programme`, with each step fused into one launch:

- up, one launch per bucket of the layout (children before parents): a program gathers the
  children of a few families, forms the ``w x w`` block energies, ``L(B)`` by log-sum-exp, the
  shares, ``F(A)``, the family means and each child's ``R(B)``, all in registers. The leaf
  bucket reads ``q, k, v`` once and writes ``R_i`` once;
- down, one launch per depth: ``log W`` and ``U``;
- leaves, one launch: ``y_i = U(A) + W(A) R_i``.

The backward is Triton too: one launch per bucket for the adjoint of the down pass (children
first: ``gU, glogW`` and ``D(B) = W(A) gU(B) . R(B)``, the analogue of flash attention's
``rowsum(dO * O)``), then one per bucket in reverse (parents first) recomputing each tile's
shares from the saved ``L(B)`` and writing ``dq, dk, dv`` of leaves (and of family means for the
level below). Double backward is not supported.

Accumulation is float32; float16 / bfloat16 leaf tiles are multiplied on the tensor cores.
float64 inputs are left to the PyTorch programme (``backend="auto"``), which keeps float64.
On CPU tensors the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set
before Triton is imported), which is how the tests exercise them without a GPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .layout import FamilyBucket, HSALayout, derived

__all__ = [
    "BACKENDS",
    "KernelLaunch",
    "Launcher",
    "TritonPlan",
    "choose_backend",
    "hsa_triton",
    "record_launches",
    "triton_interpreted",
    "triton_plan",
    "triton_unsupported",
]

BACKENDS = ("auto", "torch", "triton")
HALF_TILE = 64  # families of up to 64 children are one tile of half-precision products,
F32_TILE = 32  # of up to 32 of float32 products (their tiles take more registers and memory);
CHUNK = 32  # wider families are swept in chunks of 32 children,
MIN_ROWS = 32  # and narrower ones packed several to a tile of 32 slots
MIN_DOT = 16  # tl.dot needs at least 16 along the reduced dimension
MAX_FEATURES = 256  # d_k, d_v, d_p above this go to the PyTorch programme
MAX_BATCH = 65535  # the batch is the second grid dimension
BLOCK_ELEMENTS = 2048  # about this many values per program of the down pass and the leaf step


@functools.cache
def _triton() -> ModuleType | None:
    try:
        import triton
    except ImportError:
        return None
    return triton


@functools.cache
def _kernels() -> ModuleType:
    """The kernel module, imported on first use: Triton decides at definition time whether the
    kernels are compiled or interpreted (``TRITON_INTERPRET``)."""
    from . import triton_kernels

    return triton_kernels


def triton_interpreted() -> bool:
    """True when Triton is installed and its kernels run under the interpreter (on CPU)."""
    triton = _triton()
    return triton is not None and not isinstance(
        _kernels().hsa_up_kernel, triton.runtime.JITFunction
    )


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _block(d: int) -> int:
    return max(MIN_DOT, _pow2(d))


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class _Bucket:
    """A layout bucket as the kernels read it.

    ``slots`` ``(f * w,)`` int32: the node id of each child slot (``-1`` for padding; unused
    when ``contiguous``: slot ``s`` then holds leaf ``leaf_start + s``); ``weight`` and
    ``log_size`` ``(f * w,)`` float32. ``padded`` is ``width`` rounded up to a power of two;
    :func:`_tiling` says how programs cover the families.
    """

    families: torch.Tensor
    slots: torch.Tensor
    weight: torch.Tensor
    log_size: torch.Tensor
    num_families: int
    width: int
    leaf_start: int
    contiguous: bool
    has_leaves: bool
    has_families: bool
    padded: int
    launch: dict = field(default_factory=dict, compare=False, repr=False)  # by dtype


@dataclass(frozen=True)
class TritonPlan:
    """A compiled :class:`HSALayout` in the int32 / float32 form the kernels read.

    ``down``: per depth ``(families, parents, count)``; ``leaf_parent`` ``(N,)`` int32 (``M``
    for a one-leaf tree); ``root_leaves`` the one-leaf trees' leaves (int64).
    """

    num_leaves: int
    num_families: int
    buckets: tuple[_Bucket, ...]
    down: tuple[tuple[torch.Tensor, torch.Tensor, int], ...]
    leaf_parent: torch.Tensor
    root_leaves: torch.Tensor


def _plan_bucket(b: FamilyBucket, n: int, m: int) -> _Bucket:
    f, w = b.num_families, b.width
    if b.leaf_start is not None:
        slots = b.family.to(torch.int32)  # never read; any int32 pointer will do
    else:
        family_node = torch.where(b.slot_family < m, b.slot_family + n, -1)
        slots = torch.where(b.slot_is_leaf, b.slot_leaf, family_node).to(torch.int32)
    return _Bucket(
        families=b.family.to(torch.int32),
        slots=slots.contiguous(),
        weight=b.weight.to(torch.float32).reshape(-1).contiguous(),
        log_size=b.log_size.to(torch.float32).reshape(-1).contiguous(),
        num_families=f,
        width=w,
        leaf_start=b.leaf_start or 0,
        contiguous=b.leaf_start is not None,
        has_leaves=b.has_leaves or b.leaf_start is not None,
        has_families=b.has_families,
        padded=_pow2(w),
    )


def triton_plan(layout: HSALayout) -> TritonPlan:
    """The :class:`TritonPlan` of ``layout``, built once per layout and kept while it lives."""
    return derived(layout, "triton_plan", _build_plan)


def _build_plan(layout: HSALayout) -> TritonPlan:
    n, m = layout.num_leaves, layout.num_families
    return TritonPlan(
        num_leaves=n,
        num_families=m,
        buckets=tuple(_plan_bucket(b, n, m) for b in layout.up),
        down=tuple(
            (fams.to(torch.int32), parents.to(torch.int32), int(fams.numel()))
            for fams, parents in layout.down
        ),
        leaf_parent=layout.leaf_parent.to(torch.int32),
        root_leaves=torch.nonzero(layout.leaf_parent == m).flatten(),
    )


# ----------------------------------------------------------------------------- dispatch
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
    if _triton() is None:
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


def choose_backend(
    backend: object,
    q: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None,
    num_nodes: int,
) -> str:
    """``"torch"`` or ``"triton"`` for validated inputs over a hierarchy of ``num_nodes`` nodes.

    ``"auto"`` picks Triton for CUDA tensors whenever :func:`triton_unsupported` allows it;
    ``"triton"`` raises ``ValueError`` with the reason when it does not.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    reason = triton_unsupported(q, v, positions, num_nodes, explicit=backend == "triton")
    if reason is None:
        return "triton"
    if backend == "triton":
        raise ValueError(f"backend='triton' cannot run this call: {reason}")
    return "torch"


# ----------------------------------------------------------------------------- launches
def _tiling(padded: int, half: bool) -> tuple[int, int, int]:
    """``(group, rows, chunks)``: a program owns ``group`` families of ``padded`` slots, swept in
    ``chunks`` tiles of ``rows`` slots (one tile unless the families are wider than a tile)."""
    if padded <= (HALF_TILE if half else F32_TILE):
        rows = max(padded, MIN_ROWS)
        return rows // padded, rows, 1
    return 1, CHUNK, padded // CHUNK


def _bucket_args(b: _Bucket, dtype: torch.dtype) -> tuple[int, dict]:
    """The number of programs and the launch arguments of bucket ``b`` for inputs of ``dtype``;
    built once per dtype, not to be modified."""
    launch = b.launch.get(dtype)
    if launch is not None:
        return launch
    half = _half(b, dtype)
    group, rows, chunks = _tiling(b.padded, half)
    args = {
        "fam_idx_ptr": b.families,
        "slot_ptr": b.slots,
        "weight_ptr": b.weight,
        "log_size_ptr": b.log_size,
        "n_fam": b.num_families,
        "width": b.width,
        "leaf_start": b.leaf_start,
        "W": b.padded,
        "G": group,
        "BR": rows,
        "NUM_CHUNKS": chunks,
        "CONTIG": b.contiguous,
        "HAS_LEAVES": b.has_leaves,
        "HAS_FAMILIES": b.has_families,
        "HALF": half,
        "F32_DOT": "tf32x3" if dtype == torch.float32 else "tf32",
        "num_warps": 4,
    }
    return b.launch.setdefault(dtype, (-(-b.num_families // group), args))


def _sizes(
    q: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None,
    plan: TritonPlan,
    scale: float,
    distance: bool,
) -> dict:
    """Launch arguments shared by the bucket kernels: sizes, block widths, energy options."""
    d_p = pos.shape[-1] if pos is not None else 1
    return {
        "N": plan.num_leaves,
        "M1": plan.num_families + 1,
        "d_k": q.shape[-1],
        "d_v": v.shape[-1],
        "d_p": d_p,
        "scale": scale,
        "BDK": _block(q.shape[-1]),
        "BDV": _block(v.shape[-1]),
        "BDP": _block(d_p),
        "DISTANCE": distance,
        "HAS_POS": pos is not None,
    }


def _half(b: _Bucket, dtype: torch.dtype) -> bool:
    """Tensor-core products in the input dtype: leaf-only buckets of float16 / bfloat16 inputs
    (Triton's interpreter multiplies bfloat16 blocks as integers, so not there)."""
    if dtype == torch.bfloat16 and triton_interpreted():
        return False
    return dtype in (torch.float16, torch.bfloat16) and not b.has_families


@dataclass
class _Saved:
    """Forward state the backward reads (all float32 except ``rloc``)."""

    qf: torch.Tensor
    kf: torch.Tensor
    vf: torch.Tensor
    ff: torch.Tensor
    qsqf: torch.Tensor
    ksqf: torch.Tensor
    lse: torch.Tensor
    sentf: torch.Tensor
    rloc: torch.Tensor
    logw: torch.Tensor


def _buffers(device: torch.device, zero: bool, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Contiguous float32 tensors of ``shapes`` carved from one allocation (zeroed if ``zero``),
    each starting on a 128-byte boundary."""
    sizes = [-(-math.prod(shape) // 32) * 32 for shape in shapes]
    flat = (torch.zeros if zero else torch.empty)(sum(sizes), device=device, dtype=torch.float32)
    parts = flat.split(sizes)
    return [part[: math.prod(shape)].view(shape) for part, shape in zip(parts, shapes, strict=True)]


# ----------------------------------------------------------------------------- launches
Launcher = Callable[..., None]
"""``launch(kernel, grid, *args, **kwargs)``: runs ``kernel[grid](*args, **kwargs)`` or not."""


def _launch(kernel: Any, grid: tuple[int, int], *args: Any, **kwargs: Any) -> None:
    kernel[grid](*args, **kwargs)


@dataclass(frozen=True)
class KernelLaunch:
    """One launch the programme would make: the Triton kernel, its grid and its arguments."""

    kernel: Any
    grid: tuple[int, int]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def record_launches(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: HSALayout,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None = None,
) -> list[KernelLaunch]:
    """Every kernel launch of a forward and a backward on ``q, k: (Z, N, d_k)``,
    ``v: (Z, N, d_v)`` (contiguous, one dtype), in order, recorded instead of made.

    Nothing is computed, so the tensors may live on any device: this is what compiling the
    kernels ahead of time for a GPU needs on a machine without one. The buffers are allocated
    as for a real run, the output gradient uninitialised.
    """
    calls: list[KernelLaunch] = []

    def record(kernel: Any, grid: tuple[int, int], *args: Any, **kwargs: Any) -> None:
        calls.append(KernelLaunch(kernel, grid, args, kwargs))

    plan = triton_plan(layout)
    pos = positions.to(torch.float32).contiguous() if positions is not None else None
    distance = energy == "distance"
    _, saved = _forward(q, k, v, pos, plan, scale, distance, keep=True, launch=record)
    _backward(torch.empty_like(v), q, k, v, pos, plan, scale, distance, saved, launch=record)
    return calls


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None,
    plan: TritonPlan,
    scale: float,
    distance: bool,
    keep: bool,
    launch: Launcher = _launch,
) -> tuple[torch.Tensor, _Saved]:
    """HSA of contiguous ``q, k: (Z, N, d_k)``, ``v: (Z, N, d_v)``; ``pos`` float32 or None.

    Returns ``(Z, N, d_v)`` in the input dtype and the state for the backward; with ``keep``
    false the leaf products ``R_i`` are written straight into the output. Each kernel runs
    through ``launch(kernel, grid, *args, **kwargs)`` (:func:`record_launches`).
    """
    kern = _kernels()
    z, n, d_k = q.shape
    d_v = v.shape[-1]
    m1 = plan.num_families + 1
    qf, kf, vf, sentf, ff, qsqf, ksqf, lse = _buffers(
        q.device, False, (z, m1, d_k), (z, m1, d_k), (z, m1, d_v), (z, m1, d_v), (z, m1),
        (z, m1) if distance else (0,), (z, m1) if distance else (0,), (z, n + m1 - 1),
    )  # fmt: skip
    logw, u = _buffers(q.device, True, (z, m1), (z, m1, d_v))  # W(root) = 1, U(root) = 0
    out = torch.empty(z, n, d_v, device=q.device, dtype=q.dtype)
    rloc = torch.empty_like(out) if keep else out
    sizes = _sizes(q, v, pos, plan, scale, distance)
    pos_arg = pos if pos is not None else ff
    for b in plan.buckets:
        programs, args = _bucket_args(b, q.dtype)
        launch(
            kern.hsa_up_kernel, (programs, z),
            q, k, v, qf, kf, vf, ff, qsqf, ksqf, lse, sentf, rloc, pos_arg, **args, **sizes,
        )  # fmt: skip
    bdv = _block(d_v)
    rows = max(1, BLOCK_ELEMENTS // bdv)
    for fams, parents, count in plan.down:
        launch(
            kern.hsa_down_kernel, (-(-count // rows), z),
            fams, parents, count, ff, lse, logw, u, sentf, n, m1, d_v, BF=rows, BDV=bdv,
        )  # fmt: skip
    launch(
        kern.hsa_leaf_kernel, (-(-n // rows), z),
        rloc, v, out, plan.leaf_parent, logw, u, n, m1, d_v, BN=rows, BDV=bdv,
    )  # fmt: skip
    return out, _Saved(qf, kf, vf, ff, qsqf, ksqf, lse, sentf, rloc, logw)


def _backward(
    gy: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos: torch.Tensor | None,
    plan: TritonPlan,
    scale: float,
    distance: bool,
    st: _Saved,
    launch: Launcher = _launch,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of ``sum(gy * y)`` in ``q, k, v`` (input dtype) and ``pos`` (float32)."""
    kern = _kernels()
    z, n, d_k = q.shape
    d_v = v.shape[-1]
    m1 = plan.num_families + 1
    gy = gy.contiguous()
    bdv = _block(d_v)
    # adjoint of the down pass, children first
    guf, glogwf, dlt = _buffers(q.device, False, (z, m1, d_v), (z, m1), (z, n + m1 - 1))
    for b in plan.buckets:
        programs, args = _bucket_args(b, q.dtype)
        args = {name: x for name, x in args.items() if name not in ("HALF", "F32_DOT")}
        launch(
            kern.hsa_down_bwd_kernel, (programs, z),
            gy, st.rloc, st.sentf, st.logw, guf, glogwf, dlt, **args, N=n, M1=m1, d_v=d_v, BDV=bdv,
        )  # fmt: skip
    # adjoint of the up pass, parents first; roots get no gradient from above
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    d_p = pos.shape[-1] if pos is not None else 0
    gqf, gkf, gvf, gff, gqsqf, gksqf, gpos_r, gpos_c = _buffers(
        q.device, True, (z, m1, d_k), (z, m1, d_k), (z, m1, d_v), (z, m1),
        (z, m1) if distance else (0,), (z, m1) if distance else (0,),
        (z, n + m1 - 1, d_p), (z, n + m1 - 1, d_p),  # positions: row and column parts
    )  # fmt: skip
    sizes = _sizes(q, v, pos, plan, scale, distance)
    pos_arg = pos if pos is not None else gff
    for b in reversed(plan.buckets):
        programs, args = _bucket_args(b, q.dtype)
        launch(
            kern.hsa_up_bwd_kernel, (programs, z),
            q, k, v, st.qf, st.kf, st.vf, st.ff, st.qsqf, st.ksqf, pos_arg, st.lse, st.logw,
            gy, guf, glogwf, dlt, dq, dk, dv, gqf, gkf, gvf, gff, gqsqf, gksqf, gpos_r, gpos_c,
            **args, **sizes,
        )  # fmt: skip
    if plan.root_leaves.numel():  # a one-leaf tree returns v
        roots = plan.root_leaves
        dq[:, roots] = 0
        dk[:, roots] = 0
        dv[:, roots] = gy[:, roots]
    gpos = (gpos_r + gpos_c).sum(0) if pos is not None else None
    return dq, dk, dv, gpos


class _HSATriton(torch.autograd.Function):
    """Forward and backward through the Triton kernels (first-order gradients only)."""

    @staticmethod
    def forward(ctx, q, k, v, pos, plan, scale, distance):
        keep = any(ctx.needs_input_grad[:4])
        out, saved = _forward(q, k, v, pos, plan, scale, distance, keep)
        if keep:
            ctx.save_for_backward(q, k, v, pos)
            ctx.state = (plan, scale, distance, saved)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        q, k, v, pos = ctx.saved_tensors
        plan, scale, distance, saved = ctx.state
        dq, dk, dv, dpos = _backward(gy, q, k, v, pos, plan, scale, distance, saved)
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
        out, _ = _forward(q3, k3, v3, pos, plan, float(scale), distance, keep=False)
    return out.reshape(*batch, n, d_v)
