"""The units of an extraction, run by an engine (`tl_perception.engine`) in any process.

Two kinds, in two waves, with the driver's reduce between them (`extract.py`):

1. `plan_unit` (one per bag): names the bag by its content (reads it once), validates it and
   plans its frames, labels and sequences (`plan.plan_bag` / `roiplan.plan_roi_bag`, no
   decoding), cuts it into time windows of about `unit_bytes` of image messages, writes the plan
   to the work directory and returns a small `PlanResult` (labels, per-sequence counts, skip
   counts): all the driver needs to give labels class directories and sequences splits.
2. `window_unit` (one per window): reads only its window of the bag, decodes, crops, hashes and
   encodes each planned frame into temp files (`frames.process_frame`). A bag of one window is
   finished in the same task (`finish.finish_bag`); the windows of a larger bag are finished by
   one `finish_unit` once all of them are done.

Each unit writes its marker last (`workdir.write_marker`), so a re-run skips it. A bag that
cannot be read raises `BagError`: the engine records it as failed and the other bags go on.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.bag.boxes import BOX_TYPES
from tl_perception.bag.finish import Assignment, BagResult, WindowFrames, finish_bag
from tl_perception.bag.frames import FrameResult, RoiJob, Work, message_fields, process_frame
from tl_perception.bag.negatives import negative_seed
from tl_perception.bag.options import ExtractOptions
from tl_perception.bag.plan import PlannedFrame, plan_bag
from tl_perception.bag.planfile import (
    frame_from_json,
    frame_to_json,
    result_from_json,
    result_to_json,
)
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
from tl_perception.bag.roiplan import RoiCounts, RoiRequest, plan_roi_bag
from tl_perception.bag.workdir import (
    WorkDir,
    fingerprint,
    read_json,
    read_marker,
    write_json,
    write_marker,
)
from tl_perception.errors import BagError


@dataclass(frozen=True)
class Shared:
    """What every unit of a run shares: sent once per worker process, not per unit."""

    options: ExtractOptions
    work: WorkDir


@dataclass(frozen=True)
class Window:
    """A time window of a bag: log times [start_ns, stop_ns) (None: open), whose first message
    on the image topic has index `first_index`; `frames` planned frames, `nbytes` of them."""

    first_index: int
    start_ns: int | None
    stop_ns: int | None
    frames: int
    nbytes: int


@dataclass(frozen=True)
class SeqCount:
    """How many images of `label` a bag-local sequence is planned to hold: `kind` "run" (whole
    frames; `local` its run number), "track" (crops; its bag-local track) or "block" (negatives;
    its time block)."""

    kind: str
    local: str
    label: str
    count: int


@dataclass(frozen=True)
class PlanTask:
    key: str
    path: Path
    digest: str  # of the options and the bag's fingerprint


@dataclass(frozen=True)
class PlanResult:
    """A planned bag, small: what the driver's reduce needs, and where its windows are."""

    key: str
    path: Path
    source: BagSource
    labels: tuple[str, ...]
    sequences: tuple[SeqCount, ...]
    windows: tuple[Window, ...]
    skipped: dict[str, int] = field(default_factory=dict)
    boxes_skipped: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    matched: tuple[int, ...] = ()  # rows of a box CSV that paired with one of its images
    fingerprint: tuple[Any, ...] = ()

    @property
    def frames(self) -> int:
        return sum(w.frames for w in self.windows)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": str(self.path),
            "source": self.source.record(),
            "labels": list(self.labels),
            "sequences": [[s.kind, s.local, s.label, s.count] for s in self.sequences],
            "windows": [
                [w.first_index, w.start_ns, w.stop_ns, w.frames, w.nbytes] for w in self.windows
            ],
            "skipped": self.skipped,
            "boxes_skipped": self.boxes_skipped,
            "messages": self.messages,
            "matched": list(self.matched),
            "fingerprint": list(self.fingerprint),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanResult:
        return cls(
            key=data["key"],
            path=Path(data["path"]),
            source=BagSource.from_record(data["source"]),
            labels=tuple(data["labels"]),
            sequences=tuple(SeqCount(*s) for s in data["sequences"]),
            windows=tuple(Window(*w) for w in data["windows"]),
            skipped=dict(data["skipped"]),
            boxes_skipped=dict(data["boxes_skipped"]),
            messages=dict(data["messages"]),
            matched=tuple(data["matched"]),
            fingerprint=tuple(data["fingerprint"]),
        )


