"""`tl-perception merge`: labelled captures into an existing dataset, without leakage.

Captured images come in bursts of near-identical frames (the model stays unsure about one sign
for a while), so they are grouped first: one track's crops, or one camera's frames whose stamps
are at most `gap_s` apart (`loop.store.RunTracker`, the rule the capture itself names sequences by).
Each group then goes wholly into one split, by the dataset's own split fractions and seed
(`bag.splits.assign_splits`, as `extract --append` places new sequences); a group holding an
exact copy of an image already in the dataset goes to that image's split. Images whose pixels
(`sha256`) the dataset already has, or another captured image has, are skipped and counted, and so
are unlabelled ones. A dataset has one crop policy: captures cut another way (or whole frames into
a dataset of crops) are refused.

Nothing is written until every input has been checked; images are copied under temp names and
renamed, the manifest and dataset.json are replaced atomically at the end, and a failure on the
way removes what this run copied. The captures are left as they are (merge them again after
labelling more: what is already in the dataset is skipped).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.bag.splits import assign_splits
from tl_perception.crop import describe_policy, policy_record
from tl_perception.dataset import (
    SPLITS,
    class_dirs,
    crop_policy_of,
    is_empty_label,
    is_image_file,
    labels_to_dirs,
    locked,
    read_dataset,
)
from tl_perception.errors import DatasetError, one_line
from tl_perception.fsutil import atomic_write_bytes
from tl_perception.loop.datasets import open_for_update, write_back
from tl_perception.loop.store import CAPTURE_GAP_S, RunTracker, capture_record, content_digest

Row = dict[str, str]


@dataclass
class MergeReport:
    """Images added per (class_dir, split), skipped per reason, and classes the dataset gained."""

    into: Path
    kept: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    new_classes: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(self.kept.values())


@dataclass(frozen=True)
class _Capture:
    root: Path
    source: str
    rows: list[Row]


@dataclass(frozen=True)
class _Take:
    """One captured image to add: its capture, its row there, and its sequence."""

    capture: _Capture
    row: Row
    sequence: str
    capture_path: str  # of the image in its capture (`row` becomes the dataset's row)

    @property
    def origin(self) -> Path:
        return self.capture.root / self.capture_path


def merge(
    sources: Sequence[str | Path], into: str | Path, gap_s: float = CAPTURE_GAP_S
) -> MergeReport:
    """Add the labelled images of capture directories `sources` to the dataset `into`.

    Raises:
        DatasetError: a source that is no capture, has no labelled image, is being written
            (`DirectoryLockError`), or was cut with another crop policy; a target that cannot
            be extended; a failed copy (what was copied is removed again).
    """
    target = Path(into).expanduser().resolve()
    roots = [Path(s).expanduser().resolve() for s in sources]
    if not gap_s >= 0:
        raise DatasetError(f"--gap {gap_s}: need a number of seconds >= 0")
    _check_distinct(roots, target)
    report = MergeReport(target)
    with contextlib.ExitStack() as stack:
        stack.enter_context(locked(target))
        summary, rows = open_for_update(target, "--into")
        if capture_record(summary) is not None:
            raise DatasetError(
                f"--into {str(target)!r} is a capture; merge captures into a dataset made by "
                "`tl-perception extract`"
            )
        read_dataset(target)  # every listed image is there
        captures = []
        for root in roots:
            stack.enter_context(locked(root, read_only=True))
            captures.append(_open_capture(root, summary, target))
        takes = _plan(captures, (summary, rows), target, gap_s, report)
        if takes:
            _write(target, (summary, rows), takes, captures, report)
    return report


def _check_distinct(roots: list[Path], target: Path) -> None:
    seen: set[Path] = set()
    for root in roots:
        if root == target:
            raise DatasetError(f"capture {str(root)!r} is the --into dataset itself")
        if root in seen:
            raise DatasetError(f"capture {str(root)!r} is given twice")
        seen.add(root)


def _open_capture(root: Path, target_summary: Mapping[str, Any], target: Path) -> _Capture:
    """A capture to merge: finished, labelled, and cut as the dataset's images were."""
    summary, rows = open_for_update(root, "capture")
    record = capture_record(summary)
    if record is None:
        raise DatasetError(
            f"{str(root)!r} is not a capture directory (dataset.json has no options.capture); "
            "add bags to a dataset with `tl-perception extract --append`"
        )
    read_dataset(root)  # every listed image is there
    ours = crop_policy_of(target_summary, str(target))
    theirs = crop_policy_of(summary, str(root))
    if policy_record(ours) != policy_record(theirs):
        raise DatasetError(
            f"capture {str(root)!r} holds {describe_policy(theirs)}, --into {str(target)!r} "
            f"{describe_policy(ours)}; one dataset has one crop policy: capture with a model "
            "trained on it"
        )
    if all(is_empty_label(row.get("label")) for row in rows):
        raise DatasetError(
            f"capture {str(root)!r} has no labelled image ({len(rows)} unlabeled); label them "
            "first with `tl-perception label`"
        )
    return _Capture(root, str(record["source"]), rows)


