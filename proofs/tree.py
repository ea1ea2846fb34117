"""Trees and HSA's recursion (docs/HSA.md section 3) as SymPy expressions.

:class:`Recursion` holds the formulas that the proofs test: the weight of a child in its family's
``F``, how a block of scores becomes a block energy, and the logit of a sibling in ``L``. Each is a
parameter, so a proof can be run against a wrong variant and must then fail. :class:`TreeModel`
evaluates a recursion on one concrete tree with symbolic scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import sympy as sp

__all__ = [
    "HSA_RECURSION",
    "Recursion",
    "SumOf",
    "Tree",
    "TreeModel",
    "attention_from_shares",
    "block_mean",
    "log_size_plus_energy",
    "score_symbols",
    "size_weight",
]

SumOf = Callable[[Callable[[sp.Expr], sp.Expr]], sp.Expr]
"""``sum_of(g)`` is the sum of ``g(s_ij)`` over a block of scores (a finite or symbolic sum)."""


@dataclass(frozen=True)
class Tree:
    """One tree in the parent-list form of docs/HSA.md section 1 (leaves ``0..N-1``, one root)."""

    parent: tuple[int, ...]
    num_leaves: int

    def __post_init__(self) -> None:
        roots = [x for x, p in enumerate(self.parent) if p == -1]
        if len(roots) != 1:
            raise ValueError(f"a Tree has exactly one root, got {len(roots)}")
        for x in range(len(self.parent)):
            self.path(x)  # raises on a cycle
        for a in range(self.num_leaves, len(self.parent)):
            if not self.children(a):
                raise ValueError(f"family {a} has no children")
        if any(0 <= p < self.num_leaves for p in self.parent):
            raise ValueError("a leaf has a child")

    @classmethod
    def from_nested(cls, nested: Any) -> Tree:
        """A tree from nested lists (an ``int`` is a leaf), families numbered depth-first from N.

        The numbering is that of ``hsa_ref.Hierarchy.from_nested``.
        """
        leaves: list[int] = []

        def collect(node: Any) -> None:
            if isinstance(node, list | tuple):
                for child in node:
                    collect(child)
            else:
                leaves.append(int(node))

        collect(nested)
        if sorted(leaves) != list(range(len(leaves))):
            raise ValueError("leaf ids must be 0..N-1, each exactly once")
        parent = [-1] * len(leaves)

        def build(node: Any, up: int) -> None:
            if isinstance(node, list | tuple):
                me = len(parent)
                parent.append(up)
                for child in node:
                    build(child, me)
            else:
                parent[int(node)] = up

        build(nested, -1)
        return cls(tuple(parent), len(leaves))

    @property
    def num_nodes(self) -> int:
        return len(self.parent)

    @property
    def root(self) -> int:
        return self.parent.index(-1)

    def children(self, x: int) -> list[int]:
        """Children of ``x`` in increasing id order (the order ``hsa_ref`` uses)."""
        return [c for c, p in enumerate(self.parent) if p == x]

    def path(self, x: int) -> list[int]:
        """``[root, ..., x]``."""
        up = [x]
        while self.parent[up[-1]] != -1:
            up.append(self.parent[up[-1]])
            if len(up) > self.num_nodes:
                raise ValueError(f"cycle through node {x}")
        return up[::-1]

    def leaves(self, x: int) -> list[int]:
        """Leaf ids under ``x``, increasing."""
        return [i for i in range(self.num_leaves) if x in self.path(i)]

    def size(self, x: int) -> int:
        """``|x|``: the number of leaves under ``x``."""
        return len(self.leaves(x))

    def height(self, x: int) -> int:
        kids = self.children(x)
        return 0 if not kids else 1 + max(self.height(c) for c in kids)

    @property
    def families(self) -> list[int]:
        """Internal nodes, bottom-up (by height, then id)."""
        fams = range(self.num_leaves, self.num_nodes)
        return sorted(fams, key=lambda a: (self.height(a), a))

    def siblings(self, b: int) -> list[int]:
        """The other children of ``b``'s parent (empty for the root)."""
        up = self.parent[b]
        return [] if up == -1 else [c for c in self.children(up) if c != b]

    def split(self, i: int, j: int) -> tuple[int, int, int]:
        """``(l, B_l, C)`` for leaves ``i != j``: paths agree up to depth ``l - 1``.

        ``B_l`` is ``i``'s ancestor at depth ``l`` and ``C`` its sibling above ``j``.
        """
        pi, pj = self.path(i), self.path(j)
        l = 1
        while pi[l] == pj[l]:
            l += 1
        return l, pi[l], pj[l]


def size_weight(size_child: sp.Expr, size_family: sp.Expr, branching: int) -> sp.Expr:
    """HSA's weight of child ``B`` in ``F(A)``: ``|B| / |A|`` (docs/HSA.md section 3)."""
    return sp.sympify(size_child) / size_family


def block_mean(sum_of: SumOf, count: sp.Expr) -> sp.Expr:
    """HSA's block energy: the mean of the scores over the block (docs/HSA.md section 2)."""
    return sum_of(lambda s: s) / count


def log_size_plus_energy(size: sp.Expr, energy: sp.Expr) -> sp.Expr:
    """HSA's logit of sibling ``C`` in ``L(B)``: ``log|C| + e_BC`` (docs/HSA.md section 3)."""
    return sp.log(size) + energy


