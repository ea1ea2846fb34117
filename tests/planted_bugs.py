"""Deliberately wrong HSA implementations that the conformance harness must reject.

:func:`planted_hsa` is a complete HSA implementation (docs/HSA.md sections 2-5: up pass for
``F``, down pass for the shares) with the signature of docs/HSA.md section 8. With ``bug=None``
it is correct; each name in :data:`BUGS` switches on exactly one mistake in the forward pass,
each name in :data:`GRADIENT_BUGS` one whose forward pass is exact and whose backward pass is
wrong. The module-level functions of the same names are those implementations, ready for
``--impl tests/planted_bugs.py:<name>``. :data:`SIZE_BUGS` are right on small inputs and wrong
only at the sizes ports are written for; ``lookup_table`` and ``one_leaf_only`` compute no
attention at all and refuse what they cannot answer.
"""

from __future__ import annotations

from functools import partial

import torch

from hsa_fast import hsa
from hsa_ref import Hierarchy
from hsa_ref.reference import score_matrix
from hsa_ref.validation import check_attention_inputs

BUGS: dict[str, str] = {
    "leaf_self_term_dropped": "F(i) = 0 instead of s_ii",
    "log_count_ignored": "the log|C| weights are left out of the logits",
    "log_mean_exp_energy": "block energies are log-mean-exp of the scores instead of the mean",
    "row_softmax": "each leaf gets its own shares from its row of block energies",
    "uniform_child_weights": "F(A) weights the children by 1/b instead of |B|/|A|",
    "no_max_subtraction": "logsumexp without subtracting the maximum (overflows)",
    "forest_leak": "the trees of a forest are joined under one root",
    "wrong_default_scale": "scale=None means 1/d_k instead of 1/sqrt(d_k)",
    "relative_error": "the output is off by a relative 1e-4",
    "distance_norms_dropped": "the distance energy forgets the squared norms (acts as dot)",
    "positions_ignored": "positional vectors are ignored",
}


GRADIENT_BUGS: dict[str, str] = {
    "keys_detached": "keys are detached from the block energies (dk misses their part)",
    "dq_dk_swapped": "the backward returns dk as dq and dq as dk",
    "gradients_in_float32": "float64 outputs, but gradients computed in float32",
    "no_autograd": "the output is detached: no gradient at all",
    "positions_gradient_dropped": "positions are detached (d positions is zero)",
}


def _logsumexp(x: torch.Tensor, bug: str | None) -> torch.Tensor:
    if bug == "no_max_subtraction":
        return torch.log(torch.exp(x).sum(-1))
    return torch.logsumexp(x, dim=-1)


def _joined(h: Hierarchy) -> Hierarchy:
    """All roots of ``h`` under one new family."""
    parent = h.parent
    top = len(parent)
    parent = [top if p < 0 else p for p in parent] + [-1]
    return Hierarchy.from_parents(parent, h.num_leaves)


