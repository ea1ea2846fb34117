"""Sequence-parallel HSA (hsa_fast.distributed) against single-process hsa_fast.hsa.

Two and four gloo ranks on CPU, each a subprocess running ``distributed_worker.py`` (one spawn
per world size for all cases, bounded in time); every case compares the ranks' rows of the
output and of the gradients of q, k and v with ``hsa`` on the whole input, to 1e-12 in
float64. Planted wrong implementations must fail the same comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_worker import Case, cases, interleaved, random_forest

from hsa_fast import compile_hierarchy, hsa
from hsa_fast.distributed import hsa_sharded, planned_collectives
from hsa_fast.programme import hsa_programme
from hsa_fast.sharding import partition
from hsa_ref import Hierarchy, hsa_reference
from hsa_ref.reference import log_partition

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150
TOL = 1e-12
WORLDS = (2, 4)
GOOD = [(w, c.name) for w in WORLDS for c in cases(w) if c.planted is None]
PLANTED = [(w, c.name) for w in WORLDS for c in cases(w) if c.planted is not None]


def _spawn(world: int, tmp: Path) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKER.parent)]))
    env["OMP_NUM_THREADS"] = "1"
    store = tmp / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(world), str(store), str(tmp / f"{r}.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{world} ranks did not finish within {TIMEOUT_S} s (a hang?)")
    for r, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {r} of {world} failed:\n{log}"
    return [torch.load(tmp / f"{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict[int, list[dict]] = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            cache[world] = _spawn(world, tmp_path_factory.mktemp(f"world{world}"))
        return cache[world]

    return get


def _case(name: str, world: int) -> Case:
    return next(c for c in cases(world) if c.name == name)


def _errors(case: Case, ranks: list[dict]) -> dict[str, float]:
    """Max |sharded - single process| of y, dq, dk, dv.

    With a NaN query (``case.nan_leaf``), the rows of every other tree must be finite and
    equal to single-process HSA of finite inputs (no attention crosses trees); the rows of the
    NaN's own tree are not compared.
    """
    q, k, v, grad = case.inputs()
    keep = torch.ones(case.hierarchy.num_leaves, dtype=torch.bool)
    if case.nan_leaf is not None:
        root = case.hierarchy.root_of
        keep = torch.as_tensor(root[: case.hierarchy.num_leaves] != root[case.nan_leaf])
        q = q.nan_to_num(0.0)
    for x in (q, k, v):
        x.requires_grad_(True)
    y = hsa(q, k, v, case.hierarchy, energy=case.energy, scale=case.scale, backend=case.backend)
    (y * grad).sum().backward()
    out = {}
    for name, ref in (("y", y.detach()), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        ref = torch.zeros_like(q) if ref is None else ref  # nothing depends on q: one-leaf trees
        parts = []
        for r in ranks:
            got = r[case.name][name]
            rows = r[case.name]["y"].shape[-2]
            parts.append(torch.zeros(*ref.shape[:-2], rows, ref.shape[-1]) if got is None else got)
        got, ref = torch.cat(parts, -2)[..., keep, :], ref[..., keep, :]
        assert got.shape == ref.shape, (name, got.shape, ref.shape)
        assert got.isfinite().all(), f"{name} is not finite outside the NaN's tree"
        out[name] = (got - ref).abs().max().item() if got.numel() else 0.0
    return out


@pytest.mark.parametrize(("world", "name"), GOOD)
def test_matches_single_process(runs, world, name):
    case = _case(name, world)
    errors = _errors(case, runs(world))
    # float32 (the Triton kernels, interpreted on CPU): rounding of sums in another order
    assert max(errors.values()) <= (TOL if case.dtype == torch.float64 else 2e-6), errors


FAR = [(w, c.name) for w in WORLDS for c in cases(w) if c.name.startswith("far_")]


@pytest.mark.parametrize(("world", "name"), FAR)
def test_distance_energy_exact_far_from_origin(runs, world, name):
    """q and k offset by 1e2 .. 1e6 from the origin: the sharded output and gradients are as
    close to the float64 reference as single-process ``hsa`` on the same path is (within 2x of
    its error, or of one unit in the last place of the answer where that error is smaller)."""
    case = _case(name, world)
    q, k, v, grad = case.inputs()
    kw = {"energy": "distance", "scale": case.scale}
    leaves64 = [x.double().requires_grad_() for x in (q, k, v)]
    ref = hsa_reference(*leaves64, case.hierarchy, **kw)
    ref_grads = torch.autograd.grad(ref, leaves64, grad.double())
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    single = hsa(*leaves, case.hierarchy, backend=case.backend, **kw)
    single_grads = torch.autograd.grad(single, leaves, grad)
    ranks = runs(world)
    eps = torch.finfo(case.dtype).eps
    for i, name_ in enumerate(("y", "dq", "dk", "dv")):
        want = ref if i == 0 else ref_grads[i - 1]
        alone = single if i == 0 else single_grads[i - 1]
        sharded = torch.cat([r[case.name][name_] for r in ranks], -2)
        err = (sharded.double() - want).abs().max().item()
        err_single = (alone.double() - want).abs().max().item()
        limit = 2 * max(err_single, eps * want.abs().max().item())
        assert err <= limit, f"{name_}: sharded error {err:.3g}, single-process {err_single:.3g}"


@pytest.mark.parametrize(("world", "name"), PLANTED)
def test_planted_bugs_fail(runs, world, name):
    """Dropping U (forward), the other ranks' adjoints (backward) or NaN containment is caught."""
    case = _case(name, world)
    if case.nan_leaf is not None:
        with pytest.raises(AssertionError, match="not finite outside the NaN's tree"):
            _errors(case, runs(world))
        return
    errors = _errors(case, runs(world))
    assert max(errors.values()) > 1e-3, errors
    if name == "planted_local_adjoints":
        assert errors["y"] <= TOL  # only the backward is wrong