def _plan(
    captures: list[_Capture],
    dataset: tuple[Mapping[str, Any], list[Row]],
    target: Path,
    gap_s: float,
    report: MergeReport,
) -> list[_Take]:
    """The images to add, each with its class directory, sequence and split (in the rows)."""
    summary, rows = dataset
    candidates = _sequenced(captures, gap_s, report)
    taken = labels_to_dirs(rows, target)
    mapping = class_dirs({t.row["label"] for t in candidates}, taken)
    report.new_classes = sorted({mapping[t.row["label"]] for t in candidates} - set(taken.values()))
    in_dataset = {row["sha256"]: row for row in rows if row.get("sha256")}
    seen: set[str] = set()
    pinned: dict[str, Counter[str]] = {}  # sequence -> splits of the dataset images it copies
    takes = []
    for take in candidates:
        digest = take.row.get("sha256", "")
        if digest in in_dataset:
            copy = in_dataset[digest]
            merged_before = copy.get("bag") == take.capture.source
            report.skipped["already_in_dataset" if merged_before else "duplicate_of_dataset"] += 1
            pinned.setdefault(take.sequence, Counter())[copy["split"]] += 1
        elif digest and digest in seen:
            report.skipped["duplicate_in_captures"] += 1
        else:
            seen.add(digest)
            takes.append(take)
    splits = _splits(takes, mapping, rows, pinned, _split_options(summary))
    listed = {row["path"] for row in rows}
    out = []
    for take in takes:
        class_dir, split = mapping[take.row["label"]], splits[take.sequence]
        path = f"{split}/{class_dir}/{take.row['path'].rsplit('/', 1)[-1]}"
        if path in listed:  # same capture and file name, other pixels: edited by hand
            report.skipped["name_taken"] += 1
            continue
        listed.add(path)
        new = {**take.row, "path": path, "split": split, "class_dir": class_dir}
        out.append(_Take(take.capture, new, take.sequence, take.row["path"]))
        report.kept[(class_dir, split)] += 1
    return out


def _sequenced(captures: list[_Capture], gap_s: float, report: MergeReport) -> list[_Take]:
    """Labelled images of every capture with their sequence. Unlabelled images still take part
    in the grouping (skipping them must not cut one burst into two) and are then counted."""
    out = []
    for capture in captures:
        runs = RunTracker(capture.source, gap_s)

        def order(row: Row) -> tuple[str, int, str]:
            return row.get("camera", ""), int(row.get("stamp_ns") or 0), row["path"]

        for row in sorted(capture.rows, key=order):
            sequence = runs.sequence(
                row.get("camera", ""), int(row.get("stamp_ns") or 0), row.get("track", "")
            )
            if is_empty_label(row.get("label")):
                report.skipped["unlabeled"] += 1
            else:
                out.append(_Take(capture, {**row, "sequence": sequence}, sequence, row["path"]))
    return out


