"""Which frames of a bag to keep, with which label and in which sequence (no image decoding).

A *sequence* is one continuous run of a label in one bag: it starts when the label changes or the
camera stream has a gap longer than `SEQUENCE_GAP_S`. Sequences are the unit of the split
assignment, so near-identical neighbouring frames never land in two splits. A frame whose label
is empty (an empty String, a Classification without results, no CSV row) is `no_label`.

Every kept frame's message is deserialized here (not decoded), so a bag whose messages are not
what their type says fails in this pass, before anything is written.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_perception.bag.labels import LabelTrack
from tl_perception.bag.reader import IMAGE_TYPES, deserialize, iter_messages
from tl_perception.crop import Box
from tl_perception.dataset import is_empty_label
from tl_perception.errors import BagError, DatasetError
from tl_perception.stamps import SEC, stamp_to_ns

SEQUENCE_GAP_S = 2.0


@dataclass(frozen=True)
class LabelSpec:
    """How frames get labels: kind is "fixed", "topic", "csv" or "none" (`--unlabeled`); with
    boxes also "boxes": each box's own label (its detection's best class, the CSV's `label`)."""

    kind: str
    name: str = ""
    topic: str = ""
    ranges: tuple[tuple[float, float, str], ...] = ()
    tolerance_s: float = 1.0


@dataclass(frozen=True)
class FrameFilter:
    """Frame selection options, times in seconds from the bag's first message."""

    every: int = 1
    min_interval_s: float = 0.0
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class PlannedBox:
    """A box of a frame to crop: `index` is its position in the frame's box message (the
    `_b<index>` of its file name); `track` is bag-local (`id:<Detection2D.id>` or `iou:<n>`)
    until `roiplan.place_roi_frames` prefixes the bag (`<bag>/id:...`)."""

    index: int
    box: Box
    label: str
    track: str
    class_dir: str = ""


@dataclass(frozen=True)
class PlannedFrame:
    """A frame selected for the dataset; `index` counts the bag's messages on the image topic.

    `run` numbers the continuous runs of a label in the bag; `class_dir` and `sequence`
    (`<bag>:<class_dir>:<run>`) are set by `place_frames` once every bag's labels are known.
    A region-of-interest frame (`roi`) is not written itself: its `boxes` are cropped and
    `negatives` background crops added, which keep clear of every box in `avoid`; its `label`,
    `class_dir` and `sequence` are those of its negatives (`run` is their time block).
    A bag may be cut into time windows only before a frame whose `prev_ns` is earlier than its
    own log time, so a window that starts reading at that time starts with that frame.
    """

    index: int
    log_ns: int
    label: str
    run: int
    stamp_ns: int  # the header stamp, or the log time when the stamp is 0
    encoding: str  # `bgr8`, ... or `compressed:<format>`
    class_dir: str = ""
    sequence: str = ""
    roi: bool = False
    boxes: tuple[PlannedBox, ...] = ()
    avoid: tuple[Box, ...] = ()
    negatives: int = 0
    nbytes: int = 0  # of its serialized message: what cutting a bag into windows weighs
    prev_ns: int | None = None  # log time of the topic's message before it (None: first)


class Selector:
    """`--start`/`--end`, `--every` and `--min-interval`, applied frame by frame in bag order."""

    def __init__(self, selection: FrameFilter, first_ns: int) -> None:
        self.selection = selection
        self.first_ns = first_ns
        self.in_window = 0
        self.last_kept_ns: int | None = None

    def rel_s(self, log_ns: int) -> float:
        """Seconds from the bag's first message."""
        return (log_ns - self.first_ns) / SEC

    def window(self, log_ns: int) -> str | None:
        """Why the frame is not selected by time window or `--every`; None if it is."""
        sel = self.selection
        rel_s = self.rel_s(log_ns)
        if (sel.start_s is not None and rel_s < sel.start_s) or (
            sel.end_s is not None and rel_s > sel.end_s
        ):
            return "outside_time_window"
        self.in_window += 1
        return "every_nth" if (self.in_window - 1) % sel.every else None

    def too_soon(self, log_ns: int) -> bool:
        """Whether the frame is within `--min-interval` of the last kept one."""
        last = self.last_kept_ns
        interval = self.selection.min_interval_s
        return interval > 0 and last is not None and log_ns - last < interval * SEC

    def keep(self, log_ns: int) -> None:
        self.last_kept_ns = log_ns


#: Most rows a label CSV may have (a CSV of time ranges, not of frames).
MAX_CSV_ROWS = 1_000_000


