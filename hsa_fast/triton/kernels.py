"""Triton kernels of the HSA dynamic programme (docs/HSA.md section 5), accumulating in float32.

Nodes are numbered as in the hierarchy: leaves ``0 .. N-1``, families ``N .. N+M-1``. A
per-node quantity comes as a ``NodeRows`` pair (:mod:`hsa_fast.triton.arguments`): leaf rows
``(Z, N, d)`` in the input dtype and family rows ``(Z, M + 1, d)`` in float32 (family
``node - N``; the last row pads). Each kernel first moves its pointers to its batch row
``z = program_id(1)``.

A bucket kernel's program owns ``G`` families of a bucket and their children, its *slots*
(``Tile``): local slot ``s`` is child ``s % W`` of family ``s // W``.
When the ``G W`` slots fit one tile (``NUM_CHUNKS = 1``) the sibling blocks of the ``G`` families
form one block-diagonal ``(G W) x (G W)`` tile; wider families are swept in chunks of ``BR``
slots with an online log-sum-exp, as in flash attention. Row ``B`` of a tile holds

    ``logits[B, C] = log|C| + e_BC``  (``C != B``),   ``logits[B, B] = F(B)``,

so that ``L(B) = logsumexp_C logits[B, C]`` and ``P = exp(logits - L)`` holds ``mu(B)`` on the
diagonal and ``delta(B, C)`` off it. A leaf's ``F`` is its own score ``s_ii`` (``log 1 = 0``).
Each child gets a row product ``R(B)``: ``sent(B) = sum_{C != B} P[B, C] v_C`` for a family,
``R_i = sum_C P[i, C] v_C`` (its own ``mu(i) v_i`` included) for a leaf.

The distance energy is evaluated about each family's own centre ``c = (qbar_A + kbar_A) / 2``
with within-node variances (:func:`_centred`): ``e_BC = s <q_B - c, k_C - c> - s/2 (|q_B - c|^2
+ Vq(B) + |k_C - c|^2 + Vk(C))``, every term of the size of the family's spread, so it stays
exact far from the origin and where a tree's subtrees lie far from each other.

``HALF`` tiles (leaf-only buckets of float16 / bfloat16 inputs, dot energy) multiply on the
tensor cores in the input dtype with float32 accumulation; every other product takes float32
operands (family means, centred rows, shares, positions), multiplied as ``F32_DOT``:
``"tf32x3"`` for float32 inputs (float32 accuracy on the tensor cores), ``"tf32"`` for
half-precision inputs (still finer than them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import triton
import triton.language as tl

from .arguments import NodeRows, Stats

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


class Slots(NamedTuple):
    """``BR`` slots of a program: local index ``s``, family ``g`` within the program, the family
    ``parent`` whose child the slot is, the child's ``node`` id; masks: a real child, a leaf, a
    family; the child's ``weight = |B|/|A|`` and ``log_size = log|B|``."""

    s: Any
    g: Any
    parent: Any
    node: Any
    valid: Any
    is_leaf: Any
    is_family: Any
    weight: Any
    log_size: Any


class Nodes(NamedTuple):
    """What the energies read about the slots' nodes: rows ``q, k`` ``(BR, BDK)`` and ``v``
    ``(BR, BDV)`` (leaf rows in their dtype in a leaf-only tile, else float32), ``f = F(B)``,
    for the distance energy ``q_sq, k_sq`` and positions ``p`` ``(BR, BDP)``. As read,
    ``q_sq`` is the variance ``Vq(B)`` of q over the node's leaves (0 for a leaf); centred on
    the family's centre ``c`` (:func:`_centred`), ``q`` is ``qbar_B - c`` and ``q_sq`` the mean
    of ``|q_i - c|^2`` over the node's leaves, ``|qbar_B - c|^2 + Vq(B)``; likewise ``k``."""

    q: Any
    k: Any
    v: Any
    f: Any
    q_sq: Any
    k_sq: Any
    p: Any


class Adjoint(NamedTuple):
    """What the backward reads about row slots ``B`` (children of ``A``): ``L(B)``, ``W(A)``,
    ``gU(B)``, ``glog mu(B)`` (``= glogW(B)``, 0 for a leaf), ``D(B)`` and ``|B|/|A| gF(A)``."""

    lse: Any
    w_a: Any
    gu: Any
    glogmu: Any
    d: Any
    wgf: Any


# ----------------------------------------------------------------------------- addressing
@triton.jit
def _at_batch(X, z, N, M1, n_cols):
    """``NodeRows`` ``X`` of ``n_cols`` columns moved to batch row ``z``."""
    return NodeRows(X.leaf + z * N * n_cols, X.family + z * M1 * n_cols)


@triton.jit
def _stats_at_batch(S, z, M1):
    """Per-family scalars ``Stats`` ``(Z, M + 1)`` moved to batch row ``z``."""
    return Stats(S.f + z * M1, S.q_var + z * M1, S.k_var + z * M1)


