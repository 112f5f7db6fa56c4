"""Argument types shared by the rooms' sub-commands (argparse only, nothing heavy)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


def comma_list(text: str) -> list[str]:
    """`a, b,,c` -> ['a', 'b', 'c']: empty items are dropped, whitespace trimmed."""
    return [item.strip() for item in text.split(",") if item.strip()]


def lazy_choice(module: str, attribute: str) -> Callable[[str], str]:
    """An argparse `type` accepting the values of `module.attribute`, imported only when used.

    For choices whose one definition lives in a module too heavy for `--help` (one that
    imports OpenCV or TensorFlow): the option is checked at parse time like `choices=`, yet
    `--help` imports nothing. `None` entries (an API's "default") are not offered.
    """

    def check(text: str) -> str:
        allowed = [c for c in getattr(importlib.import_module(module), attribute) if c is not None]
        if text not in allowed:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(allowed)})"
            )
        return text

    check.__name__ = attribute.lower()  # argparse names the type in its messages
    return check