def planted_hsa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    bug: str | None = None,
) -> torch.Tensor:
    """HSA output ``(..., N, d_v)`` in the dtype of ``q``, with the mistake ``bug`` (or none)."""
    if bug is not None and bug not in BUGS and bug not in GRADIENT_BUGS:
        raise ValueError(f"unknown bug {bug!r}")
    if bug == "no_autograd":
        return planted_hsa(
            q, k, v, hierarchy, scale=scale, energy=energy, positions=positions
        ).detach()
    if bug == "dq_dk_swapped":
        return _SwapQK.apply(q, k, v, hierarchy, scale, energy, positions)
    if bug == "gradients_in_float32" and q.dtype == torch.float64:
        kw = {"scale": scale, "energy": energy}
        exact = planted_hsa(q, k, v, hierarchy, positions=positions, **kw)
        low = planted_hsa(
            q.float(),
            k.float(),
            v.float(),
            hierarchy,
            positions=None if positions is None else positions.float(),
            **kw,
        ).double()
        return exact.detach() + (low - low.detach())  # the value of exact, the gradient of low
    if bug == "wrong_default_scale" and scale is None:
        scale = 1.0 / q.shape[-1]
    c = check_attention_inputs(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)
    q, k, v, scale, energy = c.q, c.k, c.v, c.scale, c.energy
    h, pos = hierarchy, c.positions
    if bug == "distance_norms_dropped" and energy == "distance":
        energy = "dot"
    if bug == "positions_ignored":
        pos = None
    if bug == "positions_gradient_dropped" and pos is not None:
        pos = pos.detach()
    k_energy = k.detach() if bug == "keys_detached" else k
    if bug == "forest_leak" and h.num_trees > 1:
        h = _joined(h)
        if pos is not None:
            pos = torch.cat([pos, pos.new_zeros(1, pos.shape[1])])
    dtype = q.dtype
    n = h.num_leaves
    counts = torch.as_tensor(h.leaf_counts, dtype=dtype)

    # Up: F of every node; each family's share rows, one per leaf below it.
    diff = q - k
    s_diag = scale * (q * k).sum(-1) if energy == "dot" else -0.5 * scale * (diff * diff).sum(-1)
    if pos is not None:
        s_diag = s_diag + (pos[:n] * pos[:n]).sum(-1)
    if bug == "leaf_self_term_dropped":
        s_diag = torch.zeros_like(s_diag)
    f: dict[int, torch.Tensor] = {i: s_diag[..., i] for i in range(n)}
    shares: dict[int, tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for a in sorted(h.families, key=lambda x: (int(h.height[x]), x)):
        kids = h.children(a)
        b = len(kids)
        leaves = h.leaves_under(a)
        where = {leaf: col for col, leaf in enumerate(leaves)}
        member = torch.zeros(b, len(leaves), dtype=dtype)
        for row, kid in enumerate(kids):
            member[row, [where[j] for j in h.leaves_under(kid)]] = 1
        child_of = member.argmax(0)  # which child holds each leaf
        means = member / counts[kids, None]
        s = score_matrix(q[..., leaves, :], k_energy[..., leaves, :], scale=scale, energy=energy)
        if bug == "log_mean_exp_energy":
            top = s.amax((-1, -2), keepdim=True)
            e = torch.log(means @ torch.exp(s - top) @ means.T) + top
        else:
            e = means @ s @ means.T
        bias = pos[kids] @ pos[kids].T if pos is not None else 0
        log_count = 0 if bug == "log_count_ignored" else torch.log(counts[kids])
        eye = torch.eye(b, dtype=torch.bool)
        stay = torch.stack([f[x] for x in kids], dim=-1)
        logits = torch.where(eye, torch.diag_embed(stay), e + bias + log_count)
        log_z = _logsumexp(logits, bug)
        if bug == "uniform_child_weights":
            weights = torch.full((b,), 1.0 / b, dtype=dtype)
        else:
            weights = counts[kids] / counts[a]
        f[a] = (weights * log_z).sum(-1)
        if bug == "row_softmax":
            e_row = s @ means.T  # leaf i against block C
            bias_row = bias[child_of] if pos is not None else 0
            row_logits = torch.where(
                eye[child_of], stay[..., None, :], e_row + bias_row + log_count
            )
            rows = torch.softmax(row_logits, dim=-1)
        else:
            rows = torch.exp(logits - log_z[..., None])[..., child_of, :]
        shares[a] = (leaves, child_of, rows, means)

    # Down: W = product of the shares kept, Y = what was sent to siblings.
    w = torch.ones(*q.shape[:-2], n, dtype=dtype)
    y = torch.zeros(*v.shape[:-1], v.shape[-1], dtype=dtype)
    for a in sorted(h.families, key=lambda x: (int(h.depth[x]), x)):
        leaves, child_of, rows, means = shares[a]
        own = torch.nn.functional.one_hot(child_of, rows.shape[-1]).to(torch.bool)
        sent = torch.where(own, 0, rows)
        v_bar = means @ v[..., leaves, :]
        y[..., leaves, :] = y[..., leaves, :] + w[..., leaves, None] * (sent @ v_bar)
        w[..., leaves] = w[..., leaves] * (rows * own).sum(-1)
    out = y + w[..., None] * v
    if bug == "relative_error":
        out = out * (1 + 1e-4)
    return out


class _SwapQK(torch.autograd.Function):
    """The correct forward pass; the backward hands dk to q and dq to k."""

    @staticmethod
    def forward(ctx, q, k, v, hierarchy, scale, energy, positions):
        ctx.save_for_backward(q, k, v, positions)
        ctx.args = (hierarchy, scale, energy)
        return planted_hsa(q, k, v, hierarchy, scale=scale, energy=energy, positions=positions)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, positions = ctx.saved_tensors
        hierarchy, scale, energy = ctx.args
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_() for x in (q, k, v)]
            pos = positions.detach().requires_grad_() if positions is not None else None
            out = planted_hsa(*inputs, hierarchy, scale=scale, energy=energy, positions=pos)
            wrt = inputs + ([pos] if pos is not None else [])
            grads = torch.autograd.grad(out, wrt, grad, allow_unused=True)
        dq, dk, dv = grads[:3]
        dpos = grads[3] if pos is not None else None
        return dk, dq, dv, None, None, None, dpos