@triton.jit
def _slots(bucket, pid, start, n_fam, width, leaf_start, N, TILE: tl.constexpr):
    """Slots ``start .. start + BR`` of program ``pid`` over ``bucket``."""
    s = start + tl.arange(0, TILE.BR)
    g = s // TILE.W
    j = s % TILE.W
    fi = pid * TILE.G + g  # family index within the bucket
    real = (j < width) & (fi < n_fam)
    slot = fi * width + j
    if TILE.CONTIG:
        node = leaf_start + slot
        valid = real
    else:
        node = tl.load(bucket.slots + slot, mask=real, other=-1)
        valid = node >= 0
    parent = tl.load(bucket.families + fi, mask=fi < n_fam, other=0)
    weight = tl.load(bucket.weight + slot, mask=valid, other=0.0)
    log_size = tl.load(bucket.log_size + slot, mask=valid, other=NEG_INF)
    is_leaf = valid & (node < N)
    is_family = valid & (node >= N)
    return Slots(s, g, parent, node, valid, is_leaf, is_family, weight, log_size)


@triton.jit
def _program_families(bucket, pid, n_fam, G: tl.constexpr):
    """The ``G`` families ``A`` of program ``pid`` and which of them exist."""
    fi = pid * G + tl.arange(0, G)
    ok = fi < n_fam
    return tl.load(bucket.families + fi, mask=ok, other=0), ok


@triton.jit
def _gather(X, sl, N, n_cols, BD: tl.constexpr, TILE: tl.constexpr):
    """Rows ``(BR, BD)`` of ``NodeRows`` ``X`` at the slots' nodes: leaf rows in their own dtype
    in a leaf-only tile, else float32."""
    cols = tl.arange(0, BD)
    col_ok = (cols < n_cols)[None, :]
    leaf_rows = X.leaf + (sl.node[:, None] * n_cols + cols[None, :])
    if TILE.HAS_FAMILIES:
        fam_rows = X.family + ((sl.node - N)[:, None] * n_cols + cols[None, :])
        rows = tl.load(fam_rows, mask=sl.is_family[:, None] & col_ok, other=0.0)
        if TILE.HAS_LEAVES:
            leaf = tl.load(leaf_rows, mask=sl.is_leaf[:, None] & col_ok, other=0.0)
            rows += leaf.to(tl.float32)
    else:
        rows = tl.load(leaf_rows, mask=sl.is_leaf[:, None] & col_ok, other=0.0)
    return rows


@triton.jit
def _scatter(X, sl, x, N, n_cols, TILE: tl.constexpr):
    """Store rows ``x`` ``(BR, BD)`` to ``NodeRows`` ``X`` (leaf rows cast to their dtype)."""
    cols = tl.arange(0, x.shape[1])
    col_ok = (cols < n_cols)[None, :]
    if TILE.HAS_LEAVES:
        leaf_rows = X.leaf + (sl.node[:, None] * n_cols + cols[None, :])
        tl.store(leaf_rows, x.to(X.leaf.dtype.element_ty), mask=sl.is_leaf[:, None] & col_ok)
    if TILE.HAS_FAMILIES:
        fam_rows = X.family + ((sl.node - N)[:, None] * n_cols + cols[None, :])
        tl.store(fam_rows, x, mask=sl.is_family[:, None] & col_ok)


@triton.jit
def _family_value(ptr, sl, N):
    """A per-family float32 scalar ``ptr[node - N]`` at the slots (0 where not a family)."""
    return tl.load(ptr + (sl.node - N), mask=sl.is_family, other=0.0)


@triton.jit
def _parent_rows(ptr, sl, n_cols, BD: tl.constexpr):
    """Family rows ``ptr[A, :]`` ``(BR, BD)`` of each slot's parent ``A``."""
    cols = tl.arange(0, BD)
    rows = ptr + (sl.parent[:, None] * n_cols + cols[None, :])
    return tl.load(rows, mask=sl.valid[:, None] & (cols < n_cols)[None, :], other=0.0)


@triton.jit
def _store_family_rows(ptr, fam, ok, x, n_cols):
    """Store rows ``x`` ``(G, BD)`` as family rows ``ptr[fam, :]``."""
    cols = tl.arange(0, x.shape[1])
    rows = ptr + (fam[:, None] * n_cols + cols[None, :])
    tl.store(rows, x, mask=ok[:, None] & (cols < n_cols)[None, :])


@triton.jit
def _store_positions(ptr, sl, x, d_p):
    """Store position gradients ``x`` ``(BR, BDP)`` as rows ``ptr[node, :]``."""
    cols = tl.arange(0, x.shape[1])
    rows = ptr + (sl.node[:, None] * d_p + cols[None, :])
    tl.store(rows, x, mask=sl.valid[:, None] & (cols < d_p)[None, :])


# ----------------------------------------------------------------------------- algebra
@triton.jit
def _mm(a, b, HALF: tl.constexpr, E: tl.constexpr):
    """``a @ b`` accumulated in float32. ``HALF``: operands in ``b``'s dtype (float16 / bfloat16);
    else float32 operands, multiplied as ``E.F32_DOT`` ("tf32x3": float32 accuracy, "tf32")."""
    if HALF:
        return tl.dot(a.to(b.dtype), b)
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=E.F32_DOT)


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


