"""Calling an implementation under test without letting it fool or stop the caller.

:func:`call` hands the implementation fresh copies of its inputs (so the reference is always
computed from pristine tensors), turns every exception, ``SystemExit`` included, into a
reported problem, bounds the call in time, checks that the result is a real dense tensor of the
expected shape on the expected device, and, when asked, computes the gradients of
``sum(grad_out * out)`` with respect to ``q``, ``k``, ``v`` (and ``positions``).

A ``NotImplementedError`` is not a problem but a refusal (``Call.unsupported``); the checks
fail a refusal of an input inside the declared capabilities.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hierarchy import Hierarchy

__all__ = ["DEFAULT_TIMEOUT", "Call", "CallTimeout", "call"]

DEFAULT_TIMEOUT = 60.0
# A call still running this long after its timeout is stuck outside Python (where the timeout
# cannot interrupt it): the process reports it and exits with status 1.
HARD_KILL_GRACE = 30.0

Impl = Callable[..., Any]


class CallTimeout(BaseException):
    """Raised inside a call that ran past its timeout (a ``BaseException``, so that an
    implementation's ``except Exception`` cannot swallow it)."""


@dataclass
class Call:
    """What one call gave: ``out`` and ``grads`` (on the CPU, float64 or the implementation's
    dtype), or ``problem`` (a failure, in words), or ``unsupported`` (a refusal)."""

    out: torch.Tensor | None = None
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    problem: str = ""
    unsupported: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem and not self.unsupported


def _describe(exc: BaseException) -> str:
    text = repr(exc)
    return text if len(text) <= 300 else text[:300] + "..."


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CallTimeout` in the main thread after ``seconds``; a watchdog ends the
    process if the call is stuck where a signal cannot reach it."""
    if seconds is None or not math.isfinite(seconds):
        yield
        return
    in_main = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")

    def stuck() -> None:
        sys.stderr.write(
            f"error: the implementation did not return within {seconds:g} s and could not be "
            "interrupted; stopping the harness\n"
        )
        sys.stderr.flush()
        os._exit(1)

    watchdog = threading.Timer(seconds + HARD_KILL_GRACE, stuck)
    watchdog.daemon = True
    watchdog.start()
    previous = None
    if in_main:

        def expire(signum: int, frame: Any) -> None:
            raise CallTimeout(f"did not return within {seconds:g} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if in_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        watchdog.cancel()


def _tensor_problem(x: Any, what: str, shape: tuple[int, ...], device: torch.device) -> str:
    """Why ``x`` is not a dense floating tensor of ``shape`` on ``device`` ("" when it is)."""
    if not isinstance(x, torch.Tensor):
        return f"{what} is a {type(x).__name__}, not a torch.Tensor"
    if x.layout != torch.strided:
        return f"{what} has layout {x.layout}; a dense (strided) tensor is expected"
    if x.device.type == "meta":
        return f"{what} is a meta tensor (no data)"
    if x.device != device:
        return f"{what} is on {x.device}, the inputs were on {device}"
    if not x.is_floating_point():
        return f"{what} has dtype {x.dtype}, not a floating-point dtype"
    if tuple(x.shape) != shape:
        return f"{what} has shape {tuple(x.shape)}, expected {shape}"
    return ""


def call(
    impl: Impl,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    kwargs: dict[str, Any],
    *,
    grad_out: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Call:
    """Call ``impl(q, k, v, hierarchy, **kwargs)`` on fresh copies placed on ``device``.

    With ``grad_out``, the copies require grad and the result must carry a gradient (else the
    problem is "no gradient"); the gradients of ``sum(grad_out * out)`` come back in
    ``grads`` (``None`` from autograd, for an input the output does not depend on, becomes
    zeros). ``out`` and ``grads`` are returned on the CPU.
    """
    device = torch.device(device)
    wants_grad = grad_out is not None
    inputs = {"q": q, "k": k, "v": v}
    if isinstance(kwargs.get("positions"), torch.Tensor):
        inputs["positions"] = kwargs["positions"]
    copies = {
        name: x.detach().to(device=device, copy=True).requires_grad_(wants_grad)
        for name, x in inputs.items()
    }
    call_kwargs = {
        **kwargs,
        **({"positions": copies["positions"]} if "positions" in copies else {}),
    }
    expected = (*q.shape[:-1], v.shape[-1])
    try:
        with _time_limit(timeout):
            out = impl(copies["q"], copies["k"], copies["v"], hierarchy, **call_kwargs)
    except NotImplementedError as exc:
        return Call(unsupported=f"raised {_describe(exc)}")
    except CallTimeout as exc:
        return Call(problem=f"timed out: {exc}")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return Call(problem=f"raised {_describe(exc)}")
    problem = _tensor_problem(out, "the result", expected, device)
    if problem:
        return Call(problem=problem)
    result = Call(out=out.detach().cpu())
    if not wants_grad:
        return result
    if not out.requires_grad:
        result.problem = (
            "no gradient: the result does not require grad although its inputs do (use "
            "--forward-only for an implementation without a backward pass)"
        )
        return result
    names = list(copies)
    try:
        with _time_limit(timeout):
            grads = torch.autograd.grad(
                out,
                [copies[n] for n in names],
                grad_out.to(device=device, dtype=out.dtype),
                allow_unused=True,
            )
    except CallTimeout as exc:
        result.problem = f"backward timed out: {exc}"
        return result
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        result.problem = f"backward raised {_describe(exc)}"
        return result
    for name, g in zip(names, grads, strict=True):
        if g is None:
            g = torch.zeros_like(copies[name])
        problem = _tensor_problem(g, f"the gradient of {name}", tuple(inputs[name].shape), device)
        if problem:
            result.problem = problem
            return result
        result.grads[name] = g.detach().cpu()
    return result
