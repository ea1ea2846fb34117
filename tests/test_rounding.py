"""The running error bound (hsa_ref.rounding): each rule encloses what it claims to.

Two claims per rule: every value within the operands' radii gives a result within the result's
radius (the propagation; sampled at the corners and inside), and an evaluation in the modelled
dtype lands within the radius of the exact result (the rounding).
"""

from __future__ import annotations

import math

import pytest
import torch

from hsa_ref.rounding import LAMBDA, Bounded, RoundingModel, bounded

OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b.abs() + 1.0),
    "exp": lambda a, b: torch.exp(a),
    "log": lambda a, b: torch.log(a.abs() + 0.5),
    "square": lambda a, b: a**2,
    "mm": lambda a, b: a @ b.T,
    "sum": lambda a, b: a.sum(-1),
    "logsumexp": lambda a, b: torch.logsumexp(3 * a, -1),
    "log_softmax": lambda a, b: torch.log_softmax(3 * a, -1),
    "index_add": lambda a, b: torch.zeros(2, 4, dtype=a.dtype).index_add(
        0, torch.tensor([0, 1, 1, 0, 1]), a[:, :4] * b[:, :4]
    ),
}


def _operands(seed: int, radius: float):
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in "ab")
    ra, rb = (radius * torch.rand(5, 6, generator=g, dtype=torch.float64) for _ in "ab")
    return a, b, ra, rb, g


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("radius", [1e-6, 0.05, 0.5])
def test_propagation_encloses_every_perturbation(name, radius):
    op = OPS[name]
    for seed in range(3):
        a, b, ra, rb, g = _operands(seed, radius)
        with bounded(torch.float64):
            result = op(Bounded(a, ra), Bounded(b, rb))
        centre = op(a, b)
        assert torch.equal(result.value, centre)
        for draw in range(40):
            if draw < 4:  # corners: every entry at an end of its interval
                sa = torch.where(torch.rand(a.shape, generator=g) < 0.5, -1.0, 1.0)
                sb = torch.where(torch.rand(b.shape, generator=g) < 0.5, -1.0, 1.0)
            else:
                sa = 2 * torch.rand(a.shape, generator=g, dtype=torch.float64) - 1
                sb = 2 * torch.rand(b.shape, generator=g, dtype=torch.float64) - 1
            moved = op(a + sa * ra, b + sb * rb)
            slack = 1e-12 * (1 + centre.abs())  # float64 arithmetic of the test itself
            assert torch.all((moved - centre).abs() <= result.radius + slack), (name, draw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", OPS)
def test_rounding_encloses_an_evaluation_in_the_dtype(name, dtype):
    op = OPS[name]
    for seed in range(5):
        a, b, _, _, _ = _operands(seed, 0.0)
        a, b = a.to(dtype).double(), b.to(dtype).double()  # exact in the dtype
        with bounded(dtype):
            result = op(Bounded(a), Bounded(b))
        low = op(a.to(dtype), b.to(dtype)).double()
        assert torch.all((low - result.value).abs() <= result.radius), (name, dtype, seed)


def test_sum_error_is_the_smaller_of_the_worst_case_and_the_probabilistic_bound():
    model = RoundingModel(torch.float32)
    assert model.sum_error(1) == 0
    assert model.sum_error(5) == pytest.approx(4 * model.u_acc)
    n = 10_001
    assert model.sum_error(n) == pytest.approx(LAMBDA * math.sqrt(n - 1) * model.u_acc)
    assert model.dot_error(1) == pytest.approx(model.u_acc)
    half = RoundingModel(torch.bfloat16)
    assert half.u_acc == RoundingModel(torch.float32).u
    assert half.u == 2.0**-8


def test_a_sequential_float32_sum_stays_within_the_bound():
    """Plain left-to-right summation of random terms, the worst order torch offers."""
    g = torch.Generator().manual_seed(0)
    for n in (10, 1000, 100_000):
        x = torch.randn(n, generator=g, dtype=torch.float64).float()
        with bounded(torch.float32):
            result = Bounded(x.double()).sum()
        sequential = torch.cumsum(x, 0)[-1].double()
        assert (sequential - result.value).abs() <= result.radius


def test_constants_that_the_dtype_cannot_hold_carry_their_rounding():
    with bounded(torch.float32):
        exact = Bounded(torch.ones(3, dtype=torch.float64)) * 0.09375  # 3 / 32
        inexact = Bounded(torch.ones(3, dtype=torch.float64)) * 0.1
    assert torch.all(inexact.radius > exact.radius)


def test_an_operation_without_a_rule_is_refused_by_name():
    with bounded(torch.float32), pytest.raises(NotImplementedError, match=r"aten\.sin"):
        torch.sin(Bounded(torch.ones(2, dtype=torch.float64)))


def test_bounded_arithmetic_needs_a_model():
    with pytest.raises(RuntimeError, match="rounding model"):
        Bounded(torch.ones(2, dtype=torch.float64)) * 2.0
