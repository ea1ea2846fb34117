"""The portable files (docs/HSA.md section 7, ``docs/PORTING.md``): what a port reads and writes.

- ``hsa-case/1``: one case, its inputs, the float64 reference results, the reference evaluated
  in each low-precision dtype and the numbers of the tolerance rule; :class:`GoldenCase` in
  memory (``to_dict``, ``from_dict``), one JSON file per case.
- ``hsa-golden-index/1``: the ``index.json`` of a folder of cases (:func:`write_cases`,
  :func:`load_index`, :func:`load_cases`); the package's own golden set is :data:`GOLDEN_DIR`.
- ``hsa-output/1``: a port's results for one case (:func:`read_output`), which
  ``hsa_ref.conformance --outputs`` judges.

The tree inside a case is ``hsa-tree/1`` (:class:`hsa_ref.Hierarchy`). Making cases is
:mod:`hsa_ref.conformance.golden_set`' business; this module only holds, reads and writes them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..hierarchy import Hierarchy
from ..tolerance import DTYPES, Agreement, Limit, low_precision_dtype

__all__ = [
    "CASE_FORMAT",
    "GOLDEN_DIR",
    "INDEX_FORMAT",
    "OUTPUT_FORMAT",
    "QUANTITIES",
    "SET_VERSION",
    "GoldenCase",
    "digests",
    "dtype_name",
    "load_cases",
    "load_index",
    "quantity_kind",
    "read_output",
    "write_cases",
]

CASE_FORMAT = "hsa-case/1"
INDEX_FORMAT = "hsa-golden-index/1"
OUTPUT_FORMAT = "hsa-output/1"
SET_VERSION = 4
"""The version of the golden set: raised by any change to it that a port must notice."""
GOLDEN_DIR = Path(__file__).resolve().parent / "golden_set" / "files"
QUANTITIES = ("out", "grad_q", "grad_k", "grad_v", "grad_positions")


def dtype_name(dtype: torch.dtype) -> str:
    """The name of ``dtype`` in the files (``"float32"``, ...: the keys of :data:`DTYPES`)."""
    return str(dtype).removeprefix("torch.")


def quantity_kind(quantity: str) -> str:
    """``"output"`` for ``out``, ``"gradient"`` for ``grad_*`` (selects the rule's factor)."""
    return "output" if quantity == "out" else "gradient"


@dataclass(frozen=True)
class GoldenCase:
    """One ``hsa-case/1`` case: inputs, reference results and the numbers of the rule.

    Tensors are float64 and 2-D (``(N, d)``); ``positions`` is ``(N + M, d_p)`` or ``None``.
    ``scale`` is the value used; ``scale_is_default`` says implementations are called with
    ``scale=None``. ``expected`` holds the float64 reference of every quantity (``out`` and
    the gradients ``grad_q, grad_k, grad_v[, grad_positions]`` of ``sum(grad_out * out)``);
    ``references[t]`` the same quantities evaluated in dtype ``t`` (float32, bfloat16,
    float16); ``tolerance["limits"][t][quantity]`` the rule's numbers for a result in ``t``.
    """

    name: str
    description: str
    hierarchy: Hierarchy
    energy: str
    scale: float
    scale_is_default: bool
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor | None
    grad_out: torch.Tensor
    expected: dict[str, torch.Tensor]
    references: dict[str, dict[str, torch.Tensor]]
    tolerance: dict[str, Any]
    structure: dict[str, Any] | None = None

    @property
    def out(self) -> torch.Tensor:
        """The float64 reference output ``ref64``."""
        return self.expected["out"]

    @property
    def quantities(self) -> list[str]:
        """``out`` and the gradients this case carries, in :data:`QUANTITIES` order."""
        return [name for name in QUANTITIES if name in self.expected]

    def inputs(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
        """``q, k, v`` in ``dtype`` (exact in every dtype of :data:`DTYPES`)."""
        return self.q.to(dtype), self.k.to(dtype), self.v.to(dtype)

    def call_kwargs(self, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
        """Keyword arguments of docs/HSA.md section 8: ``scale``, ``energy`` and maybe
        ``positions``."""
        kw: dict[str, Any] = {
            "scale": None if self.scale_is_default else self.scale,
            "energy": self.energy,
        }
        if self.positions is not None:
            kw["positions"] = self.positions.to(dtype)
        return kw

    def reference_t(self, dtype: torch.dtype, quantity: str = "out") -> torch.Tensor:
        """``ref_t`` (``x_t`` of docs/TOLERANCE.md): the reference evaluated in
        ``low_precision_dtype(t)``."""
        return self.references[dtype_name(low_precision_dtype(dtype))][quantity]

    def limit(self, dtype: torch.dtype, quantity: str = "out") -> Limit:
        """The stored rule for ``quantity`` computed in ``dtype``: the limit of every entry
        and whether the quantity is checkable in ``dtype``."""
        record = self.tolerance["limits"][dtype_name(dtype)][quantity]
        expected = self.expected[quantity]
        rows = [[math.inf if x is None else x for x in row] for row in record["limit"]]
        limit = torch.tensor(rows, dtype=torch.float64).reshape(expected.shape)
        reason = "" if record["checkable"] else record["reason"]
        return Limit(expected, limit, reason, quantity_kind(quantity))

    def judge(self, result: torch.Tensor, dtype: torch.dtype, quantity: str = "out") -> Agreement:
        """The rule for an implementation's ``quantity`` computed from inputs in ``dtype``."""
        return self.limit(dtype, quantity).judge(result)

    def to_dict(self) -> dict[str, Any]:
        """The ``hsa-case/1`` object (JSON-ready; :meth:`from_dict` reads it back)."""
        obj: dict[str, Any] = {
            "format": CASE_FORMAT,
            "name": self.name,
            "description": self.description,
            "tree": self.hierarchy.to_dict(),
            "energy": self.energy,
            "scale": self.scale,
            "scale_is_default": self.scale_is_default,
            "q": self.q.tolist(),
            "k": self.k.tolist(),
            "v": self.v.tolist(),
        }
        if self.positions is not None:
            obj["positions"] = self.positions.tolist()
        obj["grad_out"] = self.grad_out.tolist()
        for quantity in self.quantities:
            obj[quantity] = self.expected[quantity].tolist()
        obj["references"] = {
            dtype: {quantity: t.tolist() for quantity, t in by_quantity.items()}
            for dtype, by_quantity in self.references.items()
        }
        if self.structure is not None:
            obj["structure"] = self.structure
        obj["tolerance"] = self.tolerance
        return obj

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> GoldenCase:
        """Parse an ``hsa-case/1`` object; ``ValueError`` naming what is missing or malformed."""
        if not isinstance(obj, dict) or obj.get("format") != CASE_FORMAT:
            raise ValueError(f"not an {CASE_FORMAT} object")
        required = {
            "name",
            "tree",
            "energy",
            "scale",
            "q",
            "k",
            "v",
            "grad_out",
            "out",
            "grad_q",
            "grad_k",
            "grad_v",
            "references",
            "tolerance",
        }
        missing = required - obj.keys()
        if missing:
            raise ValueError(f"{CASE_FORMAT} object lacks {sorted(missing)}")
        h = Hierarchy.from_dict(obj["tree"])

        def matrix(value: Any, key: str, rows: int | None) -> torch.Tensor:
            t = torch.tensor(value, dtype=torch.float64)
            if t.dim() != 2 or (rows is not None and t.shape[0] != rows):
                raise ValueError(f"case {obj['name']!r}: {key!r} must be a {rows} x d matrix")
            return t

        n, pos = h.num_leaves, obj.get("positions")
        rows = {"grad_positions": h.num_nodes}
        expected = {
            quantity: matrix(obj[quantity], quantity, rows.get(quantity, n))
            for quantity in QUANTITIES
            if quantity in obj
        }
        references = {
            dtype: {
                quantity: matrix(value, f"references.{dtype}.{quantity}", rows.get(quantity, n))
                for quantity, value in by_quantity.items()
            }
            for dtype, by_quantity in obj["references"].items()
        }
        return cls(
            name=obj["name"],
            description=obj.get("description", ""),
            hierarchy=h,
            energy=obj["energy"],
            scale=float(obj["scale"]),
            scale_is_default=bool(obj.get("scale_is_default", False)),
            q=matrix(obj["q"], "q", n),
            k=matrix(obj["k"], "k", n),
            v=matrix(obj["v"], "v", n),
            positions=None if pos is None else matrix(pos, "positions", h.num_nodes),
            grad_out=matrix(obj["grad_out"], "grad_out", n),
            expected=expected,
            references=references,
            tolerance=obj["tolerance"],
            structure=obj.get("structure"),
        )


# ---------------------------------------------------------------------------- folders of cases
def _is_matrix(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and isinstance(x[0], list)


def _holds_matrix(x: Any) -> bool:
    return _is_matrix(x) or (isinstance(x, dict) and any(map(_holds_matrix, x.values())))


def _dump(obj: dict[str, Any]) -> str:
    """JSON with one matrix row per line; floats are written with ``repr`` (round-trip)."""

    def text(x: Any, indent: str) -> str:
        inner = indent + "  "
        if _is_matrix(x):
            rows = ",\n".join(inner + json.dumps(row, allow_nan=False) for row in x)
            return "[\n" + rows + "\n" + indent + "]"
        if isinstance(x, dict) and _holds_matrix(x):
            items = ",\n".join(f"{inner}{json.dumps(k)}: {text(y, inner)}" for k, y in x.items())
            return "{\n" + items + "\n" + indent + "}"
        if isinstance(x, dict) and any(isinstance(y, dict) for y in x.values()):
            return json.dumps(x, indent=2, allow_nan=False).replace("\n", "\n" + indent)
        return json.dumps(x, allow_nan=False)

    return text(obj, "") + "\n"


def write_cases(
    cases: Sequence[GoldenCase], directory: Path | str, *, replace: bool = False
) -> list[Path]:
    """Write ``<name>.json`` per case and ``index.json`` into ``directory``.

    The folder must be new or empty: nothing is ever overwritten or deleted
    (:class:`FileExistsError` otherwise). ``replace`` is for regenerating a golden set in
    place: files are overwritten and case files the new index no longer lists are removed.
    """
    directory = Path(directory)
    if not replace and directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty: cases are written into a new folder")
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / "index.json"
    if replace and index_path.exists():
        for old in json.loads(index_path.read_text())["cases"]:
            if old not in {c.name for c in cases}:
                (directory / f"{old}.json").unlink(missing_ok=True)
    paths = []
    for case in cases:
        path = directory / f"{case.name}.json"
        path.write_text(_dump(case.to_dict()))
        paths.append(path)
    index = {
        "format": INDEX_FORMAT,
        "set_version": SET_VERSION,
        "generator": "python -m hsa_ref.conformance.golden_set --write",
        "cases": [c.name for c in cases],
    }
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return paths


def digests(directory: Path | str) -> dict[str, str]:
    """The SHA-256 of every JSON file of a golden folder, by file name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).glob("*.json"))
    }


def _check_shipped(directory: Path) -> None:
    """The package's own golden set must be the one it shipped (a port, or anything else,
    may have rewritten the files since): ``ValueError`` naming the first file that differs."""
    from .golden_set.shipped import SHA256

    if directory.resolve() != GOLDEN_DIR.resolve():
        return
    found = digests(directory)
    for name, digest in SHA256.items():
        if found.get(name) != digest:
            raise ValueError(
                f"the golden set in {directory} is not the one this version of hsa-suite "
                f"ships ({name} differs or is missing): reinstall the package"
            )
    extra = sorted(found.keys() - SHA256.keys())
    if extra:
        raise ValueError(f"the golden set in {directory} has files it did not ship: {extra}")


def load_index(directory: Path | str = GOLDEN_DIR) -> dict[str, Any]:
    """The parsed ``index.json`` of a golden directory (``ValueError`` if absent or malformed)."""
    path = Path(directory) / "index.json"
    if not path.is_file():
        raise ValueError(f"no golden index at {path}")
    index = json.loads(path.read_text())
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path} has format {index.get('format')!r}; expected {INDEX_FORMAT!r}")
    return index


def load_cases(
    directory: Path | str = GOLDEN_DIR, names: Sequence[str] | None = None
) -> list[GoldenCase]:
    """The golden cases stored in ``directory``, in index order (or just those named);
    ``ValueError`` when a file is missing, malformed, or (for the package's own set) not the
    one it shipped."""
    directory = Path(directory)
    _check_shipped(directory)
    wanted = load_index(directory)["cases"] if names is None else list(names)
    cases = []
    for name in wanted:
        path = directory / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"golden case file {path} is missing")
        cases.append(GoldenCase.from_dict(json.loads(path.read_text())))
    return cases


# ---------------------------------------------------------------------------- a port's outputs
def _finite_number(text: str) -> float:
    return float(text)


def read_output(path: Path, case: GoldenCase) -> tuple[dict[str, torch.Tensor], torch.dtype]:
    """A port's ``hsa-output/1`` file for ``case``: ``out`` and each gradient the file holds, as
    float64 tensors of the case's shapes (``null`` and non-finite numbers read as NaN or inf),
    and the dtype they were computed in.

    ``ValueError`` naming the file and what is wrong: unreadable JSON, another format, case or
    dtype, no ``out``, a wrong shape, entries that are not numbers.
    """
    try:
        raw = path.read_text()
        obj = json.loads(raw, parse_int=_finite_number, parse_constant=_finite_number)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path.name}: not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != OUTPUT_FORMAT:
        raise ValueError(f"{path.name}: format must be {OUTPUT_FORMAT!r}")
    if obj.get("case") != case.name:
        raise ValueError(f"{path.name}: 'case' is {obj.get('case')!r}, expected {case.name!r}")
    if obj.get("dtype") not in DTYPES:
        raise ValueError(f"{path.name}: 'dtype' must be one of {sorted(DTYPES)}")
    results = {}
    for quantity in case.quantities:
        if quantity not in obj:
            if quantity == "out":
                raise ValueError(f"{path.name}: lacks 'out'")
            continue
        rows = obj[quantity]
        n, d = case.expected[quantity].shape
        if (
            not isinstance(rows, list)
            or len(rows) != n
            or not all(isinstance(r, list) and len(r) == d for r in rows)
        ):
            raise ValueError(f"{path.name}: {quantity!r} must be a list of {n} rows of {d} numbers")
        values = [[math.nan if x is None else x for x in r] for r in rows]
        if not all(isinstance(x, float) for r in values for x in r):
            raise ValueError(f"{path.name}: {quantity!r} holds something other than numbers")
        results[quantity] = torch.tensor(values, dtype=torch.float64)
    return results, DTYPES[obj["dtype"]]
