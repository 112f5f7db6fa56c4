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

from tl_perception.dataset import MANIFEST_COLUMNS, ManifestLine
from tl_perception.errors import DatasetError

FAN_IN = 256
CHUNK = 100_000

#: Rows travel as lists in `MANIFEST_COLUMNS` order (half the cost of dicts per row); the path
#: is the first column.
Row = ManifestLine
BAG = MANIFEST_COLUMNS.index("bag")


def path_of(row: Row) -> str:
    return row[0]


def read_rows(path: Path) -> Generator[Row, None, None]:
    """The rows of a CSV file that `write_rows` or `dataset.manifest_text` wrote."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is not None and tuple(header) != MANIFEST_COLUMNS:
            raise DatasetError(f"{str(path)!r} has columns {header}, not the manifest's")
        yield from reader


def write_rows(path: Path, rows: Iterable[Row]) -> Path:
    """A manifest-format CSV file of `rows` (in the order given)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
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
