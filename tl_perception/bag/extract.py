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

from tl_perception.bag.boxes import BOX_TYPES
from tl_perception.bag.frames import (
    Crop,
    FrameResult,
    RoiJob,
    Work,
    hamming,
    init_worker,
    message_fields,
)
from tl_perception.bag.frames import process_chunk as _process_chunk
from tl_perception.bag.negatives import negative_seed
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
from tl_perception.bag.roiplan import (
    MAX_NEGATIVES,
    RoiCounts,
    RoiOptions,
    RoiRequest,
    place_roi_frames,
    plan_roi_bag,
    roi_labels,
)
from tl_perception.bag.splits import assign_splits
from tl_perception.crop import Box
from tl_perception.dataset import (
    EXTENDABLE_VERSIONS,
    SPLITS,
    SUMMARY_FILE,
    begin_summary,
    class_dirs,
    crop_policy_of,
    is_empty_label,
    is_image_file,
    labels_to_dirs,
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
    rois: RoiOptions | None = None  # regions of interest: one crop per box (+ negatives)

    def record(self) -> dict[str, Any]:
        """The options that define the dataset's content (not paths or worker counts).

        `rois` is there only for a region-of-interest run, so a whole-frame dataset of an
        older version still has the options it was made with.
        """
        out = {
            "topic": self.topic,
            "labels": asdict(self.labels),
            "selection": asdict(self.selection),
            "crop": list(self.crop) if self.crop else None,
            "dedup": self.dedup,
            "format": self.fmt,
            "split": list(self.split) if self.split else None,
            "seed": self.seed,
        }
        if self.rois is not None:
            out["rois"] = self.rois.record()
        return out

    def policy_record(self) -> dict[str, Any] | None:
        """The `crop_policy` of dataset.json: None for whole frames."""
        return self.rois.policy.to_dict() if self.rois is not None else None


@dataclass
class ExtractReport:
    """What a run did: images kept per (class_dir, split), frames skipped per reason; for a
    region-of-interest run also boxes (and negatives) skipped per reason and box messages."""

    out: Path
    kept: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    boxes_skipped: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)

    @property
    def written(self) -> int:
        return sum(self.kept.values())

    def last_run(self, options: ExtractOptions) -> dict[str, Any]:
        """The `last_run` of dataset.json."""
        out: dict[str, Any] = {
            "options": options.record(),
            "kept": self.written,
            "skipped": dict(sorted(self.skipped.items())),
        }
        if options.rois is not None:
            out["boxes_skipped"] = dict(sorted(self.boxes_skipped.items()))
            out["box_messages"] = dict(sorted(self.messages.items()))
        return out


def extract(options: ExtractOptions, progress: bool = False) -> ExtractReport:
    """Run an extraction.

    Raises:
        BagError, DatasetError: bad input, found before anything is written; or a failure while
            writing (then this run's images are removed again), or no image kept at all.
    """
    started = time.monotonic()
    out = options.out
    _check_options(options)
    old_rows, summary = _existing_dataset(out)
    sources = [bag_source(p) for p in options.bags]
    _check_distinct(sources)
    _check_rerun(options, summary, sources)
    report = ExtractReport(out)
    taken = labels_to_dirs(old_rows, out, "extract into a new --out")
    plans = _plan(options, sources, taken, report)
    existing: dict[str, Counter[str]] = {}
    splits_of: dict[str, str] = {}
    for row in old_rows:
        existing.setdefault(row["sequence"], Counter())[row["class_dir"]] += 1
        splits_of.setdefault(row["sequence"], row["split"])
    splits = assign_splits(
        _majorities(_sequence_counts(plans)),
        options.split,
        options.seed,
        {seq: (cls, splits_of[seq], n) for seq, (cls, n) in _majorities(existing).items()},
    )

    created = _first_missing(out)
    out.mkdir(parents=True, exist_ok=True)
    if summary is None:
        begin_summary(out)
    _remove_orphans(out, {row["path"] for row in old_rows})
    # Rows whose image is gone (deleted by hand) are dropped, so this run writes them again.
    rows = {row["path"]: row for row in old_rows if (out / row["path"]).is_file()}
    bar = Progress(sum(len(plan) for plan in plans), enabled=progress)
    writer = _FrameWriter(options, splits, rows, report)
    try:
        for results, meta in _decoded(options, plans, sources, bar):
            writer.consume(meta, results)
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
        raise DatasetError(_nothing_kept(options, sources, report))
    records = {s["name"]: s for s in (summary or {}).get("sources", [])}
    records.update({s.name: s.record() for s in sources})
    write_dataset(
        out,
        rows.values(),
        records.values(),
        options=(summary or {}).get("options") or options.record(),
        last_run=report.last_run(options),
        crop_policy=options.policy_record(),
    )
    report.seconds = time.monotonic() - started
    return report


