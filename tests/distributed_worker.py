"""One rank of the sequence-parallel tests: ``python distributed_worker.py RANK WORLD STORE OUT``.

Joins a gloo group through a file store, runs every case of :func:`cases` for its world size
(and, for two ranks, the refused shardings), and saves its rows of each output and gradient
to ``OUT`` for ``test_distributed.py`` to compare with single-process ``hsa_fast.hsa``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import hsa_fast.distributed as hd
import hsa_fast.programme as programme
from hsa_fast.distributed import CommStats, hsa_sharded
from hsa_fast.sharding import partition
from hsa_ref import Hierarchy


def random_tree(n: int, seed: int) -> Hierarchy:
    """A random tree over ``n`` contiguous leaves: segments of 1..5 nodes per level."""
    rng = np.random.default_rng(seed)
    levels, width = [], n
    while width > 1:
        lengths = []
        while sum(lengths) < width:
            lengths.append(int(min(rng.integers(1, 6), width - sum(lengths))))
        if len(lengths) == width:  # all single children: force progress
            lengths = [2, *lengths[2:]]
        levels.append(lengths)
        width = len(lengths)
    return Hierarchy.from_segments(levels or [[1]])


def random_forest(sizes: list[int], seed: int) -> Hierarchy:
    return Hierarchy.forest([random_tree(n, seed + i) for i, n in enumerate(sizes)])


def interleaved(seed: int) -> Hierarchy:
    """A forest whose trees' leaves are shuffled in row order (not contiguous)."""
    h = random_forest([9, 14, 7], seed)
    perm = np.random.default_rng(seed).permutation(h.num_leaves)
    return h.relabel(leaf_map=perm.tolist())


@dataclass(frozen=True)
class Case:
    name: str
    hierarchy: Hierarchy
    boundaries: tuple[int, ...] | None
    energy: str
    batch: tuple[int, ...]
    seed: int
    planted: str | None = None  # a deliberately wrong implementation, which must fail
    d_k: int = 4
    d_v: int = 3
    dtype: torch.dtype = torch.float64
    backend: str = "auto"
    scale: float | None = None
    nan_leaf: int | None = None  # a leaf whose query is NaN
    as_hierarchy: bool = False  # pass the hierarchy to hsa_sharded, not the plan
    offset: float = 0.0  # added to every entry of q and k (the distance energy is unchanged)

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """Full ``q, k, v`` and the output gradient, in ``dtype``."""
        g = torch.Generator().manual_seed(self.seed)
        n = self.hierarchy.num_leaves
        q, k, v, grad = (
            torch.randn(*self.batch, n, d, generator=g, dtype=torch.float64).to(self.dtype)
            for d in (self.d_k, self.d_k, self.d_v, self.d_v)
        )
        if self.offset:
            q, k = q + self.offset, k + self.offset
        if self.nan_leaf is not None:
            q[..., self.nan_leaf, 0] = float("nan")
        return q, k, v, grad


def cases(world: int) -> list[Case]:
    forest = random_forest([5, 17, 1, 9, 30, 3, 12, 2], 11)  # 79 leaves
    split = {2: (0, 23, 50), 4: (0, 7, 29, 41, 50)}[world]
    forest_split = {2: (0, 40, 79), 4: (0, 13, 40, 41, 79)}[world]
    f32 = torch.float32
    out = []
    for energy in ("dot", "distance"):
        out += [
            Case(f"balanced_b4_{energy}", Hierarchy.balanced(64, 4), None, energy, (2,), 1),
            Case(f"balanced_b3_odd_cuts_{energy}", Hierarchy.balanced(50, 3), split, energy, (), 2),
            Case(f"forest_{energy}", forest, None, energy, (2, 3), 3),
            Case(f"forest_trees_split_{energy}", forest, forest_split, energy, (), 4),
            Case(f"one_family_{energy}", Hierarchy.from_segments([[40]]), None, energy, (), 5),
            Case(f"interleaved_{energy}", interleaved(6), None, energy, (2,), 6),
            Case(f"random_tree_{energy}", random_tree(57, 7), None, energy, (), 7),
        ]
    out += [
        Case("one_leaf_trees", Hierarchy.from_parents([-1] * 9, 9), None, "dot", (), 8),
        Case("chains", Hierarchy.from_nested([[[[0, 1]]], [[2], [[3, 4, 5]]]]), None, "dot", (), 9),
        Case("nan_stays_in_its_tree", forest, forest_split, "dot", (2,), 13, nan_leaf=35),
        Case("huge_scores", forest, forest_split, "distance", (), 14, scale=2e3),
        Case("distance_far_from_origin", forest, forest_split, "distance", (2,), 16, offset=300.0),
        Case("hierarchy_given", forest, None, "dot", (), 15, as_hierarchy=True),
        Case("triton_float32", forest, forest_split, "dot", (2,), 12, dtype=f32, backend="triton"),
        Case("planted_no_U", forest, forest_split, "dot", (), 10, planted="no_U"),
        Case("planted_local_adjoints", forest, forest_split, "dot", (), 10, planted="local_adj"),
    ]
    out += far_from_origin(forest, forest_split)
    out.append(Case("empty_batch", forest, forest_split, "distance", (0,), 17))
    if world == 4:  # with four ranks two trees span shards: padding could mix them
        out.append(
            Case(
                "planted_pad_reads_cut_row",
                *(forest, forest_split, "dot", (2,), 13),
                nan_leaf=35,
                planted="pad_reads_cut_row",
            )
        )
    return out


