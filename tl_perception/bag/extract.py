"""`extract`: bags -> a labelled, leakage-free dataset directory (see docs/extract.md).

Two passes per bag. Pass 1 (main process, no decoding) validates everything, picks frames, labels
and sequences, and assigns sequences to splits; nothing is written until every bag has been read
once, so bad input leaves nothing behind. Pass 2 sends raw frames in chunks to worker processes
(decode, crop, hash, encode) and consumes results in bag order, so dedup and the written files do
not depend on `--workers`. Images are written under temp names and renamed; the manifest and
`dataset.json` are written atomically at the end. Images found on disk but not in the manifest
(left by an interrupted run) are deleted at the start of the next run, which rewrites them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.bag.frames import Crop, FrameResult, hamming, init_worker, message_fields
from tl_perception.bag.frames import process_chunk as _process_chunk
from tl_perception.bag.plan import FrameFilter, LabelSpec, PlannedFrame, plan_bag
from tl_perception.bag.progress import Progress
from tl_perception.bag.reader import (
    IMAGE_TYPES,
    LABEL_TYPES,
    bag_name,
    deserialize,
    iter_messages,
    open_bag,
    require_topic,
)
from tl_perception.bag.splits import assign_splits
from tl_perception.dataset import (
    FORMAT,
    MANIFEST_FILE,
    SPLITS,
    SUMMARY_FILE,
    VERSION,
    is_image_file,
    manifest_text,
    read_manifest,
    safe_class_dir,
)
from tl_perception.errors import DatasetError
from tl_perception.fsutil import FILE_MODE, atomic_write_json, atomic_write_text

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
    """Run an extraction; raises BagError/DatasetError on bad input before writing anything."""
    started = time.monotonic()
    out = options.out
    old_rows, summary = _existing_dataset(out)
    _check_rerun(options, summary)
    report = ExtractReport(out)
    names = [bag_name(p) for p in options.bags]
    if len(set(names)) != len(names):
        raise DatasetError(f"bags must have distinct names, got {names}; rename or copy one")
    plans: list[list[PlannedFrame]] = []
    for path, name in zip(options.bags, names, strict=True):
        with open_bag(path) as reader:
            require_topic(reader, path, options.topic, tuple(IMAGE_TYPES), "image")
            if options.labels.kind == "topic":
                require_topic(reader, path, options.labels.topic, LABEL_TYPES, "label")
            plans.append(
                plan_bag(
                    reader,
                    path,
                    name,
                    options.topic,
                    options.labels,
                    options.selection,
                    report.skipped,
                )
            )
    sequences: dict[str, tuple[str, int]] = {}
    for frame in (f for plan in plans for f in plan):
        cls, count = sequences.get(frame.sequence, (frame.class_dir, 0))
        sequences[frame.sequence] = (cls, count + 1)
    existing: dict[str, tuple[str, str, int]] = {}
    for row in old_rows:
        cls, split, count = existing.get(row["sequence"], (row["class_dir"], row["split"], 0))
        existing[row["sequence"]] = (cls, split, count + 1)
    splits = assign_splits(sequences, options.split, options.seed, existing)

    out.mkdir(parents=True, exist_ok=True)
    if summary is None:
        atomic_write_json(
            out / SUMMARY_FILE, {"format": FORMAT, "version": VERSION, "status": "incomplete"}
        )
    _remove_orphans(out, {row["path"] for row in old_rows})
    rows = {row["path"]: row for row in old_rows}
    total = sum(len(plan) for plan in plans)
    bar = Progress(total, enabled=progress)
    writer = _FrameWriter(options, splits, rows, report)
    try:
        for result, meta in _decoded(options, plans, names, bar):
            writer.consume(meta, result)
    finally:
        _remove_frame_temps(out)  # an interrupted run leaves no temp files behind
    bar.close()
    _write_summary(options, names, rows, report, summary)
    atomic_write_text(out / MANIFEST_FILE, manifest_text(rows.values()))
    report.seconds = time.monotonic() - started
    return report


@dataclass(frozen=True)
class _Meta:
    frame: PlannedFrame
    bag: str
    stamp_ns: int
    encoding: str


class _FrameWriter:
    """Consumes decoded frames in bag order: dedup, naming, writing, manifest rows."""

    def __init__(self, options: ExtractOptions, splits: dict[str, str], rows: dict, report: Any):
        self.options = options
        self.splits = splits
        self.rows = rows
        self.report = report
        self.topic_slug = safe_class_dir(options.topic.replace("/", "_"))
        self.last_hash: dict[str, int] = {}
        self.seen: set[str] = set()

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
        name = f"{meta.bag}_{self.topic_slug}_{meta.stamp_ns}.{self.options.fmt}"
        rel = f"{split}/{frame.class_dir}/{name}"
        if rel in self.seen:
            self.report.skipped["duplicate_stamp"] += 1
            return False
        self.seen.add(rel)
        if rel in self.rows:
            self.report.skipped["already_in_dataset"] += 1
            return False
        target = self.options.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(result.tmp_path, FILE_MODE)
        os.replace(result.tmp_path, target)
        self.rows[rel] = {
            "path": rel,
            "split": split,
            "label": frame.label,
            "class_dir": frame.class_dir,
            "bag": meta.bag,
            "topic": self.options.topic,
            "stamp_ns": meta.stamp_ns,
            "width": result.width,
            "height": result.height,
            "encoding": meta.encoding,
            "sha256": result.sha256,
            "sequence": frame.sequence,
        }
        self.report.kept[(frame.class_dir, split)] += 1
        return True


def _jobs(
    options: ExtractOptions, plans: list[list[PlannedFrame]], names: list[str]
) -> Iterator[tuple[_Meta, tuple[Any, ...]]]:
    """Raw frames of the planned messages, re-read in the same order as pass 1."""
    for path, name, plan in zip(options.bags, names, plans, strict=True):
        wanted = {f.index: f for f in plan}
        if not wanted:
            continue
        with open_bag(path) as reader:
            for index, (conn, log_ns, raw) in enumerate(
                iter_messages(reader, path, [options.topic])
            ):
                frame = wanted.get(index)
                if frame is None:
                    continue
                msg = deserialize(reader, path, raw, conn.msgtype)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                encoding = getattr(msg, "encoding", None) or f"compressed:{msg.format}"
                yield _Meta(frame, name, stamp or log_ns, encoding), message_fields(msg)


def _decoded(
    options: ExtractOptions, plans: list[list[PlannedFrame]], names: list[str], bar: Progress
) -> Iterator[tuple[FrameResult, _Meta]]:
    """(result, meta) in bag order; the work runs in `options.workers` processes."""
    jobs = _jobs(options, plans, names)
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
    summary_path = out / SUMMARY_FILE
    if not summary_path.is_file():
        raise DatasetError(
            f"--out {str(out)!r} is not empty and holds no {SUMMARY_FILE}: it is not a dataset "
            "made by extract; choose an empty or new directory"
        )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {str(summary_path)!r}: {err}") from err
    if summary.get("format") != FORMAT or int(summary.get("version", 0)) > VERSION:
        raise DatasetError(
            f"{str(summary_path)!r} is not a {FORMAT} version <= {VERSION} summary; "
            "choose another --out"
        )
    return read_manifest(out), summary


def _check_rerun(options: ExtractOptions, summary: dict[str, Any] | None) -> None:
    """A re-run must repeat the dataset's options and bags unless `--append` adds to it."""
    if summary is None or options.append or "options" not in summary:
        return
    known = {s["name"] for s in summary.get("sources", [])}
    new = [bag_name(p) for p in options.bags if bag_name(p) not in known]
    if summary["options"] != json.loads(json.dumps(options.record())) or new:
        raise DatasetError(
            f"--out {str(options.out)!r} holds a dataset made with other options or bags; "
            "pass --append to add bags to it (keeping its splits) or choose a new --out"
        )


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


