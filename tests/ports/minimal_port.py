"""A minimal hsa-port/1 port: the dense, literal HSA forward pass of docs/HSA.md section 3."""

import json
import sys

import numpy as np

DECLARATION = {
    "format": "hsa-port/1",
    "name": "minimal_port.py",
    "version": "1",
    "dtypes": ["float64"],
    "capabilities": {"energies": ["dot"], "positions": False, "gradients": False},
}


def hsa(q, k, v, parent, n, scale):
    """One tree or forest in float64: q, k (n, d_k) and v (n, d_v) give (n, d_v)."""
    s = scale * q @ k.T  # leaf scores s_ij
    kids = [[] for _ in parent]
    for x, p in enumerate(parent):
        if p >= 0:
            kids[p].append(x)
    leaves, F, keep, send = {}, np.zeros(len(parent)), {}, {}
    theta = np.zeros((n, n))

    def up(a):  # F(a); each child B of a keeps mu(B) and sends delta(B, C) / |C| per leaf of C
        if a < n:
            leaves[a], F[a] = [a], s[a, a]
            return
        for b in kids[a]:
            up(b)
        leaves[a] = [i for b in kids[a] for i in leaves[b]]
        size = np.array([len(leaves[b]) for b in kids[a]], dtype=float)
        row = np.repeat(np.arange(len(size)), size.astype(int))  # the child over each leaf
        mean = (row == np.arange(len(size))[:, None]) / size[:, None]
        x = np.log(size) + mean @ s[np.ix_(leaves[a], leaves[a])] @ mean.T  # log|C| + e_BC
        np.fill_diagonal(x, F[kids[a]])
        top = x.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(x - top).sum(axis=1))  # L(B), max subtracted
        F[a] = size @ lse / size.sum()
        shares = np.exp(x - lse[:, None])
        keep[a] = np.diag(shares).copy()
        np.fill_diagonal(shares, 0.0)
        send[a] = (shares / size)[np.ix_(row, row)]

    def down(a, weight):  # weight: the product of mu over a's ancestors below its root
        if a < n:
            theta[a, a] = weight
            return
        theta[np.ix_(leaves[a], leaves[a])] = weight * send[a]
        for b, mu in zip(kids[a], keep[a], strict=True):
            down(b, weight * mu)

    for root in [x for x, p in enumerate(parent) if p < 0]:
        up(root)
        down(root, 1.0)
    return theta @ v


print(json.dumps(DECLARATION), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    q, k, v = (np.reshape(request[x]["data"], request[x]["shape"]) for x in "qkv")
    n, parent = request["tree"]["num_leaves"], request["tree"]["parent"]
    scale = 1 / np.sqrt(q.shape[-1]) if request["scale"] is None else request["scale"]
    batch = [x.reshape(-1, n, x.shape[-1]) for x in (q, k, v)]  # batch dimensions flattened
    out = np.array([hsa(*x, parent, n, scale) for x in zip(*batch, strict=True)])
    out = out.reshape(*q.shape[:-1], v.shape[-1])
    data = {"shape": list(out.shape), "data": out.ravel().tolist()}
    print(json.dumps({"id": request["id"], "out": data}), flush=True)