FAR = [(torch.float64, "torch", off) for off in (1e2, 1e4, 1e6)] + [
    (torch.float32, backend, 1e3) for backend in ("torch", "triton")
]


def far_from_origin(forest: Hierarchy, split: tuple[int, ...]) -> list[Case]:
    """The distance energy with q and k far from the origin: every path (float64 and float32
    on the PyTorch programme, float32 on the Triton kernels) at offsets 1e2 to 1e6."""
    return [
        Case(
            f"far_{str(dtype).removeprefix('torch.')}_{backend}_{offset:g}",
            *(forest, split, "distance", (2,), 18),
            dtype=dtype,
            backend=backend,
            offset=offset,
            d_k=16,
        )
        for dtype, backend, offset in FAR
    ]


def _planted(kind: str | None):
    """Patch :mod:`hsa_fast.distributed` with a wrong step; returns the undo function."""
    if kind is None:
        return lambda: None
    if kind == "no_U":  # forget what the ancestors' siblings send into a cut node
        original = hd._above_cut

        def wrong(*args, **kwargs):
            top = original(*args, **kwargs)
            return torch.cat([torch.zeros_like(top[..., :-1]), top[..., -1:]], -1)

        hd._above_cut = wrong
        return lambda: setattr(hd, "_above_cut", original)
    if kind == "local_adj":  # backward without the adjoints of the other ranks' cut nodes
        original = hd._OwnRows.backward

        def wrong(ctx, grad):
            full = grad.new_zeros(grad.shape[0], ctx.world * grad.shape[1], grad.shape[2])
            r = dist.get_rank(ctx.group)
            full[:, r * grad.shape[1] : (r + 1) * grad.shape[1]] = grad
            return full, None, None, None, None, None

        hd._OwnRows.backward = staticmethod(wrong)
        return lambda: setattr(hd._OwnRows, "backward", staticmethod(original))
    if kind == "pad_reads_cut_row":  # padded child slots read a real row, unmasked
        original = programme._children

        def wrong(bucket, leaf, family, dim):
            if bucket.leaf_start is not None or bucket.has_families:
                return original(bucket, leaf, family, dim)
            rows = leaf.index_select(dim, bucket.slot_leaf)
            return rows.unflatten(dim, (bucket.num_families, bucket.width))

        programme._children = wrong
        return lambda: setattr(programme, "_children", original)
    raise ValueError(kind)


def run_case(case: Case, rank: int, world: int) -> dict:
    plan = partition(case.hierarchy, world, boundaries=case.boundaries)
    shard = plan.shards[rank]
    rows = slice(shard.leaf_start, shard.leaf_stop)
    q, k, v, grad = (x[..., rows, :].clone() for x in case.inputs())
    for x in (q, k, v):
        x.requires_grad_(True)
    stats = CommStats()
    undo = _planted(case.planted)
    try:
        target = case.hierarchy if case.as_hierarchy else plan
        y = hsa_sharded(
            q, k, v, target, energy=case.energy, scale=case.scale, backend=case.backend, stats=stats
        )
        (y * grad).sum().backward()
    finally:
        undo()
    return {
        "y": y.detach(),
        "dq": q.grad,
        "dk": k.grad,
        "dv": v.grad,
        "collectives": [
            (c.phase, c.what, c.elements, c.itemsize, c.world_size, c.sent_bytes)
            for c in stats.collectives
        ],
        "slots": plan.slots,
    }


def refused(rank: int, world: int) -> dict[str, str]:
    """Bad shardings and disagreeing ranks: every rank must raise (and none may hang)."""
    h = Hierarchy.balanced(32, 4)
    plan = partition(h, world)
    shard = plan.shards[rank]
    q = torch.randn(shard.num_leaves, 4, dtype=torch.float64)
    messages = {}

    def attempt(name, fn):
        try:
            fn()
        except (TypeError, ValueError) as exc:
            messages[name] = f"{type(exc).__name__}: {exc}"
        else:
            messages[name] = "no error"

    attempt("plan_for_other_world", lambda: hsa_sharded(q, q, q, partition(h, world + 1)))
    bad_rows = q[:-1] if rank == 1 else q
    attempt("wrong_rows_on_rank_1", lambda: hsa_sharded(bad_rows, bad_rows, bad_rows, plan))
    other = partition(Hierarchy.balanced(32, 2), world) if rank == 1 else plan
    attempt("different_hierarchy_on_rank_1", lambda: hsa_sharded(q, q, q, other))
    qd = q.float() if rank == 1 else q
    attempt("different_dtype_on_rank_1", lambda: hsa_sharded(qd, qd, qd, plan))
    ones = torch.ones(3, 8, dtype=torch.float64)
    attempt("wrong_rows_everywhere", lambda: hsa_sharded(ones, ones, ones, plan))
    q8 = q.to(torch.float8_e4m3fn)
    attempt("float8", lambda: hsa_sharded(q8, q8, q8, plan))
    attempt("float8_distance", lambda: hsa_sharded(q8, q8, q8, plan, energy="distance"))
    attempt("huge_scale", lambda: hsa_sharded(q, q, q, plan, scale=10**400))
    return messages


def main() -> None:
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {c.name: run_case(c, rank, world) for c in cases(world)}
        results["refused"] = refused(rank, world)
        torch.save(results, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