def _write_summary(
    options: ExtractOptions,
    names: list[str],
    rows: dict[str, dict[str, Any]],
    report: ExtractReport,
    summary: dict[str, Any] | None,
) -> None:
    counts: dict[str, dict[str, int]] = {}
    labels: dict[str, set[str]] = {}
    for row in rows.values():
        split_counts = counts.setdefault(str(row["split"]), {})
        split_counts[row["class_dir"]] = split_counts.get(row["class_dir"], 0) + 1
        labels.setdefault(str(row["class_dir"]), set()).add(str(row["label"]))
    sources = {s["name"]: s for s in (summary or {}).get("sources", [])}
    for path, name in zip(options.bags, names, strict=True):
        sources[name] = {"name": name, "path": os.fspath(path.resolve())}
    previous = (summary or {}).get("options")
    atomic_write_json(
        options.out / SUMMARY_FILE,
        {
            "format": FORMAT,
            "version": VERSION,
            "status": "complete",
            "total": len(rows),
            "counts": {s: dict(sorted(c.items())) for s, c in sorted(counts.items())},
            "class_labels": {c: sorted(v) for c, v in sorted(labels.items())},
            "sources": [sources[n] for n in sorted(sources)],
            "options": previous or options.record(),
            "last_run": {
                "options": options.record(),
                "kept": sum(report.kept.values()),
                "skipped": dict(sorted(report.skipped.items())),
            },
        },
    )
