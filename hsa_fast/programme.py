"""The O(M b^2) dynamic programme of docs/HSA.md section 5, in plain PyTorch (any device, autograd).

Shapes: ``Z`` is the flattened batch, ``f`` the families of a bucket and ``w`` its width.
Per-leaf data stays in the caller's ``(Z, N, d)`` tensors; per-family data lives in buffers of
``M + 1`` rows (the last one a zero padding family). Buffers are filled in place, one bucket or
depth at a time, and read with ``index_select``, whose backward never needs the buffer, so
autograd stays exact. Nothing of size ``N x N`` is formed.

Memory: a bucket's ``w x w`` energies are formed a block at a time, a block being a chunk of
families (or, for a family wider than the budget allows, a chunk of its rows) with at most
``chunk_elements`` energies, so the extra memory is ``O((N + M) d + chunk_elements)`` whatever
the branching (one row of ``w <= N`` energies is always allowed). Under autograd, the blocks of
buckets wider than :data:`RECOMPUTE_WIDTH` keep only their inputs and are evaluated again in the
backward pass; narrower ones keep their intermediates, O(N RECOMPUTE_WIDTH) in all.

Distance energy: every node keeps the means ``qbar, kbar`` and the variances
``Vq(A) = mean over i in A of |q_i - qbar_A|^2`` (and ``Vk``), and the block energy is
``e_BC = -scale/2 (|qbar_B - kbar_C|^2 + Vq(B) + Vk(C))``, with ``|qbar_B - kbar_C|^2`` summed
from the differences themselves (a block forms ``rows x w x d_k`` of them, within the budget):
every term is a sum of non-negative parts, so nothing cancels, however far from the origin or
however close two keys are.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .layout import FamilyBucket, HSALayout

__all__ = ["CHUNK_ELEMENTS", "RECOMPUTE_WIDTH", "accumulation_dtype", "hsa_programme"]

CHUNK_ELEMENTS = 1 << 22
"""Default budget: the most energies (batch included) one block of the up pass forms."""

RECOMPUTE_WIDTH = 32
"""Under autograd, buckets wider than this recompute their blocks in the backward pass."""


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
        if bucket.leaf_slots.numel() < f * w:
            # padded slots read leaf 0: masked, so that neither its values nor (in the
            # backward) 0 * NaN from another tree reach it
            is_leaf = bucket.slot_is_leaf.view(-1, *([1] * (leaf.dim() - dim - 1)))
            rows = rows.masked_fill(~is_leaf, 0)
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


def _block(
    row0: int,
    scale: float,
    q_rows: torch.Tensor,
    k_cols: torch.Tensor,
    v_cols: torch.Tensor,
    f_rows: torch.Tensor,
    log_size: torch.Tensor,
    var_rows: torch.Tensor | None,
    var_cols: torch.Tensor | None,
    p_rows: torch.Tensor | None,
    p_cols: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``L(B)`` and ``sum_C delta(B, C) mean v_C`` for rows ``row0 ..`` of a chunk of families.

    ``q_rows (Z, f, r, d_k)``, ``f_rows (Z, f, r)``: the rows' children; ``k_cols (Z, f, w,
    d_k)``, ``v_cols (Z, f, w, d_v)``, ``log_size (f, w)``: all children. For the distance
    energy ``var_rows (Z, f, r)`` and ``var_cols (Z, f, w)`` hold the children's variances
    ``Vq(B)`` and ``Vk(C)``.
    Positions add ``p_rows (f, r, d_p) @ p_cols (f, w, d_p)^T``. Returns ``(Z, f, r)`` and
    ``(Z, f, r, d_v)``.
    """
    w = k_cols.shape[-2]
    # e_BC: (Z, f, r, w), one tensor updated in place (no op here saves what it overwrites)
    if var_rows is not None:
        # distance: |qbar_B - kbar_C|^2 from the differences themselves (no cancellation)
        logits = (q_rows.unsqueeze(-2) - k_cols.unsqueeze(-3)).square().sum(-1)
        logits.add_(var_rows.unsqueeze(-1)).add_(var_cols.unsqueeze(-2)).mul_(-0.5 * scale)
    else:
        # for w <= 2 a broadcast product beats bmm on tiny matrices
        if w <= 2:
            logits = (q_rows.unsqueeze(-2) * k_cols.unsqueeze(-3)).sum(-1)
        else:
            logits = q_rows @ k_cols.transpose(-1, -2)
        logits.mul_(scale)
    if p_rows is not None:
        logits.add_(p_rows @ p_cols.transpose(-1, -2))
    # Row B: F(B) on the diagonal, log|C| + e_BC off it (-inf in padded columns).
    logits.add_(log_size.unsqueeze(-2))
    logits.diagonal(offset=row0, dim1=-2, dim2=-1).copy_(f_rows)
    log_z = torch.logsumexp(logits, dim=-1)  # L(B): (Z, f, r)
    delta = logits - log_z.unsqueeze(-1)
    del logits  # without autograd its memory is free from here
    delta.diagonal(offset=row0, dim1=-2, dim2=-1).fill_(-torch.inf)
    return log_z, _small_bmm(delta.exp_(), v_cols)  # delta(B, C) off the diagonal, 0 on it


