"""bench: benchmarks of HSA against dense attention, with the tooling to plot and fit them.

``python -m bench`` runs the pytest-benchmark sweeps (:mod:`bench.cases`) and ``python -m
bench.plots`` turns their JSON into figures and a summary table under ``results/bench/``. This
package imports no heavy dependencies at import time: the plots need only numpy and matplotlib.
"""
