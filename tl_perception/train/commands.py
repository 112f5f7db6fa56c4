"""Sub-commands of this room (placeholder until the room's issue lands)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this room's sub-commands to `tl-perception`."""
