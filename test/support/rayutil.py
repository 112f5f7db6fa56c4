"""A real Ray for tests: one local Ray of 2 CPUs per test session, and what Ray left running.

A module's session fixture is `yield from local_ray_session()`; defined once in conftest.py
instead, every module of the session would share the one Ray. A module that starts a Ray is
marked `pytestmark = pytest.mark.xdist_group("ray")`: under `make test`'s pytest-xdist, one
worker runs them all, so no two Rays run at once (the helpers below count the machine's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Small and quiet: tests move small results, never images, through Ray.
QUIET = {"include_dashboard": False, "log_to_driver": False, "object_store_memory": 80 << 20}


def local_ray_session() -> Iterator[set[int]]:
    """`ray.init(num_cpus=2)` (unless Ray is initialised already), shut down when resumed;
    yields the Ray daemons that ran before it (another user's), not this session's to judge."""
    ray = pytest.importorskip("ray")
    before = ray_daemons()
    if not ray.is_initialized():
        ray.init(num_cpus=2, **QUIET)
    yield before
    ray.shutdown()


def ray_daemons() -> set[int]:
    """Pids of raylet and gcs_server processes on this machine."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            program = cmdline.read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if program.endswith((b"/raylet", b"/gcs_server")):
            found.add(int(cmdline.parent.name))
    return found


def assert_no_daemons_left(before: set[int], timeout: float = 15.0) -> None:
    """Every raylet and gcs_server not in `before` is gone (within `timeout`)."""
    deadline = time.monotonic() + timeout
    while (left := ray_daemons() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"Ray daemons left running: {sorted(left)}"


def ray_units(raylet: int | None = None) -> list[int]:
    """Pids of Ray workers running a unit right now (Ray titles them after the task); with
    `raylet`, only those of that node (its raylet starts them)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            running = cmdline.read_bytes().startswith(b"ray::_ray_unit")
            stat = (cmdline.parent / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if running and (raylet is None or parent == raylet):
            found.append(int(cmdline.parent.name))
    return found