def _check_options(options: ExtractOptions) -> None:
    """Option combinations that cannot work, refused before anything is read."""
    labels, rois = options.labels, options.rois
    if labels.kind == "fixed" and is_empty_label(labels.name):
        raise DatasetError(f"--label {labels.name!r}: an empty label names no class")
    if rois is None:
        if labels.kind == "boxes":
            raise DatasetError("labels from boxes need --boxes-topic or --boxes-csv")
        return
    if options.crop is not None:
        raise DatasetError(
            "--crop cuts one fixed region of whole frames; with --boxes-topic/--boxes-csv the "
            "crop policy (--context, --square, --min-box) cuts each box: give one of them"
        )
    if is_empty_label(rois.background_label):
        raise DatasetError(f"--background-label {rois.background_label!r}: names no class")
    if not 0 <= rois.negatives <= MAX_NEGATIVES:
        raise DatasetError(f"--negatives {rois.negatives}: need 0..{MAX_NEGATIVES} per frame")


def _plan(
    options: ExtractOptions,
    sources: list[BagSource],
    taken: dict[str, str],
    report: ExtractReport,
) -> list[list[PlannedFrame]]:
    """Pass 1 over every bag: planned frames with class directories and sequences."""
    unplaced: list[list[PlannedFrame]] = []
    matched: set[int] = set()  # box CSV messages paired with an image of some bag
    counts = RoiCounts(report.skipped, report.boxes_skipped, report.messages)
    for source in sources:
        with open_bag(source.path) as reader:
            require_topic(reader, source.path, options.topic, tuple(IMAGE_TYPES), "image")
            if options.labels.kind == "topic":
                require_topic(reader, source.path, options.labels.topic, LABEL_TYPES, "label")
            if options.rois is None:
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
                continue
            boxes = options.rois.boxes
            if boxes.kind == "topic":
                require_topic(reader, source.path, boxes.topic, BOX_TYPES, "boxes")
            request = RoiRequest(options.topic, options.labels, options.selection, options.rois)
            plan, paired = plan_roi_bag(reader, source.path, request, counts)
            unplaced.append(plan)
            matched |= paired
    if options.rois is None:
        mapping = class_dirs({f.label for plan in unplaced for f in plan}, taken)
        return [
            place_frames(plan, s.name, mapping) for plan, s in zip(unplaced, sources, strict=True)
        ]
    csv_messages = options.rois.boxes.messages
    if options.rois.boxes.kind == "csv":
        rows = sum(len(m.boxes) for i, m in enumerate(csv_messages) if i not in matched)
        report.messages["csv_rows"] += sum(len(m.boxes) for m in csv_messages)
        report.messages["unpaired_csv_rows"] += rows
    mapping = class_dirs(roi_labels(unplaced), taken)
    return [
        place_roi_frames(plan, s.name, mapping) for plan, s in zip(unplaced, sources, strict=True)
    ]


def _sequence_counts(plans: list[list[PlannedFrame]]) -> dict[str, Counter[str]]:
    """Sequence -> images per class_dir it is planned to hold (crops of a track, negatives)."""
    counts: dict[str, Counter[str]] = {}
    for frame in (f for plan in plans for f in plan):
        if not frame.roi:
            counts.setdefault(frame.sequence, Counter())[frame.class_dir] += 1
            continue
        for box in frame.boxes:
            counts.setdefault(box.track, Counter())[box.class_dir] += 1
        if frame.negatives:
            counts.setdefault(frame.sequence, Counter())[frame.class_dir] += frame.negatives
    return counts


