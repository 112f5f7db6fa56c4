"""`extract`: bags -> a labelled, leakage-free dataset directory (see docs/extract.md).

Two passes per bag. Pass 1 (main process, no decoding) names each bag by its content, validates
everything, deserializes the kept frames' messages, picks frames, labels and sequences, gives each
label its own class directory and assigns sequences to splits; nothing is written until every bag
has been read once, so bad input leaves nothing behind. Pass 2 sends raw frames in chunks to
worker processes (decode, crop, hash, encode) and consumes results in bag order, so dedup and the
written files do not depend on `--workers`; should it still fail (a bag changed under us, a full
disk), what it wrote is removed again. Images are written under temp names and renamed; the
manifest and `dataset.json` are written atomically at the end (`dataset.write_dataset`). Images
found on disk but not in the manifest (left by an interrupted run) are deleted at the start of
the next run, which rewrites them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.bag.frames import Crop, FrameResult, hamming, init_worker, message_fields
from tl_perception.bag.frames import process_chunk as _process_chunk
from tl_perception.bag.plan import FrameFilter, LabelSpec, PlannedFrame, place_frames, plan_bag
from tl_perception.bag.progress import Progress
from tl_perception.bag.reader import (
    IMAGE_TYPES,
    LABEL_TYPES,
    BagSource,
    bag_source,
    deserialize,
    iter_messages,
    open_bag,
    require_topic,
)
from tl_perception.bag.splits import assign_splits
from tl_perception.dataset import (
    MANIFEST_FILE,
    SPLITS,
    SUMMARY_FILE,
    VERSION,
    begin_summary,
    class_dirs,
    is_empty_label,
    is_image_file,
    read_manifest,
    read_summary,
    slug,
    write_dataset,
)
from tl_perception.errors import DatasetError, TlPerceptionError
from tl_perception.fsutil import FILE_MODE

CHUNK = 16


@dataclass(frozen=True)
class ExtractOptions:
    """Everything `tl-perception extract` was asked to do."""

    bags: tuple[Path, ...]
    topic: str
    out: Path
    labels: LabelSpec
    selection: FrameFilter = field(default_factory=FrameFilter)
    crop: Crop | None = None
    dedup: int | None = None
    fmt: str = "png"
    split: tuple[float, float, float] | None = None
    seed: int = 0
    workers: int = 1
    append: bool = False

    def record(self) -> dict[str, Any]:
        """The options that define the dataset's content (not paths or worker counts)."""
        return {
            "topic": self.topic,
            "labels": asdict(self.labels),
            "selection": asdict(self.selection),
            "crop": list(self.crop) if self.crop else None,
            "dedup": self.dedup,
            "format": self.fmt,
            "split": list(self.split) if self.split else None,
            "seed": self.seed,
        }


@dataclass
class ExtractReport:
    """What a run did: frames kept per (class_dir, split), frames skipped per reason."""

    out: Path
    kept: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return sum(self.kept.values())