def plan_unit(shared: Shared, task: PlanTask) -> PlanResult:
    """Hash, validate and plan one bag (see the module docstring).

    Raises:
        BagError: the bag cannot be read, lacks a topic, or holds messages that are not what
            their type says.
    """
    options = shared.options
    printed = tuple(fingerprint(task.path))
    source = bag_source(task.path)
    counts = RoiCounts()
    plan, matched = _plan(options, source, counts)
    windows = cut_windows(plan, options.unit_bytes)
    parts, start = [], 0
    for window in windows:
        parts.append([frame_to_json(f) for f in plan[start : start + window.frames]])
        start += window.frames
    write_json(shared.work.plan(task.key), parts)
    result = PlanResult(
        key=task.key,
        path=task.path,
        source=source,
        labels=tuple(sorted(_labels(plan))),
        sequences=_sequences(plan),
        windows=windows,
        skipped=dict(counts.frames),
        boxes_skipped=dict(counts.boxes),
        messages=dict(counts.messages),
        matched=tuple(sorted(matched)),
        fingerprint=printed,
    )
    write_marker(shared.work.plan(task.key), task.digest, result.to_json())
    return result


def _plan(
    options: ExtractOptions, source: BagSource, counts: RoiCounts
) -> tuple[list[PlannedFrame], set[int]]:
    path = source.path
    with open_bag(path) as reader:
        require_topic(reader, path, options.topic, tuple(IMAGE_TYPES), "image")
        if options.labels.kind == "topic":
            require_topic(reader, path, options.labels.topic, LABEL_TYPES, "label")
        if options.rois is None:
            plan = plan_bag(
                reader, path, options.topic, options.labels, options.selection, counts.frames
            )
            return plan, set()
        if options.rois.boxes.kind == "topic":
            require_topic(reader, path, options.rois.boxes.topic, BOX_TYPES, "boxes")
        request = RoiRequest(options.topic, options.labels, options.selection, options.rois)
        return plan_roi_bag(reader, path, request, counts)


def _labels(plan: list[PlannedFrame]) -> set[str]:
    """Labels that need a class directory: frames', boxes', and negatives'."""
    out: set[str] = set()
    for frame in plan:
        if not frame.roi:
            out.add(frame.label)
            continue
        out.update(box.label for box in frame.boxes)
        if frame.negatives:
            out.add(frame.label)
    return out


