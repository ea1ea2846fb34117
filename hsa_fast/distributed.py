"""Sequence-parallel HSA on ``torch.distributed``: each rank holds a contiguous range of leaves.

For a cut node ``B`` (a maximal subtree on one rank, :mod:`hsa_fast.sharding`) and a leaf
``i`` under it, the down pass of docs/HSA.md section 5 factorises as

    y_i = U(B) + W(B) * y_i^B,

where ``y^B`` is HSA over ``B``'s subtree alone, ``W(B)`` the product of the shares kept from
the root down to ``B`` and ``U(B)`` what ``B``'s ancestors' siblings send into it. ``W(B)`` and
``U(B)`` depend on the leaves outside ``B`` only through the summaries of the other cut nodes:
``|C|``, the means of ``q, k, v`` (and, for the distance energy, the variances
``Vq(C) = mean over i in C of ||q_i - qbar_C||^2`` and ``Vk(C)``) and ``F(C)``. So each rank

1. runs the programme on its local forest, getting ``y^B`` and ``F(B)`` (no communication);
2. all-gathers the summaries of its cut nodes that have a parent;
3. evaluates the small tree above the cut (identically on every rank) with the programme itself
   (:func:`~hsa_fast.programme.hsa_summaries`, whose leaves are the cut nodes): ``log W`` and
   ``U`` at every cut node;
4. returns ``y_i = U(B) + W(B) y_i^B`` for its leaves.

For the distance energy every cut node is centred on its own: its rank subtracts ``c_B``, the
mean of ``(q + k) / 2`` over ``B`` rounded to the input dtype, before the summaries, and sends
``c_B`` with them; the tree above the cut then measures each cut node's means from the centre
``c_T`` of its tree (``(c_B - c_T) + mean(q - c_B)``, a difference of nearby floats plus a
small mean), so the energies above the cut are as exact far from the origin as below it.

Backward: the tree above the cut runs on every rank, so each rank backpropagates it from the
adjoints of ``U`` and ``log W`` at *all* cut nodes, which one all-gather of the local adjoints
provides;
the gradient of the gathered summaries is then the same on every rank and each keeps its own
rows (no second exchange). Both collectives carry ``O(P * cut * d)`` numbers, independent of N.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from hsa_ref import Hierarchy, check_attention_inputs
from hsa_ref.validation import DTYPES

from .backends import run_backend, tree_centres
from .layout import HSALayout, compile_hierarchy, compile_weighted
from .programme import accumulation_dtype, hsa_summaries
from .sharding import Shard, ShardPlan, partition

__all__ = [
    "Collective",
    "CommStats",
    "ShardPlan",
    "hsa_sharded",
    "partition",
    "planned_collectives",
]

_ENERGY_CODES = {"dot": 1, "distance": 2}
_META = ("inputs valid", "plan", "batch shape", "d_k", "d_v", "dtype", "energy", "scale")


@dataclass(frozen=True)
class Collective:
    """One all-gather: this rank contributed ``elements`` values of ``itemsize`` bytes."""

    phase: str  # "forward" or "backward"
    what: str  # "metadata", "summaries" or "adjoints"
    elements: int
    itemsize: int
    world_size: int

    @property
    def payload_bytes(self) -> int:
        """Bytes this rank contributes."""
        return self.elements * self.itemsize

    @property
    def sent_bytes(self) -> int:
        """Bytes this rank sends in a ring all-gather: its block and ``P - 2`` others, onward."""
        return (self.world_size - 1) * self.payload_bytes


@dataclass
class CommStats:
    """Filled by :func:`hsa_sharded` (``stats=``): every collective it ran, in order."""

    collectives: list[Collective] = field(default_factory=list)

    def sent_bytes(self, phase: str | None = None, what: str | None = None) -> int:
        """Bytes sent by this rank (ring algorithm), optionally of one phase / kind only."""
        return sum(
            c.sent_bytes
            for c in self.collectives
            if (phase is None or c.phase == phase) and (what is None or c.what == what)
        )


def planned_collectives(
    plan: ShardPlan,
    *,
    batch: int = 1,
    d_k: int,
    d_v: int,
    dtype: torch.dtype = torch.float32,
    energy: str = "dot",
    backward: bool = True,
) -> list[Collective]:
    """The collectives :func:`hsa_sharded` runs for ``plan`` on inputs of ``batch`` flattened
    batch elements (heads included) and ``dtype``, computed without running it: what each rank
    sends does not depend on N, only on the cut (``plan.slots``)."""
    world, slots = plan.num_shards, plan.slots
    item = torch.empty((), dtype=accumulation_dtype(dtype)).element_size()
    out = [Collective("forward", "metadata", len(_META), 8, world)]
    if plan.top_levels:
        width = _summary_width(d_k, d_v, energy == "distance")
        out.append(Collective("forward", "summaries", slots * batch * width, item, world))
        if backward:
            out.append(Collective("backward", "adjoints", slots * batch * (d_v + 1), item, world))
    return out


def _all_gather(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """``(world, *x.shape)``: every rank's ``x``."""
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.stack(parts)