def extract(options: ExtractOptions, progress: bool = False) -> ExtractReport:
    """Run an extraction.

    Raises:
        BagError, DatasetError: bad input, found before anything is written; or a failure while
            writing (then this run's images are removed again), or no frame kept at all.
    """
    started = time.monotonic()
    out = options.out
    if options.labels.kind == "fixed" and is_empty_label(options.labels.name):
        raise DatasetError(f"--label {options.labels.name!r}: an empty label names no class")
    old_rows, summary = _existing_dataset(out)
    sources = [bag_source(p) for p in options.bags]
    _check_distinct(sources)
    _check_rerun(options, summary, sources)
    report = ExtractReport(out)
    unplaced: list[list[PlannedFrame]] = []
    for source in sources:
        with open_bag(source.path) as reader:
            require_topic(reader, source.path, options.topic, tuple(IMAGE_TYPES), "image")
            if options.labels.kind == "topic":
                require_topic(reader, source.path, options.labels.topic, LABEL_TYPES, "label")
            unplaced.append(
                plan_bag(
                    reader,
                    source.path,
                    options.topic,
                    options.labels,
                    options.selection,
                    report.skipped,
                )
            )
    taken = _class_dirs_of(old_rows, out)
    mapping = class_dirs({f.label for plan in unplaced for f in plan}, taken)
    plans = [
        place_frames(plan, source.name, mapping)
        for plan, source in zip(unplaced, sources, strict=True)
    ]
    sequences: dict[str, tuple[str, int]] = {}
    for frame in (f for plan in plans for f in plan):
        cls, count = sequences.get(frame.sequence, (frame.class_dir, 0))
        sequences[frame.sequence] = (cls, count + 1)
    existing: dict[str, tuple[str, str, int]] = {}
    for row in old_rows:
        cls, split, count = existing.get(row["sequence"], (row["class_dir"], row["split"], 0))
        existing[row["sequence"]] = (cls, split, count + 1)
    splits = assign_splits(sequences, options.split, options.seed, existing)

    created = _first_missing(out)
    out.mkdir(parents=True, exist_ok=True)
    if summary is None:
        begin_summary(out)
    _remove_orphans(out, {row["path"] for row in old_rows})
    # Rows whose image is gone (deleted by hand) are dropped, so this run writes them again.
    rows = {row["path"]: row for row in old_rows if (out / row["path"]).is_file()}
    total = sum(len(plan) for plan in plans)
    bar = Progress(total, enabled=progress)
    writer = _FrameWriter(options, splits, rows, report)
    try:
        for result, meta in _decoded(options, plans, sources, bar):
            writer.consume(meta, result)
    except (TlPerceptionError, OSError) as err:
        _roll_back(out, writer, created, new_dataset=summary is None)
        if isinstance(err, OSError):
            raise DatasetError(f"cannot write the dataset {str(out)!r}: {err}") from err
        raise
    finally:
        _remove_frame_temps(out)  # an interrupted run leaves no temp files behind
        bar.close()
    if not rows:  # an empty dataset is of no use and `read_dataset` refuses it: say why
        _roll_back(out, writer, created, new_dataset=summary is None)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items()))
        raise DatasetError(
            f"no frame of {', '.join(repr(str(s.path)) for s in sources)} on {options.topic!r} "
            f"was kept ({skipped or 'the topic has no messages'}); nothing written"
        )
    records = {s["name"]: s for s in (summary or {}).get("sources", [])}
    records.update({s.name: s.record() for s in sources})
    write_dataset(
        out,
        rows.values(),
        records.values(),
        options=(summary or {}).get("options") or options.record(),
        last_run={
            "options": options.record(),
            "kept": sum(report.kept.values()),
            "skipped": dict(sorted(report.skipped.items())),
        },
    )
    report.seconds = time.monotonic() - started
    return report


@dataclass(frozen=True)
class _Meta:
    frame: PlannedFrame
    bag: str


