"""``python -m hsa_ref.conformance.serve``: a Python implementation as an ``hsa-port/1`` port.

The harness starts this server in a child process for ``--impl``; it can also be run by hand
(``--command "python -m hsa_ref.conformance.serve --impl ..."``). It loads the implementation
(``package.module:function`` or ``path/to/file.py:function``), writes its declaration (the
dtypes of the framework, the capabilities given by the flags), then answers one request a line
on stdin with one reply a line on stdout (:mod:`.protocol`): the output and, when asked, the
gradients, computed by :mod:`.frameworks`. A ``NotImplementedError`` becomes ``unsupported``;
any other exception, ``SystemExit`` included, becomes ``error``. If the implementation cannot
be loaded, or the torch device is not available, the server writes ``{"format": "hsa-port/1",
"error": ..., "usage": ...}`` instead of its declaration and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from ..hierarchy import Hierarchy
from ..validation import ENERGIES
from .frameworks import FRAMEWORKS, BadResult, evaluate, framework_dtypes
from .loading import ImplementationError, UsageError, device_or_usage_error, load_impl
from .protocol import ENCODINGS, PORT_FORMAT, ProtocolError, decode_array, encode_array

__all__ = ["capability_flags", "main", "serve"]


def capability_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that declare what an implementation supports (shared with the harness)."""
    caps = parser.add_argument_group("capabilities (what the implementation supports)")
    caps.add_argument(
        "--energy",
        action="append",
        choices=ENERGIES,
        help="an energy it supports (repeatable; default both)",
    )
    caps.add_argument("--single-tree", action="store_true", help="no forests")
    caps.add_argument("--without-positions", action="store_true", help="no positions=")
    caps.add_argument(
        "--contiguous-leaves",
        action="store_true",
        help="only trees whose every subtree is a contiguous range of rows",
    )
    caps.add_argument(
        "--without-batches", action="store_true", help="only (N, d) inputs, no batch dimensions"
    )
    caps.add_argument("--forward-only", action="store_true", help="no gradients are checked")


def declared_capabilities(args: argparse.Namespace) -> dict[str, Any]:
    """The ``capabilities`` object of a declaration, from :func:`capability_flags`."""
    return {
        "energies": list(dict.fromkeys(args.energy)) if args.energy else list(ENERGIES),
        "forests": not args.single_tree,
        "positions": not args.without_positions,
        "gradients": not args.forward_only,
        "shuffled_leaves": not args.contiguous_leaves,
        "batches": not args.without_batches,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hsa_ref.conformance.serve",
        description="Serve a Python HSA implementation over the hsa-port/1 protocol.",
    )
    p.add_argument("--impl", required=True, metavar="MODULE:FUNCTION")
    p.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    p.add_argument("--device", default="cpu", help="torch device (torch framework only)")
    p.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="json",
        help="how arrays cross (the harness uses base64)",
    )
    p.add_argument("--name", default="", help="the name to declare (default: --impl)")
    capability_flags(p)
    return p


def _reply(out: TextIO, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def serve(
    impl: Any,
    *,
    framework: str,
    declaration: dict[str, Any],
    device: str = "cpu",
    stdin: TextIO,
    stdout: TextIO,
) -> None:
    """Answer requests from ``stdin`` until it closes."""
    encoding = declaration.get("encoding", "json")
    _reply(stdout, declaration)
    for line in stdin:
        if not line.strip():
            continue
        ident: Any = None
        try:
            request = json.loads(line)
            ident = request["id"]
            hierarchy = Hierarchy.from_dict(request["tree"])
            inputs = {name: decode_array(request[name], name) for name in ("q", "k", "v")}
            if request.get("positions") is not None:
                inputs["positions"] = decode_array(request["positions"], "positions")
            grad_out = request.get("grad_out")
            grad = None if grad_out is None else decode_array(grad_out, "grad_out")
            kwargs = {"scale": request.get("scale"), "energy": request.get("energy", "dot")}
            dtype = request["dtype"]
        except (ValueError, KeyError, TypeError, ProtocolError) as exc:
            _reply(stdout, {"id": ident, "error": f"malformed request: {exc!r}"})
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the port's prints are not replies
                values, grads = evaluate(
                    framework,
                    impl,
                    inputs,
                    hierarchy,
                    kwargs,
                    dtype=dtype,
                    grad_out=grad,
                    device=device,
                )
        except NotImplementedError as exc:
            _reply(stdout, {"id": ident, "unsupported": repr(exc)})
            continue
        except BadResult as exc:
            _reply(stdout, {"id": ident, "error": str(exc)})
            continue
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            tail = "".join(traceback.format_exception(exc)[-3:])
            _reply(stdout, {"id": ident, "error": f"raised {exc!r}\n{tail}"[:2000]})
            continue
        reply: dict[str, Any] = {"id": ident, "out": encode_array(values, encoding)}
        for name, g in grads.items():
            reply[f"grad_{name}"] = encode_array(g, encoding)
        _reply(stdout, reply)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # what importing prints is not protocol
            impl = load_impl(args.impl)
        if args.framework == "torch":
            device_or_usage_error(args.device)
    except (UsageError, ImplementationError) as exc:
        usage = isinstance(exc, UsageError)
        _reply(stdout, {"format": PORT_FORMAT, "error": str(exc), "usage": usage})
        return 2
    caps = declared_capabilities(args)
    if args.framework == "numpy":
        caps["gradients"] = False
    declaration = {
        "format": PORT_FORMAT,
        "name": args.name or args.impl,
        "version": "",
        "dtypes": list(framework_dtypes(args.framework)),
        "capabilities": caps,
        "encoding": args.encoding,
    }
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    serve(
        impl,
        framework=args.framework,
        declaration=declaration,
        device=args.device,
        stdin=sys.stdin,
        stdout=stdout,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
