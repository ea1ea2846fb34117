"""Golden cases: fixed HSA inputs with float64 reference outputs, for ports in any language.

Each case is one ``hsa-case/1`` JSON file (docs/PORTING.md) in
``hsa_ref/conformance/golden_set/files/``, listed in its ``index.json``. Inputs are float64
numbers that are exactly representable in float32, bfloat16 and float16, so a port in any of
those dtypes reads exactly the inputs the reference saw. Every file stores

- ``out`` and ``grad_q``, ``grad_k``, ``grad_v`` (``grad_positions``): the float64 reference
  output and its autograd gradients of ``sum(grad_out * out)`` for the stored ``grad_out``,
- ``references``: the same quantities evaluated in float32, bfloat16 and float16 (``ref_t``),
- ``tolerance``: the numbers of docs/TOLERANCE.md's rule per dtype and quantity, so a port can
  apply it without Python.

Regenerate the set with ``python -m hsa_ref.conformance.golden_set --write`` and check that
the stored files still match a fresh generation with
``python -m hsa_ref.conformance.golden_set --check``. The format is described in
``docs/PORTING.md``.

Modules, each importing only those above it: :mod:`hsa_ref.conformance.formats` (the files and
:class:`GoldenCase`), ``specs`` (the table: :func:`case_specs`), ``build`` (:func:`make_case`,
:func:`generate`), ``drift`` (:func:`drift`), ``cli`` (:func:`main`).
"""

from ..formats import (
    CASE_FORMAT,
    GOLDEN_DIR,
    INDEX_FORMAT,
    QUANTITIES,
    SET_VERSION,
    GoldenCase,
    load_cases,
    load_index,
    quantity_kind,
    write_cases,
)
from .build import (
    RULE_TEXT,
    STRUCTURE_MAX_LEAVES,
    build_case,
    generate,
    half_exact,
    make_case,
    structure_record,
    tolerance_record,
)
from .cli import main
from .drift import drift
from .specs import HUGE_SCORE, CaseSpec, case_specs, random_tree

__all__ = [
    "CASE_FORMAT",
    "GOLDEN_DIR",
    "HUGE_SCORE",
    "INDEX_FORMAT",
    "QUANTITIES",
    "RULE_TEXT",
    "SET_VERSION",
    "STRUCTURE_MAX_LEAVES",
    "CaseSpec",
    "GoldenCase",
    "build_case",
    "case_specs",
    "drift",
    "generate",
    "half_exact",
    "load_cases",
    "load_index",
    "main",
    "make_case",
    "quantity_kind",
    "random_tree",
    "structure_record",
    "tolerance_record",
    "write_cases",
]
