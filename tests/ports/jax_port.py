"""A dense, literal HSA in JAX, checked as a port through the process protocol:

    python -m hsa_ref.conformance --impl tests/ports/jax_port.py:hsa --framework jax

The leaf scores ``s`` (``N x N``), the sums of ``s`` over every block of sibling subtrees (a
scatter-add of the whole score matrix) and so the block energies as means of the scores, the
F / L recursion, every child's shares, the attention matrix ``theta`` (``N x N``) and
``y = theta v``, in ``jax.numpy`` in the dtype of ``q``; the harness's server takes the
gradients with ``jax.vjp``. Every logsumexp subtracts its maximum; the distance energy is
formed from the differences ``q_i - k_j`` (exact far from the origin).

The tree enters as dense arrays over its nodes (which node is whose parent, leaf counts,
sibling pairs, which block each leaf pair falls in), and the recursion runs as many rounds as
the tree is high, each round every node at once. XLA compiles a computation for every new
combination of shapes, which takes far longer than computing HSA on the sizes checked here;
so the one jitted computation takes its inputs padded to powers of two (zero features, lone
leaves of zero vectors, childless roots, a batch of zeros), which changes no number of the
answer, and is compiled once per combination of padded sizes.

:func:`uniform_child_weights` plants one mistake for the harness to reject.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hsa_ref import Hierarchy

SMALL_LEAVES = 32
"""Trees of up to this many leaves share one padded size: 32 leaves, 32 families, 128
features, and a batch of 8 where there is a batch."""


def _padded(x: int, least: int = 1) -> int:
    """The power of two at least ``max(x, least)``."""
    return 1 << (max(x, least) - 1).bit_length()


def _layout(h: Hierarchy, bug: str | None) -> dict[str, Any]:
    """The tree as dense NumPy arrays over ``X`` padded nodes: leaves ``0 .. n_pad - 1``
    (leaves past ``N`` stand alone), families from ``n_pad`` on (those past ``M`` are
    childless roots).

    ``up[B, A]`` is 1 where ``A`` is ``B``'s parent; ``weight[A, B]`` is ``|B| / |A|`` for a
    child ``B`` of ``A``; ``sibling[B, C]`` marks distinct children of one family; ``slot[i, j]``
    is ``B * X + C`` for the sibling pair ``(B, C)`` whose block holds the leaf pair ``(i, j)``
    (``i`` under ``B``, ``j`` under ``C``), and ``X * X`` for ``i == j`` or leaves of two trees.
    """
    n, m = h.num_leaves, h.num_families
    n_pad = _padded(n, SMALL_LEAVES)
    x_pad = n_pad + _padded(max(m, n), SMALL_LEAVES)
    node = np.concatenate([np.arange(n), n_pad + np.arange(m)])  # the padded id of each node
    parent = h.parent_array
    count = np.ones(x_pad)
    count[node] = h.leaf_counts
    is_root = np.ones(x_pad)
    is_root[node[parent >= 0]] = 0.0
    up = np.zeros((x_pad, x_pad))
    weight = np.zeros((x_pad, x_pad))
    sibling = np.zeros((x_pad, x_pad), dtype=bool)
    slot = np.full((n_pad, n_pad), x_pad * x_pad, dtype=np.int32)
    height = h.height
    for a in sorted(h.families, key=lambda a: -int(height[a])):  # lower families write last
        kids = np.asarray(h.children(a))
        ids = node[kids]
        up[ids, node[a]] = 1.0
        sizes = h.leaf_counts[kids]
        weight[node[a], ids] = (
            1 / len(kids) if bug == "uniform_child_weights" else sizes / sizes.sum()
        )
        sibling[np.ix_(ids, ids)] = ~np.eye(len(kids), dtype=bool)
        leaves = np.concatenate([h.leaves_under(c) for c in kids])
        side = np.repeat(ids, sizes)  # the child of a that holds each of these leaves
        slot[np.ix_(leaves, leaves)] = side[:, None] * x_pad + side[None, :]
    slot[np.arange(n_pad), np.arange(n_pad)] = x_pad * x_pad
    return {
        "count": count,
        "is_root": is_root,
        "up": up,
        "weight": weight,
        "sibling": sibling,
        "slot": slot,
        "rounds": _padded(int(height.max(initial=0)), 8),
        "n_pad": n_pad,
        "x_pad": x_pad,
    }


def _logsumexp(x: jax.Array) -> jax.Array:
    top = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return (top + jnp.log(jnp.sum(jnp.exp(x - top), axis=-1, keepdims=True)))[..., 0]


def _scores(q: jax.Array, k: jax.Array, scale: jax.Array, energy: str) -> jax.Array:
    """``s_ij`` of shape ``(..., N, N)``."""
    if energy == "dot":
        return scale * (q @ jnp.swapaxes(k, -1, -2))
    diff = q[..., :, None, :] - k[..., None, :, :]
    return (-0.5 * scale) * jnp.sum(diff * diff, axis=-1)


@partial(jax.jit, static_argnames=("energy", "rounds"))
def _dense(q, k, v, pos, scale, count, is_root, up, weight, sibling, slot, *, energy, rounds):
    """HSA of ``q, k`` ``(B, n, d_k)``, ``v`` ``(B, n, d_v)`` and positions ``(X, d_p)`` on
    the tree of :func:`_layout`; ``rounds`` at least its height."""
    batch, n = q.shape[0], q.shape[1]
    x = count.shape[0]
    dtype = q.dtype
    count, is_root, up, weight = (a.astype(dtype) for a in (count, is_root, up, weight))
    s = _scores(q, k, scale, energy)
    own = jnp.diagonal(s, axis1=-2, axis2=-1) + jnp.sum(pos[:n] * pos[:n], axis=-1)
    f_leaf = jnp.concatenate([own, jnp.zeros((batch, x - n), dtype)], axis=-1)  # F(i) = s_ii
    is_leaf = jnp.arange(x) < n
    # sum of s_ij over every sibling block B x C, then e_BC = that sum / (|B| |C|)
    sums = jnp.zeros((batch, x * x + 1), dtype).at[:, slot.reshape(-1)].add(s.reshape(batch, -1))
    energy_bc = sums[:, :-1].reshape(batch, x, x) / (count[:, None] * count[None, :])
    energy_bc = energy_bc + pos @ pos.T
    logits = jnp.where(sibling, jnp.log(count)[None, :] + energy_bc, -jnp.inf)
    # L(B) = logsumexp(F(B), {log|C| + e_BC}) = logaddexp(F(B), R(B)), R over the siblings
    has_siblings = jnp.any(sibling, axis=-1)
    rest = jnp.where(
        has_siblings, _logsumexp(jnp.where(has_siblings[:, None], logits, 0)), -jnp.inf
    )

    def lse(f):
        top = jax.lax.stop_gradient(jnp.maximum(f, rest))
        return top + jnp.log(jnp.exp(f - top) + jnp.exp(rest - top))

    # F(A) = sum over children B of |B| / |A| L(B): one level more each round
    f = f_leaf
    for _ in range(rounds):
        f = jnp.where(is_leaf, f_leaf, lse(f) @ weight.T)
    big_l = lse(f)
    keep = jnp.exp(f - big_l)  # mu(B)
    share = jnp.exp(logits - big_l[..., :, None])  # delta(B, C) for siblings, 0 elsewhere
    # W(B) = W(parent of B) mu(B), W = 1 at the roots: one level more each round
    w = jnp.ones_like(f)
    for _ in range(rounds):
        w = keep * (is_root + w @ up.T)
    above = is_root + w @ up.T  # W of each node's parent (1 at the roots)
    sent = above[..., :, None] * share / count[None, :]  # theta_ij for i under B, j under C
    sent = jnp.concatenate([sent.reshape(batch, -1), jnp.zeros((batch, 1), dtype)], axis=-1)
    theta = sent[:, slot] + w[:, :n, None] * jnp.eye(n, dtype=dtype)  # theta_ii = W(i)
    return theta @ v


@partial(jax.jit, static_argnames=("sizes",))
def _pad(q, k, v, positions, *, sizes: tuple[int, ...]):
    """``q, k, v`` broadcast to one batch, flattened to ``(B, N, d)`` and padded with zeros to
    ``sizes`` (batch, leaves, d_k, d_v); positions to ``(X, d_p)``, families from ``n_pad``."""
    b_pad, n_pad, dk_pad, dv_pad, x_pad, dp_pad = sizes
    batch = jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    size, n = math.prod(batch), q.shape[-2]

    def pad(x, cols):
        x = jnp.broadcast_to(x, (*batch, *x.shape[-2:])).reshape(size, n, x.shape[-1])
        return jnp.pad(x, ((0, b_pad - size), (0, n_pad - n), (0, cols - x.shape[-1])))

    if positions is None:
        pos = jnp.zeros((x_pad, dp_pad), q.dtype)
    else:
        wide = ((0, 0), (0, dp_pad - positions.shape[-1]))
        leaves = jnp.pad(positions[:n], ((0, n_pad - n), (0, 0)))
        families = positions[n:]
        families = jnp.pad(families, ((0, x_pad - n_pad - families.shape[0]), (0, 0)))
        pos = jnp.pad(jnp.concatenate([leaves, families]), wide)
    return pad(q, dk_pad), pad(k, dk_pad), pad(v, dv_pad), pos


@partial(jax.jit, static_argnames=("shape",))
def _crop(y, *, shape: tuple[int, ...]):
    """The ``(..., N, d_v)`` answer out of the padded ``(B, n_pad, dv_pad)`` one."""
    n, d_v = shape[-2:]
    return y[: math.prod(shape[:-2]), :n, :d_v].reshape(shape)


def hsa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    hierarchy: Hierarchy,
    *,
    scale: float | None = None,
    energy: str = "dot",
    positions: jax.Array | None = None,
    bug: str | None = None,
) -> jax.Array:
    """HSA output ``(..., N, d_v)`` in the dtype of ``q`` (``bug``: one planted mistake)."""
    if energy not in ("dot", "distance"):
        raise ValueError(f"energy must be 'dot' or 'distance', got {energy!r}")
    lay = _layout(hierarchy, bug)
    n, d_k, d_v = hierarchy.num_leaves, q.shape[-1], v.shape[-1]
    batch = tuple(jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    small = n <= SMALL_LEAVES
    least = (8 if batch else 1, 128) if small else (1, 8)
    sizes = (
        _padded(math.prod(batch), least[0]),
        lay["n_pad"],
        _padded(d_k, least[1]),
        _padded(d_v, least[1]),
        lay["x_pad"],
        4 if positions is not None else 1,
    )
    scale = jnp.asarray(1 / math.sqrt(d_k) if scale is None else scale, q.dtype)
    y = _dense(
        *_pad(q, k, v, positions, sizes=sizes),
        scale,
        *(lay[key] for key in ("count", "is_root", "up", "weight", "sibling", "slot")),
        energy=energy,
        rounds=lay["rounds"],
    )
    return _crop(y, shape=(*batch, n, d_v))


def uniform_child_weights(q, k, v, hierarchy: Hierarchy, **kwargs: Any) -> jax.Array:
    """:func:`hsa` with ``F(A)`` weighting its children by ``1/b`` instead of ``|B|/|A|``."""
    return hsa(q, k, v, hierarchy, **kwargs, bug="uniform_child_weights")
