"""``python -m bench.power``: how small a mistake the acceptance rule rejects.

For each dtype and score magnitude, over random trees and inputs, the smallest relative
corruption the rule rejects (the median over the cases; ``n/c`` where the rule cannot resolve
the case in that dtype):

- ``y (1 + delta)``: every output entry off by the same relative ``delta``;
- a wrong share: the child ``B`` of the top family that keeps most of its row keeps
  ``mu(B) (1 - delta)`` and its siblings get the difference (rows still sum to one, blocks
  still constant).

Prints the Markdown table of docs/PORTING.md, "The tolerance rule" (``--output FILE`` writes
it too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hsa_ref import Hierarchy, attention_from_shares, family_shares
from hsa_ref.conformance.golden_set.specs import random_tree
from hsa_ref.tolerance import DTYPES, limits

MAGNITUDES = (0.1, 1.0, 5.0, 30.0, 1e4)
DELTAS = [10.0 ** (-e / 2) for e in range(32, -1, -1)]  # 1e-16 .. 1, half decades
TREES: dict[str, Callable[[int], Hierarchy]] = {
    "balanced b = 4": lambda seed: Hierarchy.balanced(16, 4),
    "random, N = 24": lambda seed: random_tree(seed, 24, 6, 4),
    "one family of 12": lambda seed: Hierarchy.one_family(12),
}


def _case(tree: Hierarchy, magnitude: float, seed: int, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(tree.num_leaves, d, generator=g, dtype=torch.float64) for _ in "qkv")
    return q, k, v, magnitude / d**0.5


def _wrong_share(q, k, v, tree: Hierarchy, scale: float, delta: float) -> torch.Tensor:
    """The output when the child of the top family that keeps most of its row keeps
    ``mu (1 - delta)`` and gives the difference to its siblings in proportion."""
    shares = family_shares(q, k, tree, scale=scale)
    family = min(shares, key=lambda a: (tree.depth[a], a))
    share = shares[family].clone()
    b = int(share.diagonal().argmax())
    keep = share[b, b].item()
    given = keep * delta
    others = [c for c in range(share.shape[0]) if c != b]
    rest = share[b, others].sum()
    if rest > 0:
        share[b, others] *= 1 + given / rest
    else:
        share[b, others] = given / len(others)
    share[b, b] = keep - given
    theta = attention_from_shares(tree, {**shares, family: share})
    return theta @ v


def smallest_rejected(judge: Callable[[float], str]) -> float | None:
    """The smallest ``delta`` of :data:`DELTAS` that ``judge`` fails; ``None`` if none is."""
    for delta in DELTAS:
        if judge(delta) == "failed":
            return delta
    return None


def _smallest(rule, dtype, q, k, v, tree: Hierarchy, scale: float) -> dict[str, float | None]:
    """The smallest rejected ``delta`` of each corruption, for one case."""

    def scaled(delta: float) -> str:
        return rule.judge((rule.expected * (1 + delta)).to(dtype)).status

    def shifted(delta: float) -> str:
        return rule.judge(_wrong_share(q, k, v, tree, scale, delta).to(dtype)).status

    return {"output": smallest_rejected(scaled), "share": smallest_rejected(shifted)}


def power_table(
    dtypes: Sequence[str] = tuple(DTYPES),
    magnitudes: Sequence[float] = MAGNITUDES,
    seeds: Sequence[int] = (1, 2, 3),
    progress: bool = True,
) -> dict[tuple[str, float], dict[str, float | str | None]]:
    """``{(dtype, magnitude): {"output": delta, "share": delta}}``, medians over the cases
    (``"n/c"`` where at least half of them are not checkable)."""
    cells = {}
    total, done = len(dtypes) * len(magnitudes), 0
    for label in dtypes:
        dtype = DTYPES[label]
        for magnitude in magnitudes:
            found: dict[str, list[float]] = {"output": [], "share": []}
            unresolved = 0
            cases = [(make(seed), seed) for make in TREES.values() for seed in seeds]
            for tree, seed in cases:
                q, k, v, scale = _case(tree, magnitude, seed)
                q, k, v = (x.to(dtype).double() for x in (q, k, v))
                rule = limits(q.to(dtype), k.to(dtype), v.to(dtype), tree, dtype=dtype, scale=scale)
                rule = rule["out"]
                if not rule.checkable:
                    unresolved += 1
                    continue
                for name, delta in _smallest(rule, dtype, q, k, v, tree, scale).items():
                    found[name].append(float("inf") if delta is None else delta)
            cell: dict[str, float | str | None] = {}
            for name, values in found.items():
                if unresolved * 2 >= len(cases) or not values:
                    cell[name] = "n/c"
                else:
                    cell[name] = statistics.median(values)
            cells[label, magnitude] = cell
            done += 1
            if progress:
                print(f"\r[power] {done}/{total} cells", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return cells


def _number(x: float | str | None) -> str:
    if isinstance(x, str):
        return x
    if x is None or x == float("inf"):
        return "none"
    return f"{x:.0e}".replace("e-0", "e-").replace("e+00", "")


def markdown(cells: dict, magnitudes: Sequence[float] = MAGNITUDES) -> str:
    """The table: one row per dtype, one column per score magnitude, ``output / share``."""
    dtypes = list(dict.fromkeys(label for label, _ in cells))
    head = "| dtype | " + " | ".join(f"max s ~ {m:g}" for m in magnitudes) + " |"
    rule = "| --- |" + " ---: |" * len(magnitudes)
    rows = [
        f"| {label} | "
        + " | ".join(
            f"{_number(cells[label, m]['output'])} / {_number(cells[label, m]['share'])}"
            for m in magnitudes
        )
        + " |"
        for label in dtypes
    ]
    return "\n".join([head, rule, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.power", description=__doc__)
    parser.add_argument("--dtype", action="append", choices=list(DTYPES), help="(repeatable)")
    parser.add_argument("--seeds", type=int, default=3, help="cases per tree and cell")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cells = power_table(args.dtype or tuple(DTYPES), seeds=range(1, args.seeds + 1))
    table = markdown(cells)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
