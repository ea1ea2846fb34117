"""SPEC section 6's rule has power: in every dtype it rejects what HSA is not, accepts HSA."""

from __future__ import annotations

import math

import pytest
import torch

from hsa_fast import hsa
from hsa_ref import Hierarchy, hsa_attention_matrix, hsa_reference
from hsa_ref.reference import tree_mask
from hsa_ref.tolerance import (
    ATOL_FACTOR,
    DTYPES,
    MAX_ROUNDED_SCORE,
    REFERENCE_FACTOR,
    agreement,
    compare_gradients_to_reference,
    compare_to_reference,
    eps,
)

CASES = {
    # the example that an all-zeros output used to pass in bfloat16
    "balanced(64, 4)": (Hierarchy.balanced(64, 4), 16, "dot", None),
    "mixed depth": (
        Hierarchy.from_nested([[0, [1, [2, 3]]], 4, [5, 6, [7, [8, [9]]]], [10, 11, 12]]),
        8, "dot", 0.6,
    ),
    "forest, distance": (
        Hierarchy.forest([Hierarchy.balanced(9, 3), Hierarchy.from_nested([[0, 1], 2, [3, 4]])]),
        8, "distance", 0.2,
    ),
}  # fmt: skip


def _inputs(h: Hierarchy, d: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(h.num_leaves, d, generator=g, dtype=torch.float64).to(dtype) for _ in "qkvg"
    ]


def _wrong_outputs(q, k, v, h, kw) -> dict[str, torch.Tensor]:
    """Outputs that are not HSA, from the exact inputs (float64)."""
    q, k, v = (x.double() for x in (q, k, v))
    theta = hsa_attention_matrix(q, k, h, **kw)
    same = tree_mask(h).double()
    uniform = same / same.sum(1, keepdim=True)
    return {
        "all zeros": torch.zeros_like(v),
        "uniform attention over the tree": uniform @ v,
        "own-subtree share removed": (theta - torch.diag(theta.diagonal())) @ v,
    }


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=list(DTYPES))
@pytest.mark.parametrize("name", CASES)
def test_rule_rejects_what_is_not_hsa_and_accepts_hsa(name, dtype):
    h, d, energy, scale = CASES[name]
    q, k, v, _ = _inputs(h, d, dtype)
    kw = {"scale": scale, "energy": energy}
    exact = hsa_reference(q, k, v, h, **kw)
    for what, out in _wrong_outputs(q, k, v, h, kw).items():
        verdict = compare_to_reference(out.to(dtype), q, k, v, h, **kw)
        assert verdict.status == "failed", (what, str(verdict))
        # the wrong output is far outside what the dtype can hide
        assert verdict.max_error > 3 * verdict.tolerance, (what, str(verdict))
        assert verdict.tolerance < 0.25 * exact.abs().max().item()
    for label, out in {
        "hsa_fast": hsa(q, k, v, h, **kw),
        "the reference evaluated in this dtype": hsa_reference(q, k, v, h, **kw, dtype=dtype),
    }.items():
        verdict = compare_to_reference(out, q, k, v, h, **kw)
        assert verdict.passed, (label, str(verdict))


def test_the_bfloat16_limit_is_the_rounding_noise_not_the_scores():
    """``Hierarchy.balanced(64, 4)``, q, k, v = randn(64, 16): zeros no longer pass."""
    h, d, _, _ = CASES["balanced(64, 4)"]
    q, k, v, _ = _inputs(h, d, torch.bfloat16)
    verdict = compare_to_reference(torch.zeros_like(v), q, k, v, h)
    magnitude = hsa_reference(q, k, v, h).abs().max().item()
    assert verdict.atol == pytest.approx(ATOL_FACTOR * eps(torch.bfloat16) * magnitude)
    assert verdict.tolerance < 0.2 * magnitude
    assert not verdict.passed


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=list(DTYPES))
def test_gradient_rule_rejects_wrong_gradients_and_accepts_hsa(dtype):
    h, d, energy, scale = CASES["mixed depth"]
    q, k, v, g = _inputs(h, d, dtype)
    kw = {"scale": scale, "energy": energy}
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = hsa(*leaves, h, **kw)
    dq, dk, dv = torch.autograd.grad(out, leaves, g)
    good = compare_gradients_to_reference({"q": dq, "k": dk, "v": dv}, q, k, v, h, g, **kw)
    assert all(r.passed for r in good.values()), {n: str(r) for n, r in good.items()}
    wrong = {
        "zeros": {"q": torch.zeros_like(dq), "k": torch.zeros_like(dk), "v": torch.zeros_like(dv)},
        "dq and dk swapped": {"q": dk, "k": dq, "v": dv},
        "dv of the wrong sign": {"q": dq, "k": dk, "v": -dv},
    }
    right = {"q": dq, "k": dk, "v": dv}
    for what, grads in wrong.items():
        verdicts = compare_gradients_to_reference(grads, q, k, v, h, g, **kw)
        changed = [n for n in grads if grads[n] is not right[n]]
        assert all(verdicts[n].status == "failed" for n in changed), (what, verdicts)
    missing = compare_gradients_to_reference({"q": dq, "v": dv}, q, k, v, h, g, **kw)
    assert missing["k"].status == "failed"
    assert "no gradient for k" in missing["k"].reason


