"""The O(M b^2) dynamic programme of SPEC section 5, in plain PyTorch (any device, autograd).

Shapes: ``Z`` is the flattened batch, ``f`` the families of a bucket and ``w`` its width.
Per-leaf data stays in the caller's ``(Z, N, d)`` tensors; per-family data lives in buffers of
``M + 1`` rows (the last one a zero padding family). Buffers are filled in place, one bucket or
depth at a time, and read with ``index_select``, whose backward never needs the buffer, so
autograd stays exact. Nothing of size ``N x N`` is formed.
"""

from __future__ import annotations

import torch

from .layout import FamilyBucket, HSALayout

__all__ = ["accumulation_dtype", "hsa_programme"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _children(
    bucket: FamilyBucket, leaf: torch.Tensor, family: torch.Tensor, dim: int
) -> torch.Tensor:
    """Per-child rows of a bucket, ``(..., f, w, ...)``, read from leaf and family storage.

    ``leaf`` and ``family`` index nodes along ``dim`` (``N`` and ``M + 1`` rows).
    """
    f, w = bucket.num_families, bucket.width
    if bucket.leaf_start is not None:
        rows = leaf.narrow(dim, bucket.leaf_start, f * w)
    elif not bucket.has_families:
        rows = leaf.index_select(dim, bucket.slot_leaf)
    elif not bucket.has_leaves:
        rows = family.index_select(dim, bucket.slot_family)
    else:
        is_leaf = bucket.slot_is_leaf.view(-1, *([1] * (leaf.dim() - dim - 1)))
        rows = torch.where(
            is_leaf,
            leaf.index_select(dim, bucket.slot_leaf),
            family.index_select(dim, bucket.slot_family),
        )
    return rows.unflatten(dim, (f, w))


def _write_back(
    bucket: FamilyBucket, values: torch.Tensor, leaf: torch.Tensor, family: torch.Tensor
) -> None:
    """Scatter per-slot ``values`` ``(Z, f * w, ...)`` into leaf and family buffers (in place)."""
    if bucket.leaf_start is not None:
        leaf.narrow(1, bucket.leaf_start, values.shape[1]).copy_(values)
        return
    if bucket.has_leaves:
        leaf.index_copy_(1, bucket.leaf_ids, values.index_select(1, bucket.leaf_slots))
    if bucket.has_families:
        family.index_copy_(1, bucket.family_ids, values.index_select(1, bucket.family_slots))


def _small_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` over many tiny matrices; for inner size <= 2 a broadcast sum beats ``bmm``."""
    if a.shape[-1] <= 2:
        return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
    return a @ b


def hsa_programme(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: HSALayout,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None = None,
    return_log_partition: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """HSA of validated ``q, k: (..., N, d_k)``, ``v: (..., N, d_v)`` (equal batch shapes).

    Returns ``(..., N, d_v)`` in the input dtype; accumulates in :func:`accumulation_dtype`.
    With ``return_log_partition=True`` returns ``(y, F)``: ``F`` ``(..., N + M)`` holds the
    log-partition ``F(x)`` of every node (leaves first, in the accumulation dtype), differentiable
    like ``y``; the sequence-parallel entry point reads it at the roots of a shard's subtrees.
    """
    out_dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    batch, n, d_k, d_v = q.shape[:-2], q.shape[-2], q.shape[-1], v.shape[-1]
    m = layout.num_families
    z = batch.numel()
    q, k, v = (x.reshape(z, n, x.shape[-1]).to(acc) for x in (q, k, v))  # (Z, N, d)

    def family_buffer(*rest: int) -> torch.Tensor:
        return q.new_zeros(z, m + 1, *rest)

    # ---- leaves: F(i) = s_ii (+ <p_i, p_i>)
    if energy == "dot":
        f_leaf = scale * torch.einsum("znd,znd->zn", q, k)
    else:
        diff = q - k
        f_leaf = -0.5 * scale * torch.einsum("znd,znd->zn", diff, diff)
        q_sq_leaf = torch.einsum("znd,znd->zn", q, q)  # mean squared norms, for distance
        k_sq_leaf = torch.einsum("znd,znd->zn", k, k)
        q_sq_fam, k_sq_fam = family_buffer(), family_buffer()
    if positions is not None:
        pos = positions.to(acc)
        pos_leaf, pos_fam = pos[:n], torch.cat([pos[n:], pos.new_zeros(1, pos.shape[1])])
        f_leaf = f_leaf + pos_leaf.square().sum(-1)

    q_fam, k_fam, v_fam = family_buffer(d_k), family_buffer(d_k), family_buffer(d_v)
    f_fam = family_buffer()
    log_mu_leaf, log_mu_fam = torch.zeros_like(f_leaf), family_buffer()  # F(B) - L(B)
    sent_leaf, sent_fam = torch.zeros_like(v), family_buffer(d_v)  # sum_C delta(B,C) mean v_C

    # ---- up, height by height: block energies, L(B) of each child, F(A) of each family
    for bucket in layout.up:
        fam, w = bucket.family, bucket.width
        weight = bucket.weight.to(acc)  # |B| / |A|, (f, w)
        q_c = _children(bucket, q, q_fam, 1)  # (Z, f, w, d_k)
        k_c = _children(bucket, k, k_fam, 1)
        v_c = _children(bucket, v, v_fam, 1)
        f_c = _children(bucket, f_leaf, f_fam, 1)  # F(B): (Z, f, w)
        # e_BC: (Z, f, w, w); for w <= 2 a broadcast product beats bmm on tiny matrices
        if w <= 2:
            energies = scale * (q_c.unsqueeze(-2) * k_c.unsqueeze(-3)).sum(-1)
        else:
            energies = scale * (q_c @ k_c.transpose(-1, -2))
        if energy == "distance":
            q_sq = _children(bucket, q_sq_leaf, q_sq_fam, 1)
            k_sq = _children(bucket, k_sq_leaf, k_sq_fam, 1)
            energies = energies - 0.5 * scale * (q_sq.unsqueeze(-1) + k_sq.unsqueeze(-2))
            q_sq_fam.index_copy_(1, fam, (q_sq * weight).sum(-1))
            k_sq_fam.index_copy_(1, fam, (k_sq * weight).sum(-1))
        if positions is not None:
            p_c = _children(bucket, pos_leaf, pos_fam, 0)  # (f, w, d_p)
            energies = energies + p_c @ p_c.transpose(-1, -2)
        # Row B: F(B) on the diagonal, log|C| + e_BC off it (-inf in padded columns).
        logits = energies + bucket.log_size.to(acc).unsqueeze(1)
        logits.diagonal(dim1=-2, dim2=-1).copy_(f_c)
        log_z = torch.logsumexp(logits, dim=-1)  # L(B): (Z, f, w)
        share = torch.exp(logits - log_z.unsqueeze(-1))  # mu(B) on the diagonal, delta(B, C) off
        f_fam.index_copy_(1, fam, (log_z * weight).sum(-1))  # F(A) = sum_B |B|/|A| L(B)
        mean = weight.unsqueeze(1)  # (f, 1, w): mean over A = weighted mean over children
        q_fam.index_copy_(1, fam, _small_bmm(mean, q_c).squeeze(-2))
        k_fam.index_copy_(1, fam, _small_bmm(mean, k_c).squeeze(-2))
        v_fam.index_copy_(1, fam, _small_bmm(mean, v_c).squeeze(-2))
        eye = torch.eye(w, dtype=torch.bool, device=share.device)
        sent = _small_bmm(share.masked_fill(eye, 0.0), v_c)  # (Z, f, w, d_v)
        _write_back(bucket, (f_c - log_z).flatten(1, 2), log_mu_leaf, log_mu_fam)
        _write_back(bucket, sent.flatten(1, 2), sent_leaf, sent_fam)

    # ---- down: log W(B) = log W(A) + F(B) - L(B);  U(B) = U(A) + W(A) sent(B)
    log_w, u = family_buffer(), family_buffer(d_v)  # W(root) = 1, U(root) = 0
    for fams, parents in layout.down:
        log_w_parent = log_w.index_select(1, parents)
        log_w.index_copy_(1, fams, log_w_parent + log_mu_fam.index_select(1, fams))
        u_new = u.index_select(1, parents).addcmul_(
            log_w_parent.exp().unsqueeze(-1), sent_fam.index_select(1, fams)
        )
        u.index_copy_(1, fams, u_new)
    # ---- leaves: y_i = U(A) + W(A) sent(i) + W(A) mu(i) v_i, with A the parent of i
    log_w_parent = log_w.index_select(1, layout.leaf_parent)
    y = u.index_select(1, layout.leaf_parent)
    y = y.addcmul_(log_w_parent.exp().unsqueeze(-1), sent_leaf)
    y = y.addcmul_((log_w_parent + log_mu_leaf).exp().unsqueeze(-1), v)
    y = y.reshape(*batch, n, d_v).to(out_dtype)
    if return_log_partition:
        return y, torch.cat([f_leaf, f_fam[:, :m]], 1).reshape(*batch, n + m)
    return y
