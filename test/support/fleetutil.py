"""A small fleet of real bags in every storage format, and a digest of a whole dataset tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tl_perception.bag.writer import write_bag
from tl_perception.stamps import SEC

from support.bagutil import frames, label, pattern

#: The storages of a fleet, in turn: rosbag2 MCAP and sqlite3 directories, ROS 1 files.
STORAGES = ("mcap", "sqlite3", "ros1")
LABELS = ("stop", "yield", "Stop", "speed_30")


def drive(path: Path, storage: str, seed: int, count: int = 24, size: tuple[int, int] = (32, 24)):
    """`count` frames at 10 Hz on /cam, labels on /label changing every 8 frames, a 3 s gap
    after the first half (a new sequence), some frames held still (near-duplicates)."""
    half = count // 2
    images = [pattern(seed * 1000 + (k // 3 if k % 5 == 0 else k), size) for k in range(count)]
    msgs = frames("/cam", images[:half], encoding="bgr8")
    msgs += frames("/cam", images[half:], start_s=half * 0.1 + 3.0, encoding="bgr8")
    for k in range(0, count, 8):
        at = k * 0.1 + (3.0 if k >= half else 0.0)
        msgs.append(label("/label", max(at - 0.01, 0.0), LABELS[(seed + k // 8) % len(LABELS)]))
    return write_bag(path, storage, sorted(msgs, key=lambda m: (m.t_ns, m.topic)))


def make_fleet(root: Path, count: int, frames_per_bag: int = 24) -> list[Path]:
    """`count` bags of mixed storage formats under `root` (reused if already written)."""
    root.mkdir(parents=True, exist_ok=True)
    bags = []
    for i in range(count):
        storage = STORAGES[i % len(STORAGES)]
        path = root / (f"drive{i:02d}.bag" if storage == "ros1" else f"drive{i:02d}")
        if not path.exists():
            drive(path, storage, seed=i + 1, count=frames_per_bag)
        bags.append(path)
    return bags


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> SHA-256 of its bytes), hidden ones included."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def reference_tree(fleet: list[Path], out: Path) -> dict[str, str]:
    """The tree `--workers 1` writes in this process: what every other run must equal."""
    from tl_perception.cli import main

    assert main([*extract_argv(fleet, out), "--workers", "1"]) == 0
    return tree_digest(out)


def extract_argv(bags: list[Path], out: Path, *extra: str) -> list[str]:
    """The CLI command every fleet test runs (labels from /label, split, dedup)."""
    return [
        "extract",
        *map(str, bags),
        "--topic",
        "/cam",
        "--label-topic",
        "/label",
        "--split",
        "0.6,0.2,0.2",
        "--dedup",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


PERIOD_NS = SEC // 10