class _GatherSummaries(torch.autograd.Function):
    """Forward: all-gather the cut summaries. Backward: keep this rank's rows of the gradient,
    which every rank computes in full (see :class:`_OwnRows`)."""

    @staticmethod
    def forward(ctx, local, group, world, rank, stats):
        ctx.rank = rank
        if stats is not None:
            stats.collectives.append(
                Collective("forward", "summaries", local.numel(), local.element_size(), world)
            )
        return _all_gather(local, group, world)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank], None, None, None, None


class _OwnRows(torch.autograd.Function):
    """Forward: this rank's rows ``[rank * slots, (rank + 1) * slots)`` of the top tree's
    ``(Z, P * slots, c)`` output. Backward: all-gather every rank's adjoint of its rows, the
    full adjoint of the top tree's output (the loss is the sum over ranks)."""

    @staticmethod
    def forward(ctx, full, group, world, rank, slots, stats):
        ctx.group, ctx.world, ctx.stats = group, world, stats
        return full[:, rank * slots : (rank + 1) * slots].clone()

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if ctx.stats is not None:
            ctx.stats.collectives.append(
                Collective("backward", "adjoints", grad.numel(), grad.element_size(), ctx.world)
            )
        gathered = _all_gather(grad, ctx.group, ctx.world)  # (P, Z, slots, c)
        full = gathered.permute(1, 0, 2, 3).flatten(1, 2)
        return full, None, None, None, None, None


def _summary_width(d_k: int, d_v: int, distance: bool) -> int:
    """Numbers per cut node and batch element: means of q, k, v and F; for the distance energy
    also the centre ``c_B`` and the variances ``Vq(B), Vk(B)``."""
    return 2 * d_k + d_v + 1 + (d_k + 2 if distance else 0)


_TOP: weakref.WeakKeyDictionary[ShardPlan, dict[torch.device, tuple]] = weakref.WeakKeyDictionary()


def _top_layout(plan: ShardPlan, device: torch.device) -> tuple[HSALayout, torch.Tensor]:
    """The layout of the tree above the cut (``plan.top_tree``, its leaves weighted by the cut
    nodes' sizes) and those sizes ``(R,)`` (float64), built once per plan and device."""
    with _LOCK:
        per_device = _TOP.setdefault(plan, {})
        if device not in per_device:
            sizes = plan.table_counts[: plan.num_shards * plan.slots]
            layout = compile_weighted(plan.top_tree, sizes, device)
            with torch.inference_mode(False):  # cached: ordinary tensors, as layouts are
                sizes = torch.as_tensor(sizes, dtype=torch.float64, device=device)
            per_device[device] = (layout, sizes)
        return per_device[device]


