"""A port as a port author writes one from the paper: a recursion over the tree in NumPy.

Forward only (NumPy: no autograd), dot energy only, one tree at a time, unbatched, and only
trees whose subtrees are contiguous ranges of rows: it refuses everything else with
``NotImplementedError``. ``no_self_share`` plants one bug (a leaf keeps no share of its own).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hsa_ref.conformance import leaves_contiguous


def _lse(x: np.ndarray) -> np.ndarray:
    top = x.max(-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))[..., 0]


def hsa(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None, bug=None):
    if energy != "dot" or positions is not None:
        raise NotImplementedError("dot energy without positions only")
    if hierarchy.num_trees > 1 or q.dim() != 2 or not leaves_contiguous(hierarchy):
        raise NotImplementedError("one unbatched tree with contiguous leaves only")
    qn, kn, vn = (x.detach().cpu().double().numpy() for x in (q, k, v))
    scale = 1 / math.sqrt(qn.shape[1]) if scale is None else float(scale)
    h, n = hierarchy, hierarchy.num_leaves
    f, size, qbar, kbar, vbar, shares = {}, {}, {}, {}, {}, {}

    def up(node: int) -> None:
        if node < n:
            f[node] = 0.0 if bug == "no_self_share" else scale * qn[node] @ kn[node]
            size[node], qbar[node], kbar[node], vbar[node] = 1, qn[node], kn[node], vn[node]
            return
        kids = h.children(node)
        for kid in kids:
            up(kid)
        sizes = np.array([size[c] for c in kids], dtype=np.float64)
        qs, ks = np.stack([qbar[c] for c in kids]), np.stack([kbar[c] for c in kids])
        logits = scale * qs @ ks.T + np.log(sizes)[None, :]
        np.fill_diagonal(logits, [f[c] for c in kids])
        lse = _lse(logits)
        shares[node] = np.exp(logits - lse[:, None])
        size[node] = sizes.sum()
        f[node] = float((sizes / size[node]) @ lse)
        w = sizes / size[node]
        qbar[node], kbar[node] = w @ qs, w @ ks
        vbar[node] = w @ np.stack([vbar[c] for c in kids])

    y = np.zeros_like(vn)

    def down(node: int, weight: float, sent: np.ndarray) -> None:
        if node < n:
            y[node] = sent + weight * vn[node]
            return
        kids = h.children(node)
        vs = np.stack([vbar[c] for c in kids])
        for r, kid in enumerate(kids):
            others = shares[node][r].copy()
            others[r] = 0.0
            down(kid, weight * shares[node][r, r], sent + weight * others @ vs)

    root = h.roots[0]
    up(root)
    down(root, 1.0, np.zeros(vn.shape[1]))
    return torch.from_numpy(y).to(v.dtype)


def no_self_share(q, k, v, hierarchy, *, scale=None, energy="dot", positions=None):
    return hsa(
        q, k, v, hierarchy, scale=scale, energy=energy, positions=positions, bug="no_self_share"
    )
