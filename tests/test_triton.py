"""The Triton kernels (hsa_fast.triton) against the reference and the PyTorch programme.

On a machine without CUDA the kernels run on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``, set by conftest.py before Triton is imported), on small cases: the
interpreter runs each program in Python. With CUDA they run compiled, on the GPU.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import hsa_fast.backends
from hsa_fast import compile_hierarchy, hsa
from hsa_fast.backends import choose_backend
from hsa_fast.triton import record_launches, triton_interpreted, triton_plan
from hsa_fast.triton.plan import bucket_launch
from hsa_ref import Hierarchy
from hsa_ref.conformance.strategies import hierarchies, hsa_cases
from hsa_ref.tolerance import compare_to_reference

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"
)
DEVICE = "cuda" if CUDA else "cpu"
HALF = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True, scope="module")
def _kernels_runnable():
    if not CUDA and not triton_interpreted():
        pytest.skip("no CUDA device and TRITON_INTERPRET is not set: the kernels cannot run")


def _qkv(seed: int, n: int, d_k: int = 4, d_v: int = 3, batch=(1,), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(*batch, n, d, generator=g, dtype=torch.float64).to(dtype)
        for d in (d_k, d_k, d_v)
    )


def _triton(q, k, v, h, **kw):
    out = hsa(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), h, backend="triton", **kw)
    assert out.device.type == DEVICE
    return out.cpu()


def _check(q, k, v, h, **kw):
    out = _triton(q, k, v, h, **kw)
    assert out.dtype == q.dtype
    assert out.shape == (*q.shape[:-1], v.shape[-1])
    verdict = compare_to_reference(out, q, k, v, h, **kw)
    assert verdict.passed, f"{verdict} for {h.to_json()}, {kw}"


SMALL = hierarchies(max_leaves=20, max_branching=9, max_depth=4, max_trees=3)


# ---------------------------------------------------------------- forward
@settings(max_examples=12)
@given(hsa_cases(hierarchy=SMALL, dtype=torch.float32, max_batch_dims=1, max_dim=6))
def test_matches_reference_float32(case):
    _check(case.q, case.k, case.v, case.hierarchy, **case.kwargs())


@pytest.mark.parametrize("dtype", HALF, ids=str)
@settings(max_examples=5)
@given(data=st.data())
def test_matches_reference_half_precision(dtype, data):
    case = data.draw(
        hsa_cases(hierarchy=SMALL, dtype=dtype, max_batch_dims=1, score_magnitudes=(1e-2, 1.0, 5.0))
    )
    _check(case.q, case.k, case.v, case.hierarchy, **case.kwargs())


@settings(max_examples=5)
@given(hsa_cases(hierarchy=SMALL, dtype=torch.float32, max_batch_dims=1), st.integers(0, 99))
def test_positions_match_reference(case, seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(case.hierarchy.num_nodes, 3, generator=g, dtype=torch.float64)
    _check(case.q, case.k, case.v, case.hierarchy, positions=pos.to(DEVICE), **case.kwargs())


# Every kind of bucket: contiguous leaves, gathered leaves, families, leaves beside families,
# padding within a bucket, single-child chains, one-leaf trees, families wider than one tile.
STRUCTURES = {
    "balanced": Hierarchy.balanced(40, 4),
    "mixed": Hierarchy.from_nested([[0, 1, 2], [3, [4, 5]], 6, [[7]], [8, [9, 10, 11]]]),
    "forest": Hierarchy.forest(
        [
            Hierarchy.from_parents([-1], 1),
            Hierarchy.from_nested([[0, [[1]], [2, 3]], 4]),
            Hierarchy.from_nested([[[0]]]),
        ]
    ),
    "uneven": Hierarchy.from_segments([[3, 5, 8, 1, 2], [2, 3]], root=True),
    "wide": Hierarchy.from_nested([list(range(70)), [70, [71, 72]], 73]),
}


@pytest.mark.parametrize("energy", ["dot", "distance"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_structures(name, energy):
    h = STRUCTURES[name]
    q, k, v = _qkv(1, h.num_leaves)
    _check(q, k, v, h, energy=energy)


def test_one_wide_family_is_softmax_attention():
    n = 150  # three tiles of 64 children per row, swept with an online log-sum-exp
    h = Hierarchy.one_family(n)
    q, k, v = _qkv(2, n, d_k=8, d_v=5, batch=(1,))
    torch.testing.assert_close(
        _triton(q, k, v, h), F.scaled_dot_product_attention(q, k, v), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("energy", ["dot", "distance"])
def test_huge_scores_stay_finite(energy):
    h = STRUCTURES["mixed"]
    q, k, v = _qkv(5, h.num_leaves, d_k=4)
    for scale in (1e4 / 4, -1e4 / 4):
        out = _triton(q, k, v, h, scale=scale, energy=energy)
        assert torch.isfinite(out).all()
        verdict = compare_to_reference(out, q, k, v, h, scale=scale, energy=energy)
        assert verdict.passed, str(verdict)


def test_layouts_of_the_inputs():
    h = STRUCTURES["uneven"]
    q, k, v = _qkv(6, h.num_leaves, d_k=4, d_v=4, batch=(2,))
    expected = _triton(q, k, v, h)
    shared = k[0]  # one k for the whole batch: an expanded, stride-0 batch dimension
    torch.testing.assert_close(
        _triton(q, shared, v, h), _triton(q, shared.expand_as(k).contiguous(), v, h)
    )
    # rows interleaved in memory, as a multi-head layer's transpose leaves them
    strided = [x.transpose(0, 1).contiguous().transpose(0, 1) for x in (q, k, v)]
    assert not strided[0].is_contiguous()
    torch.testing.assert_close(_triton(*strided, h), expected)


# ---------------------------------------------------------------- backward
def _grads(fn, q, k, v, h, dtype, pos=None, **kw):
    ins = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
    p = pos.detach().clone().requires_grad_() if pos is not None else None
    out = fn(*ins, h, positions=p, **kw)
    weight = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
    (out.double() * weight).sum().backward()
    leaves = ins + ([p] if p is not None else [])
    # a one-leaf tree returns v: the PyTorch programme leaves q and k out of the graph
    return [torch.zeros(x.shape).double() if x.grad is None else x.grad.double() for x in leaves]


def _triton_on_device(q, k, v, h, *, positions=None, **kw):
    dev = (x.to(DEVICE) for x in (q, k, v))
    pos = positions.to(DEVICE) if positions is not None else None
    return hsa(*dev, h, positions=pos, backend="triton", **kw).cpu()


def _torch(q, k, v, h, **kw):
    return hsa(q, k, v, h, backend="torch", **kw)


@pytest.mark.parametrize("energy", ["dot", "distance"])
@pytest.mark.parametrize("name", ["mixed", "forest", "wide"])
def test_gradients_match_the_programme(name, energy):
    h = STRUCTURES[name]
    q, k, v = _qkv(7, h.num_leaves, d_k=3, d_v=2, dtype=torch.float64)
    pos = torch.randn(h.num_nodes, 2, generator=torch.Generator().manual_seed(8)).double()
    p = None if name == "forest" else pos
    expected = _grads(_torch, q, k, v, h, torch.float64, p, energy=energy)
    got = _grads(_triton_on_device, q, k, v, h, torch.float32, p, energy=energy)
    for fast, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


@settings(max_examples=4)
@given(hsa_cases(hierarchy=SMALL, dtype=torch.float32, max_batch_dims=1, max_dim=5))
def test_gradients_match_the_programme_random(case):
    """float32 gradients as close to the float64 ones as the PyTorch programme's in float32
    (within 4x its error, in the manner of docs/TOLERANCE.md's flash-attention floor): rounding
    grows with the scores."""
    h, kw = case.hierarchy, case.kwargs()
    expected = _grads(_torch, case.q, case.k, case.v, h, torch.float64, **kw)
    baseline = _grads(_torch, case.q, case.k, case.v, h, torch.float32, **kw)
    got = _grads(_triton_on_device, case.q, case.k, case.v, h, torch.float32, **kw)
    for fast, base, ref in zip(got, baseline, expected, strict=True):
        limit = 4 * (base - ref).abs().max().item() + 1e-6 * ref.abs().max().item()
        assert (fast - ref).abs().max().item() <= limit, case.describe()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_gradients(dtype):
    h = STRUCTURES["balanced"]
    q, k, v = _qkv(9, h.num_leaves, d_k=16, d_v=16, dtype=torch.float64)
    expected = _grads(_torch, q, k, v, h, torch.float64)
    got = _grads(_triton_on_device, q, k, v, h, dtype)
    for fast, ref in zip(got, expected, strict=True):
        assert torch.isfinite(fast).all()
        assert (fast - ref).norm() <= 3e-2 * ref.norm()


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
def test_single_children_have_no_score_gradient(dtype):
    """A family of one child passes everything to it: ``y = v`` whatever ``q`` and ``k``, so
    ``dq = dk = 0`` exactly at any scale. The two terms of the score gradient must cancel
    exactly (``D(B)`` summed from the tile's own products); summed apart, their rounding came
    back multiplied by the scale."""
    h = Hierarchy.from_parents([2, 3, -1, 4, -1], 2)  # a leaf under a family; under a chain
    q, k, v = _qkv(13, h.num_leaves, d_k=8, d_v=5, batch=(2,), dtype=torch.float64)
    dq, dk, dv = _grads(_triton_on_device, q, k, v, h, dtype, scale=30.0)
    assert torch.equal(dq, torch.zeros_like(dq))
    assert torch.equal(dk, torch.zeros_like(dk))
    weight = torch.linspace(-1, 1, dv.numel(), dtype=torch.float64).view_as(dv)
    torch.testing.assert_close(dv, weight.to(dtype).double(), rtol=0, atol=0)


# ---------------------------------------------------------------- dispatch
def test_backend_choice(monkeypatch):
    h = STRUCTURES["balanced"]
    q, k, v = _qkv(10, h.num_leaves)
    with pytest.raises(ValueError, match="backend must be one of"):
        hsa(q, k, v, h, backend="cuda")
    with pytest.raises(TypeError, match="backend must be a string"):
        hsa(q, k, v, h, backend=None)
    with pytest.raises(ValueError, match="float64"):
        hsa(q.double(), k.double(), v.double(), h, backend="triton")
    nodes = h.num_nodes
    assert choose_backend("torch", q, v, None, nodes) == "torch"
    assert choose_backend("auto", q.double(), v.double(), None, nodes) == "torch"
    assert choose_backend("auto", q.to(DEVICE), v.to(DEVICE), None, nodes) == (
        "triton" if CUDA else "torch"
    )

    def refuse(*args, **kwargs):
        raise AssertionError("the Triton path ran")

    monkeypatch.setattr(hsa_fast.backends, "hsa_triton", refuse)
    hsa(q, k, v, h, backend="torch")
    if not CUDA:  # auto leaves CPU tensors to the PyTorch programme, interpreter or not
        hsa(q, k, v, h)


def test_plan_is_built_once_per_layout_and_freed_with_it():
    h = Hierarchy.balanced(30, 4)
    layout = compile_hierarchy(h, DEVICE)
    plan = triton_plan(layout)
    assert triton_plan(compile_hierarchy(Hierarchy.balanced(30, 4), DEVICE)) is plan
    assert triton_plan(compile_hierarchy(Hierarchy.balanced(30, 3), DEVICE)) is not plan
    gone = weakref.ref(plan)
    del h, layout, plan
    gc.collect()
    assert gone() is None


def test_plan_covers_every_family_once():
    for h in STRUCTURES.values():
        plan = triton_plan(compile_hierarchy(h, DEVICE))
        seen = sorted(f for b in plan.buckets for f in b.children.families.tolist())
        assert seen == list(range(h.num_families))
        for b in plan.buckets:
            assert b.padded & (b.padded - 1) == 0
            assert b.width <= b.padded < 2 * b.width
            for dtype in (torch.float32, torch.bfloat16):
                programs, tile = bucket_launch(b, dtype)  # the dot energy
                assert tile.BR >= 16  # tl.dot reduces over at least 16
                assert b.padded == tile.W
                assert tile.G * b.padded == tile.BR * tile.NUM_CHUNKS
                assert (programs - 1) * tile.G < b.num_families <= programs * tile.G


def test_no_grad_forward_equals_grad_forward():
    h = STRUCTURES["mixed"]
    q, k, v = _qkv(11, h.num_leaves)
    with torch.no_grad():
        plain = _triton(q, k, v, h)
    tracked = _triton(q.requires_grad_(), k, v, h)
    torch.testing.assert_close(tracked.detach(), plain, rtol=0, atol=0)


# ---------------------------------------------------------------- the GPU compiler, without a GPU
def test_record_launches_lists_the_schedule_and_replays_to_hsa():
    """The launches of a forward and backward, in the order of docs/HSA.md section 5: up by bucket,
    down by depth, the leaves; the down adjoint by bucket, the up adjoint by bucket in reverse.
    Made afterwards, the forward's launches fill the output with what ``hsa`` returns."""
    h = Hierarchy.from_segments([[3, 1, 4, 2], [2, 2]])
    layout = compile_hierarchy(h)
    plan = triton_plan(layout)
    q, k, v = (torch.randn(2, h.num_leaves, 8, device=DEVICE) for _ in range(3))
    launches = record_launches(q, k, v, layout, scale=0.5, energy="dot")
    names = [launch.kernel.__name__ for launch in launches]
    ups, downs = len(plan.buckets), len(plan.down)
    assert names == (
        ["hsa_up_kernel"] * ups
        + ["hsa_down_kernel"] * downs
        + ["hsa_leaf_kernel"]
        + ["hsa_down_bwd_kernel"] * ups
        + ["hsa_up_bwd_kernel"] * ups
    )
    assert all(launch.grid[1] == 2 for launch in launches)  # the batch is the second dimension
    out = launches[ups + downs].args[2]
    out.fill_(float("nan"))
    for launch in launches[: ups + downs + 1]:
        launch.kernel[launch.grid](*launch.args, **launch.kwargs)
    expected = hsa(q, k, v, h, scale=0.5, backend="triton")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_benchmark_kernels_compile_for_hopper():
    """The kernels of the benchmark's shapes compile for sm_90 with the ptxas Triton ships: the
    interpreter accepts code the GPU compiler may not. The leaf kernels must use the tensor
    cores and keep everything in registers."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "bench.triton_compile", "b64", "b16", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for case, kernels in report.items():
        names = {k["kernel"] for k in kernels}
        assert names == {
            "hsa_up_kernel",
            "hsa_down_kernel",
            "hsa_leaf_kernel",
            "hsa_down_bwd_kernel",
            "hsa_up_bwd_kernel",
        }, case
        products = [k for k in kernels if k["kernel"] in ("hsa_up_kernel", "hsa_up_bwd_kernel")]
        leaf = [k for k in products if k["constexprs"].get("HALF")]
        assert {k["kernel"] for k in leaf} == {"hsa_up_kernel", "hsa_up_bwd_kernel"}, case
        for k in leaf:
            assert k["tensor_cores"] != "-", (case, k)
            assert k["spill_bytes"] == 0, (case, k)


def test_under_torch_compile():
    h = STRUCTURES["mixed"]
    q, k, v = _qkv(12, h.num_leaves)

    def f(q, k, v):
        return (2 * _triton_on_device(q, k, v, h)).sin()

    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(f, backend="aot_eager")(q, k, v), f(q, k, v))
