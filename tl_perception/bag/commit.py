"""The driver's file work around the waves, all streaming (memory does not grow with rows):

- `write_old_paths`: the paths a bag of this run already has in the dataset, one file per bag,
  so the unit that finishes it can tell `already_in_dataset` without the whole manifest;
- `remove_placed`: images that rows files of the work directory say were moved into the
  dataset but that the manifest does not list (a crashed unit's, or a run that is rolled back);
- `merged_rows`: the new manifest, the old one merged with every finished bag's rows by path.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from tl_perception.bag.existing import Existing
from tl_perception.bag.sortedrows import BAG, Row, Spill, merge_files
from tl_perception.bag.workdir import WorkDir, digest

_BUFFERED_PATHS = 65536


def write_old_paths(existing: Existing, work: WorkDir, keys: dict[str, str]) -> dict[str, str]:
    """For each bag name in `keys` (name -> work key) with rows in the dataset, write its paths
    to `work.old_paths(key)`; returns work key -> hash of that file's content."""
    wanted = {name: key for name, key in keys.items() if existing.rows_per_bag.get(name)}
    buffers: dict[str, list[str]] = {key: [] for key in wanted.values()}
    started: set[str] = set()
    buffered = 0
    if wanted:
        for row in existing.sorted_rows(Spill(work.spill)):
            key = wanted.get(row[BAG])
            if key is None:
                continue
            buffers[key].append(row[0])
            buffered += 1
            if buffered >= _BUFFERED_PATHS:
                _flush(work, buffers, started)
                buffered = 0
    _flush(work, buffers, started)
    return {
        key: digest("old", work.old_paths(key).read_text(encoding="utf-8"))
        for key in wanted.values()
    }


def _flush(work: WorkDir, buffers: dict[str, list[str]], started: set[str]) -> None:
    """Append the buffered paths to their bags' files. A sorted manifest holds a bag's rows in
    runs (one per class directory), so few buffers are non-empty at a time."""
    for key, paths in buffers.items():
        if not paths and key in started:
            continue
        with open(work.old_paths(key), "a" if key in started else "w", encoding="utf-8") as fh:
            fh.writelines(f"{path}\n" for path in paths)
        started.add(key)
        paths.clear()


def remove_placed(existing: Existing, work: WorkDir, rows_files: list[Path]) -> int:
    """Delete the images `rows_files` list that the dataset's manifest does not list; returns
    how many were deleted. Both sides are sorted by path, so this is one merge."""
    if not rows_files:
        return 0
    spill = Spill(work.spill)
    placed = (row[0] for row in merge_files(rows_files, spill))
    listed = (row[0] for row in existing.sorted_rows(spill))
    removed = 0
    for path in _only_in_first(placed, listed):
        target = existing.out / path
        if target.is_file():
            target.unlink()
            removed += 1
    return removed


def _only_in_first(first: Iterator[str], second: Iterator[str]) -> Iterator[str]:
    """Items of sorted `first` that sorted `second` lacks."""
    other = next(second, None)
    for item in first:
        while other is not None and other < item:
            other = next(second, None)
        if other != item:
            yield item


def merged_rows(existing: Existing, new_files: list[Path], spill: Spill) -> Iterator[Row]:
    """The dataset's rows after this run, sorted by path: the old rows (those whose image is
    still there) and the new ones; a path in both is the new row (its image was written again)."""
    old = ((row[0], 0, row) for row in existing.sorted_rows(spill))
    new = ((row[0], 1, row) for row in merge_files(new_files, spill))
    merged = heapq.merge(old, new, key=lambda item: (item[0], item[1]))
    for path, group in itertools.groupby(merged, key=lambda item: item[0]):
        entries = list(group)
        _path, source, row = entries[-1]
        if source == 1 or (existing.out / path).is_file():
            yield row


def rows_files(work: WorkDir, keys: Iterable[str]) -> list[Path]:
    """The rows files of `keys` that exist."""
    return [path for path in (work.rows(key) for key in sorted(keys)) if path.is_file()]