# ----------------------------------------------------------------------------- energies
@triton.jit
def _nodes(Q, K, V, stats, pos_ptr, sl, N, d_k, d_v, d_p, scale,
           TILE: tl.constexpr, E: tl.constexpr):  # fmt: skip
    """The :class:`Nodes` of slots ``sl``: rows, ``F(B)`` (a leaf's own score, a family's from
    the level below), within-node variances and positions."""
    BR: tl.constexpr = TILE.BR
    BDP: tl.constexpr = E.BDP
    q = _gather(Q, sl, N, d_k, E.BDK, TILE)
    k = _gather(K, sl, N, d_k, E.BDK, TILE)
    v = _gather(V, sl, N, d_v, E.BDV, TILE)
    q32 = q.to(tl.float32)
    k32 = k.to(tl.float32)
    p = tl.zeros((BR, BDP), tl.float32)
    if E.HAS_POS:
        cp = tl.arange(0, BDP)
        p = tl.load(pos_ptr + (sl.node[:, None] * d_p + cp[None, :]),
                    mask=sl.valid[:, None] & (cp < d_p)[None, :], other=0.0)  # fmt: skip
    q_sq = tl.zeros((BR,), tl.float32)
    k_sq = tl.zeros((BR,), tl.float32)
    if E.DISTANCE:
        q_sq = _family_value(stats.q_var, sl, N)  # Vq(B), 0 for a leaf
        k_sq = _family_value(stats.k_var, sl, N)
        diff = q32 - k32
        f_leaf = -0.5 * scale * tl.sum(diff * diff, 1)
    else:
        f_leaf = scale * tl.sum(q32 * k32, 1)
    if E.HAS_POS:
        f_leaf += tl.sum(p * p, 1)
    f = tl.where(sl.is_leaf, f_leaf, _family_value(stats.f, sl, N))
    return Nodes(q, k, v, f, q_sq, k_sq, p)