def _above_cut(
    table: torch.Tensor,
    layout: HSALayout,
    sizes: torch.Tensor,
    d_k: int,
    d_v: int,
    scale: float,
    distance: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``(Z, R, d_v + 1)``: ``U`` and ``log W`` of every cut row of the gathered ``table``
    ``(Z, R, width)`` (:func:`_summary_width`), the programme run over the tree above the cut
    (``layout``, ``sizes``: :func:`_top_layout`).

    For the distance energy a row holds ``[c_B, mean(q - c_B), mean(k - c_B), mean v, F, Vq,
    Vk]``; each row's means are taken from its tree's centre ``c_T`` (the weighted mean of the
    ``c_B``, rounded to ``dtype``) before the programme sees them.
    """
    if distance:
        centre, q, k = table[..., :d_k], table[..., d_k : 2 * d_k], table[..., 2 * d_k : 3 * d_k]
        rest = table[..., 3 * d_k :]
        with torch.no_grad():
            acc = table.dtype
            sums = table.new_zeros(table.shape[0], layout.num_trees, d_k)
            sums.index_add_(1, layout.leaf_tree, centre * sizes.to(acc).unsqueeze(-1))
            c_tree = (sums / layout.tree_size.to(acc).unsqueeze(-1)).to(dtype).to(acc)
            shift = centre - c_tree.index_select(1, layout.leaf_tree)
        q, k = shift + q, shift + k
    else:
        q, k, rest = table[..., :d_k], table[..., d_k : 2 * d_k], table[..., 2 * d_k :]
    v, f = rest[..., :d_v], rest[..., d_v]
    variances = (rest[..., d_v + 1], rest[..., d_v + 2]) if distance else None
    u, log_w = hsa_summaries(q, k, v, f, variances, layout, scale=scale)
    return torch.cat([u, log_w.unsqueeze(-1)], -1)


def _fingerprint(*values: object) -> int:
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _metadata_device(group) -> torch.device:
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(
    meta: list[int], error: Exception | None, group, world: int, rank: int, device, stats
) -> None:
    """All-gather each rank's metadata; raise the same verdict on every rank on disagreement."""
    mine = torch.tensor(meta, dtype=torch.int64, device=device)
    if stats is not None:
        stats.collectives.append(
            Collective("forward", "metadata", mine.numel(), mine.element_size(), world)
        )
    every = _all_gather(mine, group, world).cpu().tolist()
    bad = [r for r in range(world) if not every[r][0]]
    if bad:
        if error is not None:
            raise error
        raise ValueError(f"hsa_sharded: rank(s) {bad} rejected their inputs (see their errors)")
    for col, name in enumerate(_META):
        per_rank = [every[r][col] for r in range(world)]
        if len(set(per_rank)) > 1:
            if name == "dtype":
                per_rank = [str(DTYPES[c - 1]) if c > 0 else "other" for c in per_rank]
            elif name in ("plan", "batch shape", "scale"):
                per_rank = [f"#{c % 10_000:04d}" for c in per_rank]  # digests
            raise ValueError(
                f"hsa_sharded: the ranks disagree on the {name} (per rank: {per_rank}); every "
                "rank must pass the same plan (hierarchy and boundaries), batch shape, feature "
                "sizes, dtype, energy and scale"
            )


_PLANS: weakref.WeakKeyDictionary[Hierarchy, dict[int, ShardPlan]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _default_plan(hierarchy: Hierarchy, world: int) -> ShardPlan:
    """``partition(hierarchy, world)``, cached while the hierarchy lives."""
    with _LOCK:
        per_world = _PLANS.setdefault(hierarchy, {})
        if world not in per_world:
            per_world[world] = partition(hierarchy, world)
        return per_world[world]


def hsa_sharded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ShardPlan | Hierarchy,
    *,
    group: dist.ProcessGroup | None = None,
    scale: float | None = None,
    energy: str = "dot",
    backend: str = "auto",
    stats: CommStats | None = None,
) -> torch.Tensor:
    """HSA over leaves split across the ranks of ``group``: this rank's rows of the output.

    Every rank of ``group`` calls this collectively with the same ``plan`` (a
    :class:`~hsa_fast.sharding.ShardPlan` with one shard per rank; a ``Hierarchy`` is split by
    :func:`~hsa_fast.sharding.partition`, once per hierarchy and world size) and its own
    rows: rank ``r`` passes ``q, k`` ``(..., n_r, d_k)`` and ``v`` ``(..., n_r, d_v)`` for the
    leaves ``plan.shards[r].leaf_start .. leaf_stop - 1``, with the same batch shape, feature sizes,
    dtype, ``scale`` and ``energy`` as every other rank. The result equals those rows of
    ``hsa_fast.hsa`` on the whole input, forward and backward (autograd runs through the
    collectives, so every rank must also run the backward).

    Communication per call: one all-gather of 8 integers (the ranks check they agree), one of
    ``slots`` cut summaries per rank (``2 d_k + d_v + 1`` numbers each, ``+ d_k + 2`` for the
    distance energy, per batch element; skipped when no tree spans two shards) and, in the
    backward, one of ``slots`` adjoints per rank (``d_v + 1`` numbers each). ``stats`` (a
    :class:`CommStats`) records each with its size.

    ``backend`` chooses the local programme as in ``hsa_fast.hsa``; the Triton path returns no
    log-partitions, so where a tree spans shards the PyTorch programme also runs, for ``F`` at
    the cut nodes.

    Raises:
        RuntimeError: if ``torch.distributed`` is not initialised.
        TypeError, ValueError: for bad arguments, on every rank: a plan for another number of
            ranks before any communication; bad or disagreeing inputs on any rank after the
            metadata all-gather (the rank at fault raises its own error, the others name it).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("hsa_sharded needs torch.distributed to be initialised")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if isinstance(plan, Hierarchy):
        plan = _default_plan(plan, world)
    if not isinstance(plan, ShardPlan):
        raise TypeError(f"plan must be a ShardPlan or a Hierarchy, got {type(plan).__name__}")
    if plan.num_shards != world:
        raise ValueError(
            f"the plan has {plan.num_shards} shards but the process group has {world} ranks"
        )
    shard: Shard = plan.shards[rank]
    error: Exception | None = None
    meta = [0] * len(_META)
    try:
        checked = check_attention_inputs(q, k, v, shard.local, scale=scale, energy=energy)
        meta = [
            1,
            plan.fingerprint,
            _fingerprint(tuple(checked.batch_shape)),
            checked.q.shape[-1],
            checked.v.shape[-1],
            DTYPES.index(checked.q.dtype) + 1,
            _ENERGY_CODES[checked.energy],
            struct.unpack("<q", struct.pack("<d", checked.scale))[0],
        ]
    except (TypeError, ValueError) as exc:
        error = type(exc)(f"rank {rank}: {exc}")
    _agree(meta, error, group, world, rank, _metadata_device(group), stats)

    q, k, v = checked.q, checked.k, checked.v
    d_k, d_v, n = q.shape[-1], v.shape[-1], shard.num_leaves
    distance = checked.energy == "distance"
    local = shard.local
    layout = compile_hierarchy(local, q.device)
    centres = None
    if distance:  # every cut node (a tree of the local forest) centred on its own
        centres = tree_centres(q, k, layout)  # (..., cut nodes, d_k), in the input dtype
        shift = centres.index_select(-2, layout.leaf_tree)
        q, k = q - shift, k - shift
    kwargs = {"scale": checked.scale, "energy": checked.energy, "centred": True}
    if not plan.top_levels:  # every tree lies on one shard: nothing to exchange
        return run_backend(backend, q, k, v, layout, local.num_nodes, **kwargs)
    y_local, f_all = run_backend(
        backend, q, k, v, layout, local.num_nodes, return_log_partition=True, **kwargs
    )

    acc = accumulation_dtype(q.dtype)
    batch = checked.batch_shape
    z = batch.numel()
    qz, kz, vz = (x.reshape(z, n, x.shape[-1]).to(acc) for x in (q, k, v))
    slots = plan.slots
    device = q.device
    # local leaf -> its cut node's slot, or `slots` (a zero row) when that cut node is a root
    slot_of_cut = torch.full((shard.cut.size,), slots, dtype=torch.long)
    slot_of_cut[torch.as_tensor(shard.sent, dtype=torch.long)] = torch.arange(shard.sent.size)
    leaf_slot = slot_of_cut[torch.as_tensor(shard.leaf_cut, dtype=torch.long)].to(device)
    counts = torch.ones(slots + 1, dtype=acc, device=device)
    sent_counts = local.leaf_counts[shard.cut_local[shard.sent]]
    counts[: shard.sent.size] = torch.as_tensor(sent_counts, dtype=acc, device=device)
    sent = torch.as_tensor(shard.sent, dtype=torch.long, device=device)

    def mean(x: torch.Tensor) -> torch.Tensor:  # (Z, n, c) -> (Z, slots, c): mean over B
        sums = x.new_zeros(z, slots + 1, x.shape[-1]).index_add(1, leaf_slot, x)
        return sums[:, :slots] / counts[:slots, None]

    def padded(x: torch.Tensor) -> torch.Tensor:  # (Z, sent, c) -> (Z, slots, c)
        return torch.cat([x, x.new_zeros(z, slots - x.shape[1], x.shape[-1])], 1)

    sent_roots = torch.as_tensor(shard.cut_local[shard.sent], dtype=torch.long, device=device)
    f_cut = padded(f_all.reshape(z, local.num_nodes).index_select(1, sent_roots).unsqueeze(-1))
    q_mean, k_mean = mean(qz), mean(kz)
    columns = [q_mean, k_mean, mean(vz), f_cut]
    if distance:  # the centres, and within-node variances about each cut node's own mean

        def spread(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
            padded = torch.cat([centre, centre.new_zeros(z, 1, centre.shape[-1])], 1)
            return (x - padded.index_select(1, leaf_slot)).square().sum(-1, keepdim=True)

        c_sent = centres.reshape(z, shard.cut.size, d_k).index_select(1, sent).to(acc)
        columns = [padded(c_sent), *columns, mean(spread(qz, q_mean)), mean(spread(kz, k_mean))]
    summaries = torch.cat(columns, -1).transpose(0, 1).contiguous()  # (slots, Z, width)

    gathered = _GatherSummaries.apply(summaries, group, world, rank, stats)  # (P, slots, Z, w)
    table = gathered.permute(2, 0, 1, 3).flatten(1, 2)  # (Z, P * slots, width)
    top_layout, sizes = _top_layout(plan, device)
    top = _above_cut(table, top_layout, sizes, d_k, d_v, checked.scale, distance, q.dtype)
    own = _OwnRows.apply(top, group, world, rank, slots, stats)  # (Z, slots, d_v + 1)
    own = torch.cat([own, own.new_zeros(z, 1, d_v + 1)], 1).index_select(1, leaf_slot)
    y = own[..., :d_v] + own[..., d_v:].exp() * y_local.reshape(z, n, d_v).to(acc)
    return y.reshape(*batch, n, d_v).to(y_local.dtype)
