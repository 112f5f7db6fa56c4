"""Argument types shared by the rooms' sub-commands (argparse only, nothing heavy)."""

from __future__ import annotations


def comma_list(text: str) -> list[str]:
    """`a, b,,c` -> ['a', 'b', 'c']: empty items are dropped, whitespace trimmed."""
    return [item.strip() for item in text.split(",") if item.strip()]