def read_label_csv(path: str | Path) -> tuple[tuple[float, float, str], ...]:
    """Rows `start,end,label` (seconds from the bag's first message); an optional header row.

    Raises:
        DatasetError: one line naming the file and line: unreadable or not UTF-8, malformed
            CSV, not 3 fields, times that are not seconds with 0 <= start < end, empty label.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is not a field
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read label CSV {str(path)!r}: {err}") from err
    if "\0" in text:
        raise DatasetError(f"label CSV {str(path)!r} holds NUL bytes: not a text file")
    ranges = []
    rows = csv.reader(text.splitlines())
    try:
        for lineno, row in enumerate(rows, start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if lineno == 1 and [c.strip().lower() for c in row[:3]] == ["start", "end", "label"]:
                continue
            ranges.append(_csv_range(path, lineno, row))
            if len(ranges) > MAX_CSV_ROWS:
                raise DatasetError(f"label CSV {str(path)!r} has more than {MAX_CSV_ROWS} rows")
    except csv.Error as err:
        raise DatasetError(f"label CSV {str(path)!r}: malformed CSV: {err}") from err
    if not ranges:
        raise DatasetError(f"label CSV {str(path)!r} has no rows start,end,label")
    return tuple(ranges)


def _csv_range(path: Path, lineno: int, row: list[str]) -> tuple[float, float, str]:
    where = f"{str(path)!r} line {lineno}"
    if len(row) != 3:
        raise DatasetError(f"{where}: expected 3 fields start,end,label, got {len(row)}")
    try:
        start, end = float(row[0]), float(row[1])
    except ValueError:
        raise DatasetError(f"{where}: start and end must be seconds, got {row[:2]!r}") from None
    if not end > start >= 0:  # also refuses NaN
        raise DatasetError(f"{where}: need 0 <= start < end, got {row[:2]!r}")
    name = row[2].strip()
    if is_empty_label(name):
        raise DatasetError(f"{where}: empty label; leave out time ranges without a label")
    return start, end, name


def plan_bag(
    reader: Any,
    path: Path,
    topic: str,
    labels: LabelSpec,
    selection: FrameFilter,
    skipped: Counter[str],
) -> list[PlannedFrame]:
    """Select and label the frames of `topic` in one open bag; counts skips into `skipped`.

    Raises:
        BagError: a kept frame's message is not the image type its topic claims.
    """
    track = LabelTrack.read(reader, path, labels.topic) if labels.kind == "topic" else None
    selector = Selector(selection, reader.start_time)
    planned: list[PlannedFrame] = []
    run = -1
    run_key: str | None = None
    previous_ns: int | None = None
    for index, (conn, log_ns, raw) in enumerate(iter_messages(reader, path, [topic])):
        if previous_ns is not None and log_ns - previous_ns > SEQUENCE_GAP_S * SEC:
            run_key = None
        prev_ns, previous_ns = previous_ns, log_ns
        reason = selector.window(log_ns)
        if reason is not None:
            skipped[reason] += 1
            continue
        label = label_at(labels, selector.rel_s(log_ns), log_ns, track)
        if label is None:
            skipped["no_label"] += 1
            continue
        if selector.too_soon(log_ns):
            skipped["min_interval"] += 1
            continue
        selector.keep(log_ns)
        if label != run_key:
            run += 1
            run_key = label
        stamp_ns, encoding = frame_header(reader, path, topic, conn.msgtype, raw)
        frame = PlannedFrame(index, log_ns, label, run, stamp_ns or log_ns, encoding)
        planned.append(dataclasses.replace(frame, nbytes=len(raw), prev_ns=prev_ns))
    return planned


def frame_header(reader: Any, path: Path, topic: str, msgtype: str, raw: bytes) -> tuple[int, str]:
    """(header stamp ns, encoding) of an image message; BagError if it is not a valid one."""
    msg = deserialize(reader, path, raw, msgtype)
    try:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        len(msg.data)  # every image message has bytes
        if IMAGE_TYPES[msgtype] == "raw":
            dims = (msg.height, msg.width, msg.step, msg.is_bigendian)
            if not isinstance(msg.encoding, str) or not all(isinstance(v, int) for v in dims):
                raise TypeError("encoding must be a string and height, width, step integers")
            return stamp_ns, msg.encoding
        if not isinstance(msg.format, str):
            raise TypeError("format must be a string")
        return stamp_ns, f"compressed:{msg.format}"
    except (AttributeError, TypeError, ValueError) as err:
        raise BagError(
            f"bag {str(path)!r}: a message on {topic!r} is not a valid {msgtype} ({err}); the "
            "bag's type definition differs from the standard one"
        ) from err


def place_frames(
    plan: list[PlannedFrame], bag: str, class_dir_of: Mapping[str, str]
) -> list[PlannedFrame]:
    """`plan` with class directories and sequence ids `<bag>:<class_dir>:<run>` filled in.

    `class_dir_of` maps every label (the empty one of `--unlabeled` included) to its class
    directory (`dataset.class_dirs`), so distinct labels are distinct sequences too.
    """
    return [
        dataclasses.replace(
            frame,
            class_dir=class_dir_of[frame.label],
            sequence=sequence_id(bag, class_dir_of[frame.label], frame.run),
        )
        for frame in plan
    ]


def sequence_id(bag: str, class_dir: str, run: int | str) -> str:
    """`<bag>:<class_dir>:<run>`: a run of whole frames, or a time block of negatives."""
    return f"{bag}:{class_dir}:{run}"


def label_at(labels: LabelSpec, rel_s: float, log_ns: int, track: LabelTrack | None) -> str | None:
    """The frame's label; None (`no_label`) when it has none. `--unlabeled` frames get "".

    `rel_s` is the frame's time from the bag's first message (for a label CSV), `log_ns` its
    log time (for a label topic's `track`, with `labels.tolerance_s`).
    """
    if labels.kind == "none":
        return ""
    if labels.kind == "fixed":
        name: str | None = labels.name
    elif labels.kind == "csv":
        name = next((n for start, end, n in labels.ranges if start <= rel_s < end), None)
    elif labels.kind == "topic":
        tolerance_ns = round(labels.tolerance_s * SEC)
        name = track.at(log_ns, tolerance_ns) if track is not None else None
    else:
        name = None
    return None if is_empty_label(name) else name
