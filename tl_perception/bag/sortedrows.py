"""Manifest rows sorted by path in bounded memory: k-way merges of sorted files, spilled sorts.

The driver of a fleet extraction writes one manifest for millions of images; holding its rows
would make its memory grow with the fleet. Every bag's rows arrive as a file sorted by path, so
the manifest is their merge (`merge_files`), at most `FAN_IN` files open at once (larger merges
go through intermediate files). An old manifest that is not sorted (edited by hand) is sorted
through spill files of `CHUNK` rows (`sort_rows`).
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import itertools
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path

from tl_perception.dataset import MANIFEST_COLUMNS

FAN_IN = 64
CHUNK = 100_000

Row = dict[str, str]


def path_of(row: Row) -> str:
    return row["path"]


def read_rows(path: Path) -> Generator[Row, None, None]:
    """The rows of a manifest-format CSV file (header first), as they are read."""
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            yield dict(row)


def write_rows(path: Path, rows: Iterable[Row]) -> Path:
    """A manifest-format CSV file of `rows` (in the order given)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in MANIFEST_COLUMNS})
    return path


class Spill:
    """Numbered spill files in one directory (the work directory's `sort/`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._numbers = itertools.count()

    def new(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory / f"{next(self._numbers):06d}.csv"


def merge_files(files: list[Path], spill: Spill) -> Iterator[Row]:
    """The rows of sorted files, merged by path (stable: equal paths keep the files' order)."""
    files = list(files)
    while len(files) > FAN_IN:
        group, files = files[:FAN_IN], files[FAN_IN:]
        files.append(write_rows(spill.new(), _merge(group)))
    return _merge(files)


def _merge(files: list[Path]) -> Iterator[Row]:
    with contextlib.ExitStack() as stack:
        streams = [stack.enter_context(contextlib.closing(read_rows(f))) for f in files]
        yield from heapq.merge(*streams, key=path_of)


def sort_rows(rows: Iterable[Row], spill: Spill) -> Iterator[Row]:
    """`rows` sorted by path, holding at most `CHUNK` of them at once."""
    files = []
    source = iter(rows)
    while chunk := list(itertools.islice(source, CHUNK)):
        chunk.sort(key=path_of)
        files.append(write_rows(spill.new(), chunk))
    return merge_files(files, spill)
