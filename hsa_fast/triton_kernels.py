"""Triton kernels of the HSA dynamic programme (SPEC section 5), accumulating in float32.

A bucket kernel's program owns ``G`` families of the bucket and their children ("slots"):
local slot ``s`` is child ``s % W`` of family ``s // W``, ``W`` being the bucket's width rounded
up to a power of two. When the ``G W`` slots fit one tile (``NUM_CHUNKS = 1``), the sibling
blocks of the ``G`` families form one block-diagonal ``(G W) x (G W)`` tile; wider families are
swept in chunks of ``BR`` slots with an online log-sum-exp, as in flash attention.

Nodes are numbered as in the hierarchy: leaves ``0 .. N-1`` are rows of the contiguous
``(Z, N, d)`` tensors ``q, k, v``; families ``N .. N+M-1`` are rows ``node - N`` of float32
family buffers of ``M + 1`` rows per batch row ``z`` (``M1 = M + 1``; the last row pads).
``HALF`` kernels multiply float16 / bfloat16 leaf tiles on the tensor cores with float32
accumulation; every other product takes float32 operands (family means, shares, positions),
multiplied as ``F32_DOT``: three tf32 products for float32 inputs (``"tf32x3"``, float32
accuracy on the tensor cores), one for half-precision inputs (``"tf32"``, still finer than them).

Row ``B`` of a tile holds ``logits[B, C] = log|C| + e_BC`` off the diagonal and ``F(B)`` on it,
so that ``L(B) = logsumexp_C logits[B, C]`` and ``P = exp(logits - L)`` holds ``mu(B)`` on the
diagonal and ``delta(B, C)`` off it. A leaf's diagonal is its own score ``s_ii`` (``log 1 = 0``).
Each child ``B`` gets a row product ``R(B)``: ``sent(B) = sum_{C != B} P[B, C] v_C`` for a family,
``R_i = sum_C P[i, C] v_C`` (its own ``mu(i) v_i`` included) for a leaf.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "hsa_down_bwd_kernel",
    "hsa_down_kernel",
    "hsa_leaf_kernel",
    "hsa_up_bwd_kernel",
    "hsa_up_kernel",
]

NEG_INF = tl.constexpr(float("-inf"))
# counts that vary from bucket to bucket: one compiled kernel whatever their divisibility
SIZES = ["n_fam", "width", "leaf_start", "N", "M1"]


# Kernel signatures and calls stay packed, several arguments a line, so that the maths shows.
# fmt: off

# ----------------------------------------------------------------------------- helpers
@triton.jit
def _children(fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, start, n_fam, width,
              leaf_start, N, BR: tl.constexpr, W: tl.constexpr, G: tl.constexpr,
              CONTIG: tl.constexpr):
    """Slots ``start .. start + BR`` of program ``pid``.

    Returns the local slot ``s``, the family ``g`` of the slot in the program, the family's id,
    the child's node id, masks (real slot, leaf child, family child), ``|B|/|A|`` and ``log|B|``.
    """
    s = start + tl.arange(0, BR)
    g = s // W
    j = s % W
    fi = pid * G + g  # family index within the bucket
    real = (j < width) & (fi < n_fam)
    slot = fi * width + j
    if CONTIG:
        node = leaf_start + slot
        valid = real
    else:
        node = tl.load(slot_ptr + slot, mask=real, other=-1)
        valid = node >= 0
    fam_id = tl.load(fam_idx_ptr + fi, mask=fi < n_fam, other=0)
    weight = tl.load(weight_ptr + slot, mask=valid, other=0.0)
    log_size = tl.load(log_size_ptr + slot, mask=valid, other=NEG_INF)
    return s, g, fam_id, node, valid, valid & (node < N), valid & (node >= N), weight, log_size


@triton.jit
def _gather(leaf_ptr, fam_ptr, z, node, is_leaf, is_fam, N, M1, cols, n_cols,
            HAS_LEAVES: tl.constexpr, HAS_FAMILIES: tl.constexpr):
    """Rows ``(BR, BD)`` of the slots' nodes: leaf rows in their own dtype, else float32."""
    col_ok = (cols < n_cols)[None, :]
    leaf_rows = leaf_ptr + z * N * n_cols + (node[:, None] * n_cols + cols[None, :])
    if HAS_FAMILIES:
        fam_rows = fam_ptr + z * M1 * n_cols + ((node - N)[:, None] * n_cols + cols[None, :])
        rows = tl.load(fam_rows, mask=is_fam[:, None] & col_ok, other=0.0)
        if HAS_LEAVES:
            leaf = tl.load(leaf_rows, mask=is_leaf[:, None] & col_ok, other=0.0)
            rows += leaf.to(tl.float32)
    else:
        rows = tl.load(leaf_rows, mask=is_leaf[:, None] & col_ok, other=0.0)
    return rows


@triton.jit
def _family_scalar(ptr, z, M1, node, is_fam, N):
    """Per-family float32 values ``ptr[z, node - N]`` (0 for other slots)."""
    return tl.load(ptr + z * M1 + (node - N), mask=is_fam, other=0.0)


