"""The ``hsa-port/1`` messages between the harness and a port (docs/PORTING.md, "The port
protocol"): one JSON object per line, the port's declaration first, then a request and its
reply at a time.

This module only builds and reads messages; :mod:`hsa_ref.conformance.process` runs the port.

- An **array** is ``{"shape": [...], "data": [numbers, row-major]}`` or, when the port
  declared ``"encoding": "base64"``, ``{"shape": [...], "base64": "..."}``: the float64 values
  as little-endian IEEE 754 bytes. Every value the harness sends is exactly representable in
  the request's dtype; a port may write ``null`` (or the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"``) for a non-finite number it computed.
- The **declaration**: ``{"format": "hsa-port/1", "name", "version", "dtypes": [...],
  "capabilities": {"energies": [...], "forests", "positions", "gradients",
  "shuffled_leaves", "batches"}, "encoding": "json" | "base64"}``.
- A **request**: ``{"id", "tree": hsa-tree/1, "energy", "scale": number | null (the
  default, 1/sqrt(d_k)), "dtype", "q", "k", "v", "positions": array | null, "grad_out":
  array | null}``.
- A **reply**: ``{"id", "out", "grad_q", "grad_k", "grad_v"[, "grad_positions"]}`` (the
  gradients of ``sum(grad_out * out)``, when ``grad_out`` was sent), or ``{"id",
  "unsupported": reason}``, or ``{"id", "error": message}``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..hierarchy import Hierarchy
from ..tolerance import DTYPES
from ..validation import ENERGIES

__all__ = [
    "ENCODINGS",
    "PORT_FORMAT",
    "Declaration",
    "ProtocolError",
    "Reply",
    "StartError",
    "decode_array",
    "encode_array",
    "parse_declaration",
    "parse_reply",
    "request",
]

PORT_FORMAT = "hsa-port/1"
ENCODINGS = ("json", "base64")
CAPABILITY_KEYS = ("forests", "positions", "gradients", "shuffled_leaves", "batches")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class ProtocolError(ValueError):
    """A message that does not follow ``hsa-port/1``; the text says what is wrong."""


class StartError(Exception):
    """A port that says, instead of declaring itself, why it cannot start
    (``{"format": "hsa-port/1", "error": ..., "usage": true | false}``)."""

    def __init__(self, message: str, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


def encode_array(x: torch.Tensor | np.ndarray, encoding: str = "json") -> dict[str, Any]:
    """``x`` as an ``hsa-port/1`` array (float64 values, row-major)."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.ascontiguousarray(a, dtype="<f8")
    if encoding == "base64":
        return {"shape": list(a.shape), "base64": base64.b64encode(a.tobytes()).decode("ascii")}
    return {"shape": list(a.shape), "data": a.reshape(-1).tolist()}


def _number(x: Any) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str) and x in _NON_FINITE:
        return _NON_FINITE[x]
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ProtocolError(f"an array holds {x!r}, not a number")
    return float(x)


def decode_array(obj: Any, what: str) -> np.ndarray:
    """An ``hsa-port/1`` array as a float64 NumPy array; :class:`ProtocolError` naming
    ``what`` when it is malformed."""
    if not isinstance(obj, dict) or not isinstance(obj.get("shape"), list):
        raise ProtocolError(f"{what} must be an array object with a 'shape' list")
    shape = obj["shape"]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ProtocolError(f"{what}: 'shape' must be a list of non-negative integers")
    size = math.prod(shape)
    if "base64" in obj:
        try:
            raw = base64.b64decode(obj["base64"], validate=True)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"{what}: 'base64' is not base64 ({exc})") from None
        if len(raw) != 8 * size:
            raise ProtocolError(f"{what}: {len(raw)} bytes for {size} float64 values")
        return np.frombuffer(raw, dtype="<f8").astype(np.float64).reshape(shape)
    data = obj.get("data")
    if not isinstance(data, list) or len(data) != size:
        raise ProtocolError(f"{what}: 'data' must be a list of {size} numbers (shape {shape})")
    try:
        values = np.array([_number(x) for x in data], dtype=np.float64)
    except ProtocolError as exc:
        raise ProtocolError(f"{what}: {exc}") from None
    return values.reshape(shape)


