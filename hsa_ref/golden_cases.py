"""Golden cases: fixed HSA inputs with float64 reference outputs, for ports in any language.

Each case is one ``hsa-case/1`` JSON file (SPEC section 7) in ``hsa_ref/golden/``, listed in
``hsa_ref/golden/index.json``. Inputs are float64 numbers that are exactly representable in
float32, bfloat16 and float16, so a port in any of those dtypes reads exactly the inputs the
reference saw. Every file stores

- ``out`` and ``grad_q``, ``grad_k``, ``grad_v`` (``grad_positions``): the float64 reference
  output and its autograd gradients of ``sum(grad_out * out)`` for the stored ``grad_out``,
- ``references``: the same quantities evaluated in float32, bfloat16 and float16 (``ref_t``),
- ``tolerance``: the numbers of SPEC section 6's rule per dtype and quantity, so a port can
  apply it without Python.

Regenerate the set with ``python -m hsa_ref.golden_cases --write`` and check that the stored files
still match a fresh generation with ``python -m hsa_ref.golden_cases --check``. The format is
described in ``docs/PORTING.md``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .formats import (
    CASE_FORMAT,
    GOLDEN_DIR,
    INDEX_FORMAT,
    QUANTITIES,
    SET_VERSION,
    GoldenCase,
    dtype_name,
    load_cases,
    load_index,
    quantity_kind,
    write_cases,
)
from .hierarchy import Hierarchy
from .reference import family_shares, hsa_attention_matrix, log_partition, sibling_log_partition
from .tolerance import (
    ATOL_FACTOR,
    DTYPES,
    FLOAT32_RELATIVE,
    FLOAT32_RELATIVE_MAX_SCORE,
    MAX_ROUNDED_SCORE,
    PERTURBATIONS,
    REFERENCE_FACTOR,
    agreement,
    eps,
    evaluate_reference,
    gradient_magnitude,
    low_precision_dtype,
    perturbation_errors,
    score_magnitude,
)
from .validation import check_scale

__all__ = [
    "CASE_FORMAT",
    "GOLDEN_DIR",
    "INDEX_FORMAT",
    "QUANTITIES",
    "SET_VERSION",
    "CaseSpec",
    "GoldenCase",
    "case_specs",
    "drift",
    "generate",
    "load_cases",
    "load_index",
    "main",
    "write_cases",
]

HUGE_SCORE = 1e4


# ---------------------------------------------------------------------------- case definitions
@dataclass(frozen=True)
class CaseSpec:
    """How one golden case is made: its tree, sizes, options and the seed of its inputs.

    ``scale=None`` means the default ``1/sqrt(d_k)`` (implementations are called with
    ``scale=None``); ``max_score`` instead picks the scale so that the largest ``|s_ij|`` within
    a tree equals it. ``inputs`` is ``"normal"``, ``"keys_are_queries"`` or ``"repeated_rows"``;
    ``offset`` is added to every entry of ``q`` and ``k`` (inputs far from the origin).
    """

    name: str
    description: str
    hierarchy: Hierarchy
    d_k: int
    d_v: int
    seed: int
    energy: str = "dot"
    scale: float | None = None
    max_score: float | None = None
    positions_dim: int = 0
    inputs: str = "normal"
    value_scale: float = 1.0
    offset: float = 0.0


def _random_nested(rng: random.Random, n: int, max_b: int, depth_left: int) -> Any:
    """A random nested-list tree over ``n`` placeholder leaves with some single-child families."""
    if n == 1:
        node: Any = None
        for _ in range(rng.choice([0, 0, 0, 1, 2]) if depth_left > 0 else 0):
            node = [node]
            depth_left -= 1
        return node
    if depth_left <= 1:
        return [None] * n
    if rng.random() < 0.1:
        return [_random_nested(rng, n, max_b, depth_left - 1)]
    b = rng.randint(2, min(n, max_b))
    cuts = sorted(rng.sample(range(1, n), b - 1))
    sizes = [hi - lo for lo, hi in zip([0, *cuts], [*cuts, n], strict=True)]
    return [_random_nested(rng, size, max_b, depth_left - 1) for size in sizes]


def _number(nested: Any, counter: list[int]) -> Any:
    if nested is None:
        counter[0] += 1
        return counter[0] - 1
    return [_number(child, counter) for child in nested]


def _shuffled(h: Hierarchy, seed: int) -> Hierarchy:
    """``h`` with leaf rows and family ids permuted (trees of a forest interleave)."""
    rng = random.Random(seed)
    leaves = list(range(h.num_leaves))
    families = list(h.families)
    rng.shuffle(leaves)
    rng.shuffle(families)
    return h.relabel(leaves, families)


def random_tree(seed: int, num_leaves: int, max_branching: int, max_depth: int) -> Hierarchy:
    """A deterministic random tree (the same on every machine: Python's ``random``)."""
    rng = random.Random(seed)
    nested = _random_nested(rng, num_leaves, max_branching, max_depth)
    return Hierarchy.from_nested(_number(nested, [0]) if nested is not None else 0)


def _caterpillar(depth: int) -> Hierarchy:
    nested: Any = [0, 1]
    for leaf in range(2, depth + 1):
        nested = [nested, leaf]
    return Hierarchy.from_nested(nested)


def case_specs() -> list[CaseSpec]:
    """The golden set: every shape and option that an implementation can get wrong."""
    one_family = Hierarchy.one_family
    unbalanced = Hierarchy.from_nested(
        [0, [1, 2, [3, 4, 5, [6]]], [[7, 8], 9], [[[10]]], [11, 12, 13, 14, 15, 16]]
    )
    single_children = Hierarchy.from_nested([[[[0, 1]]], [[2]], [3, [[4, 5]]], [[[6, 7, 8]]]])
    big_and_small = Hierarchy.from_nested([0, list(range(1, 21)), [21, [22, 23]]])
    large_b_deep = Hierarchy.from_nested(
        [list(range(40)), [[40, 41], [42, [43, 44, 45]]], [[[46]]], 47]
    )
    interleaved = _shuffled(
        Hierarchy.forest(
            [
                Hierarchy.balanced(4, 2),
                Hierarchy.from_nested([[0, 1], 2, [3, [4]]]),
                Hierarchy.from_parents([-1], 1),
                Hierarchy.from_nested([[[0]]]),
                Hierarchy.balanced(6, 3),
            ]
        ),
        7,
    )
    chains_forest = _shuffled(
        Hierarchy.forest([_caterpillar(5), Hierarchy.from_nested([[[[0]]]]), unbalanced]), 11
    )
    singletons = Hierarchy.from_parents([-1] * 5, 5)
    mixed = _shuffled(random_tree(3, 30, 5, 5), 3)
    big = _shuffled(random_tree(5, 200, 9, 6), 5)
    return [
        CaseSpec(
            "one_leaf",
            "a one-leaf tree (the root is a leaf): returns v",
            Hierarchy.from_parents([-1], 1),
            3,
            2,
            1,
        ),
        CaseSpec(
            "one_leaf_under_chain",
            "one leaf under three single-child families: returns v",
            Hierarchy.from_nested([[[0]]]),
            4,
            3,
            2,
        ),
        CaseSpec("pair", "the smallest family: two leaves", one_family(2), 4, 4, 3),
        CaseSpec(
            "one_family", "one family over 7 leaves: softmax attention", one_family(7), 4, 5, 4
        ),
        CaseSpec(
            "one_family_large_b",
            "one family with b = 96: softmax attention",
            one_family(96),
            4,
            3,
            5,
            scale=0.75,
        ),
        CaseSpec(
            "balanced_binary",
            "balanced binary tree, N = 32, depth 5",
            Hierarchy.balanced(32, 2),
            6,
            4,
            6,
        ),
        CaseSpec(
            "balanced_ternary", "balanced ternary tree, N = 27", Hierarchy.balanced(27, 3), 4, 4, 7
        ),
        CaseSpec(
            "balanced_b8",
            "balanced tree of b = 8 over 64 leaves",
            Hierarchy.balanced(64, 8),
            8,
            4,
            8,
        ),
        CaseSpec(
            "uneven_segments",
            "tokens / sentences / paragraphs of uneven lengths",
            Hierarchy.from_segments([[3, 5, 2, 4, 1, 3, 6], [2, 3, 2]]),
            5,
            3,
            9,
        ),
        CaseSpec(
            "deep_chain",
            "caterpillar of depth 12: each family a subtree and one leaf",
            _caterpillar(12),
            4,
            3,
            10,
        ),
        CaseSpec(
            "single_child_families",
            "chains of single-child families at several depths",
            single_children,
            4,
            3,
            11,
        ),
        CaseSpec(
            "unbalanced",
            "unbalanced, mixed-depth tree with leaves beside families",
            unbalanced,
            4,
            4,
            12,
        ),
        CaseSpec(
            "leaf_beside_big_family",
            "children of sizes 1, 20 and 3: the |B|/|A| weights",
            big_and_small,
            4,
            3,
            13,
        ),
        CaseSpec(
            "large_b_in_deep_tree",
            "a family of 40 leaves beside small deep subtrees",
            large_b_deep,
            4,
            3,
            14,
        ),
        CaseSpec("random_mixed", "random tree, N = 30, b <= 5, shuffled ids", mixed, 4, 4, 15),
        CaseSpec(
            "random_large", "random tree, N = 200, b <= 9, depth <= 6, shuffled ids", big, 4, 2, 16
        ),
        CaseSpec(
            "forest_interleaved",
            "forest of 5 trees (two one-leaf) with interleaved rows",
            interleaved,
            4,
            3,
            17,
        ),
        CaseSpec(
            "forest_of_one_leaf_trees",
            "5 one-leaf trees and no family: returns v",
            singletons,
            3,
            3,
            18,
        ),
        CaseSpec(
            "forest_with_chains",
            "forest of a caterpillar, a chained leaf, an unbalanced tree",
            chains_forest,
            4,
            3,
            19,
        ),
        CaseSpec("dv_not_dk", "d_k = 3, d_v = 9", unbalanced, 3, 9, 20, value_scale=3.0),
        CaseSpec("dk_one", "d_k = 1, d_v = 5", Hierarchy.balanced(9, 3), 1, 5, 21),
        CaseSpec("custom_scale", "explicit scale 0.8125", unbalanced, 6, 3, 22, scale=0.8125),
        CaseSpec(
            "negative_scale",
            "explicit negative scale -1.5",
            Hierarchy.balanced(12, 3),
            4,
            3,
            23,
            scale=-1.5,
        ),
        CaseSpec(
            "tiny_scores",
            "scale 1e-6: close to uniform averaging",
            unbalanced,
            4,
            3,
            24,
            scale=1e-6,
        ),
        CaseSpec(
            "huge_scores",
            "max |s| = 1e4 on an unbalanced tree: no overflow",
            unbalanced,
            4,
            3,
            25,
            max_score=HUGE_SCORE,
        ),
        CaseSpec(
            "huge_scores_one_family",
            "max |s| = 1e4 on one family",
            one_family(10),
            4,
            3,
            26,
            max_score=HUGE_SCORE,
        ),
        CaseSpec(
            "huge_scores_forest",
            "max |s| = 1e4 on an interleaved forest",
            interleaved,
            4,
            3,
            27,
            max_score=HUGE_SCORE,
        ),
        CaseSpec(
            "distance_one_family",
            "distance energy, one family",
            one_family(8),
            4,
            3,
            28,
            energy="distance",
        ),
        CaseSpec(
            "distance_mixed",
            "distance energy, random mixed-depth tree",
            mixed,
            5,
            3,
            29,
            energy="distance",
        ),
        CaseSpec(
            "distance_forest",
            "distance energy, forest with chains, scale 0.3",
            chains_forest,
            4,
            4,
            30,
            energy="distance",
            scale=0.3,
        ),
        CaseSpec(
            "distance_far_from_origin",
            "distance energy, q and k = 40 + noise: no cancellation",
            mixed,
            5,
            3,
            36,
            energy="distance",
            offset=40.0,
        ),
        CaseSpec(
            "distance_huge_scores",
            "distance energy, max |s| = 1e4",
            unbalanced,
            4,
            3,
            31,
            energy="distance",
            max_score=HUGE_SCORE,
        ),
        CaseSpec(
            "ties_keys_are_queries",
            "k = q: equal scores on the diagonal",
            unbalanced,
            4,
            3,
            32,
            inputs="keys_are_queries",
        ),
        CaseSpec(
            "ties_repeated_rows",
            "every query row equal",
            Hierarchy.balanced(16, 4),
            4,
            3,
            33,
            inputs="repeated_rows",
        ),
        CaseSpec(
            "positions",
            "positional vectors (d_p = 3) on a mixed-depth tree",
            unbalanced,
            4,
            3,
            34,
            positions_dim=3,
        ),
        CaseSpec(
            "positions_forest_distance",
            "positions on an interleaved forest, distance energy",
            interleaved,
            4,
            3,
            35,
            energy="distance",
            positions_dim=2,
        ),
    ]


# ---------------------------------------------------------------------------- the cases
STRUCTURE_MAX_LEAVES = 32


def structure_record(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None,
) -> dict[str, Any]:
    """SPEC section 3's intermediate values (float64) for a port to compare step by step:
    ``theta``, and per node ``F``, ``L`` and ``mu`` (``None`` at roots)."""
    kw = {"scale": scale, "energy": energy, "positions": positions}
    theta = hsa_attention_matrix(q, k, hierarchy, **kw)
    f = log_partition(q, k, hierarchy, **kw)
    lse = sibling_log_partition(q, k, hierarchy, **kw)
    shares = family_shares(q, k, hierarchy, **kw)
    mu: list[float | None] = [None] * hierarchy.num_nodes
    for family, share in shares.items():
        for r, child in enumerate(hierarchy.children(family)):
            mu[child] = share[r, r].item()
    lse_list = [None if m is None else lse[x].item() for x, m in enumerate(mu)]
    return {"theta": theta.tolist(), "F": f.tolist(), "L": lse_list, "mu": mu}


def half_exact(a: np.ndarray) -> torch.Tensor:
    """``a`` rounded to a float64 tensor of numbers exact in bfloat16 *and* float16.

    bfloat16 keeps 8 significant bits; values too small for float16's normal range
    (``|x| < 2**-14``) become 0. Every dtype of :data:`DTYPES` then reads exactly these inputs.
    """
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(torch.bfloat16).double()
    t = torch.where(t.abs() < 2.0**-14, 0.0, t)
    if torch.isinf(t.half()).any():
        raise ValueError("input too large for float16")
    return t


RULE_TEXT = (
    "a result x (out, or a gradient grad_*) computed from inputs in dtype t passes when it has no "
    "NaN or inf, max|x - expected| <= limits[t][x].max_abs_error = reference_factor[kind] * "
    "reference_error + atol (reference_error = the larger of perturbation_error and "
    "max|references[r][x] - expected| * eps[t] / eps[r], r = t, or float32 for t = float64; "
    "atol = atol_factor * eps[t] * "
    "magnitude, magnitude = max|expected| for out and gradient_magnitude for gradients), and "
    "||x - expected|| / ||expected|| <= relative_limit unless that is null; a limit with "
    "checkable = false (the reference in t overflows, eps[t] * score_max > max_rounded_score, "
    "or max_abs_error >= max|expected|) is not checkable in t: reported apart, never passed"
)


def tolerance_record(
    expected: dict[str, torch.Tensor],
    references: dict[str, dict[str, torch.Tensor]],
    perturbation: dict[str, dict[str, float]],
    *,
    score_max: float,
) -> dict[str, Any]:
    """The ``tolerance`` object of a case: SPEC section 6's numbers per dtype and quantity."""
    grads = {name: t for name, t in expected.items() if name != "out"}
    magnitude = gradient_magnitude(grads)
    record: dict[str, Any] = {
        "rule": RULE_TEXT,
        "score_max": score_max,
        "gradient_magnitude": magnitude,
        "atol_factor": ATOL_FACTOR,
        "reference_factor": dict(REFERENCE_FACTOR),
        "float32_relative": FLOAT32_RELATIVE,
        "float32_relative_max_score": FLOAT32_RELATIVE_MAX_SCORE,
        "perturbations": PERTURBATIONS,
        "max_rounded_score": MAX_ROUNDED_SCORE,
        "eps": {label: eps(dtype) for label, dtype in DTYPES.items()},
        "limits": {},
    }
    for label, dtype in DTYPES.items():
        low = dtype_name(low_precision_dtype(dtype))
        limits = record["limits"][label] = {}
        for quantity, exact in expected.items():
            rule = agreement(
                exact,
                exact,
                references[low][quantity],
                dtype=dtype,
                score_max=score_max,
                kind=quantity_kind(quantity),
                magnitude=magnitude if quantity != "out" else None,
                perturbation_error=perturbation[label][quantity],
            )
            limits[quantity] = {
                "reference": low,
                "perturbation_error": perturbation[label][quantity],
                "reference_error": rule.reference_error,
                "atol": rule.atol,
                "max_abs_error": rule.tolerance,
                "relative_limit": rule.relative_limit,
                "checkable": rule.checkable,
            }
    return record


def build_case(spec: CaseSpec) -> GoldenCase:
    """Draw the inputs of ``spec`` and evaluate the reference in every dtype, with gradients."""
    h = spec.hierarchy
    rng = np.random.RandomState(spec.seed)  # a frozen stream: the same inputs everywhere
    n = h.num_leaves
    q = half_exact(spec.offset + rng.standard_normal((n, spec.d_k)))
    k = half_exact(spec.offset + rng.standard_normal((n, spec.d_k)))
    v = half_exact(spec.value_scale * rng.standard_normal((n, spec.d_v)))
    if spec.inputs == "keys_are_queries":
        k = q.clone()
    elif spec.inputs == "repeated_rows":
        q[1:] = q[0]
    elif spec.inputs != "normal":
        raise ValueError(f"unknown inputs kind {spec.inputs!r}")
    pos = (
        half_exact(0.5 * rng.standard_normal((h.num_nodes, spec.positions_dim)))
        if spec.positions_dim
        else None
    )
    grad_out = half_exact(rng.standard_normal((n, spec.d_v)))
    scale = spec.scale
    if spec.max_score is not None:
        # Four significant digits keep the scale identical on every machine.
        unit = score_magnitude(q, k, h, scale=1.0, energy=spec.energy)
        scale = float(f"{spec.max_score / unit:.4g}")
    return make_case(
        spec.name,
        spec.description,
        h,
        q,
        k,
        v,
        grad_out,
        energy=spec.energy,
        scale=scale,
        positions=pos,
    )


def make_case(
    name: str,
    description: str,
    hierarchy: Hierarchy,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grad_out: torch.Tensor,
    *,
    energy: str = "dot",
    scale: float | None = None,
    positions: torch.Tensor | None = None,
) -> GoldenCase:
    """A case for given 2-D inputs: the reference in every dtype, gradients and limits.

    The inputs are used as float64; a port reads them exactly only if they are exact in its
    dtype (the generated set makes sure they are in all of :data:`DTYPES`).
    """
    h = hierarchy
    q, k, v, grad_out = (x.detach().double().cpu() for x in (q, k, v, grad_out))
    pos = positions.detach().double().cpu() if positions is not None else None
    scale_value = check_scale(scale, q.shape[-1])
    kw = {"scale": scale_value, "energy": energy, "positions": pos, "grad_out": grad_out}

    def evaluated(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        res = evaluate_reference(q, k, v, h, **kw, dtype=dtype)
        return {"out": res.out} | {f"grad_{n}": g for n, g in res.grads.items()}

    exact = evaluate_reference(q, k, v, h, **kw)
    expected = {"out": exact.out} | {f"grad_{n}": g for n, g in exact.grads.items()}
    references = {
        label: evaluated(dtype) for label, dtype in DTYPES.items() if dtype != torch.float64
    }
    perturbation = {
        label: {
            ("out" if n == "out" else f"grad_{n}"): err
            for n, err in perturbation_errors(q, k, v, h, **kw, dtype=dtype, exact=exact).items()
        }
        for label, dtype in DTYPES.items()
    }
    score_max = score_magnitude(q, k, h, scale=scale_value, energy=energy, positions=pos)
    structure = None
    if h.num_leaves <= STRUCTURE_MAX_LEAVES:
        structure = structure_record(q, k, h, scale=scale_value, energy=energy, positions=pos)
    return GoldenCase(
        name=name,
        description=description,
        hierarchy=h,
        energy=energy,
        scale=scale_value,
        scale_is_default=scale is None,
        q=q,
        k=k,
        v=v,
        positions=pos,
        grad_out=grad_out,
        expected=expected,
        references=references,
        tolerance=tolerance_record(expected, references, perturbation, score_max=score_max),
        structure=structure,
    )


def generate(names: Sequence[str] | None = None) -> list[GoldenCase]:
    """Fresh golden cases (all of :func:`case_specs`, or those named)."""
    specs = case_specs()
    if names is not None:
        known = {s.name for s in specs}
        unknown = set(names) - known
        if unknown:
            raise ValueError(f"unknown golden cases {sorted(unknown)}")
        specs = [s for s in specs if s.name in set(names)]
    return [build_case(s) for s in specs]


# ---------------------------------------------------------------------------- drift
def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() if a.numel() else 0.0


def _flat(x: Any) -> list[Any]:
    return [y for row in x for y in row] if x and isinstance(x[0], list) else list(x)


def drift(stored: GoldenCase, fresh: GoldenCase) -> list[str]:
    """Differences between a stored case and a fresh generation; empty when they agree.

    Structure, options and inputs must be identical. Results may differ by rounding between
    machines: each float64 quantity within its float64 limit, each reference evaluated in ``t``
    within the limit of ``t``; ``score_max`` and ``gradient_magnitude`` to 1e-12 relative; the
    stored limits must be the rule's numbers for the stored results.
    """
    problems = []
    for field in ("name", "description", "hierarchy", "energy", "scale", "scale_is_default"):
        if getattr(stored, field) != getattr(fresh, field):
            problems.append(f"{field}: stored {getattr(stored, field)!r} != fresh")
    for field in ("q", "k", "v", "positions", "grad_out"):
        a, b = getattr(stored, field), getattr(fresh, field)
        if (a is None) != (b is None) or (
            a is not None and (a.shape != b.shape or not torch.equal(a, b))
        ):
            problems.append(f"{field}: stored inputs differ from a fresh generation")
    if stored.quantities != fresh.quantities or stored.references.keys() != fresh.references.keys():
        problems.append("stored quantities or reference dtypes differ from a fresh generation")
    if problems:
        return problems
    tol, new = stored.tolerance, fresh.tolerance
    for key in ("score_max", "gradient_magnitude"):
        if not math.isclose(tol[key], new[key], rel_tol=1e-12, abs_tol=1e-300):
            problems.append(f"tolerance.{key}: stored {tol[key]!r}, fresh {new[key]!r}")
    for quantity in stored.quantities:
        pairs = [(quantity, "float64", stored.expected[quantity], fresh.expected[quantity])]
        pairs += [
            (
                f"references.{label}.{quantity}",
                label,
                stored.references[label][quantity],
                fresh.references[label][quantity],
            )
            for label in stored.references
        ]
        for field, label, a, b in pairs:
            limit = tol["limits"][label][quantity]["max_abs_error"]
            if a.shape != b.shape:
                problems.append(f"{field}: shape {tuple(a.shape)} != fresh {tuple(b.shape)}")
            elif not _max_abs(a, b) <= limit:
                problems.append(
                    f"{field}: max |stored - fresh| = {_max_abs(a, b):.3g} > {limit:.3g}"
                )
    if (stored.structure is None) != (fresh.structure is None):
        problems.append("structure: stored and fresh differ in whether they carry it")
    elif stored.structure is not None:
        for key in ("theta", "F", "L", "mu"):
            a, b = stored.structure[key], fresh.structure[key]
            nums = [(x, y) for x, y in zip(_flat(a), _flat(b), strict=True) if x is not None]
            if [x is None for x in _flat(a)] != [y is None for y in _flat(b)] or any(
                not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in nums
            ):
                problems.append(f"structure.{key}: stored values differ from a fresh generation")
    perturbation = {
        label: {quantity: limit["perturbation_error"] for quantity, limit in limits.items()}
        for label, limits in tol["limits"].items()
    }
    for label, limits in new["limits"].items():
        for quantity, limit in limits.items():
            a, b = perturbation[label][quantity], limit["perturbation_error"]
            if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-300):
                problems.append(
                    f"tolerance.limits.{label}.{quantity}.perturbation_error: {a!r} != {b!r}"
                )
    recomputed = tolerance_record(
        stored.expected, stored.references, perturbation, score_max=tol["score_max"]
    )
    if recomputed != tol:
        problems.append(
            "tolerance: the stored limits are not the rule's numbers for the stored results"
        )
    return problems


# ---------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``--write [DIR]`` regenerates, ``--check [DIR]`` compares, ``--path`` prints the folder."""
    parser = argparse.ArgumentParser(
        prog="python -m hsa_ref.golden_cases",
        description="Regenerate or check the golden hsa-case/1 files.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", nargs="?", const=str(GOLDEN_DIR), metavar="DIR")
    group.add_argument("--check", nargs="?", const=str(GOLDEN_DIR), metavar="DIR")
    group.add_argument("--path", action="store_true", help="print the golden folder")
    args = parser.parse_args(argv)
    if args.path:
        print(GOLDEN_DIR)
        return 0
    fresh = generate()
    if args.write:
        paths = write_cases(fresh, args.write)
        size = sum(p.stat().st_size for p in paths)
        print(f"wrote {len(paths)} cases ({size / 1e6:.2f} MB) to {args.write}")
        return 0
    try:
        stored = {c.name: c for c in load_cases(args.check)}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = 0
    for case in fresh:
        problems = ["missing"] if case.name not in stored else drift(stored[case.name], case)
        for problem in problems:
            print(f"DRIFT {case.name}: {problem}")
        failures += bool(problems)
    extra = sorted(stored.keys() - {c.name for c in fresh})
    for name in extra:
        print(f"DRIFT {name}: stored but no longer generated")
    print(f"{len(fresh) - failures} of {len(fresh)} golden cases match a fresh generation")
    return 1 if failures or extra else 0


if __name__ == "__main__":
    raise SystemExit(main())