class _FrameWriter:
    """Consumes decoded frames in bag order: dedup, naming, writing, manifest rows."""

    def __init__(
        self,
        options: ExtractOptions,
        splits: dict[str, str],
        rows: dict[str, dict[str, Any]],
        report: ExtractReport,
    ) -> None:
        self.options = options
        self.splits = splits
        self.rows = rows
        self.report = report
        self.topic_slug = slug(options.topic.replace("/", "_")) or "topic"
        self.last_hash: dict[str, int] = {}
        self.seen: set[str] = set()
        self.added: list[Path] = []  # images this run wrote, to remove if it fails
        self.new_dirs: list[Path] = []  # directories this run created

    def consume(self, meta: _Meta, result: FrameResult) -> None:
        if result.skip:
            self.report.skipped[result.skip] += 1
            return
        if not self._keep(meta, result):
            os.unlink(result.tmp_path)

    def _keep(self, meta: _Meta, result: FrameResult) -> bool:
        """Rename the frame's temp file into place and add its row; False when it is skipped."""
        frame = meta.frame
        if self.options.dedup is not None:
            last = self.last_hash.get(frame.sequence)
            if last is not None and hamming(last, result.phash) <= self.options.dedup:
                self.report.skipped["near_duplicate"] += 1
                return False
            self.last_hash[frame.sequence] = result.phash
        split = self.splits[frame.sequence]
        name = f"{meta.bag}_{self.topic_slug}_{frame.stamp_ns}.{self.options.fmt}"
        rel = f"{split}/{frame.class_dir}/{name}"
        if rel in self.seen:
            self.report.skipped["duplicate_stamp"] += 1
            return False
        self.seen.add(rel)
        if rel in self.rows:
            self.report.skipped["already_in_dataset"] += 1
            return False
        target = self.options.out / rel
        for directory in (target.parent.parent, target.parent):
            if not directory.is_dir():
                directory.mkdir()
                self.new_dirs.append(directory)
        os.chmod(result.tmp_path, FILE_MODE)
        os.replace(result.tmp_path, target)
        self.added.append(target)
        self.rows[rel] = {
            "path": rel,
            "split": split,
            "label": frame.label,
            "class_dir": frame.class_dir,
            "bag": meta.bag,
            "topic": self.options.topic,
            "stamp_ns": frame.stamp_ns,
            "width": result.width,
            "height": result.height,
            "encoding": frame.encoding,
            "sha256": result.sha256,
            "sequence": frame.sequence,
        }
        self.report.kept[(frame.class_dir, split)] += 1
        return True


def _jobs(
    options: ExtractOptions, plans: list[list[PlannedFrame]], sources: list[BagSource]
) -> Iterator[tuple[_Meta, tuple[Any, ...]]]:
    """Raw frames of the planned messages, re-read in the same order as pass 1."""
    for source, plan in zip(sources, plans, strict=True):
        wanted = {f.index: f for f in plan}
        if not wanted:
            continue
        with open_bag(source.path) as reader:
            for index, (conn, _log_ns, raw) in enumerate(
                iter_messages(reader, source.path, [options.topic])
            ):
                frame = wanted.get(index)
                if frame is None:
                    continue
                msg = deserialize(reader, source.path, raw, conn.msgtype)
                yield _Meta(frame, source.name), message_fields(msg, IMAGE_TYPES[conn.msgtype])


def _decoded(
    options: ExtractOptions,
    plans: list[list[PlannedFrame]],
    sources: list[BagSource],
    bar: Progress,
) -> Iterator[tuple[FrameResult, _Meta]]:
    """(result, meta) in bag order; the work runs in `options.workers` processes."""
    jobs = _jobs(options, plans, sources)
    tmp_dir = str(options.out)  # same file system as the images: renames are atomic
    if options.workers <= 1:
        for meta, fields in jobs:
            yield _process_chunk([fields], options.crop, options.fmt, tmp_dir)[0], meta
            bar.update(1)
        return
    pending: deque[tuple[list[_Meta], Future[list[FrameResult]]]] = deque()
    # forkserver, not fork: forking a process whose OpenCV/TensorFlow threads hold locks can
    # deadlock the children (seen when the demo ran synth and extract in one process).
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(options.workers, context, initializer=init_worker) as pool:
        chunk: list[tuple[_Meta, tuple[Any, ...]]] = []

        def submit() -> None:
            metas = [m for m, _ in chunk]
            fields = [f for _, f in chunk]
            fut = pool.submit(_process_chunk, fields, options.crop, options.fmt, tmp_dir)
            pending.append((metas, fut))
            chunk.clear()

        def drain(limit: int) -> Iterator[tuple[FrameResult, _Meta]]:
            while len(pending) > limit:
                metas, fut = pending.popleft()
                yield from zip(fut.result(), metas, strict=True)
                bar.update(len(metas))

        for job in jobs:
            chunk.append(job)
            if len(chunk) >= CHUNK:
                submit()
                yield from drain(3 * options.workers)
        if chunk:
            submit()
        yield from drain(0)


