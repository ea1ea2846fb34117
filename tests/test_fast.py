"""hsa_fast against the float64 reference (docs/TOLERANCE.md), plus its own invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from hsa_fast import compile_hierarchy, hsa
from hsa_fast.programme import hsa_programme
from hsa_ref import Hierarchy, hsa_reference
from hsa_ref.conformance.strategies import hierarchies, hsa_cases
from hsa_ref.tolerance import compare_to_reference

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _qkv(seed: int, n: int, d_k: int = 4, d_v: int = 3, batch=(), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        torch.randn(*batch, n, d, generator=g, dtype=torch.float64).to(dtype)
        for d in (d_k, d_k, d_v)
    )


def _check(case, **extra):
    out = hsa(case.q, case.k, case.v, case.hierarchy, **case.kwargs(), **extra)
    assert out.dtype == case.q.dtype
    assert out.shape == (*case.q.shape[:-1], case.v.shape[-1])
    verdict = compare_to_reference(
        out, case.q, case.k, case.v, case.hierarchy, **case.kwargs(), **extra
    )
    assert verdict.passed, f"{verdict} for {case.describe()}"


@given(hierarchies(max_leaves=60, max_branching=300, max_depth=2, max_trees=1))
def test_large_branching(h):
    q, k, v = _qkv(1, h.num_leaves)
    torch.testing.assert_close(hsa(q, k, v, h), hsa_reference(q, k, v, h), rtol=1e-10, atol=1e-12)


def test_very_large_family():
    n = 2000
    h = Hierarchy.one_family(n)
    q, k, v = _qkv(2, n, d_k=8, dtype=torch.float32)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(hsa(q, k, v, h), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_family_is_sdpa_and_one_leaf_is_v(dtype):
    q, k, v = _qkv(3, 9, batch=(2, 3), dtype=dtype)
    h = Hierarchy.one_family(9)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}[
        dtype
    ]
    torch.testing.assert_close(
        hsa(q, k, v, h), F.scaled_dot_product_attention(q, k, v), rtol=0, atol=tol
    )
    q1, k1, v1 = q[..., :1, :], k[..., :1, :], v[..., :1, :]
    for tree in (Hierarchy.from_parents([-1], 1), Hierarchy.from_nested([[[0]]])):
        assert torch.equal(hsa(q1 * 1000, k1, v1, tree), v1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("energy", ["dot", "distance"])
def test_huge_scores_stay_finite(dtype, energy):
    trees = [
        Hierarchy.from_nested([[0, [1, 2]], [[3]], 4, [5, 6, 7]]),
        Hierarchy.from_parents([-1], 1),
        Hierarchy.balanced(30, 4),
    ]
    for h in trees:
        q, k, v = _qkv(5, h.num_leaves, d_k=4, dtype=dtype)
        for scale in (1e4 / 4, -1e4 / 4):
            out = hsa(q, k, v, h, scale=scale, energy=energy)
            assert torch.isfinite(out).all(), (h, scale)
            verdict = compare_to_reference(out, q, k, v, h, scale=scale, energy=energy)
            assert verdict.passed, str(verdict)


def test_broadcast_batch_dims():
    h = Hierarchy.balanced(10, 3)
    q, k, v = _qkv(7, 10, batch=(2, 3))
    shared = k[0, 0]
    torch.testing.assert_close(hsa(q, shared, v, h), hsa(q, shared.expand_as(k), v, h))


# ---------------------------------------------------------------- autograd
@pytest.mark.parametrize("energy", ["dot", "distance"])
@pytest.mark.parametrize(
    "tree",
    [[[0, 1, 2], [3, [4, 5]], 6], [0, [[1]], [2, 3]], [[0, 1], [2, 3]]],
    ids=["mixed", "single-child", "two-families"],
)
def test_gradcheck_float64(tree, energy):
    h = Hierarchy.from_nested(tree)
    n = h.num_leaves
    q, k, v = (x.requires_grad_() for x in _qkv(11, n, d_k=3, d_v=2, batch=(2,)))
    pos = torch.randn(h.num_nodes, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, p: hsa(q, k, v, h, energy=energy, positions=p), (q, k, v, pos)
    )


def test_half_precision_backward_runs():
    h = Hierarchy.balanced(12, 3)
    q, k, v = (x.requires_grad_() for x in _qkv(3, 12, dtype=torch.bfloat16))
    hsa(q, k, v, h).float().square().sum().backward()
    assert all(
        t.grad is not None and t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all()
        for t in (q, k, v)
    )


# ---------------------------------------------------------------- work and memory
@given(hierarchies(max_leaves=200, max_branching=40, max_depth=6, max_trees=4))
def test_energy_count_is_exact(h):
    layout = compile_hierarchy(h)
    expected = h.num_leaves + sum(len(h.children(a)) * (len(h.children(a)) - 1) for a in h.families)
    assert layout.num_energies == expected
    # Independently, from what the buckets hold: every family exactly once, real slots only.
    seen, counted = [], h.num_leaves
    for bucket in layout.up:
        real = torch.isfinite(bucket.log_size).sum(1)
        counted += int((real * (real - 1)).sum())
        seen += (bucket.family + h.num_leaves).tolist()
        assert bucket.width <= 2 * max(1, int(real.min())), "padding more than doubles a family"
    assert counted == expected
    assert sorted(seen) == list(h.families)
    assert layout.num_padded_energies >= layout.num_energies


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("shape", ["balanced", "one-family-per-leaf-pair", "mixed"])
def test_never_forms_an_n_by_n_array(shape):
    n = 512
    h = {
        "balanced": Hierarchy.balanced(n, 8),
        "one-family-per-leaf-pair": Hierarchy.balanced(n, 2),
        "mixed": Hierarchy.from_segments([[3, 5, 8] * 32, [4] * 24], root=True),
    }[shape]
    n = h.num_leaves
    q, k, v = _qkv(0, n, d_k=2, d_v=2, dtype=torch.float32)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    with _LargestTensor() as probe:
        hsa(q, k, v, h).sum().backward()
    assert probe.largest < n * n / 16, probe.largest


class _Probe:
    """Largest tensor any op makes (forward, backward) and bytes autograd keeps for backward."""

    def __init__(self, h, chunk_elements, energy="dot", positions=False, programme=None):
        layout = compile_hierarchy(h)
        programme = programme or hsa_programme
        n, z, self.d = h.num_leaves, 2, 4
        q, k, v = (
            x.requires_grad_() for x in _qkv(1, n, d_k=4, d_v=3, batch=(z,), dtype=torch.float32)
        )
        g = torch.Generator().manual_seed(2)
        pos = torch.randn(h.num_nodes, 2, generator=g).requires_grad_() if positions else None
        kept: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            kept[storage.data_ptr()] = storage.nbytes()
            return t

        with _LargestTensor() as fwd, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.out = programme(
                q,
                k,
                v,
                layout,
                scale=0.5,
                energy=energy,
                positions=pos,
                chunk_elements=chunk_elements,
            )
        with _LargestTensor() as bwd:
            self.out.backward(torch.linspace(-1, 1, self.out.numel()).view_as(self.out))
        self.grads = [t.grad for t in (q, k, v, pos) if t is not None]
        self.forward_largest, self.backward_largest = fwd.largest, bwd.largest
        self.kept_bytes = sum(kept.values())
        # O((N + M) d): per-node rows of the batch, padding at most doubling a family's width
        self.linear = 2 * z * (h.num_nodes + 1) * self.d


WIDE = {
    "flat-2000": Hierarchy.one_family(2000),
    "balanced-64": Hierarchy.balanced(4096, 64),
    "mixed-wide": Hierarchy.from_segments([[700, 5, 300, 1, 40] * 2, [3, 7]], root=True),
}


@pytest.mark.parametrize("energy", ["dot", "distance"])
@pytest.mark.parametrize("name", list(WIDE))
def test_memory_is_bounded_whatever_the_branching(name, energy):
    """docs/HSA.md section 5: extra memory O((N + M) d + chunk), forward and backward, counted
    exactly: no op makes a tensor larger than the block budget or a per-node array, and autograd
    keeps O((N + M) d) (wide blocks are recomputed, not kept). Results do not depend on the
    budget."""
    h, budget = WIDE[name], 1 << 17
    probe = _Probe(h, budget, energy=energy, positions=name == "mixed-wide")
    bound = max(budget, probe.linear)
    assert probe.forward_largest <= bound, (probe.forward_largest, bound)
    assert probe.backward_largest <= bound, (probe.backward_largest, bound)
    assert probe.kept_bytes <= 4 * 16 * probe.linear, (probe.kept_bytes, probe.linear)
    whole = _Probe(h, 1 << 40, energy=energy, positions=name == "mixed-wide")
    torch.testing.assert_close(probe.out, whole.out, rtol=1e-5, atol=1e-6)
    for got, expected in zip(probe.grads, whole.grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # Power: the same programme forming each bucket's w x w energies at once breaks the bound.
    if h.max_branching**2 * 2 > 4 * bound:
        assert whole.forward_largest > bound


@pytest.mark.parametrize("energy", ["dot", "distance"])
def test_gradcheck_through_row_blocks(energy):
    n = 8  # one family of 8 leaves, in blocks of 4 rows (or 1 row for the distance energy)
    h = Hierarchy.one_family(n)
    q, k, v = (x.requires_grad_() for x in _qkv(4, n, d_k=2, d_v=2))
    pos = torch.randn(h.num_nodes, 2, dtype=torch.float64, requires_grad=True)
    layout = compile_hierarchy(h)
    assert torch.autograd.gradcheck(
        lambda q, k, v, p: hsa_programme(
            q, k, v, layout, scale=0.7, energy=energy, positions=p, chunk_elements=4 * n
        ),
        (q, k, v, pos),
    )


def test_kept_bytes_bound_has_power():
    """Power of the kept-bytes count: autograd through the literal reference keeps its N x N
    scores, far above the bound the programme meets."""

    def literal(q, k, v, layout, *, scale, energy, positions, chunk_elements):
        return hsa_reference(q, k, v, WIDE["flat-2000"], scale=scale, energy=energy)

    probe = _Probe(WIDE["flat-2000"], 1 << 17, programme=literal)
    assert probe.kept_bytes > 4 * 16 * probe.linear


def test_layout_is_cached_per_hierarchy_and_device():
    h = Hierarchy.balanced(20, 4)
    assert compile_hierarchy(h) is compile_hierarchy(h)
    assert compile_hierarchy(Hierarchy.balanced(20, 4)) is compile_hierarchy(h)


def test_bad_input_is_rejected_like_the_reference():
    h = Hierarchy.balanced(4, 2)
    q = torch.ones(4, 2)
    with pytest.raises(ValueError, match="hierarchy has 4 leaves"):
        hsa(torch.ones(5, 2), q, q, h)
    with pytest.raises(TypeError, match="one dtype"):
        hsa(q, q.double(), q, h)
    with pytest.raises(ValueError, match="energy"):
        hsa(q, q, q, h, energy="l2")
    with pytest.raises(TypeError, match="Hierarchy"):
        hsa(q, q, q, [6, 6, -1])
    with pytest.raises(TypeError, match="Hierarchy"):
        compile_hierarchy("tree")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_float8_is_refused(dtype):
    h = Hierarchy.balanced(4, 2)
    q = torch.ones(4, 2).to(dtype)
    with pytest.raises(TypeError, match=f"the dtype of q, k and v must be .*got {dtype}"):
        hsa(q, q, q, h)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(data=st.data())
def test_cuda_matches_reference(dtype, data):
    case = data.draw(
        hsa_cases(
            hierarchy=hierarchies(max_leaves=40), dtype=dtype, score_magnitudes=(1e-2, 1.0, 5.0)
        )
    )
    out = hsa(case.q.cuda(), case.k.cuda(), case.v.cuda(), case.hierarchy, **case.kwargs())
    assert out.device.type == "cuda"
    verdict = compare_to_reference(
        out.cpu(), case.q, case.k, case.v, case.hierarchy, **case.kwargs()
    )
    assert verdict.passed, f"{verdict} for {case.describe()}"


@pytest.mark.parametrize(("batch", "d_v"), [((0,), 3), ((2,), 0), ((0, 2), 0), ((), 1)])
def test_empty_batches_and_values(batch, d_v):
    h = Hierarchy.balanced(5, 2)
    q, k, v = _qkv(0, 5, d_k=4, d_v=d_v, batch=batch)
    out = hsa(q, k, v, h)
    assert out.shape == (*batch, 5, d_v)
    torch.testing.assert_close(out, hsa_reference(q, k, v, h))


@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 300), st.integers(1, 5000))
def test_blocks_cover_every_row_once_within_the_budget(z, f, w, budget):
    from hsa_fast.blocks import blocks

    seen = torch.zeros(z * f, w, dtype=torch.long)
    for a, b, r0, r1 in blocks(z * f, w, budget):
        assert (b - a) * (r1 - r0) * w <= budget or (b - a, r1 - r0) == (1, 1)
        seen[a:b, r0:r1] += 1
    assert bool((seen == 1).all())


@pytest.mark.parametrize("energy", ["dot", "distance"])
def test_non_finite_inputs_stay_in_their_tree_forward_and_backward(energy):
    """Padded slots of a bucket must not carry a NaN (or its 0 * NaN gradient) across trees."""
    from distributed_worker import random_forest

    h = random_forest([5, 17, 1, 9, 30, 3, 12, 2], 11)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(h.num_leaves, 6, generator=g, dtype=torch.float64) for _ in "qkv")
    bad = 35
    q[bad, 0] = float("nan")
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    y = hsa(*leaves, h, energy=energy)
    y.sum().backward()
    roots = torch.as_tensor(h.root_of[: h.num_leaves])
    other = roots != roots[bad]
    assert torch.isfinite(y[other]).all()
    for x in leaves:
        assert torch.isfinite(x.grad[other]).all()
    assert not torch.isfinite(y[~other]).all()


# ---------------------------------------------------------------- inference, then training
def _unseen_tree(tag: int) -> Hierarchy:
    """A tree no other test builds, so that its layout is compiled by the first call here."""
    return Hierarchy.from_segments([[2, 7, 1, 3 + tag, 2], [3, 2]])


PASSES = [torch.inference_mode, torch.no_grad]
DEVICES = [("cpu", "cpu"), ("meta", "cpu"), ("cpu", "meta")]


@pytest.mark.parametrize("energy", ["dot", "distance"])
@pytest.mark.parametrize("devices", DEVICES, ids="-then-".join)
@pytest.mark.parametrize("evaluate", PASSES, ids=lambda p: p.__name__)
def test_training_after_evaluation_on_an_equal_hierarchy(evaluate, devices, energy):
    """Evaluating under inference mode (or no_grad) first must not break a later training call
    on an equal hierarchy: the cached layout holds ordinary tensors."""
    tag = PASSES.index(evaluate) * 10 + DEVICES.index(devices) * 2 + (energy == "distance")
    first, then = devices
    evaluated = _unseen_tree(tag)  # alive: its cache entry serves the equal hierarchy below
    q, k, v = _qkv(5, evaluated.num_leaves, batch=(2,))
    with evaluate():
        hsa(q.to(first), k.to(first), v.to(first), evaluated, energy=energy)
    q, k, v = (x.to(then).requires_grad_() for x in (q, k, v))
    trained = _unseen_tree(tag)
    assert trained == evaluated
    assert trained is not evaluated
    hsa(q, k, v, trained, energy=energy).square().sum().backward()
    assert all(x.grad is not None and x.grad.shape == x.shape for x in (q, k, v))
    if then == "cpu":
        expected = [
            torch.autograd.grad(hsa_reference(q, k, v, trained, energy=energy).square().sum(), x)[0]
            for x in (q, k, v)
        ]
        for x, want in zip((q, k, v), expected, strict=True):
            torch.testing.assert_close(x.grad, want)