@triton.jit
def _store_rows(leaf_ptr, fam_ptr, x, z, node, is_leaf, is_fam, N, M1, cols, n_cols,
                HAS_LEAVES: tl.constexpr, HAS_FAMILIES: tl.constexpr):
    """Scatter rows ``x`` to leaf rows (cast to the leaf dtype) and family rows."""
    col_ok = (cols < n_cols)[None, :]
    if HAS_LEAVES:
        leaf_rows = leaf_ptr + z * N * n_cols + (node[:, None] * n_cols + cols[None, :])
        tl.store(leaf_rows, x.to(leaf_ptr.dtype.element_ty), mask=is_leaf[:, None] & col_ok)
    if HAS_FAMILIES:
        fam_rows = fam_ptr + z * M1 * n_cols + ((node - N)[:, None] * n_cols + cols[None, :])
        tl.store(fam_rows, x, mask=is_fam[:, None] & col_ok)


@triton.jit
def _mm(a, b, HALF: tl.constexpr, F32_DOT: tl.constexpr):
    """``a @ b`` accumulated in float32. ``HALF``: operands in ``b``'s dtype (float16 / bfloat16);
    else float32 operands, multiplied as ``F32_DOT`` ("tf32x3": float32 accuracy, "tf32")."""
    if HALF:
        return tl.dot(a.to(b.dtype), b)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=F32_DOT)