class _Recomputed(torch.autograd.Function):
    """:func:`_block` that keeps only its inputs and evaluates itself again in the backward."""

    @staticmethod
    def forward(ctx, row0: int, scale: float, *tensors: torch.Tensor | None):
        ctx.row0, ctx.scale = row0, scale
        ctx.save_for_backward(*tensors)
        return _block(row0, scale, *tensors)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_z: torch.Tensor, grad_sent: torch.Tensor):
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            inputs = [
                None if t is None else t.detach().requires_grad_(need)
                for t, need in zip(ctx.saved_tensors, needs, strict=True)
            ]
            outputs = _block(ctx.row0, ctx.scale, *inputs)
        wanted = [x for x in inputs if x is not None and x.requires_grad]
        grads = iter(torch.autograd.grad(outputs, wanted, (grad_log_z, grad_sent)))
        return (
            None,
            None,
            *(next(grads) if x is not None and x.requires_grad else None for x in inputs),
        )


def _blocks(z: int, f: int, w: int, budget: int) -> list[tuple[int, int, int, int]]:
    """``(family0, family1, row0, row1)`` blocks of at most ``budget`` energies, or one row."""
    per_family = max(1, budget // max(1, z * w * w))
    if z * w * w <= budget:
        return [(a, min(f, a + per_family), 0, w) for a in range(0, f, per_family)]
    rows = max(1, budget // max(1, z * w))
    return [(a, a + 1, r, min(w, r + rows)) for a in range(f) for r in range(0, w, rows)]


def hsa_programme(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: HSALayout,
    *,
    scale: float,
    energy: str,
    positions: torch.Tensor | None = None,
    chunk_elements: int | None = None,
    return_log_partition: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """HSA of validated ``q, k: (..., N, d_k)``, ``v: (..., N, d_v)`` (equal batch shapes).

    Returns ``(..., N, d_v)`` in the input dtype; accumulates in :func:`accumulation_dtype`.
    ``chunk_elements`` (default :data:`CHUNK_ELEMENTS`) bounds the energies formed at once.
    With ``return_log_partition=True`` returns ``(y, F)``: ``F`` ``(..., N + M)`` holds the
    log-partition ``F(x)`` of every node (leaves first, in the accumulation dtype), differentiable
    like ``y``; the sequence-parallel entry point reads it at the roots of a shard's subtrees.
    """
    budget = CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    out_dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    batch, n, d_k, d_v = q.shape[:-2], q.shape[-2], q.shape[-1], v.shape[-1]
    m = layout.num_families
    z = batch.numel()
    q, k, v = (x.reshape(z, n, x.shape[-1]).to(acc) for x in (q, k, v))  # (Z, N, d)
    distance = energy == "distance"
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, positions)
    )

    def family_buffer(*rest: int) -> torch.Tensor:
        return q.new_zeros(z, m + 1, *rest)

    # ---- leaves: F(i) = s_ii (+ <p_i, p_i>)
    if distance:
        diff = q - k
        f_leaf = -0.5 * scale * torch.einsum("znd,znd->zn", diff, diff)
        del diff
        var_leaf = q.new_zeros(z, n)  # Vq(i) = Vk(i) = 0
        vq_fam, vk_fam = family_buffer(), family_buffer()
    else:
        f_leaf = scale * torch.einsum("znd,znd->zn", q, k)
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
        fam, f, w = bucket.family, bucket.num_families, bucket.width
        weight = bucket.weight.to(acc)  # |B| / |A|, (f, w)
        log_size = bucket.log_size.to(acc)
        q_c = _children(bucket, q, q_fam, 1)  # (Z, f, w, d_k)
        k_c = _children(bucket, k, k_fam, 1)
        v_c = _children(bucket, v, v_fam, 1)
        f_c = _children(bucket, f_leaf, f_fam, 1)  # F(B): (Z, f, w)
        p_c = _children(bucket, pos_leaf, pos_fam, 0) if positions is not None else None
        mean = weight.unsqueeze(1)  # (f, 1, w): mean over A = weighted mean over children
        q_a = _small_bmm(mean, q_c).squeeze(-2)  # (Z, f, d_k)
        k_a = _small_bmm(mean, k_c).squeeze(-2)
        q_fam.index_copy_(1, fam, q_a)
        k_fam.index_copy_(1, fam, k_a)
        v_fam.index_copy_(1, fam, _small_bmm(mean, v_c).squeeze(-2))
        if distance:
            # Vq(A) = sum_B |B|/|A| (Vq(B) + |qbar_B - qbar_A|^2), then deviations from the centre
            vq_c = _children(bucket, var_leaf, vq_fam, 1)
            vk_c = _children(bucket, var_leaf, vk_fam, 1)
            spread_q = (q_c - q_a.unsqueeze(-2)).square().sum(-1)
            vq_fam.index_copy_(1, fam, ((vq_c + spread_q) * weight).sum(-1))
            spread_k = (k_c - k_a.unsqueeze(-2)).square().sum(-1)
            vk_fam.index_copy_(1, fam, ((vk_c + spread_k) * weight).sum(-1))
            var_q, var_k = vq_c, vk_c
        log_z = q.new_empty(z, f, w)
        if bucket.leaf_start is not None:  # sent values go straight to their leaves' rows
            sent = sent_leaf.narrow(1, bucket.leaf_start, f * w).unflatten(1, (f, w))
        else:
            sent = q.new_empty(z, f, w, d_v)
        recompute = tracked and w > RECOMPUTE_WIDTH
        # the distance energy forms (rows x w x d_k) differences per block
        for a, b, r0, r1 in _blocks(z, f, w, budget // d_k if distance else budget):
            args = (
                r0,
                scale,
                q_c[:, a:b, r0:r1],
                k_c[:, a:b],
                v_c[:, a:b],
                f_c[:, a:b, r0:r1],
                log_size[a:b],
                var_q[:, a:b, r0:r1] if distance else None,
                var_k[:, a:b] if distance else None,
                p_c[a:b, r0:r1] if p_c is not None else None,
                p_c[a:b] if p_c is not None else None,
            )
            out = _Recomputed.apply(*args) if recompute else _block(*args)
            log_z[:, a:b, r0:r1] = out[0]
            sent[:, a:b, r0:r1] = out[1]
        f_fam.index_copy_(1, fam, (log_z * weight).sum(-1))  # F(A) = sum_B |B|/|A| L(B)
        _write_back(bucket, (f_c - log_z).flatten(1, 2), log_mu_leaf, log_mu_fam)
        if bucket.leaf_start is None:
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
