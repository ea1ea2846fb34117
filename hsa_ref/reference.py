"""The naive quadratic HSA reference: docs/HSA.md sections 2 and 3 evaluated literally.

Slow on purpose and independent of the dynamic programme: block energies are means over the full
``N x N`` score matrix (never the factorised means of ``q`` and ``k``), the recursion runs family
by family, and the attention matrix ``theta`` is written out block by block. Everything runs in
``dtype`` (float64 unless asked otherwise, for the tolerance rule of docs/TOLERANCE.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hierarchy import Hierarchy
from .validation import check_attention_inputs, check_dtype

__all__ = [
    "attention_from_shares",
    "family_shares",
    "hsa_attention_matrix",
    "hsa_reference",
    "kl_to_softmax",
    "log_partition",
    "score_matrix",
    "sibling_log_partition",
    "softmax_kl_lower_bound",
    "tree_mask",
]


DISTANCE_CHUNK_ELEMENTS = 1 << 22
"""The most ``(i, j, d)`` differences the distance energy holds at once (forward or backward)."""


def _row_chunks(q: torch.Tensor, k: torch.Tensor) -> list[slice]:
    rows = max(1, DISTANCE_CHUNK_ELEMENTS // max(1, k.shape[-2] * k.shape[-1]))
    return [slice(r, r + rows) for r in range(0, q.shape[-2], rows)]


class _SquaredDistances(torch.autograd.Function):
    """``||q_i - k_j||^2`` from the differences themselves (exact far from the origin), a block
    of rows at a time; the backward forms the differences again instead of keeping them."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, k)
        parts = []
        for rows in _row_chunks(q, k):
            diff = q[..., rows, None, :] - k[..., None, :, :]  # (..., r, N_k, d)
            parts.append((diff * diff).sum(-1))
        return torch.cat(parts, dim=-2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = ctx.saved_tensors
        dq, dk = [], None
        for rows in _row_chunks(q, k):
            diff = q[..., rows, None, :] - k[..., None, :, :]
            weighted = 2 * grad[..., rows, :, None] * diff  # d/d diff of sum(grad * diff^2)
            dq.append(weighted.sum(-2))
            part = weighted.sum(-3)
            dk = -part if dk is None else dk - part
        return torch.cat(dq, dim=-2), dk


def score_matrix(q: torch.Tensor, k: torch.Tensor, *, scale: float, energy: str) -> torch.Tensor:
    """Leaf scores ``s_ij`` of shape ``(..., N_q, N_k)`` (docs/HSA.md section 2), no geometry.

    The distance energy is formed from the differences ``q_i - k_j`` (never from expanded
    squared norms), a block of rows at a time, so its memory stays bounded.
    """
    if energy == "dot":
        return scale * (q @ k.transpose(-1, -2))
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    q, k = q.expand(*batch, *q.shape[-2:]), k.expand(*batch, *k.shape[-2:])
    return (-0.5 * scale) * _SquaredDistances.apply(q, k)


def self_scores(q: torch.Tensor, k: torch.Tensor, *, scale: float, energy: str) -> torch.Tensor:
    """``s_ii`` of shape ``(..., N)``: the diagonal of :func:`score_matrix`, formed alone."""
    if energy == "dot":
        return scale * (q * k).sum(-1)
    diff = q - k
    return (-0.5 * scale) * (diff * diff).sum(-1)


def tree_mask(hierarchy: Hierarchy, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(N, N)``: ``True`` where leaves ``i`` and ``j`` lie in the same tree."""
    root = torch.as_tensor(hierarchy.root_of[: hierarchy.num_leaves], device=device)
    return root[:, None] == root[None, :]


def split_trees(hierarchy: Hierarchy) -> list[tuple[list[int], Hierarchy]]:
    """Each tree of a forest as its own hierarchy: ``(nodes, tree)`` where ``nodes[x]`` is the
    forest id of the tree's node ``x`` (its leaves first, in increasing order)."""
    h = hierarchy
    roots = h.root_of
    trees = []
    for root in h.roots:
        members = [x for x in range(h.num_nodes) if int(roots[x]) == root]
        leaves = [x for x in members if x < h.num_leaves]
        nodes = leaves + [x for x in members if x >= h.num_leaves]
        new_id = {old: new for new, old in enumerate(nodes)}
        parent = [new_id[p] if (p := int(h.parent_array[x])) >= 0 else -1 for x in nodes]
        trees.append((nodes, Hierarchy.from_parents(parent, len(leaves))))
    return trees


def _families_bottom_up(hierarchy: Hierarchy) -> list[int]:
    height = hierarchy.height
    return sorted(hierarchy.families, key=lambda a: (int(height[a]), a))


def _family_rows(hierarchy: Hierarchy, a: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The leaves under family ``a`` (increasing) and, for each, the position of the child of
    ``a`` that holds it (in :meth:`Hierarchy.children` order)."""
    leaves = hierarchy.leaves_under(a)
    row = {leaf: r for r, leaf in enumerate(leaves)}
    label = [0] * len(leaves)
    for position, kid in enumerate(hierarchy.children(a)):
        for leaf in hierarchy.leaves_under(kid):
            label[row[leaf]] = position
    return (
        torch.tensor(leaves, dtype=torch.long, device=device),
        torch.tensor(label, dtype=torch.long, device=device),
    )


@dataclass(frozen=True)
class _Scores:
    """The leaf scores of docs/HSA.md section 2 for ``q, k`` (already in the evaluation dtype)."""

    q: torch.Tensor
    k: torch.Tensor
    scale: float
    energy: str

    def among(self, leaves: torch.Tensor) -> torch.Tensor:
        """``s_ij`` for ``i, j`` in ``leaves``: ``(..., |A|, |A|)``."""
        q, k = self.q.index_select(-2, leaves), self.k.index_select(-2, leaves)
        return score_matrix(q, k, scale=self.scale, energy=self.energy)

    def own(self) -> torch.Tensor:
        """``s_ii``: ``(..., N)``."""
        return self_scores(self.q, self.k, scale=self.scale, energy=self.energy)


def _block_means(
    scores: _Scores, leaves: torch.Tensor, label: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """``e_BC`` for every ordered pair of children of one family, ``(..., b, b)``: the mean of
    ``s_ij`` over ``i`` in ``B`` and ``j`` in ``C``, summed straight from the scores of the
    family's leaves (each row's sum over ``C``, then those row sums over ``B``)."""
    b = counts.shape[-1]
    block = scores.among(leaves)  # (..., |A|, |A|)
    over_c = block.new_zeros(*block.shape[:-1], b).index_add(-1, label, block)
    sums = over_c.new_zeros(*block.shape[:-2], b, b).index_add(-2, label, over_c)
    return sums / (counts[:, None] * counts[None, :])


def _prepare(q, k, hierarchy, scale, energy, positions, dtype):
    checked = check_attention_inputs(
        q, k, None, hierarchy, scale=scale, energy=energy, positions=positions
    )
    dtype = check_dtype(dtype)
    batch = checked.batch_shape
    qd, kd = (x.to(dtype).expand(*batch, *x.shape[-2:]) for x in (checked.q, checked.k))
    scores = _Scores(qd, kd, checked.scale, checked.energy)
    pos = checked.positions.to(dtype) if checked.positions is not None else None
    return checked, scores, pos


def _recursion(
    scores: _Scores,
    hierarchy: Hierarchy,
    pos: torch.Tensor | None,
    lse: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``F`` of every node ``(..., N+M)`` and each family's share matrix ``(..., b, b)``:
    ``mu(B)`` on the diagonal and ``delta(B, C)`` off it.

    ``lse``, when given, receives ``L(B)`` of every child ``B`` (shape ``(...)``).
    """
    n = hierarchy.num_leaves
    dtype, device = scores.q.dtype, scores.q.device
    all_counts = hierarchy.leaf_counts
    f = scores.own()  # F(i) = s_ii (+ <p_i, p_i>); F of the families joins level by level
    if pos is not None:
        f = f + (pos[:n] * pos[:n]).sum(-1)
    f = torch.cat([f, f.new_zeros(*f.shape[:-1], hierarchy.num_families)], dim=-1)
    shares: dict[int, torch.Tensor] = {}
    height = hierarchy.height
    for level in range(1, int(height.max(initial=0)) + 1):
        families = [a for a in hierarchy.families if int(height[a]) == level]
        f_level = []
        for a in families:  # every child of a family of this height has its F already
            kids = hierarchy.children(a)
            counts = torch.as_tensor(all_counts[kids], dtype=dtype, device=device)
            leaves, label = _family_rows(hierarchy, a, device)
            energy = _block_means(scores, leaves, label, counts)  # e_BC, from the scores
            if pos is not None:
                energy = energy + pos[kids] @ pos[kids].T
            logits = energy + torch.log(counts)  # column C carries log|C|
            eye = torch.eye(len(kids), dtype=torch.bool, device=device)
            own = f.index_select(-1, torch.as_tensor(kids, device=device))
            logits = torch.where(eye, torch.diag_embed(own), logits)  # the diagonal holds F(B)
            log_z = torch.logsumexp(logits, dim=-1)  # L(B), shape (..., b)
            f_level.append((counts / float(all_counts[a]) * log_z).sum(-1, keepdim=True))
            shares[a] = torch.exp(torch.log_softmax(logits, dim=-1))  # exp(logits - L(B))
            if lse is not None:
                lse.update({b: log_z[..., r] for r, b in enumerate(kids)})
        at = torch.as_tensor(families, device=device)
        f = f.index_copy(-1, at, torch.cat(f_level, dim=-1))
    return f, shares


def attention_from_shares(
    hierarchy: Hierarchy,
    shares: dict[int, torch.Tensor],
    *,
    batch_shape: tuple[int, ...] = (),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The attention matrix ``theta`` (``(..., N, N)``) built from each family's share matrix.

    ``shares[A]`` is ``(..., b_A, b_A)`` over ``A``'s children in :meth:`Hierarchy.children`
    order: the diagonal holds the share ``mu(B)`` that child ``B`` keeps, the off-diagonal entry
    ``(B, C)`` the share sent to sibling ``C`` (spread evenly over ``C``'s leaves). Rows of a
    share matrix that sum to one give a row-stochastic ``theta`` constant on every sibling block;
    every such ``theta`` with positive entries arises this way (docs/HSA.md section 4).
    ``batch_shape``, ``dtype`` and ``device`` apply when there are no families (a forest of
    one-leaf trees).
    """
    n = hierarchy.num_leaves
    dtype = check_dtype(dtype)
    missing = set(hierarchy.families) - shares.keys()
    if missing:
        raise ValueError(f"shares lacks the families {sorted(missing)[:10]}")
    some = next(iter(shares.values()), None)
    if some is not None:
        batch_shape, dtype, device = some.shape[:-2], some.dtype, some.device
    batch = tuple(batch_shape)
    all_counts = hierarchy.leaf_counts
    kind = {"dtype": dtype, "device": device}
    like = some if some is not None else torch.empty(0, **kind)
    # W(B) = mu(B_1) ... mu(B): what node B keeps of each row under it, level by level from
    # the roots (W = 1) down; theta_ii = W(i)
    kept = like.new_ones(*batch, hierarchy.num_nodes)
    where, weight = [], []  # theta_ij of every pair i != j of a tree, and (i, j) flattened
    for nodes in hierarchy.nodes_by_depth:
        families = [a for a in nodes.tolist() if a >= n]
        if not families:
            continue
        kids_level, kept_level = [], []
        for a in families:
            kids = hierarchy.children(a)
            share = shares[a]
            counts = torch.as_tensor(all_counts[kids], **kind)
            eye = torch.eye(len(kids), dtype=torch.bool, device=device)
            w_a = kept.select(-1, a)  # W(A)
            kids_level += kids
            kept_level.append(w_a.unsqueeze(-1) * torch.diagonal(share, dim1=-2, dim2=-1))
            sent = w_a[..., None, None] * (torch.where(eye, 0, share) / counts)
            # the pairs (i, j) that A's children separate: theta_ij = W(A) delta(B, C) / |C|
            leaves, label = _family_rows(hierarchy, a, device)
            i, j = torch.nonzero(label[:, None] != label[None, :], as_tuple=True)
            where.append(leaves[i] * n + leaves[j])
            weight.append(sent.flatten(-2).index_select(-1, label[i] * len(kids) + label[j]))
        at = torch.as_tensor(kids_level, device=device)
        kept = kept.index_copy(-1, at, torch.cat(kept_level, dim=-1))
    theta = like.new_zeros(*batch, n * n)
    if where:
        theta = theta.index_add(-1, torch.cat(where), torch.cat(weight, dim=-1))
    diagonal = torch.arange(n, device=device) * (n + 1)
    theta = theta.index_add(-1, diagonal, kept[..., :n])  # theta_ii = W(i), 1 for a lone leaf
    return theta.reshape(*batch, n, n)


def family_shares(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[int, torch.Tensor]:
    """Each family's optimal share matrix ``(..., b, b)``: ``mu`` on the diagonal, ``delta`` off."""
    _, scores, pos = _prepare(q, k, hierarchy, scale, energy, positions, dtype)
    return _recursion(scores, hierarchy, pos)[1]


def log_partition(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``F`` of every node, shape ``(..., N+M)``; ``F(root)`` gives the optimal objective."""
    _, scores, pos = _prepare(q, k, hierarchy, scale, energy, positions, dtype)
    return _recursion(scores, hierarchy, pos)[0]


def sibling_log_partition(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``L(B)`` of every node, shape ``(..., N+M)``: the log-sum-exp of ``F(B)`` and
    ``log|C| + e_BC`` over its siblings ``C`` (docs/HSA.md section 3); NaN at roots."""
    dtype = check_dtype(dtype)
    _, scores, pos = _prepare(q, k, hierarchy, scale, energy, positions, dtype)
    lse: dict[int, torch.Tensor] = {}
    _recursion(scores, hierarchy, pos, lse)
    batch, device = scores.q.shape[:-2], scores.q.device
    out = torch.full((*batch, hierarchy.num_nodes), torch.nan, dtype=dtype, device=device)
    for node, value in lse.items():
        out[..., node] = value
    return out


def hsa_attention_matrix(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """HSA's attention matrix ``theta`` (docs/HSA.md section 3), shape ``(..., N, N)``, in
    ``dtype``.

    ``q, k``: ``(..., N, d_k)`` with broadcastable batch dimensions; ``scale`` defaults to
    ``1/sqrt(d_k)``; ``energy`` is ``"dot"`` or ``"distance"``; ``positions`` is an optional
    ``(N + M, d_p)`` tensor of per-node positional vectors. Rows sum to one and entries between
    different trees of a forest are zero. Each tree is evaluated on its own, so a NaN or inf in
    one tree's inputs never reaches another tree.
    """
    checked, scores, pos = _prepare(q, k, hierarchy, scale, energy, positions, dtype)
    batch, device = scores.q.shape[:-2], scores.q.device
    if hierarchy.num_trees == 1:
        _, shares = _recursion(scores, hierarchy, pos)
        return attention_from_shares(
            hierarchy, shares, batch_shape=batch, dtype=scores.q.dtype, device=device
        )
    n = hierarchy.num_leaves
    theta = scores.q.new_zeros(*batch, n, n)
    for nodes, tree in split_trees(hierarchy):
        rows = torch.as_tensor(nodes[: tree.num_leaves], device=device)
        part = hsa_attention_matrix(
            checked.q[..., rows, :],
            checked.k[..., rows, :],
            tree,
            scale=checked.scale,
            energy=checked.energy,
            positions=None if pos is None else pos[torch.as_tensor(nodes, device=device)],
            dtype=dtype,
        )
        theta[..., rows[:, None], rows[None, :]] = part
    return theta


def hsa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """HSA output ``theta @ v`` of shape ``(..., N, d_v)``, evaluated literally in ``dtype``.

    Same arguments as :func:`hsa_attention_matrix`, plus ``v`` of shape ``(..., N, d_v)``.
    ``ValueError``/``TypeError`` for bad input (see ``hsa_ref.validation``).
    """
    checked = check_attention_inputs(
        q, k, v, hierarchy, scale=scale, energy=energy, positions=positions
    )
    dtype = check_dtype(dtype)
    kw = {"scale": checked.scale, "energy": checked.energy, "dtype": dtype}
    if hierarchy.num_trees == 1:
        theta = hsa_attention_matrix(
            checked.q, checked.k, hierarchy, positions=checked.positions, **kw
        )
        return theta @ checked.v.to(dtype)
    out = checked.v.new_zeros(checked.v.shape, dtype=dtype)
    for nodes, tree in split_trees(hierarchy):  # trees apart: no NaN crosses from one to another
        rows = torch.as_tensor(nodes[: tree.num_leaves], device=checked.v.device)
        pos = checked.positions
        theta = hsa_attention_matrix(
            checked.q[..., rows, :],
            checked.k[..., rows, :],
            tree,
            positions=None if pos is None else pos[torch.as_tensor(nodes, device=pos.device)],
            **kw,
        )
        out = out.index_copy(-2, rows, theta @ checked.v[..., rows, :].to(dtype))
    return out


def kl_to_softmax(
    theta: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``sum_i KL(theta_i. || softmax(s_i.))`` of any attention matrix, shape ``(...)``.

    The softmax of row ``i`` runs over the leaves of ``i``'s tree; mass that ``theta`` puts on
    another tree makes the divergence infinite. This is the objective that HSA minimises over
    row-stochastic matrices constant on sibling blocks (docs/HSA.md section 4).
    """
    checked = check_attention_inputs(q, k, None, hierarchy, scale=scale, energy=energy)
    dtype = check_dtype(dtype)
    s = score_matrix(
        checked.q.to(dtype), checked.k.to(dtype), scale=checked.scale, energy=checked.energy
    )
    same_tree = tree_mask(hierarchy, s.device)
    log_p = torch.log_softmax(s.masked_fill(~same_tree, float("-inf")), dim=-1)
    theta = theta.to(dtype)
    pos = theta > 0
    safe_log_theta = torch.log(torch.where(pos, theta, 1))
    terms = torch.where(pos, theta * (safe_log_theta - log_p), 0)
    return terms.sum((-1, -2))


def softmax_kl_lower_bound(
    q: torch.Tensor,
    k: torch.Tensor,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The optimal value ``sum_i logsumexp_j s_ij - sum_trees |tree| F(root)``, shape ``(...)``.

    By the optimality theorem this equals :func:`kl_to_softmax` of HSA's own ``theta`` and is
    the minimum over all block-constant row-stochastic matrices.
    """
    _, scores, _ = _prepare(q, k, hierarchy, scale, energy, None, dtype)
    s = score_matrix(scores.q, scores.k, scale=scores.scale, energy=scores.energy)
    same_tree = tree_mask(hierarchy, s.device)
    lse = torch.logsumexp(s.masked_fill(~same_tree, float("-inf")), dim=-1).sum(-1)
    f, _ = _recursion(scores, hierarchy, None)
    roots = hierarchy.roots
    sizes = torch.as_tensor(hierarchy.leaf_counts[roots], dtype=dtype, device=s.device)
    return lse - (f[..., roots] * sizes).sum(-1)
