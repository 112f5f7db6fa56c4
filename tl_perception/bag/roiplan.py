"""Pass 1 of a region-of-interest extraction: which boxes of which frames to crop, with which
label and track, and how many negatives to add (no image decoding).

Per bag: every image's header is read; box messages (a Detection2DArray topic or the rows of a
box CSV) are paired with images (`boxes.pair`); tracks are linked over all paired frames, before
any frame selection, so `--every` or `--start` never change which crops form one track. Then,
frame by frame: time window and `--every` -> paired with a box message -> anything to crop ->
`--min-interval` -> each box labelled (see `box_label`), boxes without a label counted
`no_label`. Rejections by the crop policy (`crop.REASONS`) are known only once a frame is
decoded and are counted by the worker's results.

Sequences (the unit of the split): the crops of a box are in the sequence of its *track*,
`<bag>/id:<Detection2D.id>` or `<bag>/iou:<n>` (tracks.py), so one object is never in two splits;
the negatives of a frame are in `<bag>:<background class dir>:<block>`, one per
`NEGATIVE_BLOCK_S` seconds of the bag, so background crops of one stretch of road stay together.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.bag.boxes import BoxMessage, BoxSpec, SourceBox, pair, read_box_topic
from tl_perception.bag.labels import LabelTrack
from tl_perception.bag.plan import (
    FrameFilter,
    LabelSpec,
    PlannedBox,
    PlannedFrame,
    Selector,
    frame_header,
    label_at,
    sequence_id,
)
from tl_perception.bag.reader import iter_messages
from tl_perception.bag.tracks import LinkFrame, link_tracks
from tl_perception.crop import CropPolicy
from tl_perception.dataset import is_empty_label
from tl_perception.stamps import SEC

BACKGROUND = "background"
NEGATIVE_BLOCK_S = 5.0
MAX_NEGATIVES = 64


@dataclass(frozen=True)
class RoiOptions:
    """A region-of-interest run: where boxes come from, how they are cropped, negatives."""

    boxes: BoxSpec
    policy: CropPolicy = field(default_factory=CropPolicy)
    negatives: int = 0
    background_label: str = BACKGROUND

    def record(self) -> dict[str, Any]:
        """The `options.rois` of dataset.json (the policy is its own top-level `crop_policy`)."""
        return {
            "boxes": self.boxes.record(),
            "negatives": self.negatives,
            "background_label": self.background_label,
        }


@dataclass(frozen=True)
class RoiRequest:
    """What pass 1 needs to plan one bag."""

    topic: str
    labels: LabelSpec
    selection: FrameFilter
    rois: RoiOptions


@dataclass
class RoiCounts:
    """What pass 1 counted: frames skipped (per reason), boxes skipped, box messages."""

    frames: Counter[str] = field(default_factory=Counter)
    boxes: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Image:
    index: int
    log_ns: int
    stamp_ns: int  # header stamp, or log time when it is 0
    encoding: str
    nbytes: int
    prev_ns: int | None  # the previous image's log time


def box_label(labels: LabelSpec, frame_label: str | None, source: SourceBox) -> str | None:
    """A box's label: the frame's when a frame label was asked for (`--label`, `--label-topic`,
    `--label-csv`, `--unlabeled`: it wins over the detector's class, which is often generic),
    else the box's own (best class_id, CSV label). None: `no_label`."""
    if labels.kind == "boxes":
        return None if is_empty_label(source.label) else source.label
    return frame_label


def plan_roi_bag(
    reader: Any, path: Path, request: RoiRequest, counts: RoiCounts
) -> tuple[list[PlannedFrame], set[int]]:
    """The planned frames of one open bag, and which of `request.rois.boxes.messages` (a CSV's)
    paired with one of its images.

    Raises:
        BagError: an image or box message is not what its topic's type says.
    """
    spec = request.rois.boxes
    images = _images(reader, path, request.topic)
    topic = spec.kind == "topic"
    messages = read_box_topic(reader, path, spec.topic) if topic else list(spec.messages)
    times = [img.log_ns if spec.key == "time" else img.stamp_ns for img in images]
    pairs = pair(times, [m.t_ns for m in messages], spec.tolerance_ns)
    if topic:
        counts.messages["box_messages"] += len(messages)
        counts.messages["unpaired_box_messages"] += len(messages) - len(pairs)
    labels = _labels(reader, path, request, images, {i: messages[m] for i, m in pairs.items()})
    tracks = _tracks(images, labels)
    selector = Selector(request.selection, reader.start_time)
    unpaired = "unpaired_image" if topic else "not_in_boxes_csv"
    planned: list[PlannedFrame] = []
    for pos, image in enumerate(images):
        reason = selector.window(image.log_ns)
        if reason is None and pos not in labels:
            reason = unpaired
        if reason is not None:
            counts.frames[reason] += 1
            continue
        frame = _frame(request.rois, image, labels[pos], tracks[pos], reader.start_time)
        unlabelled = len(frame.avoid) - len(frame.boxes)
        if not frame.boxes and not frame.negatives:  # nothing to write
            if unlabelled:  # its boxes are what is skipped
                counts.boxes["no_label"] += unlabelled
            else:
                counts.frames["no_boxes"] += 1
            continue
        if selector.too_soon(frame.log_ns):
            counts.frames["min_interval"] += 1
            continue
        selector.keep(image.log_ns)
        if unlabelled:
            counts.boxes["no_label"] += unlabelled
        planned.append(frame)
    return planned, set(pairs.values())


def _images(reader: Any, path: Path, topic: str) -> list[_Image]:
    """Every image of the topic, header read (and validated)."""
    out: list[_Image] = []
    for index, (conn, log_ns, raw) in enumerate(iter_messages(reader, path, [topic])):
        stamp_ns, encoding = frame_header(reader, path, topic, conn.msgtype, raw)
        prev_ns = out[-1].log_ns if out else None
        out.append(_Image(index, log_ns, stamp_ns or log_ns, encoding, len(raw), prev_ns))
    return out


def _labels(
    reader: Any,
    path: Path,
    request: RoiRequest,
    images: list[_Image],
    paired: Mapping[int, BoxMessage],
) -> dict[int, list[tuple[SourceBox, str | None]]]:
    """Image position -> its boxes, each with its label (None: no label), for paired images."""
    spec = request.labels
    track = LabelTrack.read(reader, path, spec.topic) if spec.kind == "topic" else None
    out = {}
    for pos, message in sorted(paired.items()):
        image = images[pos]
        rel_s = (image.log_ns - reader.start_time) / SEC
        frame_label = label_at(spec, rel_s, image.log_ns, track) if spec.kind != "boxes" else None
        out[pos] = [(box, box_label(spec, frame_label, box)) for box in message.boxes]
    return out


def _tracks(
    images: list[_Image], labels: Mapping[int, list[tuple[SourceBox, str | None]]]
) -> dict[int, list[str]]:
    """Image position -> the bag-local track of each of its boxes ("" for unlabelled ones)."""
    positions = sorted(labels)
    link_frames = [
        LinkFrame(
            images[pos].log_ns,
            tuple(
                (lab, box.box) for box, lab in labels[pos] if lab is not None and not box.track_id
            ),
        )
        for pos in positions
    ]
    linked = link_tracks(link_frames)
    out: dict[int, list[str]] = {}
    for pos, numbers in zip(positions, linked, strict=True):
        left = iter(numbers)
        out[pos] = [
            f"id:{box.track_id}"
            if box.track_id
            else (f"iou:{next(left)}" if lab is not None else "")
            for box, lab in labels[pos]
        ]
    return out


def _frame(
    rois: RoiOptions,
    image: _Image,
    boxes: list[tuple[SourceBox, str | None]],
    tracks: list[str],
    first_ns: int,
) -> PlannedFrame:
    planned = tuple(
        PlannedBox(j, box.box, lab, track)
        for j, ((box, lab), track) in enumerate(zip(boxes, tracks, strict=True))
        if lab is not None
    )
    block = int((image.log_ns - first_ns) // round(NEGATIVE_BLOCK_S * SEC))
    return PlannedFrame(
        image.index,
        image.log_ns,
        rois.background_label,
        block,
        image.stamp_ns,
        image.encoding,
        roi=True,
        boxes=planned,
        avoid=tuple(box.box for box, _lab in boxes),
        negatives=rois.negatives,
        nbytes=image.nbytes,
        prev_ns=image.prev_ns,
    )


def roi_labels(plans: Sequence[Sequence[PlannedFrame]]) -> set[str]:
    """Every label that needs a class directory: boxes' labels, and negatives'."""
    out: set[str] = set()
    for plan in plans:
        for frame in plan:
            out.update(box.label for box in frame.boxes)
            if frame.negatives:
                out.add(frame.label)
    return out


def place_roi_frames(
    plan: list[PlannedFrame], bag: str, class_dir_of: Mapping[str, str]
) -> list[PlannedFrame]:
    """`plan` with class directories, tracks `<bag>/<track>` and the negatives' sequence
    `<bag>:<class_dir>:<block>` filled in."""
    out = []
    for frame in plan:
        boxes = tuple(
            dataclasses.replace(b, class_dir=class_dir_of[b.label], track=track_id(bag, b.track))
            for b in frame.boxes
        )
        class_dir = class_dir_of[frame.label] if frame.negatives else ""
        sequence = sequence_id(bag, class_dir, frame.run) if frame.negatives else ""
        out.append(dataclasses.replace(frame, boxes=boxes, class_dir=class_dir, sequence=sequence))
    return out


def track_id(bag: str, track: str) -> str:
    """`<bag>/<track>`: a track made unique across bags by the bag's content-hashed name."""
    return f"{bag}/{track}"