correct = partial(planted_hsa, bug=None)
leaf_self_term_dropped = partial(planted_hsa, bug="leaf_self_term_dropped")
log_count_ignored = partial(planted_hsa, bug="log_count_ignored")
log_mean_exp_energy = partial(planted_hsa, bug="log_mean_exp_energy")
row_softmax = partial(planted_hsa, bug="row_softmax")
uniform_child_weights = partial(planted_hsa, bug="uniform_child_weights")
no_max_subtraction = partial(planted_hsa, bug="no_max_subtraction")
forest_leak = partial(planted_hsa, bug="forest_leak")
wrong_default_scale = partial(planted_hsa, bug="wrong_default_scale")
relative_error = partial(planted_hsa, bug="relative_error")
distance_norms_dropped = partial(planted_hsa, bug="distance_norms_dropped")
positions_ignored = partial(planted_hsa, bug="positions_ignored")
keys_detached = partial(planted_hsa, bug="keys_detached")
dq_dk_swapped = partial(planted_hsa, bug="dq_dk_swapped")
gradients_in_float32 = partial(planted_hsa, bug="gradients_in_float32")
no_autograd = partial(planted_hsa, bug="no_autograd")
positions_gradient_dropped = partial(planted_hsa, bug="positions_gradient_dropped")


# ---------------------------------------------------------------- wrong only at some sizes
SIZE_BUGS: dict[str, str] = {
    "wrong_for_head_sizes_over_9": "the last feature of q and k is dropped when d_k > 9",
    "wrong_for_over_200_leaves": "the last leaf returns its own v when N > 200",
    "wrong_for_families_over_96": "families wider than 96 children use half the scale",
    "wrong_for_batches_over_3": "batch elements after the third get zeros",
    "wrong_for_positions_over_3": "positions are ignored when some |p| > 3",
}
"""Correct on the small inputs a careless suite draws; wrong on the sizes ports are written for."""


def wrong_for_head_sizes_over_9(q, k, v, hierarchy, **kw):
    if q.shape[-1] > 9:
        q, k = q[..., :-1], k[..., :-1]
        if kw.get("scale") is None:
            kw = {**kw, "scale": 1 / (q.shape[-1] + 1) ** 0.5}
    return hsa(q, k, v, hierarchy, **kw)


def wrong_for_over_200_leaves(q, k, v, hierarchy, **kw):
    out = hsa(q, k, v, hierarchy, **kw)
    if hierarchy.num_leaves > 200:
        out = torch.cat([out[..., :-1, :], v[..., -1:, :].expand_as(out[..., -1:, :])], -2)
    return out


def wrong_for_families_over_96(q, k, v, hierarchy, *, scale=None, **kw):
    if hierarchy.max_branching > 96:
        scale = (1 / q.shape[-1] ** 0.5 if scale is None else scale) / 2
    return hsa(q, k, v, hierarchy, scale=scale, **kw)


def wrong_for_batches_over_3(q, k, v, hierarchy, **kw):
    out = hsa(q, k, v, hierarchy, **kw)
    if out.dim() > 2 and out.shape[:-2].numel() > 3:
        flat = out.reshape(-1, *out.shape[-2:])
        keep = (torch.arange(flat.shape[0]) < 3).to(out.dtype)[:, None, None]
        out = (flat * keep).reshape(out.shape)
    return out


def wrong_for_positions_over_3(q, k, v, hierarchy, *, positions=None, **kw):
    if positions is not None and positions.abs().max() > 3:
        positions = None
    return hsa(q, k, v, hierarchy, positions=positions, **kw)


# ---------------------------------------------------------------- ports that compute nothing
def _golden_answer(q: torch.Tensor, hierarchy: Hierarchy) -> torch.Tensor | None:
    from hsa_ref.conformance.formats import load_cases

    for case in load_cases():
        same = case.hierarchy == hierarchy and case.q.shape == q.shape
        if same and torch.equal(case.q.to(q.dtype), q.detach()):
            return case.out
    return None


def lookup_table(q, k, v, hierarchy, **kw):
    """Answers the golden cases from their stored outputs; refuses everything else."""
    answer = _golden_answer(q, hierarchy)
    if answer is None:
        raise NotImplementedError("only the golden cases")
    return answer.to(q.dtype)


def one_leaf_only(q, k, v, hierarchy, **kw):
    """Returns v for forests of one-leaf trees (right there); refuses every other input."""
    if hierarchy.num_families or hierarchy.num_trees != hierarchy.num_leaves:
        raise NotImplementedError("one-leaf trees only")
    return v * 1