@triton.jit
def _per_family(x, G: tl.constexpr):
    """Sum slot values ``(BR,)`` over the children of each of the ``G`` families: ``(G,)``."""
    BR: tl.constexpr = x.shape[0]
    return tl.sum(tl.reshape(x, (G, BR // G)), axis=1)


@triton.jit
def _per_family_rows(x, G: tl.constexpr):
    """Sum slot rows ``(BR, BD)`` over the children of each of the ``G`` families."""
    BR: tl.constexpr = x.shape[0]
    BD: tl.constexpr = x.shape[1]
    return tl.sum(tl.reshape(x, (G, BR // G, BD)), axis=1)


@triton.jit
def _slot_block(q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr, pos_ptr,
                fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, start, z, n_fam, width,
                leaf_start, N, M1, d_k, d_v, d_p, scale,
                BR: tl.constexpr, W: tl.constexpr, G: tl.constexpr, BDK: tl.constexpr,
                BDV: tl.constexpr, BDP: tl.constexpr, CONTIG: tl.constexpr,
                HAS_LEAVES: tl.constexpr, HAS_FAMILIES: tl.constexpr, DISTANCE: tl.constexpr,
                HAS_POS: tl.constexpr):
    """Everything the energies need about ``BR`` slots.

    Returns slot, family, family id, node, masks, weight, ``log|B|``, the rows ``q, k, v``,
    ``F(B)`` (a leaf's own score, a family's from the level below), the mean squared norms of
    ``q`` and ``k`` over the child's leaves (distance energy) and positions.
    """
    s, g, fam_id, node, valid, leaf, fam, w, log_size = _children(
        fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, start, n_fam, width, leaf_start,
        N, BR, W, G, CONTIG)
    ck = tl.arange(0, BDK)
    cv = tl.arange(0, BDV)
    q = _gather(q_ptr, qf_ptr, z, node, leaf, fam, N, M1, ck, d_k, HAS_LEAVES, HAS_FAMILIES)
    k = _gather(k_ptr, kf_ptr, z, node, leaf, fam, N, M1, ck, d_k, HAS_LEAVES, HAS_FAMILIES)
    v = _gather(v_ptr, vf_ptr, z, node, leaf, fam, N, M1, cv, d_v, HAS_LEAVES, HAS_FAMILIES)
    q32 = q.to(tl.float32)
    k32 = k.to(tl.float32)
    p = tl.zeros((BR, BDP), tl.float32)
    if HAS_POS:
        cp = tl.arange(0, BDP)
        p = tl.load(pos_ptr + (node[:, None] * d_p + cp[None, :]),
                    mask=valid[:, None] & (cp < d_p)[None, :], other=0.0)
    q_sq = tl.zeros((BR,), tl.float32)
    k_sq = tl.zeros((BR,), tl.float32)
    if DISTANCE:
        q_sq = tl.where(leaf, tl.sum(q32 * q32, 1), _family_scalar(qsqf_ptr, z, M1, node, fam, N))
        k_sq = tl.where(leaf, tl.sum(k32 * k32, 1), _family_scalar(ksqf_ptr, z, M1, node, fam, N))
        diff = q32 - k32
        f_leaf = -0.5 * scale * tl.sum(diff * diff, 1)
    else:
        f_leaf = scale * tl.sum(q32 * k32, 1)
    if HAS_POS:
        f_leaf += tl.sum(p * p, 1)
    f = tl.where(leaf, f_leaf, _family_scalar(ff_ptr, z, M1, node, fam, N))
    return s, g, fam_id, node, valid, leaf, fam, w, log_size, q, k, v, f, q_sq, k_sq, p


@triton.jit
def _logits(q_r, qsq_r, p_r, f_r, s_r, g_r, valid_r, k_c, ksq_c, p_c, log_size_c, s_c, g_c,
            valid_c, scale, DISTANCE: tl.constexpr, HAS_POS: tl.constexpr, HALF: tl.constexpr,
            F32_DOT: tl.constexpr):
    """Tile of rows ``B`` and columns ``C``: ``F(B)`` where ``B = C``, else ``log|C| + e_BC``.

    ``-inf`` where ``B`` and ``C`` are not siblings or either is padding. Also returns the
    diagonal mask ``B = C``.
    """
    e = scale * _mm(q_r, tl.trans(k_c), HALF, F32_DOT)
    if DISTANCE:
        e -= 0.5 * scale * (qsq_r[:, None] + ksq_c[None, :])
    if HAS_POS:
        e += _mm(p_r, tl.trans(p_c), False, F32_DOT)
    diag = s_r[:, None] == s_c[None, :]
    logits = tl.where(diag, f_r[:, None], e + log_size_c[None, :])
    siblings = (g_r[:, None] == g_c[None, :]) & valid_r[:, None] & valid_c[None, :]
    return tl.where(siblings, logits, NEG_INF), diag


# ----------------------------------------------------------------------------- forward
@triton.jit(do_not_specialize=SIZES)
def hsa_up_kernel(q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr,
                  lse_ptr, sentf_ptr, rloc_ptr, pos_ptr,
                  fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr,
                  n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale,
                  W: tl.constexpr, G: tl.constexpr, BR: tl.constexpr, NUM_CHUNKS: tl.constexpr,
                  BDK: tl.constexpr, BDV: tl.constexpr, BDP: tl.constexpr,
                  CONTIG: tl.constexpr, HAS_LEAVES: tl.constexpr, HAS_FAMILIES: tl.constexpr,
                  DISTANCE: tl.constexpr, HAS_POS: tl.constexpr, HALF: tl.constexpr,
                  F32_DOT: tl.constexpr):
    """One bucket of the up pass, for ``G`` families and batch row ``z = program_id(1)``.

    Per child ``B``: ``L(B)`` into ``lse[z, B]``; ``R(B)`` into ``sentf`` (families) or ``rloc``
    (leaves). Per family ``A``: ``F(A) = sum_B |B|/|A| L(B)`` and the means of ``q, k, v``
    (and of ``|q|^2, |k|^2`` for the distance energy) over its leaves.
    """
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    ck = tl.arange(0, BDK)
    cv = tl.arange(0, BDV)
    f_fam = tl.zeros((G,), tl.float32)
    q_fam = tl.zeros((G, BDK), tl.float32)
    k_fam = tl.zeros((G, BDK), tl.float32)
    v_fam = tl.zeros((G, BDV), tl.float32)
    qsq_fam = tl.zeros((G,), tl.float32)
    ksq_fam = tl.zeros((G,), tl.float32)
    for rc in range(NUM_CHUNKS):
        s_r, g_r, _fam_id_r, node_r, valid_r, leaf_r, fam_r, w_r, ls_r, q_r, k_r, v_r, f_r, \
            qsq_r, ksq_r, p_r = _slot_block(
                q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr, pos_ptr,
                fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, rc * BR, z, n_fam, width,
                leaf_start, N, M1, d_k, d_v, d_p, scale, BR, W, G, BDK, BDV, BDP, CONTIG,
                HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
        # a mean over A is the weighted mean over its children
        q_fam += _per_family_rows(w_r[:, None] * q_r.to(tl.float32), G)
        k_fam += _per_family_rows(w_r[:, None] * k_r.to(tl.float32), G)
        v_fam += _per_family_rows(w_r[:, None] * v_r.to(tl.float32), G)
        if DISTANCE:
            qsq_fam += _per_family(w_r * qsq_r, G)
            ksq_fam += _per_family(w_r * ksq_r, G)
        # online log-sum-exp over the siblings C, and R(B) = sum_C P[B, C] v_C
        m_i = tl.full((BR,), NEG_INF, tl.float32)
        l_i = tl.zeros((BR,), tl.float32)
        acc = tl.zeros((BR, BDV), tl.float32)
        for cc in range(NUM_CHUNKS):
            if NUM_CHUNKS == 1:
                s_c, g_c, valid_c, ls_c, k_c, v_c, ksq_c, p_c = (
                    s_r, g_r, valid_r, ls_r, k_r, v_r, ksq_r, p_r)
            else:
                s_c, g_c, _, _, valid_c, _, _, _, ls_c, _, k_c, v_c, _, _, ksq_c, p_c = \
                    _slot_block(
                        q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr,
                        pos_ptr, fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, cc * BR,
                        z, n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale, BR, W, G, BDK,
                        BDV, BDP, CONTIG, HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
            logits, diag = _logits(q_r, qsq_r, p_r, f_r, s_r, g_r, valid_r, k_c, ksq_c, p_c,
                                   ls_c, s_c, g_c, valid_c, scale, DISTANCE, HAS_POS, HALF,
                                   F32_DOT)
            m_new = tl.maximum(m_i, tl.max(logits, 1))
            m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(logits - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            p = tl.where(diag & fam_r[:, None], 0.0, p)  # a family keeps mu(B) for its subtree
            acc = acc * alpha[:, None] + _mm(p, v_c, HALF, F32_DOT)
            m_i = m_new
        l_safe = tl.where(valid_r, l_i, 1.0)
        lse_r = tl.where(valid_r, m_i + tl.log(l_safe), 0.0)  # L(B)
        r_r = acc / l_safe[:, None]  # R(B)
        tl.store(lse_ptr + z * (N + M1 - 1) + node_r, lse_r, mask=valid_r)
        _store_rows(rloc_ptr, sentf_ptr, r_r, z, node_r, leaf_r, fam_r, N, M1, cv, d_v,
                    HAS_LEAVES, HAS_FAMILIES)
        f_fam += _per_family(w_r * lse_r, G)  # F(A) = sum_B |B|/|A| L(B)

    fi = pid * G + tl.arange(0, G)
    ok = fi < n_fam
    fam = tl.load(fam_idx_ptr + fi, mask=ok, other=0)
    tl.store(ff_ptr + z * M1 + fam, f_fam, mask=ok)
    mask_k = ok[:, None] & (ck < d_k)[None, :]
    rows_k = fam[:, None] * d_k + ck[None, :]
    tl.store(qf_ptr + z * M1 * d_k + rows_k, q_fam, mask=mask_k)
    tl.store(kf_ptr + z * M1 * d_k + rows_k, k_fam, mask=mask_k)
    tl.store(vf_ptr + z * M1 * d_v + (fam[:, None] * d_v + cv[None, :]), v_fam,
             mask=ok[:, None] & (cv < d_v)[None, :])
    if DISTANCE:
        tl.store(qsqf_ptr + z * M1 + fam, qsq_fam, mask=ok)
        tl.store(ksqf_ptr + z * M1 + fam, ksq_fam, mask=ok)


@triton.jit(do_not_specialize=["n", "N", "M1"])
def hsa_down_kernel(fam_ptr, parent_ptr, n, ff_ptr, lse_ptr, logw_ptr, u_ptr, sentf_ptr, N, M1,
                    d_v, BF: tl.constexpr, BDV: tl.constexpr):
    """One depth of the down pass for ``BF`` families ``B`` with parents ``A``:
    ``log W(B) = log W(A) + F(B) - L(B)`` and ``U(B) = U(A) + W(A) sent(B)``."""
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    idx = pid * BF + tl.arange(0, BF)
    ok = idx < n
    b = tl.load(fam_ptr + idx, mask=ok, other=0)
    a = tl.load(parent_ptr + idx, mask=ok, other=0)
    logw_ptr += z * M1
    log_w_a = tl.load(logw_ptr + a, mask=ok, other=0.0)
    f_b = tl.load(ff_ptr + z * M1 + b, mask=ok, other=0.0)
    lse_b = tl.load(lse_ptr + z * (N + M1 - 1) + N + b, mask=ok, other=0.0)
    tl.store(logw_ptr + b, log_w_a + f_b - lse_b, mask=ok)
    cv = tl.arange(0, BDV)
    mask_v = ok[:, None] & (cv < d_v)[None, :]
    u_ptr += z * M1 * d_v
    u_a = tl.load(u_ptr + (a[:, None] * d_v + cv[None, :]), mask=mask_v, other=0.0)
    sent_b = tl.load(sentf_ptr + z * M1 * d_v + (b[:, None] * d_v + cv[None, :]), mask=mask_v,
                     other=0.0)
    tl.store(u_ptr + (b[:, None] * d_v + cv[None, :]), u_a + tl.exp(log_w_a)[:, None] * sent_b,
             mask=mask_v)


@triton.jit(do_not_specialize=["N", "M1"])
def hsa_leaf_kernel(rloc_ptr, v_ptr, out_ptr, parent_ptr, logw_ptr, u_ptr, N, M1, d_v,
                    BN: tl.constexpr, BDV: tl.constexpr):
    """Leaves: ``y_i = U(A) + W(A) R_i``, ``A`` the parent of ``i``; ``y_i = v_i`` in a one-leaf
    tree (parent ``M``, the padding family). ``out`` may alias ``rloc``."""
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    i = pid * BN + tl.arange(0, BN)
    ok = i < N
    a = tl.load(parent_ptr + i, mask=ok, other=0)
    root = a == M1 - 1
    cv = tl.arange(0, BDV)
    col_ok = (cv < d_v)[None, :]
    rows = i[:, None] * d_v + cv[None, :]
    batch = z * N * d_v
    r_i = tl.load(rloc_ptr + batch + rows, mask=(ok & ~root)[:, None] & col_ok, other=0.0)
    v_i = tl.load(v_ptr + batch + rows, mask=(ok & root)[:, None] & col_ok, other=0.0)
    w_a = tl.exp(tl.load(logw_ptr + z * M1 + a, mask=ok, other=0.0))
    u_a = tl.load(u_ptr + z * M1 * d_v + (a[:, None] * d_v + cv[None, :]),
                  mask=ok[:, None] & col_ok, other=0.0)
    y = tl.where(root[:, None], v_i.to(tl.float32), u_a + w_a[:, None] * r_i.to(tl.float32))
    tl.store(out_ptr + batch + rows, y.to(out_ptr.dtype.element_ty), mask=ok[:, None] & col_ok)


# ----------------------------------------------------------------------------- backward
@triton.jit(do_not_specialize=SIZES)
def hsa_down_bwd_kernel(gy_ptr, rloc_ptr, sentf_ptr, logw_ptr, guf_ptr, glogwf_ptr, dlt_ptr,
                        fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr,
                        n_fam, width, leaf_start, N, M1, d_v,
                        W: tl.constexpr, G: tl.constexpr, BR: tl.constexpr,
                        NUM_CHUNKS: tl.constexpr, BDV: tl.constexpr, CONTIG: tl.constexpr,
                        HAS_LEAVES: tl.constexpr, HAS_FAMILIES: tl.constexpr):
    """Adjoint of the down pass for one bucket (buckets in up order: children first).

    With ``gU(i) = dy_i`` for a leaf and ``glogW(i) = 0``: per child ``B`` of ``A``,
    ``D(B) = W(A) gU(B) . R(B)`` into ``dlt[z, B]``; per family, ``gU(A) = sum_B gU(B)`` and
    ``glogW(A) = sum_B glogW(B) + D(B)``.
    """
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    cv = tl.arange(0, BDV)
    gu_fam = tl.zeros((G, BDV), tl.float32)
    glw_fam = tl.zeros((G,), tl.float32)
    for rc in range(NUM_CHUNKS):
        _s, _g, fam_id, node, valid, leaf, fam, _w, _ls = _children(
            fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, rc * BR, n_fam, width,
            leaf_start, N, BR, W, G, CONTIG)
        w_a = tl.exp(tl.load(logw_ptr + z * M1 + fam_id, mask=valid, other=0.0))
        gu = _gather(gy_ptr, guf_ptr, z, node, leaf, fam, N, M1, cv, d_v, HAS_LEAVES,
                     HAS_FAMILIES).to(tl.float32)
        r = _gather(rloc_ptr, sentf_ptr, z, node, leaf, fam, N, M1, cv, d_v, HAS_LEAVES,
                    HAS_FAMILIES).to(tl.float32)
        d = w_a * tl.sum(gu * r, 1)
        tl.store(dlt_ptr + z * (N + M1 - 1) + node, d, mask=valid)
        gu_fam += _per_family_rows(gu, G)
        glw_fam += _per_family(_family_scalar(glogwf_ptr, z, M1, node, fam, N) + d, G)
    fi = pid * G + tl.arange(0, G)
    ok = fi < n_fam
    fam = tl.load(fam_idx_ptr + fi, mask=ok, other=0)
    tl.store(glogwf_ptr + z * M1 + fam, glw_fam, mask=ok)
    tl.store(guf_ptr + z * M1 * d_v + (fam[:, None] * d_v + cv[None, :]), gu_fam,
             mask=ok[:, None] & (cv < d_v)[None, :])


@triton.jit
def _adjoint_rows(gy_ptr, guf_ptr, glogwf_ptr, dlt_ptr, lse_ptr, logw_ptr, gff_ptr, z, fam_id,
                  node, valid, leaf, fam, w, N, M1, d_v, BDV: tl.constexpr,
                  HAS_LEAVES: tl.constexpr, HAS_FAMILIES: tl.constexpr):
    """What the backward needs about rows ``B`` (children of ``A``): ``L(B)``, ``W(A)``,
    ``gU(B)``, ``glog mu(B)`` (``= glogW(B)``, 0 for a leaf), ``D(B)``, ``|B|/|A| gF(A)``."""
    per_node = z * (N + M1 - 1) + node
    lse = tl.load(lse_ptr + per_node, mask=valid, other=0.0)
    d = tl.load(dlt_ptr + per_node, mask=valid, other=0.0)
    w_a = tl.exp(tl.load(logw_ptr + z * M1 + fam_id, mask=valid, other=0.0))
    wgf = w * tl.load(gff_ptr + z * M1 + fam_id, mask=valid, other=0.0)
    cv = tl.arange(0, BDV)
    gu = _gather(gy_ptr, guf_ptr, z, node, leaf, fam, N, M1, cv, d_v, HAS_LEAVES, HAS_FAMILIES)
    glogmu = _family_scalar(glogwf_ptr, z, M1, node, fam, N)
    return lse, w_a, gu, glogmu, d, wgf


@triton.jit
def _grad_logits(q_r, qsq_r, p_r, f_r, s_r, g_r, valid_r, fam_r, lse_r, w_a_r, gu_r, glogmu_r,
                 d_r, wgf_r, k_c, v_c, ksq_c, p_c, ls_c, s_c, g_c, valid_c, scale,
                 DISTANCE: tl.constexpr, HAS_POS: tl.constexpr, HALF: tl.constexpr,
                 F32_DOT: tl.constexpr):
    """Gradient ``g`` of the loss in ``logits[B, C]`` over a tile, and ``P'``, the part of
    ``P`` in ``R(B)`` (``P`` without the diagonal of family rows):

    ``g = P' gP' + P (|B|/|A| gF(A) - glog mu(B) - D(B)) + [B = C] glog mu(B)``,
    with ``gP'[B, C] = W(A) gU(B) . v_C``; also returns the diagonal mask.
    """
    logits, diag = _logits(q_r, qsq_r, p_r, f_r, s_r, g_r, valid_r, k_c, ksq_c, p_c, ls_c, s_c,
                           g_c, valid_c, scale, DISTANCE, HAS_POS, HALF, F32_DOT)
    prob = tl.exp(logits - lse_r[:, None])
    kept = tl.where(diag & fam_r[:, None], 0.0, prob)
    g_kept = w_a_r[:, None] * _mm(gu_r, tl.trans(v_c), HALF, F32_DOT)
    g = kept * g_kept + prob * (wgf_r - glogmu_r - d_r)[:, None]
    g += tl.where(diag, glogmu_r[:, None], 0.0)
    return g, kept, diag


@triton.jit
def _finish_rows(dq_ptr, gqf_ptr, gff_ptr, gqsqf_ptr, gpos_ptr, gq, rs, gp, g_diag, q, k, p, w,
                 fam_id, z, node, valid, leaf, fam, N, M1, d_k, d_p, scale,
                 BDK: tl.constexpr, BDP: tl.constexpr, HAS_LEAVES: tl.constexpr,
                 HAS_FAMILIES: tl.constexpr, DISTANCE: tl.constexpr, HAS_POS: tl.constexpr):
    """Row gradients from ``gq = sum_C g[B, C] k_C`` (off-diagonal), ``rs = sum_C g[B, C]``,
    ``gp = sum_C g[B, C] p_C`` and ``g_diag = g[B, B] = dF(B)``: ``dq`` of leaves, and of
    families with their ``dF`` and ``d mean|q|^2`` for the level below; positions (row part)."""
    ck = tl.arange(0, BDK)
    gq_a = tl.load(gqf_ptr + z * M1 * d_k + (fam_id[:, None] * d_k + ck[None, :]),
                   mask=valid[:, None] & (ck < d_k)[None, :], other=0.0)
    gq = scale * gq + w[:, None] * gq_a  # the mean of q over A holds |B|/|A| q_B
    q32 = q.to(tl.float32)
    k32 = k.to(tl.float32)
    g_self = tl.where(leaf, g_diag, 0.0)  # a leaf's own score s_ii
    if DISTANCE:
        gq -= scale * g_self[:, None] * (q32 - k32)
        g_qsq = -0.5 * scale * rs + w * tl.load(gqsqf_ptr + z * M1 + fam_id, mask=valid, other=0.0)
        gq += 2.0 * tl.where(leaf, g_qsq, 0.0)[:, None] * q32
        if HAS_FAMILIES:
            tl.store(gqsqf_ptr + z * M1 + (node - N), g_qsq, mask=fam)
    else:
        gq += scale * g_self[:, None] * k32
    if HAS_FAMILIES:
        tl.store(gff_ptr + z * M1 + (node - N), g_diag, mask=fam)
    _store_rows(dq_ptr, gqf_ptr, gq, z, node, leaf, fam, N, M1, ck, d_k, HAS_LEAVES,
                HAS_FAMILIES)
    if HAS_POS:
        cp = tl.arange(0, BDP)
        gp += 2.0 * g_self[:, None] * p
        rows = node[:, None] * d_p + cp[None, :]
        tl.store(gpos_ptr + z * (N + M1 - 1) * d_p + rows, gp,
                 mask=valid[:, None] & (cp < d_p)[None, :])


@triton.jit
def _finish_cols(dk_ptr, dv_ptr, gkf_ptr, gvf_ptr, gksqf_ptr, gpos_ptr, gk, gv, cs, gp, g_diag,
                 q, k, p, w, fam_id, z, node, valid, leaf, fam, N, M1, d_k, d_v, d_p, scale,
                 BDK: tl.constexpr, BDV: tl.constexpr, BDP: tl.constexpr,
                 HAS_LEAVES: tl.constexpr, HAS_FAMILIES: tl.constexpr, DISTANCE: tl.constexpr,
                 HAS_POS: tl.constexpr):
    """Column gradients from ``gk = sum_B g[B, C] q_B``, ``gv = sum_B P'[B, C] W(A) gU(B)``,
    ``cs = sum_B g[B, C]``, ``gp = sum_B g[B, C] p_B`` and ``g_diag = dF(C)``: ``dk, dv`` of
    leaves, of families for the level below, ``d mean|k|^2``; positions (column part)."""
    ck = tl.arange(0, BDK)
    cv = tl.arange(0, BDV)
    gk_a = tl.load(gkf_ptr + z * M1 * d_k + (fam_id[:, None] * d_k + ck[None, :]),
                   mask=valid[:, None] & (ck < d_k)[None, :], other=0.0)
    gv_a = tl.load(gvf_ptr + z * M1 * d_v + (fam_id[:, None] * d_v + cv[None, :]),
                   mask=valid[:, None] & (cv < d_v)[None, :], other=0.0)
    gk = scale * gk + w[:, None] * gk_a
    gv += w[:, None] * gv_a
    q32 = q.to(tl.float32)
    k32 = k.to(tl.float32)
    g_self = tl.where(leaf, g_diag, 0.0)
    if DISTANCE:
        gk += scale * g_self[:, None] * (q32 - k32)
        g_ksq = -0.5 * scale * cs + w * tl.load(gksqf_ptr + z * M1 + fam_id, mask=valid, other=0.0)
        gk += 2.0 * tl.where(leaf, g_ksq, 0.0)[:, None] * k32
        if HAS_FAMILIES:
            tl.store(gksqf_ptr + z * M1 + (node - N), g_ksq, mask=fam)
    else:
        gk += scale * g_self[:, None] * q32
    _store_rows(dk_ptr, gkf_ptr, gk, z, node, leaf, fam, N, M1, ck, d_k, HAS_LEAVES,
                HAS_FAMILIES)
    _store_rows(dv_ptr, gvf_ptr, gv, z, node, leaf, fam, N, M1, cv, d_v, HAS_LEAVES,
                HAS_FAMILIES)
    if HAS_POS:
        cp = tl.arange(0, BDP)
        rows = node[:, None] * d_p + cp[None, :]
        tl.store(gpos_ptr + z * (N + M1 - 1) * d_p + rows, gp,
                 mask=valid[:, None] & (cp < d_p)[None, :])


@triton.jit(do_not_specialize=SIZES)
def hsa_up_bwd_kernel(q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr,
                      pos_ptr, lse_ptr, logw_ptr, gy_ptr, guf_ptr, glogwf_ptr, dlt_ptr,
                      dq_ptr, dk_ptr, dv_ptr, gqf_ptr, gkf_ptr, gvf_ptr, gff_ptr, gqsqf_ptr,
                      gksqf_ptr, gpos_r_ptr, gpos_c_ptr,
                      fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr,
                      n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale,
                      W: tl.constexpr, G: tl.constexpr, BR: tl.constexpr,
                      NUM_CHUNKS: tl.constexpr, BDK: tl.constexpr, BDV: tl.constexpr,
                      BDP: tl.constexpr, CONTIG: tl.constexpr, HAS_LEAVES: tl.constexpr,
                      HAS_FAMILIES: tl.constexpr, DISTANCE: tl.constexpr, HAS_POS: tl.constexpr,
                      HALF: tl.constexpr, F32_DOT: tl.constexpr):
    """Adjoint of one bucket of the up pass (buckets in reverse order: parents first).

    Reads the family's own gradients ``gF(A)``, ``g mean q(A)``, ... (zero for roots) and writes
    those of its family children, or ``dq, dk, dv`` of its leaf children.
    """
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    if NUM_CHUNKS == 1:
        s, g, fam_id, node, valid, leaf, fam, w, ls, q, k, v, f, q_sq, k_sq, p = _slot_block(
            q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr, pos_ptr,
            fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, 0, z, n_fam, width,
            leaf_start, N, M1, d_k, d_v, d_p, scale, BR, W, G, BDK, BDV, BDP, CONTIG,
            HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
        lse, w_a, gu, glogmu, d, wgf = _adjoint_rows(
            gy_ptr, guf_ptr, glogwf_ptr, dlt_ptr, lse_ptr, logw_ptr, gff_ptr, z, fam_id, node,
            valid, leaf, fam, w, N, M1, d_v, BDV, HAS_LEAVES, HAS_FAMILIES)
        gl, kept, diag = _grad_logits(q, q_sq, p, f, s, g, valid, fam, lse, w_a, gu, glogmu, d,
                                      wgf, k, v, k_sq, p, ls, s, g, valid, scale, DISTANCE,
                                      HAS_POS, HALF, F32_DOT)
        g_off = tl.where(diag, 0.0, gl)  # d/d e_BC
        g_diag = tl.sum(tl.where(diag, gl, 0.0), 1)  # d/dF(B)
        gq = _mm(g_off, k, HALF, F32_DOT)
        gk = _mm(tl.trans(g_off), q, HALF, F32_DOT)
        gv = _mm(tl.trans(kept * w_a[:, None]), gu, HALF, F32_DOT)
        gp_r = tl.zeros((BR, BDP), tl.float32)
        gp_c = tl.zeros((BR, BDP), tl.float32)
        if HAS_POS:
            gp_r = _mm(g_off, p, False, F32_DOT)
            gp_c = _mm(tl.trans(g_off), p, False, F32_DOT)
        _finish_rows(dq_ptr, gqf_ptr, gff_ptr, gqsqf_ptr, gpos_r_ptr, gq, tl.sum(g_off, 1), gp_r,
                     g_diag, q, k, p, w, fam_id, z, node, valid, leaf, fam, N, M1, d_k, d_p,
                     scale, BDK, BDP, HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
        _finish_cols(dk_ptr, dv_ptr, gkf_ptr, gvf_ptr, gksqf_ptr, gpos_c_ptr, gk, gv,
                     tl.sum(g_off, 0), gp_c, g_diag, q, k, p, w, fam_id, z, node, valid, leaf,
                     fam, N, M1, d_k, d_v, d_p, scale, BDK, BDV, BDP, HAS_LEAVES, HAS_FAMILIES,
                     DISTANCE, HAS_POS)
    else:
        # rows B: sweep the columns for dq(B), dF(B), ...
        for rc in range(NUM_CHUNKS):
            s_r, g_r, fam_id_r, node_r, valid_r, leaf_r, fam_r, w_r, _ls_r, q_r, k_r, _v_r, f_r, \
                qsq_r, _ksq_r, p_r = _slot_block(
                    q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr,
                    pos_ptr, fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, rc * BR, z,
                    n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale, BR, W, G, BDK, BDV,
                    BDP, CONTIG, HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
            lse_r, w_a_r, gu_r, glogmu_r, d_r, wgf_r = _adjoint_rows(
                gy_ptr, guf_ptr, glogwf_ptr, dlt_ptr, lse_ptr, logw_ptr, gff_ptr, z, fam_id_r,
                node_r, valid_r, leaf_r, fam_r, w_r, N, M1, d_v, BDV, HAS_LEAVES, HAS_FAMILIES)
            gq = tl.zeros((BR, BDK), tl.float32)
            rs = tl.zeros((BR,), tl.float32)
            gp = tl.zeros((BR, BDP), tl.float32)
            g_diag = tl.zeros((BR,), tl.float32)
            for cc in range(NUM_CHUNKS):
                s_c, g_c, _, _, valid_c, _, _, _, ls_c, _, k_c, v_c, _, _, ksq_c, p_c = \
                    _slot_block(
                        q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr,
                        pos_ptr, fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, cc * BR,
                        z, n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale, BR, W, G, BDK,
                        BDV, BDP, CONTIG, HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
                gl, kept, diag = _grad_logits(
                    q_r, qsq_r, p_r, f_r, s_r, g_r, valid_r, fam_r, lse_r, w_a_r, gu_r, glogmu_r,
                    d_r, wgf_r, k_c, v_c, ksq_c, p_c, ls_c, s_c, g_c, valid_c, scale, DISTANCE,
                    HAS_POS, HALF, F32_DOT)
                g_off = tl.where(diag, 0.0, gl)
                g_diag += tl.sum(tl.where(diag, gl, 0.0), 1)
                gq += _mm(g_off, k_c, HALF, F32_DOT)
                rs += tl.sum(g_off, 1)
                if HAS_POS:
                    gp += _mm(g_off, p_c, False, F32_DOT)
            _finish_rows(dq_ptr, gqf_ptr, gff_ptr, gqsqf_ptr, gpos_r_ptr, gq, rs, gp, g_diag,
                         q_r, k_r, p_r, w_r, fam_id_r, z, node_r, valid_r, leaf_r, fam_r, N, M1,
                         d_k, d_p, scale, BDK, BDP, HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
        # columns C: sweep the rows for dk(C), dv(C), ...
        for cc in range(NUM_CHUNKS):
            s_c, g_c, fam_id_c, node_c, valid_c, leaf_c, fam_c, w_c, ls_c, q_c, k_c, v_c, _f_c, \
                _qsq_c, ksq_c, p_c = _slot_block(
                    q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr,
                    pos_ptr, fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, cc * BR, z,
                    n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale, BR, W, G, BDK, BDV,
                    BDP, CONTIG, HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
            gk = tl.zeros((BR, BDK), tl.float32)
            gv = tl.zeros((BR, BDV), tl.float32)
            cs = tl.zeros((BR,), tl.float32)
            gp = tl.zeros((BR, BDP), tl.float32)
            g_diag = tl.zeros((BR,), tl.float32)
            for rc in range(NUM_CHUNKS):
                s_r, g_r, fam_id_r, node_r, valid_r, leaf_r, fam_r, w_r, _, q_r, _, _, f_r, \
                    qsq_r, _, p_r = _slot_block(
                        q_ptr, k_ptr, v_ptr, qf_ptr, kf_ptr, vf_ptr, ff_ptr, qsqf_ptr, ksqf_ptr,
                        pos_ptr, fam_idx_ptr, slot_ptr, weight_ptr, log_size_ptr, pid, rc * BR,
                        z, n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale, BR, W, G, BDK,
                        BDV, BDP, CONTIG, HAS_LEAVES, HAS_FAMILIES, DISTANCE, HAS_POS)
                lse_r, w_a_r, gu_r, glogmu_r, d_r, wgf_r = _adjoint_rows(
                    gy_ptr, guf_ptr, glogwf_ptr, dlt_ptr, lse_ptr, logw_ptr, gff_ptr, z,
                    fam_id_r, node_r, valid_r, leaf_r, fam_r, w_r, N, M1, d_v, BDV, HAS_LEAVES,
                    HAS_FAMILIES)
                gl, kept, diag = _grad_logits(
                    q_r, qsq_r, p_r, f_r, s_r, g_r, valid_r, fam_r, lse_r, w_a_r, gu_r, glogmu_r,
                    d_r, wgf_r, k_c, v_c, ksq_c, p_c, ls_c, s_c, g_c, valid_c, scale, DISTANCE,
                    HAS_POS, HALF, F32_DOT)
                g_off = tl.where(diag, 0.0, gl)
                g_diag += tl.sum(tl.where(diag, gl, 0.0), 0)
                gk += _mm(tl.trans(g_off), q_r, HALF, F32_DOT)
                gv += _mm(tl.trans(kept * w_a_r[:, None]), gu_r, HALF, F32_DOT)
                cs += tl.sum(g_off, 0)
                if HAS_POS:
                    gp += _mm(tl.trans(g_off), p_r, False, F32_DOT)
            _finish_cols(dk_ptr, dv_ptr, gkf_ptr, gvf_ptr, gksqf_ptr, gpos_c_ptr, gk, gv, cs, gp,
                         g_diag, q_c, k_c, p_c, w_c, fam_id_c, z, node_c, valid_c, leaf_c, fam_c,
                         N, M1, d_k, d_v, d_p, scale, BDK, BDV, BDP, HAS_LEAVES, HAS_FAMILIES,
                         DISTANCE, HAS_POS)
