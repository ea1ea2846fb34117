"""The O(M b^2) dynamic programme of docs/HSA.md section 5 in PyTorch (any device), with its
backward.

Shapes: ``Z`` is the flattened batch, ``f`` the families of a bucket and ``w`` its width.
A per-node quantity is a :class:`_Nodes` pair: leaf rows ``(Z, N, ...)`` (the caller's tensors)
and family rows ``(Z, M + 1, ...)`` (the last one a zero padding family that roots point to).
Nothing of size ``N x N`` is formed.

The schedule is the Triton kernels' (:mod:`hsa_fast.triton.launch`):

- up, one bucket of the layout at a time (children before parents): the family means of
  ``q, k, v`` (and, for the distance energy, the variances), then the bucket's ``w x w`` block
  energies a block at a time (:mod:`hsa_fast.blocks`), ``logits[B, C] = log|C| + e_BC``
  (``C != B``) and ``logits[B, B] = F(B)``; ``L(B) = logsumexp_C logits[B, C]``,
  ``P = exp(logits - L)`` (``mu(B)`` on the diagonal, ``delta(B, C)`` off it),
  ``R(B) = sum_C P'[B, C] v_C`` and
  ``F(A) = sum_B |B|/|A| L(B)``. ``P'`` is ``P`` without the diagonal for a family child (``R`` is
  what its siblings send it) and with it for a leaf (``R_i`` includes its own share
  ``mu(i) v_i``);
- down, one depth at a time: ``log W(B) = log W(A) + F(B) - L(B)``, ``U(B) = U(A) + W(A) R(B)``;
- leaves: ``y_i = U(A) + W(A) R_i`` with ``A`` the parent of ``i`` (``y_i = v_i`` in a one-leaf
  tree).

The backward is written out (:class:`_Programme`, first-order gradients), as flash attention's
is: the adjoint of the down pass children first (``gU(A) = sum_B gU(B)``,
``D(B) = W(A) gU(B) . R(B)``, ``glogW(A) = sum_B glogW(B) + D(B)``), then the up pass parents
first, each block's shares recomputed from the saved ``L(B)``:
``g = P' (W(A) gU(B) . v_C) + P (|B|/|A| gF(A) - glogW(B) - D(B)) + [B = C] glogW(B)`` is the
gradient of the loss in ``logits[B, C]``; its diagonal is ``gF(B)``, the rest flows into the
means, variances and positions of ``B`` and ``C``. Autograd keeps only the inputs, the family
rows, ``L``, ``R``, ``log W`` and ``U``: O((N + M) d).

Memory: a block is a chunk of families (or, for a family wider than the budget allows, a chunk
of its rows) with at most ``chunk_elements`` energies, so the extra memory is
``O((N + M) d + chunk_elements)`` whatever the branching, forward and backward (one row of
``w <= N`` energies is always allowed).

Distance energy: every node keeps the means ``qbar, kbar`` and the variances
``Vq(A) = mean over i in A of |q_i - qbar_A|^2`` (and ``Vk``), and the block energy is
``e_BC = -scale/2 (|qbar_B - kbar_C|^2 + Vq(B) + Vk(C))``, with ``|qbar_B - kbar_C|^2`` summed
from the differences themselves (a block forms ``rows x w x d_k`` of them, within the budget):
every term is a sum of non-negative parts, so nothing cancels, however far from the origin or
however close two keys are. Its gradients are formed from the same differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from .blocks import Block, block_backward, block_forward, blocks, matmul
from .layout import FamilyBucket, HSALayout

__all__ = ["CHUNK_ELEMENTS", "accumulation_dtype", "hsa_programme", "hsa_summaries"]

CHUNK_ELEMENTS = 1 << 18
"""Default budget: the most energies (batch included) one block forms."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- per-node data
@dataclass
class _Nodes:
    """One per-node quantity: ``leaf`` rows ``(Z, N, ...)`` and ``family`` rows
    ``(Z, M + 1, ...)`` (family ``A`` is row ``A``, node ``N + A``; the last row pads), nodes
    along ``dim`` (0 for positions, which have no batch dimension)."""

    leaf: torch.Tensor
    family: torch.Tensor
    dim: int = 1

    def children(self, bucket: FamilyBucket) -> torch.Tensor:
        """The rows of a bucket's child slots, ``(Z, f, w, ...)``; padded slots read zeros."""
        return _children(bucket, self.leaf, self.family, self.dim)

    def slots(self, bucket: FamilyBucket) -> torch.Tensor | None:
        """The leaf rows of a bucket of contiguous leaves as a ``(Z, f, w, ...)`` view (results
        go there in place), else ``None``."""
        if bucket.leaf_start is None:
            return None
        rows = bucket.num_families * bucket.width
        return self.leaf.narrow(self.dim, bucket.leaf_start, rows).unflatten(
            self.dim, (-1, bucket.width)
        )

    def write(self, bucket: FamilyBucket, values: torch.Tensor, *, add: bool = False) -> None:
        """Store (or with ``add``, add) per-slot ``values`` ``(Z, f, w, ...)`` at the bucket's
        real children."""
        dim = self.dim
        flat = values.flatten(dim, dim + 1)
        view = self.slots(bucket)
        if view is not None:
            if add:
                view.add_(values)
            elif view.data_ptr() != values.data_ptr():
                view.copy_(values)
            return
        store = "index_add_" if add else "index_copy_"
        if bucket.has_leaves:
            rows = flat.index_select(dim, bucket.leaf_slots)
            getattr(self.leaf, store)(dim, bucket.leaf_ids, rows)
        if bucket.has_families:
            rows = flat.index_select(dim, bucket.family_slots)
            getattr(self.family, store)(dim, bucket.family_ids, rows)


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


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` without an ``a``-sized temporary."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).flatten(-3)


@dataclass
class _State:
    """What the forward computes and the backward reads (module docstring)."""

    q: _Nodes
    k: _Nodes
    v: _Nodes
    f: _Nodes  # F(B): (Z, N) and (Z, M + 1)
    vq: _Nodes | None  # variances (distance energy)
    vk: _Nodes | None
    pos: _Nodes | None  # positions: (N, d_p) and (M + 1, d_p), no batch dimension
    lse: _Nodes  # L(B)
    r: _Nodes  # R(B)
    log_w: torch.Tensor  # (Z, M + 1)
    u: torch.Tensor  # (Z, M + 1, d_v)
    scale: float
    points: bool  # leaves are points (HSA's leaves), else summaries of subtrees

    @property
    def distance(self) -> bool:
        return self.vq is not None


@dataclass
class _Children:
    """A bucket's children with the batch and the families flattened to ``g = Z f`` rows:
    ``q, k (g, w, d_k)``, ``v (g, w, d_v)``, ``f (g, w)``, the variances ``vq, vk (g, w)``
    (distance energy), positions ``p (g, w, d_p)``, ``log_size (g, w)`` (``None``: all zero),
    ``weight`` ``|B| / |A|`` ``(f, w)`` and as ``(g, 1, w)`` rows (``weight_rows``: a mean over
    ``A`` from its children), and ``own`` (``bool`` or ``(g, w)``), the slots that keep their
    own share in ``R``: leaves that are points."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    f: torch.Tensor
    vq: torch.Tensor | None
    vk: torch.Tensor | None
    p: torch.Tensor | None
    log_size: torch.Tensor | None
    weight: torch.Tensor
    weight_rows: torch.Tensor
    own: bool | torch.Tensor

    def block(self, a: int, b: int, r0: int, r1: int, scale: float) -> Block:
        """Rows ``r0 .. r1`` of the flattened families ``a .. b``."""
        rows = (slice(a, b), slice(r0, r1))
        return Block(
            r0,
            scale,
            self.q[rows],
            self.k[a:b],
            self.v[a:b],
            self.f[rows],
            None if self.log_size is None else self.log_size[a:b],
            None if self.vq is None else self.vq[rows],
            None if self.vk is None else self.vk[a:b],
            None if self.p is None else self.p[rows],
            None if self.p is None else self.p[a:b],
            self.own if isinstance(self.own, bool) else self.own[rows],
        )


def _gather(s: _State, bucket: FamilyBucket) -> _Children:
    """The children of ``bucket`` (:class:`_Children`)."""
    z, acc = s.q.leaf.shape[0], s.q.leaf.dtype

    def flat(nodes: _Nodes | None) -> torch.Tensor | None:
        return None if nodes is None else nodes.children(bucket).flatten(0, 1)

    own: bool | torch.Tensor = False
    if s.points and bucket.has_leaves:
        own = True
        if bucket.has_families:
            own = bucket.slot_is_leaf.view(bucket.num_families, bucket.width).repeat(z, 1)
    p = None
    if s.pos is not None:
        p = _children(bucket, s.pos.leaf, s.pos.family, 0).repeat(z, 1, 1)
    weight = bucket.weight.to(acc)
    return _Children(
        *(flat(x) for x in (s.q, s.k, s.v, s.f, s.vq, s.vk)),
        p,
        None if bucket.unit_sizes else bucket.log_size.to(acc).repeat(z, 1),
        weight,
        weight.repeat(z, 1).unsqueeze(1),
        own,
    )


def _family_means(
    c: _Children, a: int, b: int, out: tuple[torch.Tensor, ...], distance: bool
) -> None:
    """Means of ``q, k, v`` over the flattened families ``a .. b`` (weighted means of their
    children) into ``out[0..2]`` ``(g, 1, d)``; for the distance energy also the variances
    ``Vq(A) = sum_B |B|/|A| (Vq(B) + |qbar_B - qbar_A|^2)`` (deviations from the centre) and
    ``Vk(A)`` into ``out[3..4]`` ``(g,)``."""
    weight = c.weight_rows[a:b]  # (g, 1, w)
    for x, target in zip((c.q, c.k, c.v), out[:3], strict=True):
        matmul(weight, x[a:b], out=target[a:b])
    if distance:
        for x, var, mean, target in ((c.q, c.vq, out[0], out[3]), (c.k, c.vk, out[1], out[4])):
            spread = (x[a:b] - mean[a:b]).square_().sum(-1).add_(var[a:b])
            torch.matmul(weight, spread.unsqueeze(-1), out=target[a:b, None, None])


def _up(s: _State, layout: HSALayout, budget: int) -> None:
    """The up pass: family rows, ``F``, ``L`` and ``R`` of every node, in place."""
    z, d_k, d_v = s.q.leaf.shape[0], s.q.leaf.shape[-1], s.v.leaf.shape[-1]
    for bucket in layout.up:
        fam, f, w = bucket.family, bucket.num_families, bucket.width
        g = z * f
        c = _gather(s, bucket)
        new = c.q.new_empty
        means = (new(g, 1, d_k), new(g, 1, d_k), new(g, 1, d_v))
        if s.distance:
            means += (new(g), new(g))
        log_z = new(g, w)
        r_view = s.r.slots(bucket)
        in_place = r_view is not None and r_view.is_contiguous()
        r = r_view.flatten(0, 1) if in_place else new(g, w, d_v)
        # the distance energy forms (rows x w x d_k) differences per block
        for a, b, r0, r1 in blocks(g, w, budget // d_k if s.distance else budget):
            if r0 == 0:  # the families' means while their children are at hand
                _family_means(c, a, b, means, s.distance)
            block_forward(c.block(a, b, r0, r1, s.scale), log_z[a:b, r0:r1], r[a:b, r0:r1])
        for nodes, mean in zip((s.q, s.k, s.v, s.vq, s.vk), means, strict=False):
            nodes.family.index_copy_(1, fam, mean.view(z, f, *mean.shape[2:]))
        log_z = log_z.view(z, f, w)
        s.f.family.index_copy_(1, fam, (log_z * c.weight).sum(-1))  # F(A) = sum_B |B|/|A| L(B)
        s.lse.write(bucket, log_z)
        if not in_place:
            s.r.write(bucket, r.unflatten(0, (z, f)))


def _down(s: _State, layout: HSALayout) -> None:
    """``log W`` and ``U`` of every family, depth by depth (``W(root) = 1, U(root) = 0``)."""
    for fams, parents in layout.down:
        log_w_parent = s.log_w.index_select(1, parents)
        log_mu = s.f.family.index_select(1, fams) - s.lse.family.index_select(1, fams)
        s.log_w.index_copy_(1, fams, log_w_parent + log_mu)
        u_new = s.u.index_select(1, parents).addcmul_(
            log_w_parent.exp().unsqueeze(-1), s.r.family.index_select(1, fams)
        )
        s.u.index_copy_(1, fams, u_new)


def _parents(s: _State, bucket: FamilyBucket) -> tuple[torch.Tensor, torch.Tensor]:
    """``W(A)`` ``(Z, f)`` and ``U(A)`` ``(Z, f, d_v)`` of a bucket's families."""
    return s.log_w.index_select(1, bucket.family).exp(), s.u.index_select(1, bucket.family)


def _leaves(s: _State, layout: HSALayout, out: torch.Tensor) -> torch.Tensor:
    """``out`` ``(Z, N, d_v)`` filled with ``U(A) + W(A) R_i`` (``out`` may be ``s.r.leaf``):
    ``y_i`` for points, ``U(i)`` for summaries. A one-leaf tree's row is ``v_i`` (points) or 0."""
    for bucket in layout.up:
        if not bucket.has_leaves:
            continue
        w_a, u_a = _parents(s, bucket)
        r_view = s.r.slots(bucket)
        if r_view is not None:  # (Z, f, w, d_v), broadcast over the children
            target = out.narrow(1, bucket.leaf_start, r_view.shape[1] * r_view.shape[2])
            torch.addcmul(
                u_a.unsqueeze(-2),
                w_a[..., None, None],
                r_view,
                out=target.unflatten(1, r_view.shape[1:3]),
            )
            continue
        family_of = bucket.leaf_slots // bucket.width
        rows = s.r.leaf.index_select(1, bucket.leaf_ids)
        rows = torch.addcmul(
            u_a.index_select(1, family_of), w_a.index_select(1, family_of).unsqueeze(-1), rows
        )
        out.index_copy_(1, bucket.leaf_ids, rows)
    if layout.root_leaves.numel():  # a one-leaf tree: y_i = v_i, or U(i) = 0 for a summary
        roots = layout.root_leaves
        if s.points:
            out.index_copy_(1, roots, s.v.leaf.index_select(1, roots))
        else:
            out.index_fill_(1, roots, 0)
    return out


def _self_scores(
    q: torch.Tensor, k: torch.Tensor, pos: _Nodes | None, scale: float, distance: bool
) -> torch.Tensor:
    """``F(i) = s_ii (+ <p_i, p_i>)`` of every leaf, ``(Z, N)``."""
    if distance:
        diff = q - k
        f = torch.einsum("znd,znd->zn", diff, diff).mul_(-0.5 * scale)
    else:
        f = torch.einsum("znd,znd->zn", q, k).mul_(scale)
    return f if pos is None else f + pos.leaf.square().sum(-1)


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None,
    f_leaf: torch.Tensor | None,
    var_leaf: tuple[torch.Tensor, torch.Tensor] | None,
    layout: HSALayout,
    scale: float,
    distance: bool,
    budget: int,
    keep: bool,
    self_scores: bool = False,
) -> tuple[torch.Tensor, _State]:
    """The passes on ``(Z, N, d)`` inputs in the accumulation dtype: ``U(A) + W(A) R_i`` per
    leaf and the state. Points (``f_leaf is None``): the result is ``y``, and ``F(i) = s_ii``
    is kept in the state only with ``self_scores``; summaries: ``f_leaf`` ``(Z, N)`` and
    ``var_leaf`` (distance) are given. Without ``keep`` the result overwrites ``R`` of the
    leaves."""
    z, n = q.shape[:2]
    m = layout.num_families

    def family(*rest: int) -> torch.Tensor:  # every row is written before it is read
        rows = q.new_empty(z, m + 1, *rest)
        rows[:, m] = 0  # but the padding family's, which padded slots read
        return rows

    zeros = q.new_zeros(1, 1).expand(z, n)  # a leaf's variances; F(i) where it is not needed
    points = f_leaf is None
    pos = None
    if positions is not None:
        pad = positions.new_zeros(1, positions.shape[1])
        pos = _Nodes(positions[:n], torch.cat([positions[n:], pad]), dim=0)
    if points:  # F(i) = s_ii is the diagonal of the leaves' blocks; here only when asked for
        f_leaf = _self_scores(q, k, pos, scale, distance) if self_scores else zeros
    vq = vk = None
    if distance:
        vq = _Nodes(zeros if var_leaf is None else var_leaf[0], family())
        vk = _Nodes(zeros if var_leaf is None else var_leaf[1], family())
    s = _State(
        q=_Nodes(q, family(q.shape[-1])),
        k=_Nodes(k, family(k.shape[-1])),
        v=_Nodes(v, family(v.shape[-1])),
        f=_Nodes(f_leaf, family()),
        vq=vq,
        vk=vk,
        pos=pos,
        lse=_Nodes(q.new_empty(z, n), family()),  # a one-leaf tree has no L
        r=_Nodes(torch.empty_like(v), family(v.shape[-1])),
        log_w=q.new_zeros(z, m + 1),  # W(root) = 1, U(root) = 0
        u=q.new_zeros(z, m + 1, v.shape[-1]),
        scale=scale,
        points=points,
    )
    _up(s, layout, budget)
    _down(s, layout)
    out = _leaves(s, layout, torch.empty_like(v) if keep else s.r.leaf)
    return out, s


def _backward(
    s: _State,
    layout: HSALayout,
    budget: int,
    g_out: torch.Tensor,
    g_log_w_leaf: torch.Tensor | None,
    g_f: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Gradients of ``q, k, v`` (and positions, ``F`` and variances of summarised leaves) from
    those of the leaves' ``U(A) + W(A) R_i`` (``g_out``), of their ``log W`` (summaries) and of
    ``F`` of every node (``g_f`` ``(Z, N + M)``, or ``None``)."""
    z, n = g_out.shape[:2]
    m = layout.num_families
    zeros = g_out.new_zeros

    # ---- adjoint of the leaves and of the down pass, children first
    gu = _Nodes(g_out, zeros(z, m + 1, g_out.shape[-1]))  # gU: gy at the leaves
    glogw = _Nodes(zeros(z, n) if g_log_w_leaf is None else g_log_w_leaf, zeros(z, m + 1))
    for bucket in layout.up:
        w_a, _ = _parents(s, bucket)
        gu_c = gu.children(bucket)
        d = _row_dot(gu_c, s.r.children(bucket)).mul_(w_a.unsqueeze(-1))  # D(B) = W(A) gU . R
        gu.family.index_copy_(1, bucket.family, gu_c.sum(-2))
        glogw.family.index_copy_(1, bucket.family, (glogw.children(bucket) + d).sum(-1))

    # ---- adjoint of the up pass, parents first
    d_k, d_v = s.q.leaf.shape[-1], s.v.leaf.shape[-1]
    grads: dict[str, _Nodes | None] = {
        "q": _Nodes(torch.empty_like(s.q.leaf), zeros(z, m + 1, d_k)),
        "k": _Nodes(torch.empty_like(s.k.leaf), zeros(z, m + 1, d_k)),
        "v": _Nodes(torch.empty_like(s.v.leaf), zeros(z, m + 1, d_v)),
        "f": _Nodes(zeros(z, n), zeros(z, m + 1)),
        "vq": _Nodes(zeros(z, n), zeros(z, m + 1)) if s.distance else None,
        "vk": _Nodes(zeros(z, n), zeros(z, m + 1)) if s.distance else None,
        "pos": None,
    }
    if g_f is not None:  # a gradient of F from outside
        grads["f"].leaf.copy_(g_f[:, :n])
        grads["f"].family[:, :m] = g_f[:, n:]
    if s.pos is not None:
        grads["pos"] = _Nodes(torch.zeros_like(s.pos.leaf), torch.zeros_like(s.pos.family), 0)
    for bucket in reversed(layout.up):
        _bucket_backward(s, bucket, budget, gu, glogw, grads, g_f is not None)
    gq, gk, gv, gf = (grads[name].leaf for name in "qkvf")
    if layout.root_leaves.numel():  # a one-leaf tree returns v (points) or U = 0 (summaries)
        roots = layout.root_leaves
        for g in (gq, gk, gv):
            g.index_fill_(1, roots, 0)
        if s.points:
            gv.index_copy_(1, roots, g_out.index_select(1, roots))
    if s.points and g_f is not None and layout.root_leaves.numel():
        # F(i) = s_ii (+ <p_i, p_i>) of a one-leaf tree is in no block
        roots = layout.root_leaves
        g_self = gf.index_select(1, roots).unsqueeze(-1) * s.scale
        q_r, k_r = s.q.leaf.index_select(1, roots), s.k.leaf.index_select(1, roots)
        if s.distance:  # -s/2 |q_i - k_i|^2
            gq.index_add_(1, roots, (k_r - q_r) * g_self)
            gk.index_add_(1, roots, (q_r - k_r) * g_self)
        else:
            gq.index_add_(1, roots, k_r * g_self)
            gk.index_add_(1, roots, q_r * g_self)
        if s.pos is not None:
            g_pos = 2 * gf.index_select(1, roots).sum(0).unsqueeze(-1) * s.pos.leaf[roots]
            grads["pos"].leaf.index_add_(0, roots, g_pos)
    out = [gq, gk, gv]
    pos = grads["pos"]
    out.append(None if pos is None else torch.cat([pos.leaf, pos.family[:-1]]))
    if not s.points:
        out.append(gf)
        out += [grads["vq"].leaf, grads["vk"].leaf] if s.distance else [None, None]
    return tuple(out)


def _bucket_backward(
    s: _State,
    bucket: FamilyBucket,
    budget: int,
    gu: _Nodes,
    glogw: _Nodes,
    grads: dict[str, _Nodes | None],
    given_f: bool,
) -> None:
    """One bucket of the up pass's adjoint: from its families' gradients (family rows of
    ``grads``, final since parents come first) to its children's (``grads``: ``q, k, v, f``
    and, where present, ``vq, vk, pos``)."""
    fam, f, w = bucket.family, bucket.num_families, bucket.width
    z, d_k = s.q.leaf.shape[0], s.q.leaf.shape[-1]
    g = z * f
    c = _gather(s, bucket)
    lse_c = s.lse.children(bucket).flatten(0, 1)
    gu_c = gu.children(bucket).flatten(0, 1)
    glogmu_c = None
    if bucket.has_families or not s.points:
        glogmu_c = glogw.children(bucket).flatten(0, 1)
    w_a = _parents(s, bucket)[0].flatten()  # (g,)
    g_own = None  # a gradient of the points' F(i) given from outside
    if given_f and c.own is not False:
        g_own = grads["f"].children(bucket).flatten(0, 1)
        if c.own is not True:
            g_own = g_own * c.own
    wgf = (c.weight * grads["f"].family.index_select(1, fam).unsqueeze(-1)).flatten(0, 1)

    def per_slot(nodes: _Nodes, *rest: int) -> tuple[torch.Tensor, bool]:
        view = nodes.slots(bucket)
        if view is not None and view.is_contiguous():
            return view.flatten(0, 1), True
        return c.q.new_empty(g, w, *rest), False

    g_q, q_in_place = per_slot(grads["q"], d_k)
    g_k, k_in_place = per_slot(grads["k"], d_k)
    g_v, v_in_place = per_slot(grads["v"], c.v.shape[-1])
    g_diag = c.q.new_empty(g, w)
    g_vq = c.q.new_empty(g, w) if s.distance else None
    g_vk = c.q.new_empty(g, w) if s.distance else None
    g_p = torch.zeros_like(c.p) if c.p is not None else None
    for a, b, r0, r1 in blocks(g, w, budget // d_k if s.distance else budget):
        rows = (slice(a, b), slice(r0, r1))
        grad = block_backward(
            c.block(a, b, r0, r1, s.scale),
            lse_c[rows],
            gu_c[rows],
            w_a[a:b],
            wgf[rows],
            None if glogmu_c is None else glogmu_c[rows],
            None if g_own is None else g_own[rows],
        )
        g_diag[rows] = grad.g_diag
        g_q[rows] = grad.q_rows
        first = r0 == 0  # column parts accumulate over the row blocks of a family
        for target, part in ((g_k, grad.k_cols), (g_v, grad.v_cols), (g_vk, grad.var_cols)):
            if part is not None:
                target[a:b] = part if first else target[a:b] + part
        if s.distance:
            g_vq[rows] = grad.var_rows
        if g_p is not None:
            g_p[rows] += grad.p_rows
            g_p[a:b] += grad.p_cols

    # the family's means and variances: qbar_A = sum_B |B|/|A| qbar_B, and
    # Vq(A) = sum_B |B|/|A| (Vq(B) + |qbar_B - qbar_A|^2)
    weight = c.weight_rows.squeeze(1)  # (g, w)
    for g_c, name in ((g_q, "q"), (g_k, "k"), (g_v, "v")):
        g_a = grads[name].family.index_select(1, fam).flatten(0, 1).unsqueeze(1)
        g_c.addcmul_(weight.unsqueeze(-1), g_a)
    if s.distance:
        for g_c, g_var_c, x_c, x, name in (
            (g_q, g_vq, c.q, s.q, "vq"),
            (g_k, g_vk, c.k, s.k, "vk"),
        ):
            g_var_a = weight * grads[name].family.index_select(1, fam).view(g, 1)
            g_var_c.add_(g_var_a)
            spread = x_c - x.family.index_select(1, fam).flatten(0, 1).unsqueeze(1)
            g_c.addcmul_(spread, 2 * g_var_a.unsqueeze(-1))
    # the children's gradients: family rows for the level below, leaf rows final
    for g_c, name, in_place in (
        (g_q, "q", q_in_place),
        (g_k, "k", k_in_place),
        (g_v, "v", v_in_place),
    ):
        if not in_place:
            grads[name].write(bucket, g_c.unflatten(0, (z, f)))
    grads["f"].write(bucket, g_diag.view(z, f, w), add=True)  # on top of any gradient given
    if s.distance:
        grads["vq"].write(bucket, g_vq.view(z, f, w))
        grads["vk"].write(bucket, g_vk.view(z, f, w))
    if g_p is not None:  # positions are shared by the batch
        grads["pos"].write(bucket, g_p.unflatten(0, (z, f)).sum(0), add=True)


def _flatten(s: _State) -> tuple[list[torch.Tensor | None], tuple]:
    nodes = [s.q, s.k, s.v, s.f, s.vq, s.vk, s.pos, s.lse, s.r]
    tensors: list[torch.Tensor | None] = []
    for x in nodes:
        tensors += [None, None] if x is None else [x.leaf, x.family]
    return [*tensors, s.log_w, s.u], (s.scale, s.points)


def _unflatten(tensors: tuple[torch.Tensor | None, ...], meta: tuple) -> _State:
    pairs = [tensors[i : i + 2] for i in range(0, 18, 2)]
    nodes = [
        None if leaf is None else _Nodes(leaf, family, 0 if i == 6 else 1)
        for i, (leaf, family) in enumerate(pairs)
    ]
    return _State(*nodes, tensors[18], tensors[19], *meta)


class _Programme(torch.autograd.Function):
    """The passes with their written-out backward (first order; module docstring)."""

    @staticmethod
    def forward(ctx, q, k, v, positions, f_leaf, vq_leaf, vk_leaf, layout, scale, distance,
                budget, return_f):  # fmt: skip
        var_leaf = None if vq_leaf is None else (vq_leaf, vk_leaf)
        out, s = _forward(q, k, v, positions, f_leaf, var_leaf, layout, scale, distance, budget,
                          keep=True, self_scores=return_f)  # fmt: skip
        tensors, meta = _flatten(s)
        ctx.save_for_backward(*tensors)
        ctx.meta, ctx.layout, ctx.budget = meta, layout, budget
        if not s.points:
            return out, _summary_log_w(s, layout)
        if return_f:
            return out, torch.cat([s.f.leaf, s.f.family[:, :-1]], 1)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_second=None):
        s = _unflatten(ctx.saved_tensors, ctx.meta)
        g_log_w = None if s.points else g_second
        g_f = g_second if s.points else None
        grads = _backward(s, ctx.layout, ctx.budget, g_out.contiguous(), g_log_w, g_f)
        grads = list(grads) + [None] * (7 - len(grads))
        return (*grads, None, None, None, None, None)


def _summary_log_w(s: _State, layout: HSALayout) -> torch.Tensor:
    """``log W(i) = log W(A) + F(i) - L(i)`` of summarised leaves (0 for one-leaf trees)."""
    log_mu = s.f.leaf - s.lse.leaf
    if layout.root_leaves.numel():
        log_mu = log_mu.index_fill(1, layout.root_leaves, 0)
    return s.log_w.index_select(1, layout.leaf_parent) + log_mu


def _flat(x: torch.Tensor, z: int, acc: torch.dtype) -> torch.Tensor:
    return x.reshape(z, *x.shape[-2:]).to(acc)


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

    Returns ``(..., N, d_v)`` in the input dtype; accumulates in :func:`accumulation_dtype`;
    differentiable (first order) in ``q, k, v`` and ``positions``.
    ``chunk_elements`` (default :data:`CHUNK_ELEMENTS`) bounds the energies formed at once.
    With ``return_log_partition=True`` returns ``(y, F)``: ``F`` ``(..., N + M)`` holds the
    log-partition ``F(x)`` of every node (leaves first, in the accumulation dtype), differentiable
    like ``y``; the sequence-parallel entry point reads it at the roots of a shard's subtrees.
    """
    budget = CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    out_dtype, acc = q.dtype, accumulation_dtype(q.dtype)
    batch, n, m = q.shape[:-2], q.shape[-2], layout.num_families
    z = batch.numel()
    q3, k3, v3 = (_flat(x, z, acc) for x in (q, k, v))
    pos = positions.to(acc) if positions is not None else None
    distance = energy == "distance"
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q3, k3, v3, pos)
    )
    if tracked:
        out = _Programme.apply(q3, k3, v3, pos, None, None, None, layout, scale, distance, budget,
                               return_log_partition)  # fmt: skip
        y, f_all = out if return_log_partition else (out, None)
    else:
        y, s = _forward(q3, k3, v3, pos, None, None, layout, scale, distance, budget,
                        keep=False, self_scores=return_log_partition)  # fmt: skip
        f_all = torch.cat([s.f.leaf, s.f.family[:, :m]], 1) if return_log_partition else None
    y = y.reshape(*batch, n, v.shape[-1]).to(out_dtype)
    if return_log_partition:
        return y, f_all.reshape(*batch, n + m)
    return y


def hsa_summaries(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    f: torch.Tensor,
    variances: tuple[torch.Tensor, torch.Tensor] | None,
    layout: HSALayout,
    *,
    scale: float,
    chunk_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The programme over leaves that summarise subtrees: ``U`` and ``log W`` of every leaf.

    Leaf ``i`` of ``layout`` (built by :func:`~hsa_fast.layout.compile_weighted` with its
    size) stands for a subtree ``B`` given by the means ``q, k: (Z, N, d_k)``, ``v: (Z, N, d_v)``
    of its leaves, its log-partition ``F(B)`` ``f: (Z, N)`` and, for the distance energy,
    ``variances`` ``(Vq(B), Vk(B))`` (``None``: the dot energy). Returns ``U(B)`` ``(Z, N, d_v)``
    and ``log W(B)`` ``(Z, N)`` (0 and 0 where ``B`` is a whole tree), so that HSA of a leaf
    ``j`` under ``B`` is ``U(B) + W(B) y_j^B`` with ``y^B`` HSA inside ``B``. Differentiable
    (first order) in every tensor; the sequence-parallel tree above the cut.
    """
    budget = CHUNK_ELEMENTS if chunk_elements is None else int(chunk_elements)
    vq, vk = variances if variances is not None else (None, None)
    return _Programme.apply(q, k, v, None, f, vq, vk, layout, scale, variances is not None,
                            budget, False)  # fmt: skip
