"""HSA's invariants, stated once: the conformance suite's properties, held against the project's
own implementations (the float64 reference and hsa_fast in every dtype, outputs and gradients).

The examples per property follow the Hypothesis profile (``dev`` 20, ``ci`` 30, ``thorough``
500; tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

from hsa_fast import hsa
from hsa_ref import hsa_reference
from hsa_ref.conformance import PROPERTIES, InProcessTarget, check_property
from hsa_ref.tolerance import DTYPES

EXAMPLES = settings.default.max_examples
TARGETS = {"reference-float64": (hsa_reference, torch.float64)} | {
    f"hsa_fast-{name}": (hsa, dtype) for name, dtype in DTYPES.items()
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("prop", list(PROPERTIES))
@pytest.mark.parametrize("name", list(TARGETS))
def test_invariant(name, prop):
    impl, dtype = TARGETS[name]
    target = InProcessTarget(impl, dtype)
    outcome = check_property(target, PROPERTIES[prop], examples=EXAMPLES, seed=7)
    assert outcome.status == "passed", outcome.line()
