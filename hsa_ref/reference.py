"""The naive quadratic HSA reference: SPEC sections 2 and 3 evaluated literally.

Slow on purpose and independent of the dynamic programme: block energies are means over the full
``N x N`` score matrix (never the factorised means of ``q`` and ``k``), the recursion runs family
by family, and the attention matrix ``theta`` is written out block by block. Everything runs in
``dtype`` (float64 unless asked otherwise, for SPEC section 6's tolerance rule).
"""

from __future__ import annotations

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


def score_matrix(q: torch.Tensor, k: torch.Tensor, *, scale: float, energy: str) -> torch.Tensor:
    """Leaf scores ``s_ij`` of shape ``(..., N, N)`` (SPEC section 2), no geometry."""
    if energy == "dot":
        return scale * (q @ k.transpose(-1, -2))
    diff = q.unsqueeze(-2) - k.unsqueeze(-3)  # (..., N, N, d)
    return -0.5 * scale * (diff * diff).sum(-1)


def tree_mask(hierarchy: Hierarchy, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(N, N)``: ``True`` where leaves ``i`` and ``j`` lie in the same tree."""
    root = torch.as_tensor(hierarchy.root_of[: hierarchy.num_leaves], device=device)
    return root[:, None] == root[None, :]


def _membership(hierarchy: Hierarchy, nodes: list[int], dtype, device) -> torch.Tensor:
    """``R[r, j] = 1`` if leaf ``j`` lies under ``nodes[r]``: shape ``(len(nodes), N)``."""
    r = torch.zeros(len(nodes), hierarchy.num_leaves, dtype=dtype, device=device)
    for row, node in enumerate(nodes):
        r[row, hierarchy.leaves_under(node)] = 1
    return r


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


def _prepare(q, k, hierarchy, scale, energy, positions, dtype):
    checked = check_attention_inputs(
        q, k, None, hierarchy, scale=scale, energy=energy, positions=positions
    )
    dtype = check_dtype(dtype)
    qd, kd = checked.q.to(dtype), checked.k.to(dtype)
    s = score_matrix(qd, kd, scale=checked.scale, energy=checked.energy)
    pos = checked.positions.to(dtype) if checked.positions is not None else None
    return checked, s, pos


def _recursion(
    s: torch.Tensor,
    hierarchy: Hierarchy,
    pos: torch.Tensor | None,
    lse: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``F`` for every node ``(..., N+M)`` and each family's share matrix ``(..., b, b)``.

    The share matrix of family ``A`` has ``mu(B)`` on the diagonal and ``delta(B, C)`` off it.
    ``lse``, when given, receives ``L(B)`` of every child ``B`` (shape ``(...)``).
    """
    n = hierarchy.num_leaves
    dtype, device = s.dtype, s.device
    counts = torch.as_tensor(hierarchy.leaf_counts, dtype=dtype, device=device)
    f = [None] * hierarchy.num_nodes
    s_diag = torch.diagonal(s, dim1=-2, dim2=-1)
    for i in range(n):
        f[i] = s_diag[..., i] + (pos[i] @ pos[i] if pos is not None else 0)  # F(i) = s_ii
    shares: dict[int, torch.Tensor] = {}
    for a in _families_bottom_up(hierarchy):
        kids = hierarchy.children(a)
        member = _membership(hierarchy, kids, dtype, device)
        mean_rows = member / counts[kids, None]
        # e_BC: the mean of s over B x C, straight from the score matrix.
        energy = mean_rows @ s @ mean_rows.T
        if pos is not None:
            energy = energy + pos[kids] @ pos[kids].T
        logits = energy + torch.log(counts[kids])  # column C carries log|C|
        eye = torch.eye(len(kids), dtype=torch.bool, device=device)
        own = torch.stack([f[b] for b in kids], dim=-1) if kids else None
        logits = torch.where(eye, torch.diag_embed(own), logits)
        log_z = torch.logsumexp(logits, dim=-1)  # L(B), shape (..., b)
        f[a] = (counts[kids] / counts[a] * log_z).sum(-1)
        shares[a] = torch.exp(logits - log_z.unsqueeze(-1))
        if lse is not None:
            lse.update({b: log_z[..., r] for r, b in enumerate(kids)})
    return torch.stack(f, dim=-1), shares


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
    every such ``theta`` with positive entries arises this way (SPEC section 4). ``batch_shape``,
    ``dtype`` and ``device`` apply when there are no families (a forest of one-leaf trees).
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
    counts = torch.as_tensor(hierarchy.leaf_counts, dtype=dtype, device=device)
    w = torch.ones(*batch, hierarchy.num_nodes, dtype=dtype, device=device)  # W(root) = 1
    theta = torch.zeros(*batch, n, n, dtype=dtype, device=device)
    for nodes in hierarchy.nodes_by_depth:  # top-down: W(A) is final before A's children
        for a in nodes.tolist():
            if a < n:
                continue
            kids = hierarchy.children(a)
            share = shares[a]
            eye = torch.eye(len(kids), dtype=torch.bool, device=device)
            w_a = w[..., a, None]  # W(A); w itself is never modified in place
            w = w.clone()
            w[..., kids] = w_a * torch.diagonal(share, dim1=-2, dim2=-1)  # W(B) = W(A) mu(B)
            block = torch.where(eye, 0, share) * w_a[..., None] / counts[kids]  # theta on B x C
            member = _membership(hierarchy, kids, dtype, device)
            theta = theta + member.T @ block @ member
    idx = torch.arange(n, device=device)
    theta[..., idx, idx] = w[..., :n]
    return theta


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
    _, s, pos = _prepare(q, k, hierarchy, scale, energy, positions, dtype)
    return _recursion(s, hierarchy, pos)[1]


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
    _, s, pos = _prepare(q, k, hierarchy, scale, energy, positions, dtype)
    return _recursion(s, hierarchy, pos)[0]


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
    ``log|C| + e_BC`` over its siblings ``C`` (SPEC section 3); NaN at roots."""
    dtype = check_dtype(dtype)
    _, s, pos = _prepare(q, k, hierarchy, scale, energy, positions, dtype)
    lse: dict[int, torch.Tensor] = {}
    _recursion(s, hierarchy, pos, lse)
    out = torch.full((*s.shape[:-2], hierarchy.num_nodes), torch.nan, dtype=dtype, device=s.device)
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
    """HSA's attention matrix ``theta`` of shape ``(..., N, N)`` in ``dtype`` (SPEC section 3).

    ``q, k``: ``(..., N, d_k)`` with broadcastable batch dimensions; ``scale`` defaults to
    ``1/sqrt(d_k)``; ``energy`` is ``"dot"`` or ``"distance"``; ``positions`` is an optional
    ``(N + M, d_p)`` tensor of per-node positional vectors. Rows sum to one and entries between
    different trees of a forest are zero. Each tree is evaluated on its own, so a NaN or inf in
    one tree's inputs never reaches another tree.
    """
    checked, s, pos = _prepare(q, k, hierarchy, scale, energy, positions, dtype)
    if hierarchy.num_trees == 1:
        _, shares = _recursion(s, hierarchy, pos)
        return attention_from_shares(
            hierarchy, shares, batch_shape=s.shape[:-2], dtype=s.dtype, device=s.device
        )
    theta = s.new_zeros(s.shape)
    for nodes, tree in split_trees(hierarchy):
        rows = torch.as_tensor(nodes[: tree.num_leaves], device=s.device)
        part = hsa_attention_matrix(
            checked.q[..., rows, :],
            checked.k[..., rows, :],
            tree,
            scale=checked.scale,
            energy=checked.energy,
            positions=None if pos is None else pos[torch.as_tensor(nodes, device=s.device)],
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
    row-stochastic matrices constant on sibling blocks (SPEC section 4).
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
    checked = check_attention_inputs(q, k, None, hierarchy, scale=scale, energy=energy)
    dtype = check_dtype(dtype)
    s = score_matrix(
        checked.q.to(dtype), checked.k.to(dtype), scale=checked.scale, energy=checked.energy
    )
    same_tree = tree_mask(hierarchy, s.device)
    lse = torch.logsumexp(s.masked_fill(~same_tree, float("-inf")), dim=-1).sum(-1)
    f, _ = _recursion(s, hierarchy, None)
    roots = hierarchy.roots
    sizes = torch.as_tensor(hierarchy.leaf_counts[roots], dtype=dtype, device=s.device)
    return lse - (f[..., roots] * sizes).sum(-1)