def _naive_sent(h: Hierarchy, lo: int, hi: int) -> int:
    """Cut nodes of the shard ``lo..hi-1`` that have a parent, from leaf sets."""
    inside = [set(h.leaves_under(x)) <= set(range(lo, hi)) for x in range(h.num_nodes)]
    parent = h.parent
    return sum(
        1 for x in range(h.num_nodes) if inside[x] and parent[x] >= 0 and not inside[parent[x]]
    )


@pytest.mark.parametrize(("world", "name"), [*GOOD, *PLANTED])
def test_bytes_counted_exactly(runs, world, name):
    """Metadata, summaries and adjoints: sizes from the plan, checked against leaf sets."""
    case = _case(name, world)
    plan = partition(case.hierarchy, world, boundaries=case.boundaries)
    slots = max(_naive_sent(case.hierarchy, s.leaf_start, s.leaf_stop) for s in plan.shards)
    assert plan.slots == slots
    z = int(np.prod(case.batch))
    # means of q, k, v and F; the distance energy adds the centre and two variances
    width = 2 * case.d_k + case.d_v + 1 + (case.d_k + 2 if case.energy == "distance" else 0)
    item = 8 if case.dtype == torch.float64 else 4  # summaries in the accumulation dtype
    expected = [("forward", "metadata", 8, 8)]
    if plan.top_levels:
        expected.append(("forward", "summaries", slots * z * width, item))
        if case.planted != "local_adj":  # the planted backward skips its all-gather
            expected.append(("backward", "adjoints", slots * z * (case.d_v + 1), item))
    for r in runs(world):
        got = r[name]["collectives"]
        assert [c[:4] for c in got] == expected
        assert all(c[4] == world and c[5] == (world - 1) * c[2] * c[3] for c in got)
    planned = planned_collectives(
        plan,
        batch=z,
        d_k=case.d_k,
        d_v=case.d_v,
        dtype=case.dtype,
        energy=case.energy,
        backward=case.planted != "local_adj",
    )
    assert [(c.phase, c.what, c.elements, c.itemsize) for c in planned] == expected


REFUSED = {
    "plan_for_other_world": ["shards but the process group has"],
    "wrong_rows_on_rank_1": ["rank(s) [1] rejected", "rank 1: q has"],
    "different_hierarchy_on_rank_1": ["disagree on the plan"],
    "different_dtype_on_rank_1": ["disagree on the dtype", "torch.float32"],
    "wrong_rows_everywhere": ["rows (shape (3, 8)) but the hierarchy has"],
    "float8": ["TypeError: rank ", "the dtype of q, k and v must be", "float8_e4m3fn"],
    "float8_distance": ["TypeError: rank ", "the dtype of q, k and v must be", "float8_e4m3fn"],
    "huge_scale": ["scale must be finite, got a number too large for a float"],
}


