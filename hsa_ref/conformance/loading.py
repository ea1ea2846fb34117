"""Finding the implementation that ``--impl`` names, and the errors of doing so."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImplementationError",
    "UsageError",
    "check_impl_spec",
    "device_or_usage_error",
    "load_impl",
]


class UsageError(Exception):
    """Bad arguments: a malformed ``--impl``, a folder that does not exist, nothing to check."""


class ImplementationError(Exception):
    """The implementation could not even be loaded (it raised, or exited, on import)."""


def _split(spec: str) -> tuple[str, list[str]]:
    """``(module or file, attribute path)`` of ``module:attr`` or ``path/file.py:attr``."""
    where, sep, attr_path = spec.rpartition(":")
    parts = attr_path.split(".")
    is_file = where.endswith(".py")
    ok_module = is_file or all(p.isidentifier() for p in where.split("."))
    if not sep or not where or not ok_module or not all(p.isidentifier() for p in parts):
        raise UsageError(
            f"--impl must look like package.module:function or path/to/file.py:function, "
            f"got {spec!r}"
        )
    return where, parts


def check_impl_spec(spec: str) -> None:
    """:class:`UsageError` unless ``spec`` is well formed and names a module that exists (or
    a file), without importing it."""
    where, _ = _split(spec)
    if where.endswith(".py"):
        if not Path(where).is_file():
            raise UsageError(f"--impl names the file {where}, which does not exist")
        return
    top = where.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise UsageError(f"cannot import {where!r}: no module named {top!r}")


def load_impl(spec: str) -> Callable[..., Any]:
    """The callable named by ``"package.module:function"``, ``"module:Class.attribute"`` or
    ``"path/to/file.py:function"`` (the file's folder joins ``sys.path``, so its own imports
    work).

    Raises :class:`UsageError` for a malformed string, a missing module, file or attribute,
    or something that is not callable, and :class:`ImplementationError` when the module raises
    (or calls ``sys.exit``) while it is imported.
    """
    where, parts = _split(spec)
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.is_file():
                raise UsageError(f"--impl names the file {where}, which does not exist")
            sys.path.insert(0, str(path.parent))
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None:
                raise UsageError(f"--impl names {where}, which Python cannot load")
            obj: Any = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = obj
            module_spec.loader.exec_module(obj)
        else:
            obj = importlib.import_module(where)
    except UsageError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name is not None and where.startswith(exc.name):
            raise UsageError(f"cannot import {where!r}: {exc}") from exc
        raise ImplementationError(f"importing {where!r} raised {exc!r}") from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise ImplementationError(f"importing {where!r} raised {exc!r}") from None
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{where!r} has no attribute {'.'.join(parts)!r}") from None
    if not callable(obj):
        raise UsageError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj


def device_or_usage_error(name: str) -> torch.device:
    """The torch device named ``name`` when it is available, or :class:`UsageError`."""
    import torch

    try:
        dev = torch.device(name)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise UsageError(f"device {name!r} is not available: {exc}") from None
    return dev
