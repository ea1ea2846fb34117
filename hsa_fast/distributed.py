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
3. evaluates the small top tree above the cut (identically on every rank): up for ``L`` and
   ``F``, down for ``log W`` and ``U`` at every cut node;
4. returns ``y_i = U(B) + W(B) y_i^B`` for its leaves.

Backward: the top tree runs on every rank, so each rank backpropagates it from the adjoints of
``U`` and ``log W`` at *all* cut nodes, which one all-gather of the local adjoints provides;
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

from .api import centre_per_tree
from .backends import choose_backend
from .layout import compile_hierarchy
from .programme import accumulation_dtype, hsa_programme
from .sharding import Shard, ShardPlan, partition
from .triton import hsa_triton

__all__ = [
    "Collective",
    "CommStats",
    "ShardPlan",
    "hsa_sharded",
    "partition",
    "planned_collectives",
]

_ENERGY_CODES = {"dot": 1, "distance": 2}
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
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
        width = 2 * d_k + d_v + 1 + (2 if energy == "distance" else 0)
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


def _padded(kids: torch.Tensor, pad: int) -> torch.Tensor:
    """Table rows of a level's children, with ``pad`` (a row of zeros) in padded slots."""
    return kids.masked_fill(kids < 0, pad)


def _top_tree(
    table: torch.Tensor, plan: ShardPlan, d_k: int, d_v: int, scale: float, distance: bool
) -> torch.Tensor:
    """``(Z, P * slots, d_v + 1)``: ``U`` and ``log W`` of every cut row of ``table``.

    ``table`` ``(Z, R, width)`` holds per row ``[mean q, mean k, mean v, F, (Vq, Vk)]``, cut
    rows filled and family rows zero. Families are evaluated level by level exactly as in
    docs/HSA.md section 5, out of place (the top tree is small). For the distance energy the block
    energies take the programme's variance form, ``-scale/2 (|qbar_B - kbar_C|^2 + Vq(B) +
    Vk(C))`` about the family's centre, so no cancellation grows with the distance from the
    origin. Padded child slots read an extra zero row, so a non-finite tree never leaks into
    another's families.
    """
    device, acc = table.device, table.dtype
    z, num_cut, pad = table.shape[0], plan.num_shards * plan.slots, table.shape[1]
    table = torch.cat([table, table.new_zeros(z, 1, table.shape[-1])], 1)
    counts = torch.as_tensor(plan.table_counts, dtype=acc, device=device)
    saved = []
    for fams, kids in plan.top_levels:
        fams_t = torch.as_tensor(fams, device=device)
        kids_t = torch.as_tensor(kids, device=device)
        f, w = kids.shape
        valid = kids_t >= 0
        rows = table.index_select(1, _padded(kids_t, pad).flatten())
        rows = rows.unflatten(1, (f, w))
        q_c, k_c = rows[..., :d_k], rows[..., d_k : 2 * d_k]
        v_c, f_c = rows[..., 2 * d_k : 2 * d_k + d_v], rows[..., 2 * d_k + d_v]
        size = torch.where(valid, counts[kids_t.clamp(min=0)], 0.0)  # (f, w)
        weight = size / size.sum(-1, keepdim=True)
        means = (weight.unsqueeze(-1) * rows).sum(-2)  # means over A of every column but F
        if distance:
            q_a, k_a = means[..., :d_k], means[..., d_k : 2 * d_k]
            centre = (0.5 * (q_a + k_a)).unsqueeze(-2)
            dq, dk = q_c - centre, k_c - centre
            vq, vk = rows[..., -2] + dq.square().sum(-1), rows[..., -1] + dk.square().sum(-1)
            energies = scale * (dq @ dk.transpose(-1, -2))
            energies = energies - 0.5 * scale * (vq.unsqueeze(-1) + vk.unsqueeze(-2))
            # Vq(A) = sum_B |B|/|A| (Vq(B) + |qbar_B - qbar_A|^2), likewise Vk(A)
            spread_q = (q_c - q_a.unsqueeze(-2)).square().sum(-1)
            spread_k = (k_c - k_a.unsqueeze(-2)).square().sum(-1)
            var_a = torch.stack(
                [
                    (weight * (rows[..., -2] + spread_q)).sum(-1),
                    (weight * (rows[..., -1] + spread_k)).sum(-1),
                ],
                -1,
            )
            means = torch.cat([means[..., :-2], var_a], -1)
        else:
            energies = scale * (q_c @ k_c.transpose(-1, -2))  # e_BC: (Z, f, w, w)
        eye = torch.eye(w, dtype=torch.bool, device=device)
        logits = torch.where(eye, f_c.unsqueeze(-1), energies + size.log().unsqueeze(1))
        log_z = torch.logsumexp(logits, -1)  # L(B)
        share = torch.exp(logits - log_z.unsqueeze(-1)).masked_fill(eye, 0.0)
        saved.append((fams_t, kids_t, valid, f_c - log_z, share @ v_c))
        f_a = (weight * log_z).sum(-1, keepdim=True)  # F(A) = sum_B |B|/|A| L(B)
        col = 2 * d_k + d_v
        means = torch.cat([means[..., :col], f_a, means[..., col + 1 :]], -1)
        table = table.index_copy(1, fams_t, means)
    log_w = table.new_zeros(z, table.shape[1])
    u = table.new_zeros(z, table.shape[1], d_v)
    for fams_t, kids_t, valid, log_mu, sent in reversed(saved):
        w_parent = log_w.index_select(1, fams_t).unsqueeze(-1)  # (Z, f, 1)
        child_log_w = w_parent + log_mu
        child_u = u.index_select(1, fams_t).unsqueeze(-2) + w_parent.exp().unsqueeze(-1) * sent
        flat = valid.flatten()
        ids = kids_t.flatten()[flat]
        log_w = log_w.index_copy(1, ids, child_log_w.flatten(1, 2)[:, flat])
        u = u.index_copy(1, ids, child_u.flatten(1, 2)[:, flat])
    return torch.cat([u, log_w.unsqueeze(-1)], -1)[:, :num_cut]


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
                per_rank = [str(_DTYPES[c - 1]) if c > 0 else "other" for c in per_rank]
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
    ``slots`` cut summaries per rank (``2 d_k + d_v + 1`` numbers each, ``+ 2`` for the
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
            _DTYPES.index(checked.q.dtype) + 1 if checked.q.dtype in _DTYPES else -1,
            _ENERGY_CODES[checked.energy],
            struct.unpack("<q", struct.pack("<d", checked.scale))[0],
        ]
    except (TypeError, ValueError) as exc:
        error = type(exc)(f"rank {rank}: {exc}")
    _agree(meta, error, group, world, rank, _metadata_device(group), stats)

    q, k, v = checked.q, checked.k, checked.v
    d_k, d_v, n = q.shape[-1], v.shape[-1], shard.num_leaves
    distance = checked.energy == "distance"
    layout = compile_hierarchy(shard.local, q.device)
    chosen = choose_backend(backend, q, v, None, shard.local.num_nodes)
    kwargs = {"scale": checked.scale, "energy": checked.energy}
    if not plan.top_levels:  # every tree lies on one shard: nothing to exchange
        run = hsa_triton if chosen == "triton" else hsa_programme
        q_run, k_run = centre_per_tree(q, k, layout) if distance else (q, k)
        return run(q_run, k_run, v, layout, **kwargs)
    # y^B and F(B) are invariant under a common shift of a local tree's q and k (distance)
    q_run, k_run = centre_per_tree(q, k, layout) if distance else (q, k)
    y_local, f_all = hsa_programme(q_run, k_run, v, layout, return_log_partition=True, **kwargs)
    if chosen == "triton":
        y_local = hsa_triton(q_run, k_run, v, layout, **kwargs)

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
    sent_counts = shard.local.leaf_counts[shard.cut_local[shard.sent]]
    counts[: shard.sent.size] = torch.as_tensor(sent_counts, dtype=acc, device=device)

    def mean(x: torch.Tensor) -> torch.Tensor:  # (Z, n, c) -> (Z, slots, c): mean over B
        sums = x.new_zeros(z, slots + 1, x.shape[-1]).index_add(1, leaf_slot, x)
        return sums[:, :slots] / counts[:slots, None]

    sent_roots = torch.as_tensor(shard.cut_local[shard.sent], dtype=torch.long, device=device)
    f_cut = f_all.reshape(z, -1).index_select(1, sent_roots)
    f_cut = torch.cat([f_cut, f_cut.new_zeros(z, slots - shard.sent.size)], 1)
    q_mean, k_mean = mean(qz), mean(kz)
    columns = [q_mean, k_mean, mean(vz), f_cut.unsqueeze(-1)]
    if distance:  # within-node variances, two-pass: deviations from each cut node's own mean

        def spread(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
            padded = torch.cat([centre, centre.new_zeros(z, 1, centre.shape[-1])], 1)
            return (x - padded.index_select(1, leaf_slot)).square().sum(-1, keepdim=True)

        columns += [mean(spread(qz, q_mean)), mean(spread(kz, k_mean))]
    local = torch.cat(columns, -1).transpose(0, 1).contiguous()  # (slots, Z, width)

    gathered = _GatherSummaries.apply(local, group, world, rank, stats)  # (P, slots, Z, width)
    table = gathered.permute(2, 0, 1, 3).flatten(1, 2)  # (Z, P * slots, width)
    table = torch.cat([table, table.new_zeros(z, plan.top_families.size, table.shape[-1])], 1)
    top = _top_tree(table, plan, d_k, d_v, checked.scale, distance)
    own = _OwnRows.apply(top, group, world, rank, slots, stats)  # (Z, slots, d_v + 1)
    own = torch.cat([own, own.new_zeros(z, 1, d_v + 1)], 1).index_select(1, leaf_slot)
    y = own[..., :d_v] + own[..., d_v:].exp() * y_local.reshape(z, n, d_v).to(acc)
    return y.reshape(*batch, n, d_v).to(y_local.dtype)