@pytest.mark.parametrize("world", WORLDS)
def test_refused_on_every_rank(runs, world):
    """Every rank raises ValueError, or TypeError for a dtype (and none hangs: the run finished
    in time)."""
    for name, fragments in REFUSED.items():
        for rank, r in enumerate(runs(world)):
            msg = r["refused"][name]
            assert msg.startswith("TypeError" if "float8" in name else "ValueError"), (name, msg)
            assert any(f in msg for f in fragments), (name, rank, msg)
    rows = 32 // world
    assert f"rank 1: q has {rows - 1} rows" in runs(world)[1]["refused"]["wrong_rows_on_rank_1"]
    assert "rank(s) [1] rejected" in runs(world)[0]["refused"]["wrong_rows_on_rank_1"]


# ---------------------------------------------------------------- single process


def test_needs_initialised_process_group():
    h = Hierarchy.balanced(8, 2)
    x = torch.zeros(8, 2)
    with pytest.raises(RuntimeError, match="initialised"):
        hsa_sharded(x, x, x, h)


@pytest.mark.parametrize("energy", ["dot", "distance"])
def test_programme_log_partition(energy):
    """F of every node, and its gradient, against the reference's recursion."""
    h = random_forest([7, 1, 12], 3)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h.num_leaves, 4, generator=g, dtype=torch.float64) for _ in "qkv")
    q.requires_grad_(True)
    kw = {"scale": 0.5, "energy": energy}
    y, f = hsa_programme(q, k, v, compile_hierarchy(h), return_log_partition=True, **kw)
    ref = log_partition(q, k, h, **kw)
    assert torch.allclose(y, hsa(q, k, v, h, **kw), rtol=0, atol=TOL)
    assert (f - ref).abs().max() <= TOL
    weights = torch.randn(f.shape, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad((f * weights).sum(), q)
    (want,) = torch.autograd.grad((ref * weights).sum(), q)
    assert (got - want).abs().max() <= TOL
    # the comparison has power: F at another temperature differs
    assert (f - log_partition(q, k, h, scale=0.55, energy=energy)).abs().max() > 1e-3


def _leaf_set(h: Hierarchy, x: int) -> set[int]:
    return set(h.leaves_under(x))


@pytest.mark.parametrize(
    ("h", "p"),
    [
        (Hierarchy.balanced(64, 4), 4),
        (Hierarchy.balanced(50, 3), 3),
        (random_forest([5, 17, 1, 9, 30, 3, 12, 2], 11), 4),
        (interleaved(6), 2),
        (Hierarchy.from_segments([[40]]), 4),
    ],
)
def test_partition_is_a_cut(h, p):
    """Each shard's cut nodes are maximal, hold exactly its leaves, and its local forest is the
    induced sub-forest (leaf sets shifted by leaf_start)."""
    plan = partition(h, p)
    assert plan.boundaries[0] == 0
    assert plan.boundaries[-1] == h.num_leaves
    ideal = h.num_leaves / p
    for s in plan.shards:
        assert abs(s.num_leaves - ideal) <= 0.1 * ideal + 1
        rows = set(range(s.leaf_start, s.leaf_stop))
        cut = s.cut.tolist()
        assert set().union(*(_leaf_set(h, x) for x in cut)) == rows
        assert sum(len(_leaf_set(h, x)) for x in cut) == len(rows)
        for x in cut:
            par = h.parent[x]
            assert par < 0 or not _leaf_set(h, par) <= rows  # maximal
        for local_root, x in zip(s.cut_local.tolist(), cut, strict=True):
            shifted = {i + s.leaf_start for i in s.local.leaves_under(local_root)}
            assert shifted == _leaf_set(h, x)
            assert s.local.leaf_counts[local_root] == h.leaf_counts[x]
        assert s.local.num_nodes == sum(1 for x in range(h.num_nodes) if _leaf_set(h, x) <= rows)
        for i in range(s.num_leaves):
            assert s.leaf_start + i in _leaf_set(h, cut[s.leaf_cut[i]])


def test_partition_prefers_whole_subtrees():
    h = Hierarchy.balanced(64, 4)  # subtrees of 16 leaves
    assert partition(h, 4).boundaries == (0, 16, 32, 48, 64)
    assert partition(h, 4).num_sent == (1, 1, 1, 1)
    assert partition(h, 3, max_imbalance=0).boundaries == (0, 21, 43, 64)
    assert partition(h, 3, max_imbalance=0.5).boundaries == (0, 16, 48, 64)
    # trees of a forest that fit are kept whole: nothing to communicate
    forest = Hierarchy.forest([Hierarchy.balanced(n, 2) for n in (48, 50, 52, 50)])
    plan = partition(forest, 4)
    assert plan.boundaries == (0, 48, 98, 150, 200)
    assert plan.num_sent == (0, 0, 0, 0)
    assert not plan.top_levels


def test_partition_is_deterministic():
    h = random_forest([5, 17, 1, 9, 30, 3, 12, 2], 11)
    a, b = partition(h, 4), partition(h, 4)
    assert a.boundaries == b.boundaries
    assert a.fingerprint == b.fingerprint
    c = partition(h, 4, boundaries=[0, 13, 40, 41, 79])
    assert c.fingerprint != a.fingerprint


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_shards": 5, "h": Hierarchy.balanced(4, 2)}, ValueError, "cannot split 4 leaves"),
        ({"num_shards": 0}, ValueError, "at least 1"),
        ({"num_shards": 2.0}, TypeError, "integer"),
        ({"boundaries": [0, 10, 10, 16]}, ValueError, "shard 1 would be empty"),
        ({"boundaries": [0, 8, 16]}, ValueError, "num_shards \\+ 1 = 4 entries"),
        ({"boundaries": [1, 4, 8, 16]}, ValueError, "start at 0 and end at N = 16"),
        ({"boundaries": [0, 4.5, 8, 16]}, TypeError, "boundaries\\[1\\]"),
        ({"max_imbalance": 1.0}, ValueError, "max_imbalance"),
        ({"max_sent": -1}, ValueError, "max_sent"),
    ],
)
def test_partition_refuses_bad_arguments(kwargs, error, match):
    kwargs = dict(kwargs)
    h = kwargs.pop("h", Hierarchy.balanced(16, 2))
    kwargs.setdefault("num_shards", 3)
    with pytest.raises(error, match=match):
        partition(h, **kwargs)


