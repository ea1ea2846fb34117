"""The distance energy far from the origin: both backends as accurate as the reference itself.

The distance energy is invariant under one common shift of every q and k of a tree, so the
answer does not depend on the offset. The checks here hold every output and gradient to the
rounding noise of the answer: ``max|fast - ref64| <= 2 max|ref_t - ref64| + 8 eps_t max|ref64|``
with ``ref_t`` the reference (or its autograd gradients) evaluated in the dtype under test,
which is far tighter than a bound growing with the scores.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hsa_fast import compile_hierarchy, hsa
from hsa_fast.api import centre_per_tree
from hsa_fast.triton import hsa_triton, triton_interpreted
from hsa_ref import Hierarchy, hsa_reference
from hsa_ref.tolerance import compare_to_reference

TREE = Hierarchy.from_nested([[0, 1, 2], [3, [4, 5]], [6, 7]])
FOREST = Hierarchy.forest(
    [TREE, Hierarchy.from_parents([-1], 1), Hierarchy.from_nested([[0, 1], [[2, 3, 4]]])]
)
TRITON = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or triton_interpreted()
)
_NO_TRITON = pytest.mark.skipif(not TRITON, reason="no Triton")
BACKENDS = [
    "torch",
    pytest.param("triton", marks=_NO_TRITON),
]
CASES = [
    *(("torch", torch.float32, off) for off in (10.0, 100.0, 1e3)),
    *(pytest.param("triton", torch.float32, off, marks=_NO_TRITON) for off in (10.0, 100.0, 1e3)),
    *(("torch", torch.float64, off) for off in (30.0, 1e2, 1e3, 1e4, 1e6)),
]


def _within_rounding(out, ref64, ref_t, dtype) -> tuple[bool, str]:
    err = (out.double() - ref64).abs().max().item()
    ref_err = (ref_t.double() - ref64).abs().max().item()
    limit = 2 * ref_err + 8 * torch.finfo(dtype).eps * ref64.abs().max().item()
    return err <= limit, f"error {err:.3g}, limit {limit:.3g} (ref_t error {ref_err:.3g})"


def _inputs(h: Hierarchy, offsets, seed: int = 0, d_k: int = 16, d_v: int = 4, to=torch.float32):
    """q, k = the offset of each leaf's tree + noise, as float64 values representable in ``to``."""
    g = torch.Generator().manual_seed(seed)
    n = h.num_leaves
    roots = sorted(set(h.root_of[:n].tolist()))
    shift = torch.tensor([offsets[roots.index(r) % len(offsets)] for r in h.root_of[:n]])
    direction = torch.randn(d_k, generator=g, dtype=torch.float64)
    centre = shift[:, None] * (1 + 0.1 * direction)
    q, k = (centre + torch.randn(n, d_k, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(n, d_v, generator=g, dtype=torch.float64)
    return tuple(x.to(to).double() for x in (q, k, v))


def _run(backend, q, k, v, h):
    return hsa(q, k, v, h, energy="distance", backend=backend)


@pytest.mark.parametrize(("backend", "dtype", "offset"), CASES, ids=str)
def test_output_exact_far_from_origin(backend, dtype, offset):
    for h, offsets in ((TREE, [offset]), (FOREST, [offset, -offset, 0.5 * offset])):
        q, k, v = (x.to(dtype) for x in _inputs(h, offsets))
        out = _run(backend, q, k, v, h)
        ref64 = hsa_reference(q, k, v, h, energy="distance")
        ref_t = hsa_reference(q, k, v, h, energy="distance", dtype=dtype)
        ok, msg = _within_rounding(out, ref64, ref_t, dtype)
        assert ok, f"{backend} {dtype} offset {offset}: {msg}"
        assert compare_to_reference(out, q, k, v, h, energy="distance").passed


def _grads(fn, q, k, v, h, as_dtype, **kw):
    q, k, v = (x.detach().to(as_dtype).clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, h, energy="distance", **kw)
    weight = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
    (out.double() * weight).sum().backward()
    return [x.grad.double() for x in (q, k, v)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offset", [10.0, 100.0, 1e3])
def test_float32_gradients_exact_far_from_origin(backend, offset):
    h = FOREST
    q, k, v = _inputs(h, [offset, -offset, 2 * offset], seed=1)
    g64 = _grads(hsa_reference, q, k, v, h, torch.float64)
    g32 = _grads(hsa_reference, q, k, v, h, torch.float32, dtype=torch.float32)
    got = _grads(hsa, q, k, v, h, torch.float32, backend=backend)
    for name, fast, ref_t, ref64 in zip("qkv", got, g32, g64, strict=True):
        ok, msg = _within_rounding(fast, ref64, ref_t, torch.float32)
        assert ok, f"d{name}, {backend}, offset {offset}: {msg}"


@pytest.mark.parametrize("offset", [1e3, 1e6])
def test_float64_gradients_exact_far_from_origin(offset):
    h = FOREST
    q, k, v = _inputs(h, [offset, -offset], seed=2, to=torch.float64)
    base = _grads(hsa, *_inputs(h, [0.0], seed=2, to=torch.float64), h, torch.float64)
    got = _grads(hsa, q, k, v, h, torch.float64)
    ref = _grads(hsa_reference, q, k, v, h, torch.float64)
    for fast, r, b in zip(got, ref, base, strict=True):
        assert (fast - r).abs().max().item() <= 64 * torch.finfo(torch.float64).eps * (
            1 + r.abs().max().item()
        )
        # the answer does not depend on the offset: the gradients at the origin are the same
        torch.testing.assert_close(fast, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("offset", [100.0, 1e3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_clusters_within_a_tree_stay_exact(backend, offset):
    """Sub-trees far from each other and from the tree's centre (centring the tree does not
    bring them near the origin): only the variance form, which measures every family about its
    own centre, keeps the energies inside each cluster exact."""
    h = Hierarchy.from_nested([[[0, 1, 2], [3, [4, 5]]], [[6, 7], [8, 9, 10, 11]]])
    g = torch.Generator().manual_seed(3)
    shift = torch.zeros(12, 16, dtype=torch.float64)
    shift[:6], shift[6:], shift[:6, 1] = offset, -offset, 0.3 * offset
    q, k = ((shift + torch.randn(12, 16, generator=g, dtype=torch.float64)).float() for _ in "qk")
    v = torch.randn(12, 4, generator=g).float()
    out = hsa(q, k, v, h, energy="distance", scale=0.05, backend=backend)
    ref64 = hsa_reference(q, k, v, h, energy="distance", scale=0.05)
    ref32 = hsa_reference(q, k, v, h, energy="distance", scale=0.05, dtype=torch.float32)
    err = (out.double() - ref64).abs().max().item()
    assert err <= 2 * (ref32.double() - ref64).abs().max().item() + 1e-5 * ref64.abs().max().item()


def test_the_check_rejects_uncentred_family_means():
    """Power: the kernels on raw inputs, not centred per tree, keep each family's means of q
    and k in float32 at the size of the offset; rounded there, the energies above the leaves
    miss the rounding bound, which the same kernels meet on centred inputs."""
    if not TRITON:
        pytest.skip("no Triton")
    q, k, v = (x.float() for x in _inputs(TREE, [100.0]))
    layout = compile_hierarchy(TREE)
    wrong = hsa_triton(q, k, v, layout, scale=0.25, energy="distance")
    ref64 = hsa_reference(q, k, v, TREE, energy="distance")
    ref_t = hsa_reference(q, k, v, TREE, energy="distance", dtype=torch.float32)
    assert not _within_rounding(wrong, ref64, ref_t, torch.float32)[0]
    qc, kc = centre_per_tree(q, k, layout)
    right = hsa_triton(qc, kc, v, layout, scale=0.25, energy="distance")
    assert _within_rounding(right, ref64, ref_t, torch.float32)[0]


def test_centring_keeps_non_finite_values_in_their_tree():
    h = Hierarchy.forest([TREE, TREE])
    q, k, v = (x.float() for x in _inputs(h, [1e3]))
    q[2, 0] = float("inf")
    out = hsa(q, k, v, h, energy="distance")
    assert torch.isfinite(out[8:]).all()
    torch.testing.assert_close(out[8:], hsa(q[8:], k[8:], v[8:], TREE, energy="distance"))
