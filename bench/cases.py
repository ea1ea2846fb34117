"""The sweeps: which implementation runs at which size, per profile (quick, default, full).

Four sweeps, each over one quantity with the others fixed:

- ``N``: leaves, balanced trees with ``b = 16`` (dense attention has no tree);
- ``M``: families at fixed ``N`` and ``b`` (the ``packed`` shape of :mod:`bench.shapes`);
- ``b``: branching of balanced trees at fixed ``N``;
- ``d``: head dimension at fixed ``N`` (``d_k = d_v = d``).

Every implementation gets sizes it can reach: ``hsa_fast.hsa`` the large ones, dense
``scaled_dot_product_attention`` up to where ``N**2`` gets slow, and the float64 reference
``hsa_ref.hsa_reference`` (``O(M N**2)``, CPU only) small ones. The ``N`` sweeps of
``hsa_fast`` and dense attention both start at ``N = 64``, below the size where the programme
starts to win, so that the crossover is measured as well as predicted. The ``M`` and ``b`` sweeps of
``hsa_fast`` share their ``N`` with one dense point of the ``N`` sweep, which the plots draw as
the dense baseline. All runs use 8 heads, float32 (float64 for the reference), ``d = 64`` outside
the ``d`` sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DEVICES",
    "IMPLS",
    "PROFILES",
    "SWEEPS",
    "Case",
    "Profile",
    "cases",
]

SWEEPS = ("N", "M", "b", "d")
IMPLS = ("hsa_fast", "sdpa", "hsa_reference")
DEVICES = ("cpu", "cuda")
HEADS = 8
D = 64
B = 16


@dataclass(frozen=True)
class Case:
    """One benchmarked call: ``impl`` on ``shape(n, b, trees)`` with ``heads`` heads of size ``d``.

    ``single_shot``: time one call without a warm-up call (for calls of a minute or more).
    """

    sweep: str
    impl: str
    n: int
    b: int
    d: int = D
    heads: int = HEADS
    shape: str = "balanced"
    trees: int = 0
    dtype: str = "float32"
    single_shot: bool = False

    @property
    def id(self) -> str:
        tree = f"-t{self.trees}" if self.shape == "packed" else ""
        return f"{self.sweep}-{self.impl}-N{self.n}-b{self.b}{tree}-d{self.d}"


@dataclass(frozen=True)
class Profile:
    """Sizes of one profile; ``budget_s`` and ``max_rounds`` bound the timed rounds per case."""

    name: str
    n_fast: tuple[int, ...]
    n_dense: tuple[int, ...]
    n_ref: tuple[int, ...]
    fixed_n_fast: int
    fixed_n_ref: int
    trees_fast: tuple[int, ...]
    trees_ref: tuple[int, ...]
    b_fast: tuple[int, ...]
    b_ref: tuple[int, ...]
    d_values: tuple[int, ...]
    d_n_dense: int
    d_n_ref: int
    budget_s: float
    max_rounds: int
    single_shot_dense_from: int = field(default=1 << 62)

    @property
    def b_ref_packed(self) -> int:
        """Branching of the reference's ``M`` sweep (``b * b`` leaves per document)."""
        return 4


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        n_fast=(64, 128, 256, 1024, 4096, 16384, 65536),
        n_dense=(64, 128, 256, 512, 1024, 2048, 4096),
        n_ref=(32, 64, 128),
        fixed_n_fast=4096,
        fixed_n_ref=64,
        trees_fast=(1, 2, 4, 8, 16),
        trees_ref=(1, 2, 4),
        b_fast=(2, 4, 8, 16, 64, 256),
        b_ref=(2, 4, 8, 64),
        d_values=(16, 64, 256),
        d_n_dense=1024,
        d_n_ref=64,
        budget_s=0.25,
        max_rounds=5,
    ),
    "default": Profile(
        name="default",
        n_fast=(64, 128, 256, 512, 1024, 4096, 16384, 65536, 262144),
        n_dense=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
        n_ref=(32, 64, 128, 256),
        fixed_n_fast=16384,
        fixed_n_ref=256,
        trees_fast=(1, 2, 4, 8, 16, 32, 64),
        trees_ref=(1, 2, 4, 8, 16),
        b_fast=(2, 4, 8, 16, 32, 64, 128, 256),
        b_ref=(2, 4, 16, 64, 256),
        d_values=(16, 32, 64, 128, 256),
        d_n_dense=2048,
        d_n_ref=128,
        budget_s=1.0,
        max_rounds=10,
    ),
    "full": Profile(
        name="full",
        n_fast=tuple(64 << k for k in range(15)),  # 64 .. 1,048,576
        n_dense=tuple(64 << k for k in range(11)),  # 64 .. 65,536
        n_ref=(32, 64, 128, 256, 512),
        fixed_n_fast=65536,
        fixed_n_ref=256,
        trees_fast=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        trees_ref=(1, 2, 4, 8, 16),
        b_fast=(2, 4, 8, 16, 32, 64, 128, 256),
        b_ref=(2, 4, 16, 64, 256),
        d_values=(16, 32, 64, 128, 256),
        d_n_dense=4096,
        d_n_ref=128,
        budget_s=2.0,
        max_rounds=10,
        single_shot_dense_from=32768,
    ),
}


def cases(profile: str = "default", device: str = "cpu") -> list[Case]:
    """Every case of ``profile`` on ``device`` (the reference runs on CPU only)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    p = PROFILES[profile]
    ref = device == "cpu"
    out: list[Case] = []
    heavy = p.single_shot_dense_from if device == "cpu" else 1 << 62
    # (a) leaves N at fixed b
    out += [Case("N", "hsa_fast", n, B) for n in p.n_fast]
    out += [Case("N", "sdpa", n, B, single_shot=n >= heavy) for n in p.n_dense]
    if ref:
        out += [Case("N", "hsa_reference", n, B, dtype="float64") for n in p.n_ref]
    # (b) families M at fixed N and b
    out += [
        Case("M", "hsa_fast", p.fixed_n_fast, B, shape="packed", trees=t)
        for t in p.trees_fast
        if t * B * B <= p.fixed_n_fast
    ]
    if ref:
        br = p.b_ref_packed
        out += [
            Case("M", "hsa_reference", p.fixed_n_ref, br, shape="packed", trees=t, dtype="float64")
            for t in p.trees_ref
            if t * br * br <= p.fixed_n_ref
        ]
    # (c) branching b at fixed N
    out += [Case("b", "hsa_fast", p.fixed_n_fast, b) for b in p.b_fast]
    if ref:
        out += [Case("b", "hsa_reference", p.fixed_n_ref, b, dtype="float64") for b in p.b_ref]
    # (d) head dimension d at fixed N
    out += [Case("d", "hsa_fast", p.fixed_n_fast, B, d=d) for d in p.d_values]
    out += [Case("d", "sdpa", p.d_n_dense, B, d=d) for d in p.d_values]
    if ref:
        out += [Case("d", "hsa_reference", p.d_n_ref, B, d=d, dtype="float64") for d in p.d_values]
    # The dense baseline of the M and b sweeps: SDPA at their N, unless the N sweep has it.
    if p.fixed_n_fast not in p.n_dense:
        out.append(Case("N", "sdpa", p.fixed_n_fast, B, single_shot=p.fixed_n_fast >= heavy))
    return out
