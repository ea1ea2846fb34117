"""Seeded ListOps splits: distinct expressions, balanced classes, no expression in two splits."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from .checks import check_int
from .listops import Expression, depth, evaluate, random_expression, to_tokens
from .progress import Progress

__all__ = ["NUM_CLASSES", "DataConfig", "Splits", "make_splits"]

NUM_CLASSES = 10


@dataclass(frozen=True)
class DataConfig:
    """What :func:`make_splits` draws.

    ``max_depth``: nesting depth at most; ``max_args``: arguments per operator at most (at least
    2); ``nest_probability``: chance that an argument is itself an application (while the depth
    allows); ``min_length``/``max_length``: tokens per expression; ``train``/``validation``/
    ``test``: split sizes (each split's classes differ in size by at most one); ``seed``.
    """

    max_depth: int = 4
    max_args: int = 4
    nest_probability: float = 0.25
    min_length: int = 4
    max_length: int = 64
    train: int = 20_000
    validation: int = 1_000
    test: int = 2_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("max_depth", 1), ("max_args", 2), ("min_length", 4)):
            check_int(getattr(self, name), name, minimum)
        check_int(self.max_length, "max_length", self.min_length)
        for name in ("train", "validation", "test"):
            check_int(getattr(self, name), name, 1)
        if not 0.0 <= self.nest_probability <= 1.0:
            raise ValueError(f"nest_probability must lie in [0, 1], got {self.nest_probability}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Splits:
    """Train, validation and test expressions; no token sequence occurs twice in all three."""

    train: tuple[Expression, ...]
    validation: tuple[Expression, ...]
    test: tuple[Expression, ...]

    def items(self) -> list[tuple[str, tuple[Expression, ...]]]:
        return [("train", self.train), ("validation", self.validation), ("test", self.test)]


def _quotas(size: int) -> list[int]:
    return [size // NUM_CLASSES + (c < size % NUM_CLASSES) for c in range(NUM_CLASSES)]


def make_splits(config: DataConfig, *, max_draws: int | None = None, quiet: bool = False) -> Splits:
    """Draw distinct expressions until every class fills its quota in every split.

    Expressions are drawn with ``random.Random(config.seed)`` and kept if their length lies in
    ``[min_length, max_length]``, they are new and their class still needs examples; each
    class's pool is then shuffled and dealt to the splits, so all three follow one
    distribution. ``ValueError`` if ``max_draws`` draws (default ``200`` per expression
    wanted) do not suffice, naming the classes left short.
    """
    sizes = [config.train, config.validation, config.test]
    want = [sum(q) for q in zip(*(_quotas(s) for s in sizes), strict=True)]
    total = sum(want)
    limit = 200 * total if max_draws is None else max_draws
    rng = random.Random(config.seed)
    seen: set[tuple[str, ...]] = set()
    pools: list[list[Expression]] = [[] for _ in range(NUM_CLASSES)]
    bar = Progress(total, "listops expressions", quiet=quiet)
    draws = 0
    while sum(len(p) for p in pools) < total:
        if draws >= limit:
            short = {c: want[c] - len(p) for c, p in enumerate(pools) if len(p) < want[c]}
            bar.close()
            raise ValueError(
                f"only {sum(len(p) for p in pools)} of {total} distinct expressions after "
                f"{draws} draws; classes still short (label: missing): {short}. Allow longer "
                "or deeper expressions, or ask for fewer"
            )
        draws += 1
        tree = random_expression(
            rng,
            max_depth=config.max_depth,
            max_args=config.max_args,
            nest_probability=config.nest_probability,
        )
        tokens = tuple(to_tokens(tree))
        if not config.min_length <= len(tokens) <= config.max_length or tokens in seen:
            continue
        label = evaluate(tree)
        if len(pools[label]) >= want[label]:
            continue
        seen.add(tokens)
        pools[label].append(Expression(tokens, label, depth(tree)))
        bar.update(1)
    bar.close()
    parts: list[list[Expression]] = [[], [], []]
    for label, pool in enumerate(pools):
        rng.shuffle(pool)
        start = 0
        for part, size in zip(parts, sizes, strict=True):
            count = _quotas(size)[label]
            part.extend(pool[start : start + count])
            start += count
    for part in parts:
        rng.shuffle(part)
    return Splits(*(tuple(p) for p in parts))