def _sequences(plan: list[PlannedFrame]) -> tuple[SeqCount, ...]:
    """Images per (sequence, label) the plan holds, as `extract` counted them for splits."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for frame in plan:
        if not frame.roi:
            counts["run", str(frame.run), frame.label] += 1
            continue
        for box in frame.boxes:
            counts["track", box.track, box.label] += 1
        if frame.negatives:
            counts["block", str(frame.run), frame.label] += frame.negatives
    return tuple(SeqCount(*key, n) for key, n in sorted(counts.items()))


def cut_windows(plan: list[PlannedFrame], unit_bytes: int) -> tuple[Window, ...]:
    """One window for a bag up to `unit_bytes` of planned image messages, else about equal
    windows, each starting at a frame later than the message before it (so reading from its log
    time starts with it)."""
    total = sum(f.nbytes for f in plan)
    count = max(1, math.ceil(total / unit_bytes)) if plan else 1
    target = total / count
    starts = [0]
    acc = 0
    for pos, frame in enumerate(plan):
        boundary = frame.prev_ns is not None and frame.prev_ns < frame.log_ns
        if pos and boundary and acc >= target * len(starts) and len(starts) < count:
            starts.append(pos)
        acc += frame.nbytes
    windows = []
    for k, begin in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(plan)
        first = plan[begin] if k else None
        stop = plan[end].log_ns if end < len(plan) else None
        windows.append(
            Window(
                first_index=first.index if first is not None else 0,
                start_ns=first.log_ns if first is not None else None,
                stop_ns=stop,
                frames=end - begin,
                nbytes=sum(f.nbytes for f in plan[begin:end]),
            )
        )
    return tuple(windows)


@dataclass(frozen=True)
class WindowTask:
    """Decode window `index` of a planned bag; with `finish` (a bag of one window), finish the
    bag in the same task."""

    plan: PlanResult
    index: int
    digest: str
    finish: Assignment | None = None


@dataclass(frozen=True)
class WindowResult:
    key: str
    index: int
    frames: int  # planned frames decoded
    bag: BagResult | None = None  # when the task finished its bag too


def window_unit(shared: Shared, task: WindowTask) -> WindowResult:
    """Decode one window into temp files (see the module docstring).

    Raises:
        BagError: the bag changed since it was planned, or cannot be read any more.
    """
    plan = task.plan
    if tuple(fingerprint(plan.path)) != plan.fingerprint:
        raise BagError(f"bag {str(plan.path)!r} changed since it was planned; run again")
    frames = [frame_from_json(f) for f in read_json(shared.work.plan(plan.key))[task.index]]
    stage = shared.work.window(plan.key, task.index)
    shutil.rmtree(stage, ignore_errors=True)  # a previous attempt's temp files
    stage.mkdir(parents=True)
    results = _decode(shared.options, plan, task.index, frames, str(stage))
    if task.finish is not None:
        done = WindowFrames(frames, results)
        bag = finish_bag(shared.options, shared.work, task.finish, [done])
        return WindowResult(plan.key, task.index, len(frames), bag)
    record = [[index, [result_to_json(r) for r in out]] for index, out in results.items()]
    write_json(stage.with_suffix(".json"), record)
    write_marker(stage.with_suffix(".json"), task.digest, {"frames": len(frames)})
    return WindowResult(plan.key, task.index, len(frames))


def _decode(
    options: ExtractOptions,
    plan: PlanResult,
    index: int,
    frames: list[PlannedFrame],
    stage: str,
) -> dict[int, list[FrameResult]]:
    """Frame index -> what `process_frame` made of it, for the window's planned frames."""
    window = plan.windows[index]
    wanted = {f.index: f for f in frames}
    if not wanted:  # nothing planned (every frame skipped): no need to read the bag again
        return {}
    work = Work(
        fmt=options.fmt,
        tmp_dir=stage,  # same file system as the dataset: the finish renames
        crop=options.crop,
        policy=options.rois.policy if options.rois is not None else None,
    )
    results: dict[int, list[FrameResult]] = {}
    path = plan.path
    with open_bag(path) as reader:
        messages = iter_messages(reader, path, [options.topic], window.start_ns, window.stop_ns)
        for ordinal, (conn, _log_ns, raw) in enumerate(messages):
            frame = wanted.get(window.first_index + ordinal)
            if frame is None:
                continue
            msg = deserialize(reader, path, raw, conn.msgtype)
            fields = message_fields(msg, IMAGE_TYPES[conn.msgtype])
            results[frame.index] = process_frame(fields, work, _roi_job(options, plan, frame))
    if len(results) != len(wanted):
        raise BagError(
            f"bag {str(path)!r}: {len(wanted) - len(results)} planned frames of window {index} "
            "were not found again; the bag changed since it was planned"
        )
    return results


def _roi_job(options: ExtractOptions, plan: PlanResult, frame: PlannedFrame) -> RoiJob | None:
    if not frame.roi:
        return None
    return RoiJob(
        boxes=tuple(b.box for b in frame.boxes),
        avoid=frame.avoid,
        negatives=frame.negatives,
        seed=negative_seed(options.seed, plan.source.name, frame.index),
    )


@dataclass(frozen=True)
class FinishTask:
    """Finish a bag of several windows, all decoded."""

    plan: PlanResult
    assignment: Assignment


def finish_unit(shared: Shared, task: FinishTask) -> BagResult:
    """Dedup, name and place the images of every window of a bag (`finish.finish_bag`)."""
    work, key = shared.work, task.plan.key
    plans = read_json(work.plan(key))
    windows = []
    for index, frames in enumerate(plans):
        stage = work.window(key, index)
        record = read_json(stage.with_suffix(".json"))
        results = {int(i): [result_from_json(r, str(stage)) for r in out] for i, out in record}
        windows.append(WindowFrames([frame_from_json(f) for f in frames], results))
    return finish_bag(shared.options, work, task.assignment, windows)


def window_done(work: WorkDir, key: str, index: int, unit_digest: str) -> bool:
    """Whether window `index` of bag `key` is decoded for exactly these inputs."""
    return read_marker(work.window(key, index).with_suffix(".json"), unit_digest) is not None
