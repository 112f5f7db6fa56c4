"""The dataset a run adds to, read without holding its rows, and the re-run rules.

`read_existing` streams the old manifest once, checking every row, and keeps only what the
reduce needs: each label's class directory, each sequence's class, split and size, the rows per
bag. Later passes re-read it (`sorted_rows`) for the paths of the bags this run extracts again
and for the final merge. A manifest that tl_perception wrote is sorted by path; one edited by
hand may not be, and is then sorted through spill files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.bag.options import ExtractOptions
from tl_perception.bag.reader import BagSource
from tl_perception.bag.sortedrows import Row, Spill, sort_rows
from tl_perception.bag.workdir import WORK_DIR
from tl_perception.dataset import (
    EXTENDABLE_VERSIONS,
    MANIFEST_FILE,
    SUMMARY_FILE,
    crop_policy_of,
    iter_manifest,
    labels_to_dirs,
    manifest_line,
    read_manifest,
    read_summary,
)
from tl_perception.errors import DatasetError


@dataclass
class Existing:
    """The dataset at `out` before this run (empty: `summary` None, no rows)."""

    out: Path
    summary: dict[str, Any] | None = None
    class_dirs: dict[str, str] = field(default_factory=dict)  # label -> class_dir
    sequences: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    rows_per_bag: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    is_sorted: bool = True

    @property
    def sources(self) -> list[dict[str, Any]]:
        return list((self.summary or {}).get("sources", []))

    def failed_paths(self) -> set[str]:
        """Bags the last run could not read: a re-run may retry them."""
        last = (self.summary or {}).get("last_run") or {}
        return {str(f.get("path")) for f in last.get("failed", []) if isinstance(f, dict)}

    def sorted_rows(self, spill: Spill) -> Iterator[Row]:
        """The old manifest's rows, sorted by path (re-read from disk), as manifest lines
        (an older version's manifest, with fewer columns, gets the new ones empty)."""
        rows = (manifest_line(row) for _line, row in iter_manifest(self.out))
        return rows if self.is_sorted else sort_rows(rows, spill)


def is_empty(out: Path) -> bool:
    """Nothing in `out` but an interrupted run's work directory (and its trash)."""
    return all(p.name == WORK_DIR or p.name.startswith(f"{WORK_DIR}.") for p in out.iterdir())


def read_existing(out: Path) -> Existing:
    """The dataset at `out`; an empty one when `out` is absent or empty.

    Raises:
        DatasetError: `out` is a file, a non-empty directory that is not a dataset, a dataset
            of a version that cannot be extended, or one whose manifest is damaged.
    """
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {str(out)!r} is a file; give a directory")
    if not out.exists() or is_empty(out):
        return Existing(out)
    summary = read_summary(out)
    if summary is None:
        raise DatasetError(
            f"--out {str(out)!r} is not empty and holds no dataset.json: it is not a dataset "
            "made by extract; choose an empty or new directory"
        )
    if summary["version"] not in EXTENDABLE_VERSIONS:
        raise DatasetError(
            f"--out {str(out)!r} is a version {summary['version']} dataset, which names bags by "
            "file name and cannot tell two same-named bags apart; extract into a new --out"
        )
    found = Existing(out, summary)
    counts: dict[str, Counter[str]] = {}
    splits_of: dict[str, str] = {}
    found.class_dirs = labels_to_dirs(
        _tapped(found, counts, splits_of), out, "extract into a new --out"
    )
    found.sequences = {
        seq: (cls, splits_of[seq], n) for seq, (cls, n) in majorities(counts).items()
    }
    if not found.is_sorted:  # repeats are not next to each other: check them all at once
        read_manifest(out)
    return found


def _tapped(
    found: Existing, counts: dict[str, Counter[str]], splits_of: dict[str, str]
) -> Iterator[dict[str, str]]:
    """The old rows, counted on the way (sequences, rows per bag, order)."""
    last = ""
    where = str(found.out / MANIFEST_FILE)
    for line, row in iter_manifest(found.out):
        if row["path"] == last:
            raise DatasetError(f"{where!r} line {line}: {row['path']!r} is listed twice")
        found.is_sorted = found.is_sorted and row["path"] > last
        last = row["path"]
        found.rows += 1
        found.rows_per_bag[row.get("bag") or ""] += 1
        counts.setdefault(row["sequence"], Counter())[row["class_dir"]] += 1
        splits_of.setdefault(row["sequence"], row["split"])
        yield row


def majorities(counts: dict[str, Counter[str]]) -> dict[str, tuple[str, int]]:
    """Sequence -> (its most frequent class_dir, its size): a track whose label changes is
    still one sequence, placed with the class most of its crops have."""
    return {
        seq: (min(by_class, key=lambda c: (-by_class[c], c)), sum(by_class.values()))
        for seq, by_class in counts.items()
    }


def check_distinct(sources: list[BagSource]) -> None:
    """One bag given twice (or a copy of it) would write every frame twice."""
    seen: dict[str, BagSource] = {}
    for source in sources:
        first = seen.setdefault(source.sha256, source)
        if first is not source:
            raise DatasetError(
                f"bags {str(first.path)!r} and {str(source.path)!r} have identical content; "
                "give each bag once"
            )


def check_rerun(options: ExtractOptions, existing: Existing, sources: list[BagSource]) -> None:
    """A re-run must repeat the dataset's options and bags unless `--append` adds to it; a bag
    the last run could not read may be given again (to retry it)."""
    summary = existing.summary
    if summary is None:
        return
    known = {s.get("name"): s.get("sha256") for s in existing.sources}
    for source in sources:
        if source.name in known and known[source.name] != source.sha256:
            raise DatasetError(
                f"bag {str(source.path)!r} is named {source.name!r} like another bag of "
                f"{str(options.out)!r} with different content; extract into a new --out"
            )
    check_policy(options, summary)
    if options.append or "options" not in summary:
        return
    retried = existing.failed_paths()
    new = [
        str(s.path) for s in sources if s.name not in known and str(s.path.resolve()) not in retried
    ]
    if summary["options"] != json.loads(json.dumps(options.record())) or new:
        what = f"bags not in it ({', '.join(new)})" if new else "other options"
        raise DatasetError(
            f"--out {str(options.out)!r} holds a dataset made with {what}; pass --append to add "
            "bags to it (keeping its splits) or choose a new --out"
        )


def check_policy(options: ExtractOptions, summary: dict[str, Any]) -> None:
    """One dataset, one crop policy (or none: whole frames), also with `--append`: a model
    trained on it is applied with one policy, so crops cut another way would be a lie."""
    old = crop_policy_of(summary, str(options.out / SUMMARY_FILE))
    old_record = old.to_dict() if old is not None else None
    new_record = options.policy_record()
    if old_record == new_record:
        return
    where = f"--out {str(options.out)!r}"
    if old_record is None:
        raise DatasetError(
            f"{where} holds whole frames; crops of boxes cannot be added to it: extract them "
            "into a new --out"
        )
    if new_record is None:
        raise DatasetError(
            f"{where} holds crops of boxes (crop_policy in dataset.json); whole frames cannot "
            "be added to it: give --boxes-topic or --boxes-csv, or choose a new --out"
        )
    raise DatasetError(
        f"{where} holds crops made with crop policy {_describe_policy(old_record)}, this run's "
        f"is {_describe_policy(new_record)}; one dataset has one policy: repeat its options "
        "or choose a new --out"
    )


def _describe_policy(record: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in record.items() if k != "version")