@dataclass(frozen=True)
class Declaration:
    """What a port says of itself in its first line."""

    name: str
    version: str
    dtypes: tuple[str, ...]
    energies: tuple[str, ...] = ENERGIES
    forests: bool = True
    positions: bool = True
    gradients: bool = True
    shuffled_leaves: bool = True
    batches: bool = True
    encoding: str = "json"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_declaration(line: str) -> Declaration:
    """The port's first line; :class:`ProtocolError` saying what is wrong with it."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"the first line is not JSON ({exc}): {line[:200]!r}") from None
    if not isinstance(obj, dict) or obj.get("format") != PORT_FORMAT:
        raise ProtocolError(f'the first line must be {{"format": "{PORT_FORMAT}", ...}}')
    if "error" in obj:
        raise StartError(str(obj["error"]), bool(obj.get("usage", False)))
    dtypes = obj.get("dtypes")
    if not isinstance(dtypes, list) or not dtypes or not set(dtypes) <= set(DTYPES):
        raise ProtocolError(f"'dtypes' must be a non-empty list of {sorted(DTYPES)}")
    caps = obj.get("capabilities", {})
    if not isinstance(caps, dict):
        raise ProtocolError("'capabilities' must be an object")
    unknown = set(caps) - {"energies", *CAPABILITY_KEYS}
    if unknown:
        raise ProtocolError(f"unknown capabilities {sorted(unknown)}")
    energies = caps.get("energies", list(ENERGIES))
    if not isinstance(energies, list) or not energies or not set(energies) <= set(ENERGIES):
        raise ProtocolError(f"'capabilities.energies' must be a non-empty list of {ENERGIES}")
    flags = {}
    for key in CAPABILITY_KEYS:
        value = caps.get(key, True)
        if not isinstance(value, bool):
            raise ProtocolError(f"'capabilities.{key}' must be true or false")
        flags[key] = value
    encoding = obj.get("encoding", "json")
    if encoding not in ENCODINGS:
        raise ProtocolError(f"'encoding' must be one of {ENCODINGS}")
    return Declaration(
        name=str(obj.get("name", "")),
        version=str(obj.get("version", "")),
        dtypes=tuple(dict.fromkeys(dtypes)),
        energies=tuple(dict.fromkeys(energies)),
        encoding=encoding,
        raw=obj,
        **flags,
    )


def request(
    ident: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    kwargs: dict[str, Any],
    *,
    dtype: str,
    grad_out: torch.Tensor | None = None,
    encoding: str = "json",
) -> str:
    """One request line (without the newline)."""
    positions = kwargs.get("positions")
    obj = {
        "id": ident,
        "tree": hierarchy.to_dict(),
        "energy": kwargs.get("energy", "dot"),
        "scale": kwargs.get("scale"),
        "dtype": dtype,
        "q": encode_array(q, encoding),
        "k": encode_array(k, encoding),
        "v": encode_array(v, encoding),
        "positions": None if positions is None else encode_array(positions, encoding),
        "grad_out": None if grad_out is None else encode_array(grad_out, encoding),
    }
    return json.dumps(obj, allow_nan=False)


@dataclass
class Reply:
    """A port's answer: ``out`` and ``grads`` (float64 NumPy arrays, gradients named ``q``,
    ``k``, ``v``, ``positions``), or ``unsupported``, or ``error``."""

    out: np.ndarray | None = None
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    unsupported: str = ""
    error: str = ""


def parse_reply(line: str, ident: int) -> Reply:
    """One reply line for the request ``ident``; :class:`ProtocolError` when malformed."""
    try:
        obj = json.loads(line, parse_constant=lambda c: _NON_FINITE[c])
    except (json.JSONDecodeError, RecursionError, KeyError) as exc:
        raise ProtocolError(f"a reply that is not JSON: {line[:200]!r} ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a reply that is not a JSON object: {line[:200]!r}")
    if obj.get("id") != ident:
        raise ProtocolError(f"a reply with id {obj.get('id')!r} to request {ident}")
    if "unsupported" in obj:
        return Reply(unsupported=str(obj["unsupported"]) or "unsupported")
    if "error" in obj:
        return Reply(error=str(obj["error"]) or "error")
    if "out" not in obj:
        raise ProtocolError("a reply without 'out', 'unsupported' or 'error'")
    reply = Reply(out=decode_array(obj["out"], "out"))
    for name in ("q", "k", "v", "positions"):
        key = f"grad_{name}"
        if obj.get(key) is not None:
            reply.grads[name] = decode_array(obj[key], key)
    return reply
