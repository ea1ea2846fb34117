"""Argument checks shared by every HSA entry point: bad input fails here, with a message."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .hierarchy import Hierarchy

__all__ = [
    "DTYPES",
    "ENERGIES",
    "AttentionInputs",
    "check_attention_inputs",
    "check_dtype",
    "check_scale",
    "check_tensor",
]

ENERGIES = ("dot", "distance")
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
"""The dtypes HSA is evaluated in (float8 and complex dtypes are refused)."""


@dataclass(frozen=True)
class AttentionInputs:
    """Validated inputs: ``q, k, v`` broadcast to common batch dimensions ``(..., N, d)``."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor | None
    scale: float
    energy: str
    positions: torch.Tensor | None

    @property
    def batch_shape(self) -> torch.Size:
        return self.q.shape[:-2]


def _accepted() -> str:
    names = [str(t) for t in DTYPES]
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_dtype(dtype: object, what: str = "dtype") -> torch.dtype:
    """``dtype`` if it is one of :data:`DTYPES`; ``TypeError`` naming it otherwise."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"{what} must be a torch.dtype ({_accepted()}), got {dtype!r} ({type(dtype).__name__})"
        )
    if dtype not in DTYPES:
        raise TypeError(f"{what} must be {_accepted()}, got {dtype}")
    return dtype


def check_tensor(name: str, x: object, *, min_dim: int = 2, dtype: bool = True) -> torch.Tensor:
    """``x`` if it is a dense floating-point tensor of an accepted dtype (:data:`DTYPES`; not
    checked with ``dtype=False``) with at least ``min_dim`` dimensions; ``TypeError``
    (``ValueError`` for too few dimensions) naming ``name`` otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_nested:
        raise TypeError(f"{name} must be a dense tensor, got a nested tensor")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (torch.strided) tensor, got layout {x.layout}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if dtype:
        check_dtype(x.dtype, f"the dtype of {name}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have shape (..., N, d), got shape {tuple(x.shape)}")
    return x


def check_scale(scale: object, d_k: int) -> float:
    """The softmax temperature: ``1/sqrt(d_k)`` for ``None``, else a finite real number (a
    Python or NumPy number, or a one-element tensor that holds a value and needs no gradient)."""
    if scale is None:
        return 1.0 / math.sqrt(d_k)
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1 or scale.requires_grad:
            grad = " that requires grad" if scale.requires_grad else ""
            raise TypeError(
                "scale must be a real number, a one-element tensor without gradient or None, "
                f"got a tensor of shape {tuple(scale.shape)}{grad}"
            )
        if scale.device.type == "meta":
            raise ValueError("scale is a tensor on the meta device, which holds no value")
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    try:
        value = float(scale)
    except OverflowError:
        raise ValueError(
            f"scale must be finite, got a number too large for a float ({type(scale).__name__})"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"scale must be finite, got {value}")
    return value


def check_energy(energy: object) -> str:
    if not isinstance(energy, str):
        raise TypeError(f"energy must be a string, got {type(energy).__name__}")
    if energy not in ENERGIES:
        raise ValueError(f"energy must be one of {ENERGIES}, got {energy!r}")
    return energy


def check_attention_inputs(
    q: object,
    k: object,
    v: object | None,
    hierarchy: object,
    *,
    scale: object = None,
    energy: object = "dot",
    positions: object | None = None,
) -> AttentionInputs:
    """Validate HSA arguments; ``v=None`` checks only ``q`` and ``k`` (attention matrices).

    Raises ``TypeError`` for values of the wrong type (not a dense tensor, a dtype outside
    :data:`DTYPES`, mismatched dtypes, not a :class:`Hierarchy`) and ``ValueError`` for wrong
    shapes, devices, energies or scales, each naming the argument at fault.
    """
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"hierarchy must be an hsa_ref.Hierarchy, got {type(hierarchy).__name__}")
    named = [("q", q), ("k", k)] + ([("v", v)] if v is not None else [])
    named = [(name, check_tensor(name, t, dtype=False)) for name, t in named]
    dtypes = {name: t.dtype for name, t in named}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"q, k and v must share one dtype, got {dtypes}")
    check_dtype(named[0][1].dtype, "the dtype of q, k and v")
    devices = {name: t.device for name, t in named}
    if len(set(devices.values())) > 1:
        raise ValueError(f"q, k and v must be on one device, got {devices}")
    n = hierarchy.num_leaves
    for name, t in named:
        if t.shape[-2] != n:
            raise ValueError(
                f"{name} has {t.shape[-2]} rows (shape {tuple(t.shape)}) but the hierarchy has "
                f"{n} leaves: expected shape (..., {n}, d)"
            )
    qt, kt = named[0][1], named[1][1]
    if qt.shape[-1] != kt.shape[-1]:
        raise ValueError(
            f"q and k must share the feature size d_k, got {qt.shape[-1]} and {kt.shape[-1]}"
        )
    if qt.shape[-1] < 1:
        raise ValueError("q and k need at least one feature (d_k >= 1)")
    try:
        batch = torch.broadcast_shapes(*(t.shape[:-2] for _, t in named))
    except RuntimeError:
        shapes = {name: tuple(t.shape) for name, t in named}
        raise ValueError(f"batch dimensions of q, k, v do not broadcast: {shapes}") from None
    tensors = [t.expand(*batch, *t.shape[-2:]) for _, t in named]
    scale_f = check_scale(scale, qt.shape[-1])
    energy_s = check_energy(energy)
    pos = None
    if positions is not None:
        check_tensor("positions", positions, min_dim=0)
        if positions.dim() != 2 or positions.shape[0] != hierarchy.num_nodes:
            raise ValueError(
                f"positions must have shape (N + M, d_p) = ({hierarchy.num_nodes}, d_p), one row "
                f"per node, got {tuple(positions.shape)}"
            )
        if positions.device != qt.device:
            raise ValueError(f"positions are on {positions.device} but q is on {qt.device}")
        pos = positions
    return AttentionInputs(
        q=tensors[0],
        k=tensors[1],
        v=tensors[2] if v is not None else None,
        scale=scale_f,
        energy=energy_s,
        positions=pos,
    )