@triton.jit
def _slot_rows(x, G: tl.constexpr, BR: tl.constexpr):
    """Rows ``x`` ``(G, BD)`` of the program's families, one for each of their ``BR // G``
    slots: ``(BR, BD)``."""
    BD: tl.constexpr = x.shape[1]
    return tl.reshape(tl.broadcast_to(x[:, None, :], (G, BR // G, BD)), (BR, BD))


@triton.jit
def _centred(x, centre):
    """Nodes ``x`` measured from their family's centre ``centre`` ``(BR, BDK)`` (:class:`Nodes`):
    the distance energy is invariant under a common shift of a family's q and k, and about the
    family's own centre its block energies lose nothing to cancellation, however far the family
    lies from the origin or from its siblings' families."""
    q = x.q.to(tl.float32) - centre
    k = x.k.to(tl.float32) - centre
    return Nodes(q, k, x.v, x.f, tl.sum(q * q, 1) + x.q_sq, tl.sum(k * k, 1) + x.k_sq, x.p)


@triton.jit
def _logits(rows, x, cols, y, scale, HALF: tl.constexpr, E: tl.constexpr):
    """Tile of row slots ``rows`` (nodes ``x``) and column slots ``cols`` (nodes ``y``):
    ``F(B)`` where ``B = C``, else ``log|C| + e_BC``; ``-inf`` where ``B`` and ``C`` are not
    siblings or either is padding. Also returns the diagonal mask ``B = C``. For the distance
    energy ``x`` and ``y`` are centred (:func:`_centred`):
    ``e_BC = -s/2 mean |q_i - k_j|^2 = s <q_B, k_C> - s/2 (q_sq(B) + k_sq(C))``."""
    e = scale * _mm(x.q, tl.trans(y.k), HALF, E)
    if E.DISTANCE:
        e -= 0.5 * scale * (x.q_sq[:, None] + y.k_sq[None, :])
    if E.HAS_POS:
        e += _mm(x.p, tl.trans(y.p), False, E)
    diag = rows.s[:, None] == cols.s[None, :]
    logits = tl.where(diag, x.f[:, None], e + cols.log_size[None, :])
    siblings = (rows.g[:, None] == cols.g[None, :]) & rows.valid[:, None] & cols.valid[None, :]
    return tl.where(siblings, logits, NEG_INF), diag


# ----------------------------------------------------------------------------- forward
@triton.jit(do_not_specialize=SIZES)
def hsa_up_kernel(Q, K, V, stats, R, lse_ptr, pos_ptr, bucket,
                  n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale,
                  TILE: tl.constexpr, E: tl.constexpr):  # fmt: skip
    """One bucket of the up pass, for ``G`` families and batch row ``z = program_id(1)``.

    Per child ``B``: ``L(B)`` into ``lse[z, B]``, ``R(B)`` into ``R``. Per family ``A``:
    ``F(A) = sum_B |B|/|A| L(B)`` into ``stats.f`` and the means of ``q, k, v`` over its leaves
    into the family rows of ``Q, K, V``; for the distance energy, whose tiles are centred on
    each family's centre ``c = (qbar_A + kbar_A) / 2``, also the variances
    ``Vq(A) = sum_B |B|/|A| (Vq(B) + |qbar_B - qbar_A|^2)`` and ``Vk(A)``.
    """
    G: tl.constexpr = TILE.G
    BR: tl.constexpr = TILE.BR
    BDK: tl.constexpr = E.BDK
    BDV: tl.constexpr = E.BDV
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    Q = _at_batch(Q, z, N, M1, d_k)
    K = _at_batch(K, z, N, M1, d_k)
    V = _at_batch(V, z, N, M1, d_v)
    R = _at_batch(R, z, N, M1, d_v)
    stats = _stats_at_batch(stats, z, M1)
    lse_ptr += z * (N + M1 - 1)

    f_fam = tl.zeros((G,), tl.float32)
    q_fam = tl.zeros((G, BDK), tl.float32)
    k_fam = tl.zeros((G, BDK), tl.float32)
    v_fam = tl.zeros((G, BDV), tl.float32)
    qvar_fam = tl.zeros((G,), tl.float32)
    kvar_fam = tl.zeros((G,), tl.float32)
    # a mean over A is the weighted mean over its children; the distance energy needs the means
    # (the centre) before the energies: a sweep of their own when a family spans several tiles
    MEANS_FIRST: tl.constexpr = E.DISTANCE and TILE.NUM_CHUNKS > 1
    if MEANS_FIRST:
        for rc in range(TILE.NUM_CHUNKS):
            rows = _slots(bucket, pid, rc * BR, n_fam, width, leaf_start, N, TILE)
            w = rows.weight[:, None]
            q_fam += _per_family_rows(w * _gather(Q, rows, N, d_k, BDK, TILE).to(tl.float32), G)
            k_fam += _per_family_rows(w * _gather(K, rows, N, d_k, BDK, TILE).to(tl.float32), G)
            v_fam += _per_family_rows(w * _gather(V, rows, N, d_v, BDV, TILE).to(tl.float32), G)
    for rc in range(TILE.NUM_CHUNKS):
        rows = _slots(bucket, pid, rc * BR, n_fam, width, leaf_start, N, TILE)
        x = _nodes(Q, K, V, stats, pos_ptr, rows, N, d_k, d_v, d_p, scale, TILE, E)
        if not MEANS_FIRST:
            q_fam += _per_family_rows(rows.weight[:, None] * x.q.to(tl.float32), G)
            k_fam += _per_family_rows(rows.weight[:, None] * x.k.to(tl.float32), G)
            v_fam += _per_family_rows(rows.weight[:, None] * x.v.to(tl.float32), G)
        if E.DISTANCE:
            q_a = _slot_rows(q_fam, G, BR)
            k_a = _slot_rows(k_fam, G, BR)
            dq = x.q.to(tl.float32) - q_a
            dk = x.k.to(tl.float32) - k_a
            qvar_fam += _per_family(rows.weight * (x.q_sq + tl.sum(dq * dq, 1)), G)
            kvar_fam += _per_family(rows.weight * (x.k_sq + tl.sum(dk * dk, 1)), G)
            centre = (q_a + k_a) * 0.5
            x = _centred(x, centre)

        # online log-sum-exp over the siblings C, and R(B) = sum_C P[B, C] v_C
        m_i = tl.full((BR,), NEG_INF, tl.float32)
        l_i = tl.zeros((BR,), tl.float32)
        acc = tl.zeros((BR, BDV), tl.float32)
        for cc in range(TILE.NUM_CHUNKS):
            if TILE.NUM_CHUNKS == 1:
                cols, y = rows, x
            else:
                cols = _slots(bucket, pid, cc * BR, n_fam, width, leaf_start, N, TILE)
                y = _nodes(Q, K, V, stats, pos_ptr, cols, N, d_k, d_v, d_p, scale, TILE, E)
                if E.DISTANCE:  # one family per program: one centre
                    y = _centred(y, centre)
            logits, diag = _logits(rows, x, cols, y, scale, TILE.HALF, E)
            m_new = tl.maximum(m_i, tl.max(logits, 1))
            m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(logits - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            p = tl.where(diag & rows.is_family[:, None], 0.0, p)  # a family keeps mu(B)
            acc = acc * alpha[:, None] + _mm(p, y.v, TILE.HALF, E)
            m_i = m_new
        l_safe = tl.where(rows.valid, l_i, 1.0)
        lse = tl.where(rows.valid, m_i + tl.log(l_safe), 0.0)  # L(B)
        tl.store(lse_ptr + rows.node, lse, mask=rows.valid)
        _scatter(R, rows, acc / l_safe[:, None], N, d_v, TILE)  # R(B)
        f_fam += _per_family(rows.weight * lse, G)  # F(A) = sum_B |B|/|A| L(B)

    fam, ok = _program_families(bucket, pid, n_fam, G)
    tl.store(stats.f + fam, f_fam, mask=ok)
    _store_family_rows(Q.family, fam, ok, q_fam, d_k)
    _store_family_rows(K.family, fam, ok, k_fam, d_k)
    _store_family_rows(V.family, fam, ok, v_fam, d_v)
    if E.DISTANCE:
        tl.store(stats.q_var + fam, qvar_fam, mask=ok)
        tl.store(stats.k_var + fam, kvar_fam, mask=ok)


@triton.jit(do_not_specialize=["n", "N", "M1"])
def hsa_down_kernel(fam_ptr, parent_ptr, n, f_ptr, lse_ptr, logw_ptr, U, sent_ptr, N, M1, d_v,
                    BF: tl.constexpr, BDV: tl.constexpr):  # fmt: skip
    """One depth of the down pass for ``BF`` families ``B`` with parents ``A``:
    ``log W(B) = log W(A) + F(B) - L(B)`` and ``U(B) = U(A) + W(A) sent(B)``."""
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    f_ptr += z * M1
    lse_ptr += z * (N + M1 - 1) + N  # families' entries
    logw_ptr += z * M1
    U += z * M1 * d_v
    sent_ptr += z * M1 * d_v

    idx = pid * BF + tl.arange(0, BF)
    ok = idx < n
    b = tl.load(fam_ptr + idx, mask=ok, other=0)
    a = tl.load(parent_ptr + idx, mask=ok, other=0)
    log_w_a = tl.load(logw_ptr + a, mask=ok, other=0.0)
    f_b = tl.load(f_ptr + b, mask=ok, other=0.0)
    lse_b = tl.load(lse_ptr + b, mask=ok, other=0.0)
    tl.store(logw_ptr + b, log_w_a + f_b - lse_b, mask=ok)

    cv = tl.arange(0, BDV)
    mask_v = ok[:, None] & (cv < d_v)[None, :]
    u_a = tl.load(U + (a[:, None] * d_v + cv[None, :]), mask=mask_v, other=0.0)
    sent_b = tl.load(sent_ptr + (b[:, None] * d_v + cv[None, :]), mask=mask_v, other=0.0)
    u_b = u_a + tl.exp(log_w_a)[:, None] * sent_b
    tl.store(U + (b[:, None] * d_v + cv[None, :]), u_b, mask=mask_v)


@triton.jit(do_not_specialize=["N", "M1"])
def hsa_leaf_kernel(rloc_ptr, v_ptr, out_ptr, parent_ptr, logw_ptr, U, N, M1, d_v,
                    BN: tl.constexpr, BDV: tl.constexpr):  # fmt: skip
    """Leaves: ``y_i = U(A) + W(A) R_i``, ``A`` the parent of ``i``; ``y_i = v_i`` in a one-leaf
    tree (parent ``M``, the padding family). ``out`` may alias ``rloc``."""
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    rloc_ptr += z * N * d_v
    v_ptr += z * N * d_v
    out_ptr += z * N * d_v
    logw_ptr += z * M1
    U += z * M1 * d_v

    i = pid * BN + tl.arange(0, BN)
    ok = i < N
    a = tl.load(parent_ptr + i, mask=ok, other=0)
    root = a == M1 - 1
    cv = tl.arange(0, BDV)
    col_ok = (cv < d_v)[None, :]
    rows = i[:, None] * d_v + cv[None, :]
    r_i = tl.load(rloc_ptr + rows, mask=(ok & ~root)[:, None] & col_ok, other=0.0)
    v_i = tl.load(v_ptr + rows, mask=(ok & root)[:, None] & col_ok, other=0.0)
    w_a = tl.exp(tl.load(logw_ptr + a, mask=ok, other=0.0))
    u_a = tl.load(U + (a[:, None] * d_v + cv[None, :]), mask=ok[:, None] & col_ok, other=0.0)
    y = tl.where(root[:, None], v_i.to(tl.float32), u_a + w_a[:, None] * r_i.to(tl.float32))
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=ok[:, None] & col_ok)


# ----------------------------------------------------------------------------- backward
@triton.jit(do_not_specialize=SIZES)
def hsa_down_bwd_kernel(GU, R, logw_ptr, glogw_ptr, dlt_ptr, bucket,
                        n_fam, width, leaf_start, N, M1, d_v,
                        BDV: tl.constexpr, TILE: tl.constexpr):  # fmt: skip
    """Adjoint of the down pass for one bucket (buckets in up order: children first).

    ``GU``: ``gU``, with ``gU(i) = dy_i`` for a leaf; ``glogW(i) = 0``. Per child ``B`` of ``A``,
    ``D(B) = W(A) gU(B) . R(B)`` into ``dlt[z, B]``; per family, ``gU(A) = sum_B gU(B)`` and
    ``glogW(A) = sum_B glogW(B) + D(B)``.
    """
    G: tl.constexpr = TILE.G
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    GU = _at_batch(GU, z, N, M1, d_v)
    R = _at_batch(R, z, N, M1, d_v)
    logw_ptr += z * M1
    glogw_ptr += z * M1
    dlt_ptr += z * (N + M1 - 1)

    gu_fam = tl.zeros((G, BDV), tl.float32)
    glw_fam = tl.zeros((G,), tl.float32)
    for rc in range(TILE.NUM_CHUNKS):
        sl = _slots(bucket, pid, rc * TILE.BR, n_fam, width, leaf_start, N, TILE)
        w_a = tl.exp(tl.load(logw_ptr + sl.parent, mask=sl.valid, other=0.0))
        gu = _gather(GU, sl, N, d_v, BDV, TILE).to(tl.float32)
        r = _gather(R, sl, N, d_v, BDV, TILE).to(tl.float32)
        d = w_a * tl.sum(gu * r, 1)
        tl.store(dlt_ptr + sl.node, d, mask=sl.valid)
        gu_fam += _per_family_rows(gu, G)
        glw_fam += _per_family(_family_value(glogw_ptr, sl, N) + d, G)

    fam, ok = _program_families(bucket, pid, n_fam, G)
    tl.store(glogw_ptr + fam, glw_fam, mask=ok)
    _store_family_rows(GU.family, fam, ok, gu_fam, d_v)


@triton.jit
def _adjoint(GU, lse_ptr, dlt_ptr, logw_ptr, gf_ptr, glogw_ptr, sl, N, d_v,
             BDV: tl.constexpr, TILE: tl.constexpr):  # fmt: skip
    """The :class:`Adjoint` of row slots ``sl``."""
    lse = tl.load(lse_ptr + sl.node, mask=sl.valid, other=0.0)
    d = tl.load(dlt_ptr + sl.node, mask=sl.valid, other=0.0)
    w_a = tl.exp(tl.load(logw_ptr + sl.parent, mask=sl.valid, other=0.0))
    wgf = sl.weight * tl.load(gf_ptr + sl.parent, mask=sl.valid, other=0.0)
    gu = _gather(GU, sl, N, d_v, BDV, TILE)
    glogmu = _family_value(glogw_ptr, sl, N)
    return Adjoint(lse, w_a, gu, glogmu, d, wgf)


@triton.jit
def _grad_logits(rows, x, a, cols, y, scale, HALF: tl.constexpr, E: tl.constexpr,
                 WHOLE_ROWS: tl.constexpr):  # fmt: skip
    """Gradient ``g`` of the loss in ``logits[B, C]`` over a tile, and ``P'``, the part of
    ``P`` in ``R(B)`` (``P`` without the diagonal of family rows):

    ``g = P' gP' + P (|B|/|A| gF(A) - glog mu(B) - D(B)) + [B = C] glog mu(B)``,
    with ``gP'[B, C] = W(A) gU(B) . v_C``; also returns the diagonal mask. ``WHOLE_ROWS``: the
    tile holds every sibling of its rows, and ``D(B) = sum_C P' gP'`` is summed from the same
    products, so that the two terms cancel exactly where the answer is exactly zero (one
    child; every ``v_C`` equal); else ``D(B)`` is the down adjoint's ``W(A) gU(B) . R(B)``.
    """
    logits, diag = _logits(rows, x, cols, y, scale, HALF, E)
    prob = tl.exp(logits - a.lse[:, None])
    kept = tl.where(diag & rows.is_family[:, None], 0.0, prob)
    g_kept = a.w_a[:, None] * _mm(a.gu, tl.trans(y.v), HALF, E)
    d = a.d
    if WHOLE_ROWS:
        d = tl.sum(kept * g_kept, 1)
    g = kept * g_kept + prob * (a.wgf - a.glogmu - d)[:, None]
    g += tl.where(diag, a.glogmu[:, None], 0.0)
    return g, kept, diag


@triton.jit
def _half_gap(Q, K, sl, d_k, BDK: tl.constexpr):
    """``(qbar_A - kbar_A) / 2`` ``(BR, BDK)`` of each slot's family ``A``: ``qbar_A - c``, and
    ``c - kbar_A``, with ``c = (qbar_A + kbar_A) / 2`` its centre (distance energy)."""
    return (_parent_rows(Q.family, sl, d_k, BDK) - _parent_rows(K.family, sl, d_k, BDK)) * 0.5


@triton.jit
def _finish_rows(DQ, g_stats, gpos_ptr, gq, rs, gp, g_diag, sl, x, Q, K, N, d_k, d_p, scale,
                 TILE: tl.constexpr, E: tl.constexpr):  # fmt: skip
    """Row gradients from ``gq = sum_C g[B, C] k_C`` (off-diagonal), ``rs = sum_C g[B, C]``,
    ``gp = sum_C g[B, C] p_C`` and ``g_diag = g[B, B] = dF(B)``: ``dq`` of leaves, and of
    families with their ``dF`` and ``dVq`` for the level below; positions (row part).

    Distance energy (``x`` centred on ``c``, the centre of the family in ``Q, K``):
    ``d e_BC / d qbar_B = s (k_C - q_B)``, ``d e_BC / d Vq(B) = -s/2``, and through the
    family's variance ``d Vq(A) / d qbar_B = 2 |B|/|A| (qbar_B - qbar_A)``."""
    gq = scale * gq + sl.weight[:, None] * _parent_rows(DQ.family, sl, d_k, E.BDK)
    q32 = x.q.to(tl.float32)
    k32 = x.k.to(tl.float32)
    g_self = tl.where(sl.is_leaf, g_diag, 0.0)  # a leaf's own score s_ii
    if E.DISTANCE:
        gq -= scale * (rs + g_self)[:, None] * q32 - scale * g_self[:, None] * k32
        g_var_a = tl.load(g_stats.q_var + sl.parent, mask=sl.valid, other=0.0)
        gap = _half_gap(Q, K, sl, d_k, E.BDK)  # qbar_B - qbar_A = (qbar_B - c) - gap
        gq += (2.0 * sl.weight * g_var_a)[:, None] * (q32 - gap)
        if TILE.HAS_FAMILIES:
            g_var = -0.5 * scale * rs + sl.weight * g_var_a
            tl.store(g_stats.q_var + (sl.node - N), g_var, mask=sl.is_family)
    else:
        gq += scale * g_self[:, None] * k32
    if TILE.HAS_FAMILIES:
        tl.store(g_stats.f + (sl.node - N), g_diag, mask=sl.is_family)
    _scatter(DQ, sl, gq, N, d_k, TILE)
    if E.HAS_POS:
        _store_positions(gpos_ptr, sl, gp + 2.0 * g_self[:, None] * x.p, d_p)


@triton.jit
def _finish_cols(DK, DV, g_stats, gpos_ptr, gk, gv, cs, gp, g_diag, sl, x, Q, K, N, d_k, d_v,
                 d_p, scale, TILE: tl.constexpr, E: tl.constexpr):  # fmt: skip
    """Column gradients from ``gk = sum_B g[B, C] q_B``, ``gv = sum_B P'[B, C] W(A) gU(B)``,
    ``cs = sum_B g[B, C]``, ``gp = sum_B g[B, C] p_B`` and ``g_diag = dF(C)``: ``dk, dv`` of
    leaves, of families for the level below, ``dVk``; positions (column part). Distance
    energy as in :func:`_finish_rows`."""
    gk = scale * gk + sl.weight[:, None] * _parent_rows(DK.family, sl, d_k, E.BDK)
    gv += sl.weight[:, None] * _parent_rows(DV.family, sl, d_v, E.BDV)
    q32 = x.q.to(tl.float32)
    k32 = x.k.to(tl.float32)
    g_self = tl.where(sl.is_leaf, g_diag, 0.0)
    if E.DISTANCE:
        gk += scale * g_self[:, None] * q32 - scale * (cs + g_self)[:, None] * k32
        g_var_a = tl.load(g_stats.k_var + sl.parent, mask=sl.valid, other=0.0)
        gap = _half_gap(Q, K, sl, d_k, E.BDK)  # kbar_C - kbar_A = (kbar_C - c) + gap
        gk += (2.0 * sl.weight * g_var_a)[:, None] * (k32 + gap)
        if TILE.HAS_FAMILIES:
            g_var = -0.5 * scale * cs + sl.weight * g_var_a
            tl.store(g_stats.k_var + (sl.node - N), g_var, mask=sl.is_family)
    else:
        gk += scale * g_self[:, None] * q32
    _scatter(DK, sl, gk, N, d_k, TILE)
    _scatter(DV, sl, gv, N, d_v, TILE)
    if E.HAS_POS:
        _store_positions(gpos_ptr, sl, gp, d_p)


@triton.jit
def _read(Q, K, V, stats, pos_ptr, sl, N, d_k, d_v, d_p, scale,
          TILE: tl.constexpr, E: tl.constexpr):  # fmt: skip
    """The backward's :class:`Nodes` of slots ``sl``, centred for the distance energy on their
    family's centre as the forward centred them (from the family means it stored)."""
    x = _nodes(Q, K, V, stats, pos_ptr, sl, N, d_k, d_v, d_p, scale, TILE, E)
    if E.DISTANCE:
        q_a = _parent_rows(Q.family, sl, d_k, E.BDK)
        k_a = _parent_rows(K.family, sl, d_k, E.BDK)
        x = _centred(x, (q_a + k_a) * 0.5)
    return x


@triton.jit(do_not_specialize=SIZES)
def hsa_up_bwd_kernel(Q, K, V, stats, pos_ptr, lse_ptr, logw_ptr, GU, glogw_ptr, dlt_ptr,
                      DQ, DK, DV, g_stats, gpos_r_ptr, gpos_c_ptr, bucket,
                      n_fam, width, leaf_start, N, M1, d_k, d_v, d_p, scale,
                      TILE: tl.constexpr, E: tl.constexpr):  # fmt: skip
    """Adjoint of one bucket of the up pass (buckets in reverse order: parents first).

    Reads the family's own gradients (family rows of ``DQ, DK, DV``, ``g_stats``; zero for
    roots) and writes those of its family children, or ``dq, dk, dv`` of its leaf children.
    Position gradients go to ``gpos_r`` (a node as a row ``B``) and ``gpos_c`` (as a column).
    """
    BR: tl.constexpr = TILE.BR
    BDK: tl.constexpr = E.BDK
    BDV: tl.constexpr = E.BDV
    BDP: tl.constexpr = E.BDP
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    Q = _at_batch(Q, z, N, M1, d_k)
    K = _at_batch(K, z, N, M1, d_k)
    V = _at_batch(V, z, N, M1, d_v)
    GU = _at_batch(GU, z, N, M1, d_v)
    DQ = _at_batch(DQ, z, N, M1, d_k)
    DK = _at_batch(DK, z, N, M1, d_k)
    DV = _at_batch(DV, z, N, M1, d_v)
    stats = _stats_at_batch(stats, z, M1)
    g_stats = _stats_at_batch(g_stats, z, M1)
    lse_ptr += z * (N + M1 - 1)
    dlt_ptr += z * (N + M1 - 1)
    logw_ptr += z * M1
    glogw_ptr += z * M1
    gpos_r_ptr += z * (N + M1 - 1) * d_p
    gpos_c_ptr += z * (N + M1 - 1) * d_p

    if TILE.NUM_CHUNKS == 1:
        # one tile: every slot is a row B and a column C
        sl = _slots(bucket, pid, 0, n_fam, width, leaf_start, N, TILE)
        x = _read(Q, K, V, stats, pos_ptr, sl, N, d_k, d_v, d_p, scale, TILE, E)
        a = _adjoint(GU, lse_ptr, dlt_ptr, logw_ptr, g_stats.f, glogw_ptr, sl, N, d_v, BDV,
                     TILE)  # fmt: skip
        gl, kept, diag = _grad_logits(sl, x, a, sl, x, scale, TILE.HALF, E, True)
        g_off = tl.where(diag, 0.0, gl)  # d/d e_BC
        g_diag = tl.sum(tl.where(diag, gl, 0.0), 1)  # d/dF(B)
        gq = _mm(g_off, x.k, TILE.HALF, E)
        gk = _mm(tl.trans(g_off), x.q, TILE.HALF, E)
        gv = _mm(tl.trans(kept * a.w_a[:, None]), a.gu, TILE.HALF, E)
        gp_r = tl.zeros((BR, BDP), tl.float32)
        gp_c = tl.zeros((BR, BDP), tl.float32)
        if E.HAS_POS:
            gp_r = _mm(g_off, x.p, False, E)
            gp_c = _mm(tl.trans(g_off), x.p, False, E)
        _finish_rows(DQ, g_stats, gpos_r_ptr, gq, tl.sum(g_off, 1), gp_r, g_diag, sl, x, Q, K,
                     N, d_k, d_p, scale, TILE, E)  # fmt: skip
        _finish_cols(DK, DV, g_stats, gpos_c_ptr, gk, gv, tl.sum(g_off, 0), gp_c, g_diag, sl,
                     x, Q, K, N, d_k, d_v, d_p, scale, TILE, E)  # fmt: skip
    else:
        # rows B: sweep the columns for dq(B), dF(B), ...
        for rc in range(TILE.NUM_CHUNKS):
            rows = _slots(bucket, pid, rc * BR, n_fam, width, leaf_start, N, TILE)
            x = _read(Q, K, V, stats, pos_ptr, rows, N, d_k, d_v, d_p, scale, TILE, E)
            a = _adjoint(GU, lse_ptr, dlt_ptr, logw_ptr, g_stats.f, glogw_ptr, rows, N, d_v,
                         BDV, TILE)  # fmt: skip
            gq = tl.zeros((BR, BDK), tl.float32)
            rs = tl.zeros((BR,), tl.float32)
            gp = tl.zeros((BR, BDP), tl.float32)
            g_diag = tl.zeros((BR,), tl.float32)
            for cc in range(TILE.NUM_CHUNKS):
                cols = _slots(bucket, pid, cc * BR, n_fam, width, leaf_start, N, TILE)
                y = _read(Q, K, V, stats, pos_ptr, cols, N, d_k, d_v, d_p, scale, TILE, E)
                gl, kept, diag = _grad_logits(rows, x, a, cols, y, scale, TILE.HALF, E, False)
                g_off = tl.where(diag, 0.0, gl)
                g_diag += tl.sum(tl.where(diag, gl, 0.0), 1)
                gq += _mm(g_off, y.k, TILE.HALF, E)
                rs += tl.sum(g_off, 1)
                if E.HAS_POS:
                    gp += _mm(g_off, y.p, False, E)
            _finish_rows(DQ, g_stats, gpos_r_ptr, gq, rs, gp, g_diag, rows, x, Q, K, N, d_k,
                         d_p, scale, TILE, E)  # fmt: skip
        # columns C: sweep the rows for dk(C), dv(C), ...
        for cc in range(TILE.NUM_CHUNKS):
            cols = _slots(bucket, pid, cc * BR, n_fam, width, leaf_start, N, TILE)
            y = _read(Q, K, V, stats, pos_ptr, cols, N, d_k, d_v, d_p, scale, TILE, E)
            gk = tl.zeros((BR, BDK), tl.float32)
            gv = tl.zeros((BR, BDV), tl.float32)
            cs = tl.zeros((BR,), tl.float32)
            gp = tl.zeros((BR, BDP), tl.float32)
            g_diag = tl.zeros((BR,), tl.float32)
            for rc in range(TILE.NUM_CHUNKS):
                rows = _slots(bucket, pid, rc * BR, n_fam, width, leaf_start, N, TILE)
                x = _read(Q, K, V, stats, pos_ptr, rows, N, d_k, d_v, d_p, scale, TILE, E)
                a = _adjoint(GU, lse_ptr, dlt_ptr, logw_ptr, g_stats.f, glogw_ptr, rows, N,
                             d_v, BDV, TILE)  # fmt: skip
                gl, kept, diag = _grad_logits(rows, x, a, cols, y, scale, TILE.HALF, E, False)
                g_off = tl.where(diag, 0.0, gl)
                g_diag += tl.sum(tl.where(diag, gl, 0.0), 0)
                gk += _mm(tl.trans(g_off), x.q, TILE.HALF, E)
                gv += _mm(tl.trans(kept * a.w_a[:, None]), a.gu, TILE.HALF, E)
                cs += tl.sum(g_off, 0)
                if E.HAS_POS:
                    gp += _mm(tl.trans(g_off), x.p, False, E)
            _finish_cols(DK, DV, g_stats, gpos_c_ptr, gk, gv, cs, gp, g_diag, cols, y, Q, K, N,
                         d_k, d_v, d_p, scale, TILE, E)  # fmt: skip