def _majorities(counts: dict[str, Counter[str]]) -> dict[str, tuple[str, int]]:
    """Sequence -> (its most frequent class_dir, its size): a track whose label changes is
    still one sequence, placed with the class most of its crops have."""
    return {
        seq: (min(by_class, key=lambda c: (-by_class[c], c)), sum(by_class.values()))
        for seq, by_class in counts.items()
    }


def _nothing_kept(options: ExtractOptions, sources: list[BagSource], report: ExtractReport) -> str:
    """Why a run kept nothing, in one line."""
    bags = ", ".join(repr(str(s.path)) for s in sources)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items()))
    if options.rois is None:
        return (
            f"no frame of {bags} on {options.topic!r} was kept "
            f"({skipped or 'the topic has no messages'}); nothing written"
        )
    boxes = ", ".join(f"{n} {why}" for why, n in sorted(report.boxes_skipped.items()))
    messages = ", ".join(f"{n} {why}" for why, n in sorted(report.messages.items()))
    return (
        f"no crop of {bags} on {options.topic!r} was kept (frames: {skipped or 'none skipped'}; "
        f"boxes: {boxes or 'none skipped'}; {messages or 'no box messages'}); nothing written"
    )


@dataclass(frozen=True)
class _Meta:
    frame: PlannedFrame
    bag: str


@dataclass(frozen=True)
class _Item:
    """One image to write: a whole frame, a box's crop or a negative."""

    label: str
    class_dir: str
    sequence: str
    suffix: str = ""  # of the file name: "" (frame), `_b<box index>`, `_n<negative index>`
    box: Box | None = None
    track: str = ""


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

    def consume(self, meta: _Meta, results: list[FrameResult]) -> None:
        """Keep or count every image a worker made of one frame."""
        frame = meta.frame
        if results[0].kind == "frame":  # a whole frame, or one that did not decode
            item = _Item(frame.label, frame.class_dir, frame.sequence)
            self._take(meta, item, results[0], self.report.skipped)
            return
        skipped = self.report.boxes_skipped
        boxes, negatives = results[: len(frame.boxes)], results[len(frame.boxes) :]
        for planned, result in zip(frame.boxes, boxes, strict=True):
            suffix = f"_b{planned.index}"
            item = _Item(
                planned.label, planned.class_dir, planned.track, suffix, planned.box, planned.track
            )
            self._take(meta, item, result, skipped)
        for j, result in enumerate(negatives):
            item = _Item(frame.label, frame.class_dir, frame.sequence, f"_n{j}", result.box)
            self._take(meta, item, result, skipped)

    def _take(self, meta: _Meta, item: _Item, result: FrameResult, skipped: Counter[str]) -> None:
        if result.skip:
            skipped[result.skip] += 1
        elif not self._keep(meta, item, result, skipped):
            os.unlink(result.tmp_path)

    def _keep(self, meta: _Meta, item: _Item, result: FrameResult, skipped: Counter[str]) -> bool:
        """Rename the image's temp file into place and add its row; False when it is skipped."""
        frame = meta.frame
        if self.options.dedup is not None:
            last = self.last_hash.get(item.sequence)
            if last is not None and hamming(last, result.phash) <= self.options.dedup:
                skipped["near_duplicate"] += 1
                return False
            self.last_hash[item.sequence] = result.phash
        split = self.splits[item.sequence]
        name = f"{meta.bag}_{self.topic_slug}_{frame.stamp_ns}{item.suffix}.{self.options.fmt}"
        rel = f"{split}/{item.class_dir}/{name}"
        if rel in self.seen:
            skipped["duplicate_stamp"] += 1
            return False
        self.seen.add(rel)
        if rel in self.rows:
            skipped["already_in_dataset"] += 1
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
            "label": item.label,
            "class_dir": item.class_dir,
            "bag": meta.bag,
            "topic": self.options.topic,
            "stamp_ns": frame.stamp_ns,
            "width": result.width,
            "height": result.height,
            "encoding": frame.encoding,
            "sha256": result.sha256,
            "sequence": item.sequence,
            **_box_columns(item),
        }
        self.report.kept[(item.class_dir, split)] += 1
        return True


