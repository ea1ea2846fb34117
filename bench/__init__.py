"""bench: benchmarks of HSA against dense attention, with the tooling to plot and fit them.

``python -m bench`` runs the pytest-benchmark sweeps (:mod:`bench.cases`) and ``python -m
bench.plots`` turns their JSON into figures and a summary table under ``results/bench/``. This
package imports no heavy dependencies at import time: the plots need only numpy and matplotlib.

``bench`` is not installed with ``hsa_ref`` and ``hsa_fast``: it runs from a checkout, and the
processes it starts get the checkout on ``PYTHONPATH`` (:func:`checkout_env`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CHECKOUT", "checkout_env"]

CHECKOUT = Path(__file__).resolve().parent.parent


def checkout_env(env: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``env`` (default ``os.environ``) updated with ``extra``, the checkout first on
    ``PYTHONPATH``: a child ``python -m bench...`` imports this ``bench`` from any directory."""
    out = {**(os.environ if env is None else env), **extra}
    rest = out.get("PYTHONPATH")
    out["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), rest] if rest else [str(CHECKOUT)])
    return out
