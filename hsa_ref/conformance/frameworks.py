"""Calling a Python implementation in its framework: torch, JAX or NumPy.

:func:`evaluate` takes one request's inputs as float64 NumPy arrays, builds the framework's
arrays in the requested dtype (on the requested device for torch), calls the implementation
with the signature of ``hsa_fast.hsa`` and returns the output and, when ``grad_out`` is given,
the gradients of ``sum(grad_out * out)``: by autograd (torch) or ``jax.vjp`` (JAX). NumPy has no
gradients. The results come back as float64 NumPy arrays.

A ``NotImplementedError`` propagates (the caller reports a refusal); a result that is not an
array of the framework, of the expected shape, raises :class:`BadResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..hierarchy import Hierarchy

__all__ = ["FRAMEWORKS", "BadResult", "evaluate", "framework_dtypes"]

FRAMEWORKS = ("torch", "jax", "numpy")

Impl = Callable[..., Any]


class BadResult(Exception):
    """The implementation returned something that is not the expected array."""


def framework_dtypes(framework: str) -> tuple[str, ...]:
    """The dtypes a framework computes in (NumPy has no bfloat16)."""
    if framework == "numpy":
        return ("float64", "float32", "float16")
    return ("float64", "float32", "bfloat16", "float16")


def evaluate(
    framework: str,
    impl: Impl,
    inputs: dict[str, np.ndarray],
    hierarchy: Hierarchy,
    kwargs: dict[str, Any],
    *,
    dtype: str,
    grad_out: np.ndarray | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``impl(q, k, v, hierarchy, **kwargs[, positions=...])`` in ``framework`` and ``dtype``:
    the output and the gradients (``{"q", "k", "v"[, "positions"]}``), float64."""
    if framework == "torch":
        return _torch(impl, inputs, hierarchy, kwargs, dtype, grad_out, device)
    if framework == "jax":
        return _jax(impl, inputs, hierarchy, kwargs, dtype, grad_out)
    if framework == "numpy":
        return _numpy(impl, inputs, hierarchy, kwargs, dtype)
    raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")


def _expected_shape(inputs: dict[str, np.ndarray]) -> tuple[int, ...]:
    q, v = inputs["q"], inputs["v"]
    batch = np.broadcast_shapes(q.shape[:-2], inputs["k"].shape[:-2], v.shape[:-2])
    return (*batch, q.shape[-2], v.shape[-1])


def _check(out: Any, kind: type, what: str, shape: tuple[int, ...]) -> None:
    if not isinstance(out, kind):
        raise BadResult(f"{what} is a {type(out).__name__}, not a {kind.__name__}")
    if tuple(out.shape) != tuple(shape):
        raise BadResult(f"{what} has shape {tuple(out.shape)}, expected {tuple(shape)}")


def _torch(impl, inputs, hierarchy, kwargs, dtype, grad_out, device):
    import torch

    wants = grad_out is not None
    t_dtype = getattr(torch, dtype)
    leaves = {
        name: torch.tensor(x, dtype=torch.float64).to(device=device, dtype=t_dtype)
        for name, x in inputs.items()
    }
    for x in leaves.values():
        x.requires_grad_(wants)
    call_kw = {**kwargs}
    if "positions" in leaves:
        call_kw["positions"] = leaves["positions"]
    out = impl(leaves["q"], leaves["k"], leaves["v"], hierarchy, **call_kw)
    _check(out, torch.Tensor, "the result", _expected_shape(inputs))
    if out.layout != torch.strided or out.device.type == "meta" or not out.is_floating_point():
        raise BadResult(f"the result is not a dense floating tensor ({out.layout}, {out.dtype})")
    values = out.detach().to("cpu", torch.float64).numpy().copy()
    if not wants:
        return values, {}
    if not out.requires_grad:
        raise BadResult("no gradient: the result does not require grad although its inputs do")
    names = list(leaves)
    upstream = torch.tensor(grad_out, dtype=torch.float64).to(device=device, dtype=out.dtype)
    grads = torch.autograd.grad(out, [leaves[n] for n in names], upstream, allow_unused=True)
    result = {}
    for name, g in zip(names, grads, strict=True):
        if g is None:
            g = torch.zeros_like(leaves[name])
        _check(g, torch.Tensor, f"the gradient of {name}", inputs[name].shape)
        result[name] = g.detach().to("cpu", torch.float64).numpy().copy()
    return values, result


def _jax(impl, inputs, hierarchy, kwargs, dtype, grad_out):
    import jax
    import jax.numpy as jnp

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    j_dtype = getattr(jnp, dtype)
    names = list(inputs)
    wide = jnp.float64 if dtype == "float64" else jnp.float32
    arrays = [jnp.asarray(inputs[n], dtype=wide).astype(j_dtype) for n in names]

    def forward(*xs):
        given = dict(zip(names, xs, strict=True))
        call_kw = {**kwargs}
        if "positions" in given:
            call_kw["positions"] = given["positions"]
        return impl(given["q"], given["k"], given["v"], hierarchy, **call_kw)

    if grad_out is None:
        out = forward(*arrays)
        _check(out, jax.Array, "the result", _expected_shape(inputs))
        return np.asarray(out, dtype=np.float64), {}
    out, pullback = jax.vjp(forward, *arrays)
    _check(out, jax.Array, "the result", _expected_shape(inputs))
    grads = pullback(jnp.asarray(grad_out).astype(out.dtype))
    return np.asarray(out, dtype=np.float64), {
        name: np.asarray(g, dtype=np.float64) for name, g in zip(names, grads, strict=True)
    }


def _numpy(impl, inputs, hierarchy, kwargs, dtype):
    arrays = {name: x.astype(dtype) for name, x in inputs.items()}
    call_kw = {**kwargs}
    if "positions" in arrays:
        call_kw["positions"] = arrays["positions"]
    out = impl(arrays["q"], arrays["k"], arrays["v"], hierarchy, **call_kw)
    _check(out, np.ndarray, "the result", _expected_shape(inputs))
    return np.asarray(out, dtype=np.float64).copy(), {}
