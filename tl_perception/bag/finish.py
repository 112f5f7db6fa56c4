"""Finishing a bag: its decoded images, in bag order, become dataset files and manifest rows.

What one bag needs to be finished is all its own: dedup compares an image with the last kept
one of its sequence, and sequences never leave their bag (their ids start with its name); two
images of one bag can claim one file name (`duplicate_stamp`); an image of a bag that is already
in the dataset (a re-run, an `--append` with an old bag) is `already_in_dataset`. So a bag is
finished by one unit on any worker, given its share of the driver's reduce (`Assignment`: the
class directory of each of its labels, the split of each of its sequences).

Order of writes, so that a crash at any point is repaired by a re-run: the bag's new manifest
rows (sorted by path) go to the work directory first, then each image is renamed from its temp
file into `<split>/<class_dir>/`, then the bag's marker is written. The driver merges the rows
of all bags into manifest.csv at the end.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.bag.frames import FrameResult, hamming
from tl_perception.bag.options import ExtractOptions
from tl_perception.bag.plan import PlannedFrame, place_frames
from tl_perception.bag.roiplan import place_roi_frames
from tl_perception.bag.workdir import WorkDir, write_marker
from tl_perception.crop import Box
from tl_perception.dataset import box_columns, manifest_text, slug
from tl_perception.errors import DatasetError
from tl_perception.fsutil import FILE_MODE, atomic_write_text


@dataclass(frozen=True)
class Assignment:
    """A bag's share of the driver's reduce, and the digest of everything its output depends
    on (options, bag, this share, the paths it already has in the dataset)."""

    key: str
    bag: str  # the bag's content name
    class_dirs: Mapping[str, str]  # label -> class directory, for the bag's labels
    splits: Mapping[str, str]  # sequence id -> split, for the bag's sequences
    has_old_paths: bool  # the work directory lists the bag's paths already in the dataset
    digest: str


@dataclass(frozen=True)
class BagResult:
    """What finishing a bag did: images kept per (class_dir, split), images skipped per reason
    (frames, and for crops boxes and negatives)."""

    key: str
    kept: tuple[tuple[str, str, int], ...] = ()
    skipped: Mapping[str, int] = field(default_factory=dict)
    boxes_skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def written(self) -> int:
        return sum(n for _, _, n in self.kept)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kept": [list(k) for k in self.kept],
            "skipped": dict(self.skipped),
            "boxes_skipped": dict(self.boxes_skipped),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BagResult:
        return cls(
            key=data["key"],
            kept=tuple((str(c), str(s), int(n)) for c, s, n in data["kept"]),
            skipped=dict(data["skipped"]),
            boxes_skipped=dict(data["boxes_skipped"]),
        )


@dataclass(frozen=True)
class WindowFrames:
    """A decoded window: its planned frames (bag order) and what was made of each."""

    frames: list[PlannedFrame]
    results: Mapping[int, list[FrameResult]]


def finish_bag(
    options: ExtractOptions, work: WorkDir, assignment: Assignment, windows: list[WindowFrames]
) -> BagResult:
    """Finish one bag (see the module docstring).

    Raises:
        DatasetError: an image cannot be written into the dataset (what this bag had placed is
            removed again): fatal for the run, not a failed bag.
    """
    old: set[str] = set()
    if assignment.has_old_paths:
        old = set(work.old_paths(assignment.key).read_text(encoding="utf-8").splitlines())
    writer = _BagWriter(options, assignment, old)
    for window in windows:
        for frame in _placed(options, assignment, window.frames):
            writer.consume(frame, window.results[frame.index])
    rows_file = work.rows(assignment.key)
    atomic_write_text(rows_file, manifest_text(writer.rows))
    _move_into_place(options.out, writer.moves)
    shutil.rmtree(work.stage(assignment.key), ignore_errors=True)
    result = BagResult(
        assignment.key,
        tuple((c, s, n) for (c, s), n in sorted(writer.kept.items())),
        dict(sorted(writer.skipped.items())),
        dict(sorted(writer.boxes_skipped.items())),
    )
    write_marker(rows_file, assignment.digest, result.to_json())
    return result


def _placed(
    options: ExtractOptions, assignment: Assignment, frames: list[PlannedFrame]
) -> list[PlannedFrame]:
    if options.rois is None:
        return place_frames(frames, assignment.bag, assignment.class_dirs)
    return place_roi_frames(frames, assignment.bag, assignment.class_dirs)


def _move_into_place(out: Path, moves: list[tuple[str, str]]) -> None:
    """Rename temp files to their dataset paths; on failure, take back what was moved."""
    done: list[Path] = []
    try:
        for tmp, rel in moves:
            target = out / rel
            if not os.path.exists(tmp) and target.is_file():
                continue  # moved by an attempt of this unit that died before its marker
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, target)
            done.append(target)
    except OSError as err:
        for path in done:
            path.unlink(missing_ok=True)
        raise DatasetError(f"cannot write the dataset {str(out)!r}: {err}") from err


@dataclass(frozen=True)
class _Item:
    """One image to write: a whole frame, a box's crop or a negative."""

    label: str
    class_dir: str
    sequence: str
    suffix: str = ""  # of the file name: "" (frame), `_b<box index>`, `_n<negative index>`
    box: Box | None = None
    track: str = ""