def test_float64_reference_error_is_measured_not_zero():
    h, d, _, _ = CASES["mixed depth"]
    q, k, v, _ = _inputs(h, d, torch.float64)
    verdict = compare_to_reference(hsa_reference(q, k, v, h), q, k, v, h)
    assert verdict.passed
    assert 0 < verdict.reference_error < 1e-13
    out = hsa_reference(q, k, v, h) * (1 + 1e-10)
    assert not compare_to_reference(out, q, k, v, h).passed


def test_overflowing_low_precision_reference_is_not_checkable_and_never_passes():
    h = Hierarchy.balanced(8, 2)
    g = torch.Generator().manual_seed(3)
    q, k = (300 * torch.randn(8, 4, generator=g, dtype=torch.float64) for _ in "qk")
    v = torch.randn(8, 4, generator=g, dtype=torch.float64)
    q16, k16, v16 = (x.half() for x in (q, k, v))
    assert torch.isinf(q16.float() @ k16.float().T).sum() == 0
    assert not torch.isfinite(hsa_reference(q16, k16, v16, h, scale=1.0, dtype=torch.float16)).all()
    verdict = compare_to_reference(hsa(q16, k16, v16, h, scale=1.0), q16, k16, v16, h, scale=1.0)
    assert verdict.status == "not checkable"
    assert not verdict.passed
    nan = compare_to_reference(torch.full_like(v16, math.nan), q16, k16, v16, h, scale=1.0)
    assert nan.status == "failed"
    assert "NaN" in nan.reason


def test_scores_beyond_the_dtype_are_not_checkable():
    h, d, _, _ = CASES["mixed depth"]
    q, k, v, _ = _inputs(h, d, torch.bfloat16)
    scale = 2 * MAX_ROUNDED_SCORE / eps(torch.bfloat16) / 3.0  # |s| well past 1 / eps
    out = hsa(q, k, v, h, scale=scale)
    verdict = compare_to_reference(out, q, k, v, h, scale=scale)
    assert verdict.status == "not checkable"
    assert "cannot resolve scores" in verdict.reason
    q, k, v = (x.double() for x in (q, k, v))
    assert compare_to_reference(hsa(q, k, v, h, scale=scale), q, k, v, h, scale=scale).passed


def test_limit_that_would_pass_zeros_is_not_checkable():
    ref = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    low = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    verdict = agreement(torch.zeros(1, 2), ref, low, dtype=torch.bfloat16, score_max=1.0)
    assert verdict.status == "not checkable"
    assert "cannot resolve this case" in verdict.reason


def test_float32_relative_limit_skips_an_exactly_zero_answer():
    """``dq`` of a one-leaf tree, or with every row of ``v`` equal, is exactly zero: a correct
    float32 evaluation's rounding noise passes on the absolute limit, a larger error fails."""
    zero = torch.zeros(2, 3, dtype=torch.float64)
    kw = {"dtype": torch.float32, "score_max": 1.0, "kind": "gradient", "magnitude": 1.0}
    noise = agreement(torch.full((2, 3), 2.4e-11), zero, zero, **kw)
    assert noise.status == "passed", noise.reason
    assert noise.relative_limit is None
    wrong = agreement(torch.full((2, 3), 1e-5), zero, zero, **kw)
    assert wrong.status == "failed"
    assert "max error above tolerance" in wrong.reason


def test_rule_constants_and_the_float32_relative_limit():
    assert REFERENCE_FACTOR == {"output": 2.0, "gradient": 3.0}
    h, d, _, _ = CASES["mixed depth"]
    q, k, v, _ = _inputs(h, d, torch.float32)
    verdict = compare_to_reference(hsa(q, k, v, h), q, k, v, h)
    assert verdict.relative_limit is not None
    assert verdict.relative_limit >= 1e-5
    out = hsa_reference(q, k, v, h) * (1 + 5e-5)
    assert "relative error" in compare_to_reference(out, q, k, v, h).reason
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    assert compare_to_reference(hsa(qb, kb, vb, h), qb, kb, vb, h).relative_limit is None
