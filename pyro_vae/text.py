"""Small helpers for messages meant for a person."""

from __future__ import annotations


def noun_plural(noun: str) -> str:
    """``"epochs"``, ``"passes"``."""
    return noun + ("es" if noun.endswith("s") else "s")


def plural(count: int, noun: str) -> str:
    """``"1 epoch"``, ``"2 epochs"``, ``"3 passes"``."""
    return f"{count} {noun if count == 1 else noun_plural(noun)}"
