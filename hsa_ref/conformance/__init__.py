"""Conformance harness: does an HSA implementation agree with the float64 reference?

Two modes (``docs/PORTING.md`` has the formats, the tolerance rule and the report)::

    python -m hsa_ref.conformance --impl package.module:function [--dtype bfloat16]
    python -m hsa_ref.conformance --outputs DIR

``--impl`` calls a Python callable with SPEC section 8's signature
``hsa(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None)`` on every golden case
and on a Hypothesis property suite, and judges its outputs and its gradients (``dq, dk, dv``,
``d positions``) under SPEC section 6's rule. ``--outputs`` checks a folder of ``hsa-output/1``
files that a port in another language wrote for the golden inputs.

A port declares what it supports (``--energy``, ``--single-tree``, ``--without-positions``,
``--contiguous-leaves``, ``--forward-only``); inputs outside that set are not run, and a
``NotImplementedError`` raised by the port counts as *unsupported*, never as failed.

Modules: ``target`` (capabilities, loading and calling the implementation), ``golden`` (golden
cases and output files), ``properties`` (the invariants, ``PROPERTIES``), ``outcome`` (verdicts
and the report), ``runner`` (one run), ``cli`` (the command line).

Exit status: 0 every check that ran passed, 1 a check failed (or the implementation ended the
process, or hung), 2 a usage error (bad arguments, import failure of the harness' own inputs, a
run in which nothing was checked).
"""

from .cli import main
from .formats import OUTPUT_FORMAT
from .golden import check_case, check_golden, check_output_dir
from .loading import ImplementationError, UsageError, load_impl
from .outcome import (
    FAILED,
    PASSED,
    REPORT_FORMAT,
    UNCHECKABLE,
    UNSUPPORTED,
    Outcome,
    Progress,
    Report,
)
from .properties import (
    DEFAULT_EXAMPLES,
    PROPERTIES,
    Property,
    PropertyViolation,
    check_properties,
    check_property,
)
from .protocol import PORT_FORMAT
from .runner import open_target, run, save_failures, select_cases
from .target import (
    FULL,
    Capabilities,
    InProcessTarget,
    PortTarget,
    Target,
    device_or_usage_error,
    dtype_or_usage_error,
    leaves_contiguous,
    python_port_command,
)

__all__ = [
    "DEFAULT_EXAMPLES",
    "FAILED",
    "FULL",
    "OUTPUT_FORMAT",
    "PASSED",
    "PORT_FORMAT",
    "PROPERTIES",
    "REPORT_FORMAT",
    "UNCHECKABLE",
    "UNSUPPORTED",
    "Capabilities",
    "ImplementationError",
    "InProcessTarget",
    "Outcome",
    "PortTarget",
    "Progress",
    "Property",
    "PropertyViolation",
    "Report",
    "Target",
    "UsageError",
    "check_case",
    "check_golden",
    "check_output_dir",
    "check_properties",
    "check_property",
    "device_or_usage_error",
    "dtype_or_usage_error",
    "leaves_contiguous",
    "load_impl",
    "main",
    "open_target",
    "python_port_command",
    "run",
    "save_failures",
    "select_cases",
]
