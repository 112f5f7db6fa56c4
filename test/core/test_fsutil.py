"""Durable atomic writes: the fsyncs are seen where the kernel sees them (strace), not mocked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.strace import STRACE, fsynced

needs_strace = pytest.mark.skipif(STRACE is None, reason="strace is not installed")


@needs_strace
def test_a_durable_write_fsyncs_the_file_and_every_directory_it_touched(tmp_path: Path) -> None:
    code = (
        "from tl_perception.fsutil import atomic_write_bytes as w\n"
        "w('plain.txt', b'x')\n"
        "w('new/dir/durable.txt', b'y', durable=True)\n"
    )
    paths = fsynced(code, tmp_path)
    root = str(tmp_path.resolve())
    assert not any("plain.txt" in p for p in paths)  # not durable: no fsync at all
    assert any(re.fullmatch(rf"{root}/new/dir/\.durable\.txt\..*\.tmp", p) for p in paths)
    # the renamed name, and the directories it created, are on the disk too
    assert {f"{root}/new/dir", f"{root}/new", root} <= set(paths)


@needs_strace
def test_durable_writes_scope_makes_another_module_s_writes_durable(tmp_path: Path) -> None:
    code = (
        "from tl_perception.fsutil import atomic_write_json, atomic_write_text, durable_writes\n"
        "with durable_writes():\n"
        "    atomic_write_json('a.json', {'k': 1})\n"
        "atomic_write_text('b.txt', 'after the block')\n"
    )
    paths = fsynced(code, tmp_path)
    assert any(re.search(r"/\.a\.json\..*\.tmp$", p) for p in paths)
    assert not any("b.txt" in p for p in paths)