def _existing_dataset(out: Path) -> tuple[list[dict[str, str]], dict[str, Any] | None]:
    """Rows and summary of the dataset at `out`; ([], None) when `out` is absent or empty."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {str(out)!r} is a file; give a directory")
    if not out.exists() or not any(out.iterdir()):
        return [], None
    summary = read_summary(out)
    if summary is None:
        raise DatasetError(
            f"--out {str(out)!r} is not empty and holds no dataset.json: it is not a dataset "
            "made by extract; choose an empty or new directory"
        )
    if summary["version"] != VERSION:
        raise DatasetError(
            f"--out {str(out)!r} is a version {summary['version']} dataset, which names bags by "
            "file name and cannot tell two same-named bags apart; extract into a new --out"
        )
    return read_manifest(out), summary


def _class_dirs_of(rows: list[dict[str, str]], out: Path) -> dict[str, str]:
    """label -> class_dir of an existing dataset, where each label has exactly one directory
    and each directory one label (as extraction writes them)."""
    mapping: dict[str, str] = {}
    for row in rows:
        label = row.get("label") or ""
        if mapping.setdefault(label, row["class_dir"]) != row["class_dir"]:
            raise DatasetError(
                f"{str(out / MANIFEST_FILE)!r}: label {label!r} is in class directories "
                f"{mapping[label]!r} and {row['class_dir']!r}; extract into a new --out"
            )
    try:
        return class_dirs((), mapping)
    except DatasetError as err:
        raise DatasetError(
            f"{str(out / MANIFEST_FILE)!r}: {err}; extract into a new --out"
        ) from err


def _check_distinct(sources: list[BagSource]) -> None:
    """One bag given twice (or a copy of it) would write every frame twice."""
    seen: dict[str, BagSource] = {}
    for source in sources:
        first = seen.setdefault(source.sha256, source)
        if first is not source:
            raise DatasetError(
                f"bags {str(first.path)!r} and {str(source.path)!r} have identical content; "
                "give each bag once"
            )


def _check_rerun(
    options: ExtractOptions, summary: dict[str, Any] | None, sources: list[BagSource]
) -> None:
    """A re-run must repeat the dataset's options and bags unless `--append` adds to it."""
    if summary is None:
        return
    known = {s.get("name"): s.get("sha256") for s in summary.get("sources", [])}
    for source in sources:
        if source.name in known and known[source.name] != source.sha256:
            raise DatasetError(
                f"bag {str(source.path)!r} is named {source.name!r} like another bag of "
                f"{str(options.out)!r} with different content; extract into a new --out"
            )
    if options.append or "options" not in summary:
        return
    new = [str(s.path) for s in sources if s.name not in known]
    if summary["options"] != json.loads(json.dumps(options.record())) or new:
        what = f"bags not in it ({', '.join(new)})" if new else "other options"
        raise DatasetError(
            f"--out {str(options.out)!r} holds a dataset made with {what}; pass --append to add "
            "bags to it (keeping its splits) or choose a new --out"
        )


def _first_missing(path: Path) -> Path | None:
    """The topmost directory of `path` that does not exist yet (what mkdir -p would create)."""
    if path.exists():
        return None
    top = path
    while not top.parent.exists():
        top = top.parent
    return top


def _roll_back(out: Path, writer: _FrameWriter, created: Path | None, new_dataset: bool) -> None:
    """Undo a failed pass 2: the dataset is as it was before (or absent, if it was new)."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for path in writer.added:
        path.unlink(missing_ok=True)
    for directory in reversed(writer.new_dirs):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    if new_dataset:  # `out` existed but was empty
        (out / SUMMARY_FILE).unlink(missing_ok=True)


def _remove_frame_temps(out: Path) -> None:
    """Workers' encoded frames that were never renamed into place."""
    for stale in out.glob(".frame-*.tmp"):
        stale.unlink(missing_ok=True)


def _remove_orphans(out: Path, listed: set[str]) -> None:
    """Delete images and temp files that the manifest does not list (an interrupted run's)."""
    _remove_frame_temps(out)
    for split in SPLITS:
        split_dir = out / split
        if not split_dir.is_dir():
            continue
        for path in split_dir.glob("*/*"):
            rel = path.relative_to(out).as_posix()
            stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
            if (is_image_file(path) and rel not in listed) or stale_tmp:
                path.unlink()
