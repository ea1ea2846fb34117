"""The float64 reference against the maths: softmax limit, invariants and optimality
(docs/HSA.md sections 3-4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from hsa_ref import (
    Hierarchy,
    attention_from_shares,
    hsa_attention_matrix,
    hsa_reference,
    kl_to_softmax,
    log_partition,
    softmax_kl_lower_bound,
)
from hsa_ref.conformance.strategies import hierarchies, hsa_cases


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _qkv(seed: int, n: int, d_k: int = 4, d_v: int = 3, batch: tuple[int, ...] = ()):
    return (
        _randn(seed, *batch, n, d_k),
        _randn(seed + 1, *batch, n, d_k),
        _randn(seed + 2, *batch, n, d_v),
    )


@given(
    n=st.integers(1, 20),
    d_k=st.integers(1, 6),
    d_v=st.integers(1, 6),
    batch=st.lists(st.integers(1, 3), max_size=2),
    scale=st.one_of(st.none(), st.floats(-3, 3)),
    seed=st.integers(0, 10**6),
)
def test_one_family_is_softmax_attention(n, d_k, d_v, batch, scale, seed):
    q, k, v = _qkv(seed, n, d_k, d_v, tuple(batch))
    h = Hierarchy.one_family(n)
    expected = F.scaled_dot_product_attention(q, k, v, scale=scale)
    torch.testing.assert_close(hsa_reference(q, k, v, h, scale=scale), expected, rtol=0, atol=1e-12)


@given(hsa_cases(hierarchy=hierarchies(max_leaves=16)))
def test_rows_sum_to_one_and_trees_do_not_mix(case):
    theta = hsa_attention_matrix(case.q, case.k, case.hierarchy, **case.kwargs())
    torch.testing.assert_close(theta.sum(-1), torch.ones_like(theta[..., 0]), rtol=0, atol=1e-12)
    assert (theta >= 0).all()
    root = torch.as_tensor(case.hierarchy.root_of[: case.hierarchy.num_leaves])
    assert (theta[..., root[:, None] != root[None, :]] == 0).all()


@given(hsa_cases(hierarchy=hierarchies(max_leaves=14), max_batch_dims=0))
def test_theta_is_constant_on_sibling_blocks(case):
    h = case.hierarchy
    theta = hsa_attention_matrix(case.q, case.k, h, **case.kwargs())
    blocks: dict[tuple[int, int], float] = {}
    for i in range(h.num_leaves):
        for j in range(h.num_leaves):
            block = h.sibling_block(i, j)
            if block is None or i == j:
                continue
            value = theta[i, j].item()
            first = blocks.setdefault(block, value)
            assert abs(value - first) <= 1e-12 * max(1.0, abs(first)), (block, i, j)


def test_sibling_order_does_not_matter():
    q, k, v = _qkv(3, 6)
    a = Hierarchy.from_nested([[0, 1], [2, 3, 4], 5])
    b = Hierarchy.from_nested([5, [4, 2, 3], [1, 0]])
    torch.testing.assert_close(hsa_reference(q, k, v, a), hsa_reference(q, k, v, b))


def test_one_leaf_tree_returns_v():
    q, k, v = _qkv(0, 1, batch=(2,))
    for h in (Hierarchy.from_parents([-1], 1), Hierarchy.from_nested([[[0]]])):
        torch.testing.assert_close(hsa_reference(q * 100, k, v, h), v, rtol=0, atol=0)


def test_batch_dims_match_per_example_and_broadcast():
    h = Hierarchy.from_nested([[0, 1, 2], [3, [4, 5]]])
    q, k, v = _qkv(5, 6, batch=(2, 3))
    out = hsa_reference(q, k, v, h)
    for a in range(2):
        for b in range(3):
            torch.testing.assert_close(out[a, b], hsa_reference(q[a, b], k[a, b], v[a, b], h))
    shared_k = k[0, 0]
    torch.testing.assert_close(
        hsa_reference(q, shared_k, v, h), hsa_reference(q, shared_k.expand_as(k), v, h)
    )


@given(hsa_cases(hierarchy=hierarchies(max_leaves=12), energies=("dot",)))
def test_distance_energy_equals_dot_for_unit_vectors(case):
    q = F.normalize(case.q, dim=-1)
    k = F.normalize(case.k, dim=-1)
    kw = {"scale": case.scale}
    torch.testing.assert_close(
        hsa_reference(q, k, case.v, case.hierarchy, energy="distance", **kw),
        hsa_reference(q, k, case.v, case.hierarchy, energy="dot", **kw),
        rtol=1e-9,
        atol=1e-11,
    )


def test_positions_on_one_family_add_to_scores():
    n = 6
    h = Hierarchy.one_family(n)
    q, k, v = _qkv(7, n)
    pos = _randn(9, n + 1, 2)
    bias = pos[:n] @ pos[:n].T
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(hsa_reference(q, k, v, h, positions=pos), expected)
    zero = torch.zeros(n + 1, 2, dtype=torch.float64)
    torch.testing.assert_close(hsa_reference(q, k, v, h, positions=zero), hsa_reference(q, k, v, h))


def test_positions_enter_block_energies():
    h = Hierarchy.from_nested([[0, 1], [2, 3]])  # families 5, 6 under root 4
    q, k, _ = _qkv(2, 4)
    pos = torch.zeros(7, 1, dtype=torch.float64)
    pos[5, 0], pos[6, 0] = 3.0, 2.0  # raises e between the two families by 6
    theta_pos = hsa_attention_matrix(q, k, h, positions=pos)
    theta = hsa_attention_matrix(q, k, h)
    assert theta_pos[0, 2] > theta[0, 2]


def test_reference_in_low_precision_is_close():
    h = Hierarchy.balanced(9, 3)
    q, k, v = _qkv(11, 9)
    ref64 = hsa_reference(q, k, v, h)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 5e-2), (torch.float16, 5e-3)):
        out = hsa_reference(q, k, v, h, dtype=dtype)
        assert out.dtype == dtype
        assert (out.double() - ref64).abs().max() < tol


def test_huge_scores_stay_finite():
    h = Hierarchy.from_nested([[0, 1, [2, 3]], [4, 5], 6])
    q, k, v = _qkv(1, 7)
    out = hsa_reference(q, k, v, h, scale=1e4 / 2)
    assert torch.isfinite(out).all()
    theta = hsa_attention_matrix(q, k, h, scale=1e4 / 2)
    torch.testing.assert_close(theta.sum(-1), torch.ones(7, dtype=torch.float64))


# --------------------------------------------------------------- optimality (docs/HSA.md section 4)
@given(hsa_cases(hierarchy=hierarchies(max_leaves=10), score_magnitudes=(0.3, 1.0, 4.0)))
def test_kl_of_hsa_equals_the_closed_form_minimum(case):
    h = case.hierarchy
    theta = hsa_attention_matrix(case.q, case.k, h, **case.kwargs())
    kl = kl_to_softmax(theta, case.q, case.k, h, **case.kwargs())
    bound = softmax_kl_lower_bound(case.q, case.k, h, **case.kwargs())
    torch.testing.assert_close(kl, bound, rtol=0, atol=1e-10)
    f = log_partition(case.q, case.k, h, **case.kwargs())
    assert f.shape == (*case.q.shape[:-2], h.num_nodes)


def _minimise_kl(h: Hierarchy, q: torch.Tensor, k: torch.Tensor, seed: int) -> torch.Tensor:
    """Minimise the KL sum over block-constant row-stochastic theta, parameterised by shares."""
    gen = torch.Generator().manual_seed(seed)
    logits = {
        a: torch.randn(len(h.children(a)), len(h.children(a)), generator=gen, dtype=torch.float64)
        .mul(2)
        .requires_grad_()
        for a in h.families
    }
    params = list(logits.values())

    def theta_of() -> torch.Tensor:
        shares = {a: torch.softmax(x, dim=-1) for a, x in logits.items()}
        return attention_from_shares(h, shares)

    opt = torch.optim.LBFGS(
        params,
        lr=1,
        max_iter=2000,
        tolerance_grad=1e-13,
        tolerance_change=1e-15,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = kl_to_softmax(theta_of(), q, k, h)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        return theta_of()


@pytest.mark.parametrize(
    "tree",
    [
        [[0, 1], [2, 3, 4]],
        [[0, [1, 2]], 3, [4, 5]],
        [[[0, 1], 2], [3, [4]]],
        [0, [1, 2, 3]],
    ],
    ids=["two-families", "mixed-depth", "deep-with-single-child", "leaf-and-family"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_numerical_minimiser_is_the_reference(tree, seed):
    h = Hierarchy.from_nested(tree)
    q, k, _ = _qkv(100 + seed, h.num_leaves, d_k=3)
    found = _minimise_kl(h, q, k, seed)
    expected = hsa_attention_matrix(q, k, h)
    assert (found - expected).abs().max() < 1e-5
    assert kl_to_softmax(found, q, k, h) >= softmax_kl_lower_bound(q, k, h) - 1e-12


def test_kl_is_infinite_across_trees():
    h = Hierarchy.forest([Hierarchy.balanced(2, 2), Hierarchy.balanced(2, 2)])
    q, k, _ = _qkv(0, 4)
    theta = torch.full((4, 4), 0.25, dtype=torch.float64)
    assert kl_to_softmax(theta, q, k, h) == float("inf")


# ---------------------------------------------------------------- input validation
H4 = Hierarchy.balanced(4, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"q": "x"}, TypeError, "q must be a torch.Tensor"),
        ({"hierarchy": [6, 6, -1]}, TypeError, "Hierarchy"),
        ({"q": torch.ones(4, 2, dtype=torch.long)}, TypeError, "floating-point"),
        ({"k": torch.ones(4, 2, dtype=torch.float32)}, TypeError, "one dtype"),
        ({"q": torch.ones(5, 2, dtype=torch.float64)}, ValueError, "hierarchy has 4 leaves"),
        ({"v": torch.ones(3, 2, dtype=torch.float64)}, ValueError, "v has 3 rows"),
        ({"k": torch.ones(4, 3, dtype=torch.float64)}, ValueError, "d_k"),
        ({"q": torch.ones(4, dtype=torch.float64)}, ValueError, "shape"),
        (
            {
                "q": torch.ones(2, 4, 2, dtype=torch.float64),
                "k": torch.ones(3, 4, 2, dtype=torch.float64),
            },
            ValueError,
            "broadcast",
        ),
        ({"energy": "cosine"}, ValueError, "energy"),
        ({"energy": 3}, TypeError, "energy"),
        ({"scale": float("nan")}, ValueError, "finite"),
        ({"scale": "1"}, TypeError, "scale"),
        ({"scale": True}, TypeError, "scale"),
        ({"positions": torch.ones(4, 2, dtype=torch.float64)}, ValueError, "one row per node"),
        ({"positions": [[0.0]] * 7}, TypeError, "positions"),
        (
            {
                "q": torch.ones(4, 0, dtype=torch.float64),
                "k": torch.ones(4, 0, dtype=torch.float64),
            },
            ValueError,
            "d_k >= 1",
        ),
    ],
)
def test_bad_input_is_rejected_by_name(kwargs, error, match):
    args = {
        "q": torch.ones(4, 2, dtype=torch.float64),
        "k": torch.ones(4, 2, dtype=torch.float64),
        "v": torch.ones(4, 2, dtype=torch.float64),
        "hierarchy": H4,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        hsa_reference(
            args["q"],
            args["k"],
            args["v"],
            args["hierarchy"],
            **{k: v for k, v in args.items() if k not in ("q", "k", "v", "hierarchy")},
        )


@pytest.mark.parametrize(
    "dtype", [torch.int64, "float32", None, torch.complex128, torch.float8_e4m3fn, torch.bool]
)
def test_reference_dtype_is_validated(dtype):
    h = Hierarchy.balanced(4, 2)
    q = torch.randn(4, 3, dtype=torch.float64)
    for fn, args in (
        (hsa_reference, (q, q, q, h)),
        (hsa_attention_matrix, (q, q, h)),
        (log_partition, (q, q, h)),
        (softmax_kl_lower_bound, (q, q, h)),
    ):
        with pytest.raises(TypeError, match="must be"):
            fn(*args, dtype=dtype)
