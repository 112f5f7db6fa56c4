"""The work directory of an extraction, `OUT/.extract-work/`: what makes a run resumable.

Units write here what the driver's reduce and later units need, and a **marker** per finished
unit, written last and atomically: a unit whose marker is present and whose `digest` (a hash of
everything its output depends on: the options, the bag's identity, its share of the global
assignment) matches is finished; anything else of it is redone. Layout, per bag `<key>` (the
input path's slug and hash, known before the bag is read):

    plans/<key>.json            planned frames per window (written by the plan unit)
    plans/<key>.done.json       plan marker: fingerprint, digest, the plan's small result
    stage/<key>/w<k>/           encoded images under temp names (window k)
    stage/<key>/w<k>.json       per-frame results of window k, then w<k>.done.json, its marker
    old/<key>.txt               the bag's paths already in the dataset (appends and re-runs)
    rows/<key>.csv              the bag's new manifest rows, sorted by path, written *before*
                                its images are moved into the dataset (so a crash in between
                                knows what to take away again)
    rows/<key>.done.json        bag marker: digest and the bag's counts
    sort/                       spill files of the driver's bounded-memory sort and merge

It lives inside OUT so every worker that can write the dataset can write it, and renames from
it into the dataset stay on one file system. It is removed when the run ends well.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_perception.bag.options import WORK_FORMAT
from tl_perception.dataset import slug
from tl_perception.errors import DatasetError
from tl_perception.fsutil import atomic_write_text

WORK_DIR = ".extract-work"


def digest(*parts: Any) -> str:
    """A stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def bag_key(path: Path) -> str:
    """A work-file name for a bag, unique per input path: `<stem slug>-<path hash>`."""
    resolved = str(path.resolve())
    stem = path.name if path.is_dir() else path.stem
    return f"{slug(stem) or 'bag'}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}"


def fingerprint(path: Path) -> list[list[Any]]:
    """What tells a bag changed without reading it: name, size and mtime of its files."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    out: list[list[Any]] = [[str(path.resolve())]]
    for file in files:
        stat = file.stat()
        out.append([file.name, stat.st_size, stat.st_mtime_ns])
    return out


@dataclass(frozen=True)
class WorkDir:
    """Paths of the work directory `root` (`OUT/.extract-work`)."""

    root: Path

    @classmethod
    def of(cls, out: Path) -> WorkDir:
        return cls(out / WORK_DIR)

    def plan(self, key: str) -> Path:
        return self.root / "plans" / f"{key}.json"

    def stage(self, key: str) -> Path:
        return self.root / "stage" / key

    def window(self, key: str, index: int) -> Path:
        return self.stage(key) / f"w{index}"

    def rows(self, key: str) -> Path:
        return self.root / "rows" / f"{key}.csv"

    def old_paths(self, key: str) -> Path:
        return self.root / "old" / f"{key}.txt"

    @property
    def spill(self) -> Path:
        return self.root / "sort"

    def make(self) -> None:
        for sub in ("plans", "stage", "rows", "old", "sort"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held by the driver for the whole run: a second extraction into the same OUT is
        refused instead of interleaving with this one. The kernel drops the lock when the
        driver dies, even by SIGKILL, so a resume never finds it stale."""
        with open(self.root / "lock", "w", encoding="utf-8") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DatasetError(
                    f"another extraction is writing {str(self.root.parent)!r} (it holds "
                    f"{str(self.root / 'lock')!r}); wait for it or stop it"
                ) from None
            yield


def done_path(path: Path) -> Path:
    """The marker of the unit whose main file is `path` (`x.json` -> `x.done.json`)."""
    return path.with_name(f"{path.stem}.done.json")


def write_marker(path: Path, unit_digest: str, result: dict[str, Any]) -> None:
    """The last thing a unit writes: it is finished for exactly these inputs."""
    payload = {"format": WORK_FORMAT, "digest": unit_digest, "result": result}
    atomic_write_text(done_path(path), json.dumps(payload, sort_keys=True) + "\n")


def read_marker(path: Path, unit_digest: str) -> dict[str, Any] | None:
    """The result a finished unit recorded, if its marker is there and matches `unit_digest`."""
    try:
        payload = json.loads(done_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("format") != WORK_FORMAT:
        return None
    result = payload.get("result")
    if payload.get("digest") != unit_digest or not isinstance(result, dict):
        return None
    return result


def drop_marker(path: Path) -> None:
    done_path(path).unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """A compact JSON work file, atomically (a killed unit leaves none or a whole one)."""
    atomic_write_text(path, json.dumps(data, separators=(",", ":"), allow_nan=True))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def remove_tree(path: Path) -> None:
    """rmtree that first renames the tree away, so a half-removed work directory is never
    mistaken for a live one."""
    if not path.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f"{path.name}.", suffix=".trash", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)
