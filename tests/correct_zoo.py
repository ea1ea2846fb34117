"""Correct HSA implementations written differently: the rule must accept every one of them.

Each member computes HSA (docs/HSA.md sections 2-3) in the dtype
of its inputs, every intermediate rounded to that dtype, but in its own order of evaluation:

- :func:`dense_hsa` is a self-contained dense evaluation with three independent choices:
  block energies from the literal means of the scores or from the means of ``q`` and ``k``
  (``energies``); attention weights as products of shares or as exponentials of summed
  log-shares (``domain``); and sums accumulated by torch's own reductions, strictly one term
  after another (``sums="sequential"``), or in float64 and then rounded (``"wide"``);
- the reference and the programme themselves;
- any member on a relabelled problem (:func:`relabelled`): leaves permuted, families renamed
  (which reorders siblings), the rows permuted back.

:data:`ZOO` names them all, ready for ``hsa_ref.tolerance.limits(...)[quantity].judge``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from hsa_fast import hsa
from hsa_ref import Hierarchy, hsa_reference
from hsa_ref.validation import check_attention_inputs

Impl = Callable[..., torch.Tensor]


def _sum(x: torch.Tensor, dim: int, sums: str) -> torch.Tensor:
    """``x.sum(dim)`` with the chosen accumulation."""
    if sums == "sequential":
        return torch.cumsum(x, dim=dim).select(dim, -1)
    if sums == "wide":
        return x.double().sum(dim).to(x.dtype)
    return x.sum(dim)


def _matmul(a: torch.Tensor, b: torch.Tensor, sums: str) -> torch.Tensor:
    """``a @ b`` with the chosen accumulation."""
    if sums == "torch":
        return a @ b
    return _sum(a.unsqueeze(-1) * b.unsqueeze(-3), -2, sums)


def _scores(q, k, scale: float, energy: str, sums: str) -> torch.Tensor:
    if energy == "dot":
        return scale * _matmul(q, k.transpose(-1, -2), sums)
    diff = q.unsqueeze(-2) - k.unsqueeze(-3)
    return (-0.5 * scale) * _sum(diff * diff, -1, sums)


def _block_energies(q, k, kids, scale, energy, energies, sums, h) -> torch.Tensor:
    """``e_BC`` for the children ``kids`` of one family, ``(..., b, b)``."""
    member = torch.zeros(len(kids), q.shape[-2], dtype=q.dtype)
    for r, kid in enumerate(kids):
        member[r, h.leaves_under(kid)] = 1.0 / len(h.leaves_under(kid))
    if energies == "literal":
        s = _scores(q, k, scale, energy, sums)
        return _matmul(_matmul(member, s, sums), member.T, sums)
    q_bar, k_bar = _matmul(member, q, sums), _matmul(member, k, sums)
    if energy == "dot":
        return scale * _matmul(q_bar, k_bar.transpose(-1, -2), sums)
    # the variance form about the family's own centre, as the programme computes it
    centre = _sum(torch.cat([q_bar, k_bar], -2), -2, sums).unsqueeze(-2) / (2 * len(kids))
    q_c, k_c = q - centre, k - centre
    q_bar, k_bar = _matmul(member, q_c, sums), _matmul(member, k_c, sums)
    q_sq, k_sq = _matmul(member, q_c * q_c, sums), _matmul(member, k_c * k_c, sums)
    var_q = _sum(q_sq - q_bar * q_bar, -1, sums)
    var_k = _sum(k_sq - k_bar * k_bar, -1, sums)
    diff = q_bar.unsqueeze(-2) - k_bar.unsqueeze(-3)
    dist = _sum(diff * diff, -1, sums)
    return (-0.5 * scale) * (dist + var_q.unsqueeze(-1) + var_k.unsqueeze(-2))


def dense_hsa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    energies: str = "literal",
    domain: str = "linear",
    sums: str = "torch",
) -> torch.Tensor:
    """HSA in the dtype of ``q``, evaluated densely with the chosen forms (module docstring)."""
    c = check_attention_inputs(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)
    q, k, v, pos, h = c.q, c.k, c.v, c.positions, hierarchy
    n, dtype = h.num_leaves, q.dtype
    batch = q.shape[:-2]
    counts = torch.as_tensor(h.leaf_counts, dtype=dtype)
    s_own = _sum(q * k, -1, sums) * c.scale if c.energy == "dot" else None
    if s_own is None:
        diff = q - k
        s_own = (-0.5 * c.scale) * _sum(diff * diff, -1, sums)
    if pos is not None:
        s_own = s_own + _sum(pos[:n] * pos[:n], -1, sums)
    f: dict[int, torch.Tensor] = {i: s_own[..., i] for i in range(n)}
    log_shares: dict[int, torch.Tensor] = {}
    height = h.height
    for a in sorted(h.families, key=lambda x: (int(height[x]), x)):
        kids = h.children(a)
        e = _block_energies(q, k, kids, c.scale, c.energy, energies, sums, h)
        if pos is not None:
            e = e + _matmul(pos[kids], pos[kids].T, sums)
        eye = torch.eye(len(kids), dtype=torch.bool)
        own = torch.stack([f[b] for b in kids], dim=-1)
        logits = torch.where(eye, torch.diag_embed(own), e + torch.log(counts[kids]))
        top = logits.amax(-1, keepdim=True)
        lse = top.squeeze(-1) + torch.log(_sum(torch.exp(logits - top), -1, sums))
        f[a] = _sum(counts[kids] / counts[a] * lse, -1, sums)
        log_shares[a] = logits - lse.unsqueeze(-1)
    # theta, row by row of families, from the root down
    log_w = {r: torch.zeros(batch, dtype=dtype) for r in h.roots}
    w = {r: torch.ones(batch, dtype=dtype) for r in h.roots}
    theta = torch.zeros(*batch, n, n, dtype=dtype)
    for nodes in h.nodes_by_depth:
        for a in nodes.tolist():
            if a < n:
                continue
            kids = h.children(a)
            ls = log_shares[a]
            for r, b in enumerate(kids):
                for col, cc in enumerate(kids):
                    if col == r:
                        continue
                    to = h.leaves_under(cc)
                    if domain == "log":
                        value = torch.exp(log_w[a] + ls[..., r, col] - torch.log(counts[cc]))
                    else:
                        value = w[a] * torch.exp(ls[..., r, col]) / counts[cc]
                    rows = torch.tensor(h.leaves_under(b))
                    cols = torch.tensor(to)
                    theta[..., rows[:, None], cols[None, :]] = value[..., None, None]
                log_w[b] = log_w[a] + ls[..., r, r]
                w[b] = w[a] * torch.exp(ls[..., r, r])
    for i in range(n):
        theta[..., i, i] = torch.exp(log_w[i]) if domain == "log" else w[i]
    return _matmul(theta, v, sums)


def relabelled(impl: Impl, seed: int = 0) -> Impl:
    """``impl`` run on the same problem with leaves permuted and families renamed, the rows of
    the result permuted back (docs/HSA.md section 4: the same HSA, another order of evaluation)."""

    def run(q, k, v, hierarchy, *, positions=None, **kw):
        h = hierarchy
        gen = torch.Generator().manual_seed(seed)
        leaf_map = torch.randperm(h.num_leaves, generator=gen)
        family_map = h.num_leaves + torch.randperm(h.num_families, generator=gen)
        moved = h.relabel(leaf_map.tolist(), family_map.tolist())
        inverse = torch.argsort(leaf_map)
        if positions is not None:
            new_id = torch.cat([leaf_map, family_map])
            pos = torch.empty_like(positions)
            pos[new_id] = positions
            kw["positions"] = pos
        out = impl(q[..., inverse, :], k[..., inverse, :], v[..., inverse, :], moved, **kw)
        return out[..., leaf_map, :]

    return run


def _reference_in_own_dtype(q, k, v, hierarchy, **kw):
    return hsa_reference(q, k, v, hierarchy, **kw, dtype=q.dtype)


DENSE = {
    "dense, literal, linear",
    "dense, factorised, log",
    "dense, literal, sequential sums",
    "dense, factorised, sequential sums, log",
    "dense, literal, wide sums, relabelled",
}
"""The members that evaluate one pair of siblings at a time (slow on large trees)."""

ZOO: dict[str, Impl] = {
    "reference": _reference_in_own_dtype,
    "reference, relabelled": relabelled(_reference_in_own_dtype, seed=1),
    "programme": hsa,
    "programme, relabelled": relabelled(hsa, seed=2),
    "dense, literal, linear": partial(dense_hsa),
    "dense, factorised, log": partial(dense_hsa, energies="factorised", domain="log"),
    "dense, literal, sequential sums": partial(dense_hsa, sums="sequential"),
    "dense, factorised, sequential sums, log": partial(
        dense_hsa, energies="factorised", domain="log", sums="sequential"
    ),
    "dense, literal, wide sums, relabelled": relabelled(partial(dense_hsa, sums="wide"), seed=3),
}
"""Every member: a callable with the signature of ``hsa_fast.hsa``."""
