"""The benchmark sweeps (pytest-benchmark). Run through ``python -m bench`` or ``nox -s bench``.

Each case times one forward call on ``(1, heads, N, d)`` inputs and stores in ``extra_info`` the
sizes (``N``, ``M``, ``b``, ``d``, ``heads``), dtype, device and work counts of
:mod:`bench.shapes`, and the process CPU time of the timed round with the least of it
(``cpu_s``, the sum of ``cpu_user_s`` and ``cpu_sys_s``). Timed rounds follow warm-up calls
that last until a call no longer grows the heap (``warmup_calls``). Each case also stores the
exact counts the cost model (:mod:`bench.cost_model`) is fitted on: the operators the call
dispatches (``ops``, ``views``, ``elements_written``; :mod:`bench.counts`), counted in the first
warm-up call, or in the one timed call of a single-shot case, where the count costs microseconds
against minutes; for the tree implementations ``children`` (``sum_f b_f``) and the per-tree sums
of :func:`bench.shapes.tree_sums` (``num_trees``, ``tree_leaves_sq``,
``tree_children_leaves_sq``, ``tree_families_leaves_sq``, ``trees_nodes``); for ``hsa_fast`` the
layout's schedule (``buckets``, ``depths``, ``slots``, ``block_entries``). The layout of
``hsa_fast`` is compiled (and cached) before timing; its one-off cost is recorded as
``compile_s``. Assertions here are on exact work counts only.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from bench.cases import PROFILES, Case, cases
from bench.counts import DispatchCount, count_dispatch, schedule_counts
from bench.shapes import build, dense_work, programme_work, tree_sums

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        profile = metafunc.config.getoption("--profile", "default")
        device = metafunc.config.getoption("--device", "cpu")
        all_cases = cases(profile, device)
        metafunc.parametrize("case", all_cases, ids=[c.id for c in all_cases])


def _inputs(case: Case, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(case.n * 7 + case.d)
    shape = (1, case.heads, case.n, case.d)
    dtype = DTYPES[case.dtype]
    return tuple(torch.randn(shape, generator=g, dtype=dtype).to(device) for _ in range(3))


def _sync(device: str) -> Callable[[], None]:
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


STEADY_PAGES = 256
"""Warm-up ends with a call that faults in fewer new memory pages than this (1 MiB of 4 KiB)."""

MAX_WARMUP = 5


def _warm_up(fn: Callable[[], Any]) -> tuple[float, int, DispatchCount]:
    """Call ``fn`` until the allocator is in its steady state: until a call faults in fewer than
    :data:`STEADY_PAGES` new pages, :data:`MAX_WARMUP` calls at most (the heap of a large call
    can take a few calls to stop growing, and a call that grows it pays for page faults).

    Returns the duration (s) of the last call, the number of calls and the operators dispatched
    by the first one (:func:`bench.counts.count_dispatch`).
    """
    calls = 0
    count: DispatchCount | None = None
    while True:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        if count is None:
            count = count_dispatch(fn)
        else:
            fn()
        seconds = time.perf_counter() - start
        calls += 1
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        if faults < STEADY_PAGES or calls >= MAX_WARMUP:
            return seconds, calls, count


def _time_case(
    benchmark: Any, fn: Callable[[], Any], case: Case, budget_s: float, cap: int
) -> tuple[list[tuple[float, float]], DispatchCount, int]:
    """Warm up (unless ``single_shot``; :func:`_warm_up`), then time enough rounds to fill
    ``budget_s``.

    Returns the process CPU time ``(user, system)`` in seconds of every timed round (unlike wall
    time it does not count waiting for a core, and the system part shows page-fault cost), the
    operators one call dispatches, counted in the first warm-up call (in the timed call when there
    is none), and the number of warm-up calls.
    """
    usage: list[tuple[float, float]] = []
    counted: list[DispatchCount] = []

    def timed() -> Any:
        before = resource.getrusage(resource.RUSAGE_SELF)
        out = fn()
        after = resource.getrusage(resource.RUSAGE_SELF)
        usage.append((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime))
        return out

    if case.single_shot:
        benchmark.pedantic(
            lambda: counted.append(count_dispatch(timed)), rounds=1, iterations=1, warmup_rounds=0
        )
        return usage, counted[0], 0
    last, warmups, count = _warm_up(fn)
    # At least three rounds for calls shorter than the budget: a single short round is noise.
    floor = 3 if last < budget_s else 1
    rounds = min(cap, max(floor, int(budget_s / max(last, 1e-6))))
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    return usage, count, warmups


def test_sweep(benchmark: Any, case: Case, request: pytest.FixtureRequest) -> None:
    device = request.config.getoption("--device", "cpu")
    profile = PROFILES[request.config.getoption("--profile", "default")]
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    h = build(case.shape, case.n, case.b, case.trees)
    q, k, v = _inputs(case, device)
    sync = _sync(device)
    info: dict[str, Any] = {
        "sweep": case.sweep,
        "impl": case.impl,
        "shape": case.shape,
        "N": case.n,
        "M": h.num_families if case.impl != "sdpa" else 0,
        "b": h.max_branching if case.impl != "sdpa" else 0,
        "b_param": case.b,
        "trees": case.trees,
        "d": case.d,
        "heads": case.heads,
        "dtype": case.dtype,
        "device": device,
        "profile": profile.name,
    }
    if case.impl != "sdpa":
        sums = tree_sums(h)
        info.update(
            children=h.num_nodes - h.num_trees,  # sum_f b_f: every node but the roots
            num_trees=sums.trees,
            tree_leaves_sq=sums.leaves_sq,
            tree_children_leaves_sq=sums.children_leaves_sq,
            tree_families_leaves_sq=sums.families_leaves_sq,
            trees_nodes=sums.trees_nodes,
        )
    if case.impl == "sdpa":
        work = dense_work(case.n, d_k=case.d, d_v=case.d, heads=case.heads)

        def fn() -> Any:
            out = F.scaled_dot_product_attention(q, k, v)
            sync()
            return out

    elif case.impl == "hsa_fast":
        hsa_fast = pytest.importorskip("hsa_fast")
        work = programme_work(h, d_k=case.d, d_v=case.d, heads=case.heads)
        start = time.perf_counter()
        hsa_fast.compile_hierarchy(h, device=device)  # built once, outside the timing
        sync()
        info["compile_s"] = time.perf_counter() - start
        schedule = schedule_counts(hsa_fast.compile_hierarchy(h, device=device))
        info.update(
            buckets=schedule.buckets,
            depths=schedule.depths,
            slots=schedule.slots,
            block_entries=schedule.block_entries,
        )

        def fn() -> Any:
            out = hsa_fast.hsa(q, k, v, h)
            sync()
            return out

    elif case.impl == "hsa_reference":
        from hsa_ref import hsa_reference

        # The reference's own cost is quadratic; the programme's counts are kept for comparison.
        work = programme_work(h, d_k=case.d, d_v=case.d, heads=case.heads)

        def fn() -> Any:
            return hsa_reference(q, k, v, h)

    else:
        raise ValueError(f"unknown implementation {case.impl!r}")
    info["energies"] = work.energies
    info["flops"] = work.flops
    info["dense_flops"] = dense_work(case.n, d_k=case.d, d_v=case.d, heads=case.heads).flops
    benchmark.group = f"{case.sweep} sweep"
    benchmark.extra_info.update(info)
    try:
        with torch.inference_mode():
            usage, ops, warmups = _time_case(
                benchmark, fn, case, profile.budget_s, profile.max_rounds
            )
    except torch.OutOfMemoryError:
        pytest.skip(f"{case.impl} at N={case.n}, d={case.d} does not fit in {device} memory")
    # Per call, the round with the least CPU time: other jobs can only add to it.
    user, system = min(usage, key=sum)
    benchmark.extra_info.update(
        cpu_s=user + system,
        cpu_user_s=user,
        cpu_sys_s=system,
        ops=ops.ops,
        views=ops.views,
        elements_written=ops.elements,
        warmup_calls=warmups,
    )