@dataclass(frozen=True)
class Recursion:
    """The formulas of docs/HSA.md section 3 (the defaults); a proof rejects other choices."""

    weight: Callable[[sp.Expr, sp.Expr, int], sp.Expr] = size_weight
    block_energy: Callable[[SumOf, sp.Expr], sp.Expr] = block_mean
    sibling_logit: Callable[[sp.Expr, sp.Expr], sp.Expr] = log_size_plus_energy

    def log_partition(
        self, own: sp.Expr, sizes: Sequence[sp.Expr], energies: Sequence[sp.Expr]
    ) -> sp.Expr:
        """``L(B) = log(exp F(B) + sum_C exp(logit_C))``."""
        terms = [sp.exp(own)] + [
            sp.exp(self.sibling_logit(c, e)) for c, e in zip(sizes, energies, strict=True)
        ]
        return sp.log(sp.Add(*terms))

    def shares(
        self, own: sp.Expr, sizes: Sequence[sp.Expr], energies: Sequence[sp.Expr]
    ) -> tuple[sp.Expr, list[sp.Expr]]:
        """``mu(B) = exp(F(B) - L(B))`` and ``delta(B, C) = exp(logit_C - L(B))``."""
        log_z = self.log_partition(own, sizes, energies)
        mu = sp.exp(own - log_z)
        deltas = [
            sp.exp(self.sibling_logit(c, e) - log_z) for c, e in zip(sizes, energies, strict=True)
        ]
        return mu, deltas

    def family_value(self, sizes: Sequence[sp.Expr], log_partitions: Sequence[sp.Expr]) -> sp.Expr:
        """``F(A) = sum_B w(B) L(B)`` over the children ``B`` of ``A``."""
        total = sp.Add(*sizes)
        b = len(sizes)
        return sp.Add(
            *(self.weight(n, total, b) * z for n, z in zip(sizes, log_partitions, strict=True))
        )


HSA_RECURSION = Recursion()
"""The formulas of docs/HSA.md section 3, which every proof takes by default."""


def score_symbols(n: int) -> sp.Matrix:
    """An ``n x n`` matrix of real score symbols ``s_{i,j}``."""
    return sp.Matrix(n, n, lambda i, j: sp.Symbol(f"s_{{{i},{j}}}", real=True))


def attention_from_shares(
    tree: Tree, mu: Mapping[int, sp.Expr], delta: Mapping[tuple[int, int], sp.Expr]
) -> sp.Matrix:
    """``theta`` of docs/HSA.md section 3 from the shares: ancestor products times
    ``delta / |C|``."""
    n = tree.num_leaves

    def entry(i: int, j: int) -> sp.Expr:
        path = tree.path(i)
        if i == j:
            return sp.Mul(*(mu[x] for x in path[1:]))
        l, b, c = tree.split(i, j)
        return sp.Mul(*(mu[x] for x in path[1:l])) * delta[(b, c)] / tree.size(c)

    return sp.Matrix(n, n, entry)


@dataclass
class TreeModel:
    """``F``, ``L``, block energies, shares and ``theta`` of one tree, as SymPy expressions."""

    tree: Tree
    recursion: Recursion = field(default_factory=Recursion)
    scores: sp.Matrix | None = None

    def __post_init__(self) -> None:
        if self.scores is None:
            self.scores = score_symbols(self.tree.num_leaves)

    def block_energy(self, b: int, c: int) -> sp.Expr:
        """``e_BC`` from the scores of the block ``B x C`` by the recursion's rule."""
        entries = [self.scores[i, j] for i in self.tree.leaves(b) for j in self.tree.leaves(c)]

        def sum_of(g: Callable[[sp.Expr], sp.Expr]) -> sp.Expr:
            return sp.Add(*(g(s) for s in entries))

        return self.recursion.block_energy(sum_of, sp.Integer(len(entries)))

    @cached_property
    def energies(self) -> dict[tuple[int, int], sp.Expr]:
        t = self.tree
        return {
            (b, c): self.block_energy(b, c)
            for a in t.families
            for b in t.children(a)
            for c in t.siblings(b)
        }

    @cached_property
    def _up(self) -> tuple[dict[int, sp.Expr], dict[int, sp.Expr]]:
        t, rec = self.tree, self.recursion
        f: dict[int, sp.Expr] = {i: self.scores[i, i] for i in range(t.num_leaves)}
        log_z: dict[int, sp.Expr] = {}
        for a in t.families:
            kids = t.children(a)
            for b in kids:
                sibs = t.siblings(b)
                log_z[b] = rec.log_partition(
                    f[b],
                    [sp.Integer(t.size(c)) for c in sibs],
                    [self.energies[(b, c)] for c in sibs],
                )
            f[a] = rec.family_value([sp.Integer(t.size(b)) for b in kids], [log_z[b] for b in kids])
        return f, log_z

    @property
    def F(self) -> dict[int, sp.Expr]:
        """``F(x)`` for every node."""
        return self._up[0]

    @property
    def L(self) -> dict[int, sp.Expr]:
        """``L(B)`` for every non-root node."""
        return self._up[1]

    @cached_property
    def _shares(self) -> tuple[dict[int, sp.Expr], dict[tuple[int, int], sp.Expr]]:
        t, rec = self.tree, self.recursion
        mu: dict[int, sp.Expr] = {}
        delta: dict[tuple[int, int], sp.Expr] = {}
        for a in t.families:
            for b in t.children(a):
                sibs = t.siblings(b)
                mu[b], ds = rec.shares(
                    self.F[b],
                    [sp.Integer(t.size(c)) for c in sibs],
                    [self.energies[(b, c)] for c in sibs],
                )
                delta.update({(b, c): d for c, d in zip(sibs, ds, strict=True)})
        return mu, delta

    @property
    def mu(self) -> dict[int, sp.Expr]:
        return self._shares[0]

    @property
    def delta(self) -> dict[tuple[int, int], sp.Expr]:
        return self._shares[1]

    @cached_property
    def theta(self) -> sp.Matrix:
        """HSA's attention matrix (docs/HSA.md section 3) as expressions of the scores."""
        return attention_from_shares(self.tree, self.mu, self.delta)
