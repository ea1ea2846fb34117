"""Conformance harness: does an HSA implementation agree with the float64 reference?

Three ways to name what is checked (``docs/PORTING.md`` has the formats, the port protocol and
the report; ``docs/TOLERANCE.md`` the rule)::

    python -m hsa_ref.conformance --impl package.module:function [--dtype bfloat16]
    python -m hsa_ref.conformance --command "CMD ARGS"
    python -m hsa_ref.conformance --outputs DIR

``--impl`` serves a Python callable with the signature of docs/HSA.md section 8,
``hsa(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None)``, in a child process
(``--framework torch``, ``jax`` or ``numpy``); ``--command`` starts a port in any language that
speaks ``hsa-port/1``. Both are run on every golden case and on a Hypothesis property suite, and
their outputs and gradients (``dq, dk, dv``, ``d positions``) are judged under the rule of
``docs/TOLERANCE.md``. ``--outputs`` checks a folder of ``hsa-output/1`` files that a port
wrote for the golden inputs.

A port declares what it supports (``--energy``, ``--single-tree``, ``--without-positions``,
``--contiguous-leaves``, ``--without-batches``, ``--forward-only``); inputs outside that set
are not run, and a refusal (``NotImplementedError``, or ``unsupported`` in the protocol) of an
input inside it fails that check.

Modules: ``formats`` (the portable files), ``golden_set`` (the golden cases), ``loading``
(finding ``--impl``), ``protocol``, ``process``, ``serve`` and ``frameworks`` (a port in its
own process), ``calling`` (a callable in this process), ``target`` (capabilities and the
implementation under test), ``golden`` (golden cases and output files), ``strategies`` and
``properties`` (the invariants, ``PROPERTIES``), ``diagnostics`` (reading a wrong attention
matrix), ``outcome`` (verdicts and the report), ``runner`` (one run), ``cli`` (the command
line), ``pytest_plugin`` (``pytest --hsa-impl``).

Exit status: 0 every check that ran passed, 1 a check failed (or the implementation could not be
loaded, ended its process or hung), 2 a usage error (bad arguments, a folder or module that does
not exist, a run in which nothing was checked).
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
    python_port_environment,
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
    "python_port_environment",
    "run",
    "save_failures",
    "select_cases",
]