def _splits(
    takes: list[_Take],
    mapping: Mapping[str, str],
    rows: list[Row],
    pinned: Mapping[str, Counter[str]],
    options: tuple[tuple[float, float, float] | None, int],
) -> dict[str, str]:
    """Split of each new sequence by the dataset's fractions and seed (`assign_splits`)."""
    new: dict[str, Counter[str]] = {}
    for take in takes:
        new.setdefault(take.sequence, Counter())[mapping[take.row["label"]]] += 1
    old: dict[str, Counter[str]] = {}
    old_split: dict[str, str] = {}
    for row in rows:
        old.setdefault(row["sequence"], Counter())[row["class_dir"]] += 1
        old_split.setdefault(row["sequence"], row["split"])
    existing = {seq: (cls, old_split[seq], n) for seq, (cls, n) in _majorities(old).items()}
    for seq, splits in pinned.items():
        if seq in new and seq not in existing:
            split = min(splits, key=lambda s: (-splits[s], SPLITS.index(s)))
            existing[seq] = (_majorities({seq: new[seq]})[seq][0], split, 0)
    return assign_splits(_majorities(new), options[0], options[1], existing)


def _majorities(counts: Mapping[str, Counter[str]]) -> dict[str, tuple[str, int]]:
    """Sequence -> (its most frequent class_dir, its size), as extraction places sequences."""
    return {
        seq: (min(by_class, key=lambda c: (-by_class[c], c)), sum(by_class.values()))
        for seq, by_class in counts.items()
    }


def _split_options(summary: Mapping[str, Any]) -> tuple[tuple[float, float, float] | None, int]:
    """The dataset's `--split` fractions (None: all in train) and `--seed`."""
    options = summary.get("options") or {}
    split, seed = options.get("split"), options.get("seed", 0)
    fractions = None
    if isinstance(split, list) and len(split) == 3:
        fractions = (float(split[0]), float(split[1]), float(split[2]))
    return fractions, seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def _write(
    target: Path,
    dataset: tuple[Mapping[str, Any], list[Row]],
    takes: list[_Take],
    captures: list[_Capture],
    report: MergeReport,
) -> None:
    """Copy the images in (temp name, rename), then replace manifest and dataset.json."""
    summary, rows = dataset
    _remove_leftovers(target, {row["path"] for row in rows})
    written: list[Path] = []
    created: list[Path] = []
    try:
        for take in takes:
            path = target / take.row["path"]
            for folder in (path.parent.parent, path.parent):
                if not folder.is_dir():
                    folder.mkdir()
                    created.append(folder)
            atomic_write_bytes(path, take.origin.read_bytes())
            written.append(path)
        all_rows = rows + [take.row for take in takes]
        write_back(
            target,
            all_rows,
            summary,
            sources=_sources(target, summary, captures, all_rows),
            last_run={
                "merge": [str(c.root) for c in captures],
                "kept": report.written,
                "skipped": dict(sorted(report.skipped.items())),
            },
        )
    except OSError as err:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise DatasetError(f"cannot merge into {str(target)!r}: {one_line(err)}") from err


def _sources(
    target: Path,
    summary: Mapping[str, Any],
    captures: list[_Capture],
    rows: list[Row],
) -> list[dict[str, Any]]:
    """The dataset's sources plus one record per capture: what of it the dataset now holds."""
    records = {str(s["name"]): dict(s) for s in summary.get("sources", [])}
    for capture in captures:
        mine = [row for row in rows if row.get("bag") == capture.source]
        if not mine:
            continue
        records[capture.source] = {
            "name": capture.source,
            "kind": "capture",
            "path": str(capture.root),
            "sha256": content_digest(mine),
            "bytes": sum((target / row["path"]).stat().st_size for row in mine),
            "images": len(mine),
        }
    return list(records.values())


def _remove_leftovers(target: Path, listed: set[str]) -> None:
    """Images no row lists and temp files: an interrupted merge's or extraction's (as extract
    does at the start of every run, so the directory holds exactly the manifest's images)."""
    for split in SPLITS:
        if not (target / split).is_dir():
            continue
        for path in (target / split).glob("*/*"):
            rel = path.relative_to(target).as_posix()
            stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
            if (is_image_file(path) and rel not in listed) or (stale_tmp and path.is_file()):
                path.unlink()
