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
from tl_perception.dataset import is_empty_label
from tl_perception.errors import BagError, DatasetError
from tl_perception.stamps import SEC, stamp_to_ns

SEQUENCE_GAP_S = 2.0


@dataclass(frozen=True)
class LabelSpec:
    """How frames get labels: kind is "fixed", "topic", "csv" or "none"."""

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
class PlannedFrame:
    """A frame selected for the dataset; `index` counts the bag's messages on the image topic.

    `run` numbers the continuous runs of a label in the bag; `class_dir` and `sequence`
    (`<bag>:<class_dir>:<run>`) are set by `place_frames` once every bag's labels are known.
    """

    index: int
    log_ns: int
    label: str
    run: int
    stamp_ns: int  # the header stamp, or the log time when the stamp is 0
    encoding: str  # `bgr8`, ... or `compressed:<format>`
    class_dir: str = ""
    sequence: str = ""


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
    first_ns = reader.start_time
    track = LabelTrack.read(reader, path, labels.topic) if labels.kind == "topic" else None
    tolerance_ns = round(labels.tolerance_s * SEC)
    planned: list[PlannedFrame] = []
    in_window = 0
    run = -1
    run_key: str | None = None
    previous_ns: int | None = None
    last_kept_ns: int | None = None
    for index, (conn, log_ns, raw) in enumerate(iter_messages(reader, path, [topic])):
        rel_s = (log_ns - first_ns) / SEC
        gap = previous_ns is not None and log_ns - previous_ns > SEQUENCE_GAP_S * SEC
        previous_ns = log_ns
        if gap:
            run_key = None
        if (selection.start_s is not None and rel_s < selection.start_s) or (
            selection.end_s is not None and rel_s > selection.end_s
        ):
            skipped["outside_time_window"] += 1
            continue
        in_window += 1
        if (in_window - 1) % selection.every:
            skipped["every_nth"] += 1
            continue
        label = _label_at(labels, rel_s, log_ns, track, tolerance_ns)
        if label is None:
            skipped["no_label"] += 1
            continue
        if (
            selection.min_interval_s > 0
            and last_kept_ns is not None
            and log_ns - last_kept_ns < selection.min_interval_s * SEC
        ):
            skipped["min_interval"] += 1
            continue
        last_kept_ns = log_ns
        if label != run_key:
            run += 1
            run_key = label
        stamp_ns, encoding = frame_header(reader, path, topic, conn.msgtype, raw)
        planned.append(PlannedFrame(index, log_ns, label, run, stamp_ns or log_ns, encoding))
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
            sequence=f"{bag}:{class_dir_of[frame.label]}:{frame.run}",
        )
        for frame in plan
    ]


def _label_at(
    labels: LabelSpec,
    rel_s: float,
    log_ns: int,
    track: LabelTrack | None,
    tolerance_ns: int,
) -> str | None:
    """The frame's label; None (`no_label`) when it has none. `--unlabeled` frames get ""."""
    if labels.kind == "none":
        return ""
    if labels.kind == "fixed":
        name: str | None = labels.name
    elif labels.kind == "csv":
        name = next((n for start, end, n in labels.ranges if start <= rel_s < end), None)
    else:
        name = track.at(log_ns, tolerance_ns) if track is not None else None
    return None if is_empty_label(name) else name
