"""The suite's own shape: tests live in the room of the package they test, and no test module
imports another (what two share lives in test/support)."""

from __future__ import annotations

import ast
from pathlib import Path

from support import REPO, TEST_ROOT

#: Rooms beside the package's own: top-level modules (bundle, dataset, images, crop, ...).
EXTRA_ROOMS = {"core"}


def test_every_test_module_sits_in_a_room_of_the_package() -> None:
    package_rooms = {p.parent.name for p in (REPO / "tl_perception").glob("*/__init__.py")}
    misplaced = [
        str(path.relative_to(TEST_ROOT))
        for path in TEST_ROOT.rglob("test_*.py")
        if path.parent != TEST_ROOT and path.parent.name not in package_rooms | EXTRA_ROOMS
    ]
    loose = [p.name for p in TEST_ROOT.glob("test_*.py") if p.name != Path(__file__).name]
    assert not misplaced, f"test modules outside a room of tl_perception/: {misplaced}"
    assert not loose, f"test modules at test/ top level (put them in their room): {loose}"


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in sorted(TEST_ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(TEST_ROOT)}: {name}"
                for name in names
                if name.split(".")[-1].startswith("test_")
            ]
    assert not offenders, f"test modules import test modules: {offenders}"