def _box_columns(item: _Item) -> dict[str, str]:
    """`box_x, box_y, box_w, box_h` (exact float text) and `track`; empty for whole frames."""
    if item.box is None:
        return {}
    x, y, w, h = item.box.to_xywh()
    return {
        "box_x": repr(x),
        "box_y": repr(y),
        "box_w": repr(w),
        "box_h": repr(h),
        "track": item.track,
    }


Job = tuple[tuple[Any, ...], RoiJob | None]


def _jobs(
    options: ExtractOptions, plans: list[list[PlannedFrame]], sources: list[BagSource]
) -> Iterator[tuple[_Meta, Job]]:
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
                fields = message_fields(msg, IMAGE_TYPES[conn.msgtype])
                yield _Meta(frame, source.name), (fields, _roi_job(options, source, frame))


def _roi_job(options: ExtractOptions, source: BagSource, frame: PlannedFrame) -> RoiJob | None:
    if not frame.roi:
        return None
    return RoiJob(
        boxes=tuple(b.box for b in frame.boxes),
        avoid=frame.avoid,
        negatives=frame.negatives,
        seed=negative_seed(options.seed, source.name, frame.index),
    )


def _decoded(
    options: ExtractOptions,
    plans: list[list[PlannedFrame]],
    sources: list[BagSource],
    bar: Progress,
) -> Iterator[tuple[list[FrameResult], _Meta]]:
    """(results, meta) per frame in bag order; the work runs in `options.workers` processes."""
    jobs = _jobs(options, plans, sources)
    work = Work(
        fmt=options.fmt,
        tmp_dir=str(options.out),  # same file system as the images: renames are atomic
        crop=options.crop,
        policy=options.rois.policy if options.rois is not None else None,
    )
    if options.workers <= 1:
        for meta, job in jobs:
            yield _process_chunk([job], work)[0], meta
            bar.update(1)
        return
    pending: deque[tuple[list[_Meta], Future[list[list[FrameResult]]]]] = deque()
    # forkserver, not fork: forking a process whose OpenCV/TensorFlow threads hold locks can
    # deadlock the children (seen when the demo ran synth and extract in one process).
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(options.workers, context, initializer=init_worker) as pool:
        chunk: list[tuple[_Meta, Job]] = []

        def submit() -> None:
            metas = [m for m, _ in chunk]
            fut = pool.submit(_process_chunk, [j for _, j in chunk], work)
            pending.append((metas, fut))
            chunk.clear()

        def drain(limit: int) -> Iterator[tuple[list[FrameResult], _Meta]]:
            while len(pending) > limit:
                metas, fut = pending.popleft()
                yield from zip(fut.result(), metas, strict=True)
                bar.update(len(metas))

        for item in jobs:
            chunk.append(item)
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
    if summary["version"] not in EXTENDABLE_VERSIONS:
        raise DatasetError(
            f"--out {str(out)!r} is a version {summary['version']} dataset, which names bags by "
            "file name and cannot tell two same-named bags apart; extract into a new --out"
        )
    return read_manifest(out), summary


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
    _check_policy(options, summary)
    if options.append or "options" not in summary:
        return
    new = [str(s.path) for s in sources if s.name not in known]
    if summary["options"] != json.loads(json.dumps(options.record())) or new:
        what = f"bags not in it ({', '.join(new)})" if new else "other options"
        raise DatasetError(
            f"--out {str(options.out)!r} holds a dataset made with {what}; pass --append to add "
            "bags to it (keeping its splits) or choose a new --out"
        )


def _check_policy(options: ExtractOptions, summary: dict[str, Any]) -> None:
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
