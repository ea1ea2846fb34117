"""Pytest and Hypothesis configuration, in one place.

Hypothesis profiles: ``ci`` (derandomised, used when ``CI`` is set), ``dev`` (the default) and
``thorough`` (many examples). Pick one with ``HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=30, derandomize=True, **_common)
settings.register_profile("dev", max_examples=20, **_common)
settings.register_profile("thorough", max_examples=500, **_common)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

# Without a GPU, the Triton kernels run on CPU tensors under Triton's interpreter (test_triton.py).
# Triton reads this when the kernels are defined, which hsa_fast defers until their first use.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Many tiny torch operations: one thread avoids stalls when cores are shared
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
