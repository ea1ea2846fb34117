"""Where does an implementation's attention differ from HSA's?  Black-box diagnostics.

Calling an implementation with ``v = I`` (``d_v = N``) returns its attention matrix ``theta``
(``y = theta v``). :func:`diagnose` compares it with the reference's, in the terms of
docs/HSA.md section 3, and lists what is wrong, most telling first: non-finite weights, rows that
do not sum to one, weight that crosses trees, weights that are not constant on a sibling block,
then the largest errors, relative to the reference's values, in the own-subtree shares ``mu(B)``
and in the weights a child ``B`` sends to a sibling ``C``.
"""

from __future__ import annotations

import torch

from ..hierarchy import Hierarchy

__all__ = ["diagnose", "family_table"]


def _membership(h: Hierarchy, nodes: list[int]) -> torch.Tensor:
    m = torch.zeros(len(nodes), h.num_leaves, dtype=torch.float64)
    for row, node in enumerate(nodes):
        m[row, h.leaves_under(node)] = 1
    return m


def family_table(theta: torch.Tensor, h: Hierarchy, family: int) -> torch.Tensor:
    """``(b, b)``: entry ``(B, C)`` is the weight a row under child ``B`` of ``family`` gives to
    the leaves under child ``C``, averaged over ``B``'s rows (the diagonal is what ``B`` keeps)."""
    kids = h.children(family)
    member = _membership(h, kids)
    rows = member / member.sum(1, keepdim=True)
    return rows @ theta.double() @ member.T


def diagnose(theta: torch.Tensor, expected: torch.Tensor, h: Hierarchy, limit: float) -> list[str]:
    """What is wrong with ``theta`` (``(N, N)``) against ``expected`` (float64 reference),
    counting only deviations above ``limit``; empty when nothing is."""
    theta, expected = theta.detach().double().cpu(), expected.detach().double().cpu()
    n = h.num_leaves
    found: list[str] = []
    bad = (~torch.isfinite(theta)).any(1).nonzero().flatten().tolist()
    if bad:
        return [f"theta has NaN or inf in rows {bad[:10]}"]
    sums = theta.sum(1)
    if (sums - 1).abs().max().item() > limit:
        i = int((sums - 1).abs().argmax())
        found.append(
            f"rows do not sum to 1: row sums range from {sums.min().item():.4g} to "
            f"{sums.max().item():.4g} (row {i}: {sums[i].item():.4g}; the reference's are 1)"
        )
    roots = torch.as_tensor(h.root_of[:n])
    across = torch.where(roots[:, None] != roots[None, :], theta.abs(), 0).sum(1)
    if across.max().item() > limit:
        i = int(across.argmax())
        found.append(
            f"weight crosses trees: row {i} (tree of root {int(roots[i])}) gives "
            f"{across[i].item():.3g} to leaves of other trees (the reference gives 0)"
        )
    spread_worst: tuple[float, str] = (limit, "")
    shares: list[tuple[float, str]] = []
    blocks: list[tuple[float, str]] = []
    for a in h.families:
        kids = h.children(a)
        member = _membership(h, kids)
        per_row = theta @ member.T  # weight of each row on each child's leaves
        for b in kids:
            rows = h.leaves_under(b)
            block = per_row[rows]
            spread = (block.max(0).values - block.min(0).values).max().item()
            if spread > spread_worst[0]:
                c = kids[int((block.max(0).values - block.min(0).values).argmax())]
                spread_worst = (
                    spread,
                    f"theta is not constant on sibling blocks: the rows under node {b} "
                    f"(child of {a}) give node {c} weights that differ by {spread:.3g}",
                )
        got, want = family_table(theta, h, a), family_table(expected, h, a)
        kept_got = got.diagonal() / got.sum(1).clamp_min(1e-300)
        kept_want = want.diagonal() / want.sum(1).clamp_min(1e-300)
        for r, b in enumerate(kids):
            if len(kids) == 1:
                continue
            g, e = kept_got[r].item(), kept_want[r].item()
            if abs(g - e) > limit:
                prefix = "no self share: " if abs(g) <= 1e-3 * e else ""
                shares.append(
                    (
                        abs(g - e) / max(abs(e), limit),
                        f"{prefix}own-subtree share mu({b}) of node {b} (child of {a}) is "
                        f"{g:.6g} where the reference has {e:.6g} (off by {abs(g - e):.2g})",
                    )
                )
        diff = (got - want).abs()
        diff.fill_diagonal_(0)
        if diff.numel() and diff.max().item() > limit:
            r, c = divmod(int(diff.argmax()), len(kids))
            blocks.append(
                (
                    diff[r, c].item() / max(abs(want[r, c].item()), limit),
                    f"sibling block {kids[r]} -> {kids[c]} (children of {a}): the rows under "
                    f"{kids[r]} give {got[r, c].item():.6g} to the leaves under {kids[c]}, the "
                    f"reference {want[r, c].item():.6g} (off by {diff[r, c].item():.2g})",
                )
            )
    if spread_worst[1]:
        found.append(spread_worst[1])
    for found_here in (shares, blocks):  # the largest relative errors, shares first
        found += [text for _, text in sorted(found_here, key=lambda x: -x[0])[:2]]
    return found