class _BagWriter:
    """Consumes one bag's decoded frames in bag order: dedup, naming, manifest rows."""

    def __init__(self, options: ExtractOptions, assignment: Assignment, old: set[str]) -> None:
        self.options = options
        self.assignment = assignment
        self.old = old  # paths of this bag already in the dataset
        self.topic_slug = slug(options.topic.replace("/", "_")) or "topic"
        self.last_hash: dict[str, int] = {}
        self.seen: set[str] = set()
        self.rows: list[dict[str, Any]] = []
        self.moves: list[tuple[str, str]] = []  # (temp file, path in the dataset)
        self.kept: Counter[tuple[str, str]] = Counter()
        self.skipped: Counter[str] = Counter()
        self.boxes_skipped: Counter[str] = Counter()

    def consume(self, frame: PlannedFrame, results: list[FrameResult]) -> None:
        """Keep or count every image a worker made of one frame."""
        if results[0].kind == "frame":  # a whole frame, or one that did not decode
            item = _Item(frame.label, frame.class_dir, frame.sequence)
            self._take(frame, item, results[0], self.skipped)
            return
        boxes, negatives = results[: len(frame.boxes)], results[len(frame.boxes) :]
        for planned, result in zip(frame.boxes, boxes, strict=True):
            suffix = f"_b{planned.index}"
            item = _Item(
                planned.label, planned.class_dir, planned.track, suffix, planned.box, planned.track
            )
            self._take(frame, item, result, self.boxes_skipped)
        for j, result in enumerate(negatives):
            item = _Item(frame.label, frame.class_dir, frame.sequence, f"_n{j}", result.box)
            self._take(frame, item, result, self.boxes_skipped)

    def _take(
        self, frame: PlannedFrame, item: _Item, result: FrameResult, skipped: Counter[str]
    ) -> None:
        if result.skip:
            skipped[result.skip] += 1
            return
        reason = self._reason(frame, item, result)
        if reason is not None:
            skipped[reason] += 1

    def _reason(self, frame: PlannedFrame, item: _Item, result: FrameResult) -> str | None:
        """Why the image is skipped; None: it is kept (its row and its move are recorded)."""
        if self.options.dedup is not None:
            last = self.last_hash.get(item.sequence)
            if last is not None and hamming(last, result.phash) <= self.options.dedup:
                return "near_duplicate"
            self.last_hash[item.sequence] = result.phash
        split = self.assignment.splits[item.sequence]
        bag = self.assignment.bag
        name = f"{bag}_{self.topic_slug}_{frame.stamp_ns}{item.suffix}.{self.options.fmt}"
        rel = f"{split}/{item.class_dir}/{name}"
        if rel in self.seen:
            return "duplicate_stamp"
        self.seen.add(rel)
        if rel in self.old and (self.options.out / rel).is_file():
            return "already_in_dataset"
        self.moves.append((result.tmp_path, rel))
        self.rows.append(
            {
                "path": rel,
                "split": split,
                "label": item.label,
                "class_dir": item.class_dir,
                "bag": bag,
                "topic": self.options.topic,
                "stamp_ns": frame.stamp_ns,
                "width": result.width,
                "height": result.height,
                "encoding": frame.encoding,
                "sha256": result.sha256,
                "sequence": item.sequence,
                **box_columns(item.box, item.track),
            }
        )
        self.kept[(item.class_dir, split)] += 1
        return None
