"""Argument checks shared by the configurations."""

from __future__ import annotations

__all__ = ["check_int"]


def check_int(value: object, name: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; ``TypeError`` or
    ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value
