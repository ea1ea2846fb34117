"""One block of a bucket's sibling energies, forward and backward (docs/HSA.md section 5).

A block is a chunk of families of one bucket (or, for a family wider than the budget allows, a
chunk of its rows), the batch and the families flattened into one dimension ``g``: the rows'
children ``B`` against every child ``C`` of their family. Forward: ``L(B)`` and ``R(B)``
(:mod:`hsa_fast.programme`'s notation); backward: the gradients of the rows' and columns'
means, variances, ``F`` and positions, recomputing the shares from the saved ``L(B)`` as flash
attention does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Block", "BlockGrad", "block_backward", "block_forward", "blocks", "matmul"]


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` over many tiny matrices (into ``out`` if given); for inner size <= 2 a broadcast
    sum beats ``bmm``."""
    if a.shape[-1] <= 2:
        prod = (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)
        return prod if out is None else out.copy_(prod)
    return torch.matmul(a, b) if out is None else torch.matmul(a, b, out=out)


def blocks(rows: int, w: int, budget: int) -> list[tuple[int, int, int, int]]:
    """``(family0, family1, row0, row1)`` blocks over ``rows`` families of ``w`` children (batch
    elements count as families) of at most ``budget`` energies each, or one row."""
    if w * w <= budget:
        per_family = max(1, budget // max(1, w * w))
        return [(a, min(rows, a + per_family), 0, w) for a in range(0, rows, per_family)]
    per_block = max(1, budget // max(1, w))
    return [
        (a, a + 1, r, min(w, r + per_block)) for a in range(rows) for r in range(0, w, per_block)
    ]


# ----------------------------------------------------------------------------- one block
@dataclass
class Block:
    """Rows ``row0 ..`` of a chunk of families, batch and families flattened (``g``):
    ``q_rows (g, r, d_k)``, ``f_rows (g, r)`` of the rows' children, ``k_cols (g, w, d_k)``,
    ``v_cols (g, w, d_v)``, ``log_size (g, w)`` of all children (``None``: all zero); for the
    distance energy the variances ``var_rows (g, r)`` (``Vq``) and ``var_cols (g, w)``
    (``Vk``); positions ``p_rows (g, r, d_p)`` and ``p_cols (g, w, d_p)``; ``own`` (``bool``
    or ``(g, r)``): the rows that keep their own share."""

    row0: int
    scale: float
    q_rows: torch.Tensor
    k_cols: torch.Tensor
    v_cols: torch.Tensor
    f_rows: torch.Tensor
    log_size: torch.Tensor | None
    var_rows: torch.Tensor | None
    var_cols: torch.Tensor | None
    p_rows: torch.Tensor | None
    p_cols: torch.Tensor | None
    own: bool | torch.Tensor

    def diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """The entries ``[B, B]`` of a ``(g, r, w)`` tile, a ``(g, r)`` view."""
        return x.diagonal(offset=self.row0, dim1=-2, dim2=-1)

    def differences(self) -> torch.Tensor:
        """``qbar_B - kbar_C``, ``(g, r, w, d_k)`` (distance energy)."""
        return self.q_rows.unsqueeze(-2) - self.k_cols.unsqueeze(-3)

    def logits(self) -> torch.Tensor:
        """``(g, r, w)``: ``log|C| + e_BC`` off the diagonal, ``F(B)`` on it (``f_rows``, or for a
        row that is a point its own score ``s_ii``, the same formula as every other energy)."""
        if self.var_rows is not None:
            logits = self.differences().square_().sum(-1)
            logits.add_(self.var_rows.unsqueeze(-1)).add_(self.var_cols.unsqueeze(-2))
            logits.mul_(-0.5 * self.scale)
            if self.log_size is not None:
                logits.add_(self.log_size.unsqueeze(-2))
        elif self.q_rows.shape[-1] <= 2:
            logits = matmul(self.q_rows, self.k_cols.transpose(-1, -2)).mul_(self.scale)
            if self.log_size is not None:
                logits.add_(self.log_size.unsqueeze(-2))
        else:  # scale <q_B, k_C> (+ log|C|) in one product
            k_t = self.k_cols.transpose(-1, -2)
            if self.log_size is None:
                logits = self.q_rows.new_empty(*self.q_rows.shape[:-1], k_t.shape[-1])
                torch.baddbmm(logits, self.q_rows, k_t, beta=0, alpha=self.scale, out=logits)
            else:
                log_size = self.log_size.unsqueeze(-2)
                logits = torch.baddbmm(log_size, self.q_rows, k_t, alpha=self.scale)
        if self.p_rows is not None:
            logits.baddbmm_(self.p_rows, self.p_cols.transpose(-1, -2))
        # a point's own energy is F(i) = s_ii already (log 1 = 0, Vq(i) = Vk(i) = 0)
        diag = self.diagonal(logits)
        if self.own is False:
            diag.copy_(self.f_rows)
        elif self.own is not True:
            diag.copy_(torch.where(self.own, diag, self.f_rows))
        return logits

    def drop_own(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the diagonal of the rows that send their own share (families) zeroed."""
        if self.own is True:
            return x
        if self.own is False:
            self.diagonal(x).zero_()
        else:
            self.diagonal(x).masked_fill_(~self.own, 0)
        return x


def block_forward(blk: Block, log_z: torch.Tensor, r: torch.Tensor) -> None:
    """``L(B)`` into ``log_z`` ``(g, r)`` and ``R(B)`` into ``r`` ``(g, r, d_v)``."""
    logits = blk.logits()
    torch.logsumexp(logits, -1, out=log_z)  # L(B)
    shares = blk.drop_own(logits.sub_(log_z.unsqueeze(-1)).exp_())  # P'
    matmul(shares, blk.v_cols, out=r)


@dataclass
class BlockGrad:
    """A block's gradients: ``g_diag = gF`` ``(g, r)``, ``q_rows`` ``(g, r, d_k)``, ``var_rows``
    ``(g, r)``, ``p_rows`` ``(g, r, d_p)`` of its rows; its columns' parts ``k_cols``,
    ``v_cols``, ``var_cols``, ``p_cols`` (summed over the rows of the block)."""

    g_diag: torch.Tensor
    q_rows: torch.Tensor
    k_cols: torch.Tensor
    v_cols: torch.Tensor
    var_rows: torch.Tensor | None
    var_cols: torch.Tensor | None
    p_rows: torch.Tensor | None
    p_cols: torch.Tensor | None


def block_backward(
    blk: Block,
    log_z: torch.Tensor,
    gu_rows: torch.Tensor,
    w_a: torch.Tensor,
    wgf_rows: torch.Tensor,
    glogmu_rows: torch.Tensor | None,
    g_own_rows: torch.Tensor | None,
) -> BlockGrad:
    """The gradients of one block from the saved ``L(B)`` ``log_z`` ``(g, r)``, ``gU(B)``
    ``gu_rows`` ``(g, r, d_v)``, ``W(A)`` ``w_a`` ``(g,)``, ``|B|/|A| gF(A)`` ``wgf_rows``
    ``(g, r)``, ``glogW(B)`` of family rows ``glogmu_rows`` (``None``: all zero) and a gradient
    of ``F(i)`` given from outside for rows that are points, ``g_own_rows`` (or ``None``).
    Points' diagonal entries are energies ``s_ii``: their gradient flows with the others'.

    ``D(B) = sum_C P'[B, C] gP'[B, C]`` is summed from the block's own products (a block holds
    whole rows), so that the two terms of ``g`` cancel exactly where the answer does not move.
    """
    probs = blk.logits().sub_(log_z.unsqueeze(-1)).exp_()  # P
    w3 = w_a[:, None, None]
    g = blk.drop_own(matmul(gu_rows, blk.v_cols.transpose(-1, -2)).mul_(w3)).mul_(probs)
    diag = blk.diagonal(g)
    if glogmu_rows is not None:  # a family's own share reaches its subtree through log W(B)
        diag.add_(glogmu_rows)
    # D(B) and gL(B) through P, multiplied and added apart: a fused multiply-add rounds
    # otherwise than the reference's autograd, which scores of 1e3 and more make visible
    g.add_(probs * (wgf_rows - g.sum(-1)).unsqueeze(-1))
    g_diag = diag.clone()  # gF(B)
    blk.drop_own(g)  # g: d loss / d e_BC, with s_ii for points
    if g_own_rows is not None:
        diag.add_(g_own_rows)
    kept = blk.drop_own(probs)  # P'
    g_v = matmul(kept.transpose(-1, -2), gu_rows).mul_(w3)  # sum_B P'[B, C] W(A) gU(B)
    s = blk.scale
    var_rows = var_cols = None
    if blk.var_rows is not None:
        # e_BC = -s/2 (|q_B - k_C|^2 + Vq(B) + Vk(C)): d/dq_B = -s (q_B - k_C) = -d/dk_C
        weighted = blk.differences().mul_(g.unsqueeze(-1))
        g_q, g_k = weighted.sum(-2).mul_(-s), weighted.sum(-3).mul_(s)
        del weighted
        var_rows, var_cols = g.sum(-1).mul_(-0.5 * s), g.sum(-2).mul_(-0.5 * s)
    else:
        g_q = matmul(g, blk.k_cols).mul_(s)
        g_k = matmul(g.transpose(-1, -2), blk.q_rows).mul_(s)
    p_rows = p_cols = None
    if blk.p_rows is not None:
        p_rows, p_cols = g @ blk.p_cols, g.transpose(-1, -2) @ blk.p_rows
    return BlockGrad(g_diag, g_q, g_k, g_v, var_rows, var_cols, p_rows, p_cols)
