"""ListOps expressions (Nangia and Bowman, 2018): the grammar, random expressions, their values.

An expression is an operator applied to two or more arguments, each a digit ``0..9`` or another
expression, written in prefix form with the opening bracket fused to the operator, as in the
original data: ``[MAX 2 9 [MIN 4 7 ] 0 ]`` has the value 9. Operators: ``MIN``, ``MAX``, ``MED``
(the median; for an even number of arguments the floor of the mean of the two middle ones, as
``int(numpy.median(...))`` gives) and ``SM`` (sum modulo 10). Values are digits: ten classes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

__all__ = [
    "CLOSE",
    "DIGITS",
    "OPERATORS",
    "Expression",
    "Node",
    "apply_operator",
    "depth",
    "evaluate",
    "random_expression",
    "to_tokens",
]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
DIGITS = tuple(str(d) for d in range(10))

Node = Union[int, "Application"]


@dataclass(frozen=True)
class Application:
    """``operator`` (one of :data:`OPERATORS`) applied to ``arguments`` (digits or applications)."""

    operator: str
    arguments: tuple[Node, ...]


@dataclass(frozen=True)
class Expression:
    """One example: its tokens, its value (the class, ``0..9``) and its nesting depth."""

    tokens: tuple[str, ...]
    label: int
    depth: int

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


def apply_operator(operator: str, values: Sequence[int]) -> int:
    """The value of ``operator`` on the digits ``values`` (at least one); ``ValueError`` else."""
    if not values:
        raise ValueError(f"{operator} needs at least one argument")
    if operator == "[MIN":
        return min(values)
    if operator == "[MAX":
        return max(values)
    if operator == "[MED":
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    if operator == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown operator {operator!r}; expected one of {OPERATORS}")


def evaluate(node: Node) -> int:
    """The value of a digit or an application."""
    if isinstance(node, int):
        return node
    return apply_operator(node.operator, [evaluate(a) for a in node.arguments])


def depth(node: Node) -> int:
    """Nesting depth: 0 for a digit, 1 for an application of digits only, and so on."""
    if isinstance(node, int):
        return 0
    return 1 + max(depth(a) for a in node.arguments)


def to_tokens(node: Node) -> list[str]:
    """The prefix tokens of ``node``: ``[OP``, the arguments' tokens, ``]``."""
    if isinstance(node, int):
        return [DIGITS[node]]
    out = [node.operator]
    for a in node.arguments:
        out.extend(to_tokens(a))
    out.append(CLOSE)
    return out


def random_expression(
    rng: random.Random, *, max_depth: int, max_args: int, nest_probability: float
) -> Application:
    """A random application of depth at most ``max_depth``.

    The top is always an application; it takes ``2..max_args`` arguments (uniform), each an
    application with probability ``nest_probability`` while the depth allows, else a uniform
    digit.
    """

    def draw(level: int) -> Application:
        count = rng.randint(2, max_args)
        args: list[Node] = []
        for _ in range(count):
            if level < max_depth and rng.random() < nest_probability:
                args.append(draw(level + 1))
            else:
                args.append(rng.randrange(10))
        return Application(rng.choice(OPERATORS), tuple(args))

    return draw(1)