def test_partition_explains_too_many_summaries():
    wide = Hierarchy.from_segments([[40]])  # one family over every leaf: softmax attention
    assert partition(wide, 4, max_sent=10).num_sent == (10, 10, 10, 10)
    with pytest.raises(ValueError, match="family 40 has 40 children, 10 of them on shard 0"):
        partition(wide, 4, max_sent=9)
    h = interleaved(6)  # trees whose leaves are shuffled in row order
    with pytest.raises(ValueError, match="not contiguous in row order"):
        partition(h, 2, max_sent=6)
    contiguous = random_forest([9, 14, 7], 6)  # the same trees, leaves in order
    assert max(partition(contiguous, 2, max_sent=6).num_sent) == 5


def test_bench_bytes_table():
    """HSA's bytes per rank depend on the cut, not on N; ring attention's grow like N."""
    from bench.distributed import bytes_table, ring_attention_bytes

    assert ring_attention_bytes(1000, 4, batch=2, d_k=3, d_v=5, itemsize=4) == (
        3 * 250 * 2 * 8 * 4,
        2 * 3 * 250 * 2 * 8 * 4,
    )
    rows = bytes_table(sizes=(256, 4096, 65536), world=4)  # full trees of branching 16
    assert len({(r["hsa_forward"], r["hsa_backward"], r["slots"]) for r in rows}) == 1
    assert [r["ring_forward"] for r in rows] == [
        ring_attention_bytes(n, 4, batch=8, d_k=64, d_v=64, itemsize=2)[0]
        for n in (256, 4096, 65536)
    ]
    # 4 cut summaries per rank (the root's 16 children, 4 per rank), float32, 8 heads
    assert rows[0]["hsa_forward"] == 3 * (8 * 8 + 4 * 8 * (3 * 64 + 1) * 4)


def test_bench_runs_end_to_end(tmp_path):
    """``python -m bench.distributed`` on tiny sizes: P = 1, 2, 4 gloo runs, recorded bytes equal
    to the planned ones (exit status 0), results as JSON."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = ["--sizes", "256", "--n", "512", "--heads", "1", "--d", "4", "--repeats", "1"]
    args += ["--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.distributed", *args, "--timeout", "120"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    timed = json.loads(out.read_text())["timed"]
    assert [r["world"] for r in timed] == [1, 2, 4]
    assert all(r["matches_plan"] for r in timed)
    plan = partition(Hierarchy.balanced(512, 16), 4)
    calls = planned_collectives(plan, batch=1, d_k=4, d_v=4, dtype=torch.float32)
    assert timed[-1]["sent_forward"] + timed[-1]["sent_backward"] == sum(
        c.sent_bytes for c in calls
    )
