"""Where the boxes of a region-of-interest extraction come from, and which image each belongs to.

Two sources: a `vision_msgs/Detection2DArray` topic in the bag (`--boxes-topic`) or a CSV file
(`--boxes-csv`). Either becomes a list of `BoxMessage`s, one per image they describe, each with a
time that pairs it with an image: the message's header stamp, or a CSV row's `time` (the image's
receive time in the bag) or `stamp` (its header stamp). `pair` matches them to images one to one,
nearest first, so every box message is used at most once and every image gets at most one.

Boxes are `crop.Box`es (centre and size in pixels, as vision_msgs' BoundingBox2D); a box's own
label is its detection's best hypothesis (highest score) or the CSV row's `label`. Both ROS 2
vision_msgs (4.x: `center.position.x`, `results[i].hypothesis.class_id`) and ROS 1 vision_msgs
(`center.x`, `results[i].id`) are read, duck-typed like the rest of the bag code.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tl_perception.bag.reader import deserialize, iter_messages
from tl_perception.crop import Box
from tl_perception.dataset import is_empty_label
from tl_perception.errors import BagError, DatasetError
from tl_perception.stamps import SEC, stamp_to_ns

DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
BOX_TYPES: tuple[str, ...] = (DETECTIONS_TYPE,)
#: Default pairing tolerance of a CSV: its times are decimal text, and a float64 printed at epoch
#: seconds (1.7e9) is only accurate to about 0.2 us, so "exact" means within 1 us.
CSV_TOLERANCE_S = 1e-6
#: Largest `--boxes-tolerance`: approximate pairing absorbs a detector's stamp jitter, it must not
#: pair a box with a frame a second away (a sign moves across the image in that time).
MAX_TOLERANCE_S = 1.0
#: Most rows a box CSV may have.
MAX_CSV_ROWS = 5_000_000
#: Latest time a CSV may give: int64 nanoseconds, as ROS time.
MAX_SECONDS = Decimal(2**63 - 1) / SEC
CSV_TIME_KEYS: tuple[str, ...] = ("time", "stamp")
CSV_REQUIRED: tuple[str, ...] = ("x", "y", "w", "h")
CSV_OPTIONAL: tuple[str, ...] = ("label", "id")


@dataclass(frozen=True)
class SourceBox:
    """One box as its source gave it: where, its own label (None: none) and its track id."""

    box: Box
    label: str | None = None
    track_id: str = ""  # Detection2D.id or the CSV `id`; "" links by overlap (bag/tracks.py)


@dataclass(frozen=True)
class BoxMessage:
    """The boxes of one image: one Detection2DArray, or the CSV rows of one time."""

    t_ns: int
    boxes: tuple[SourceBox, ...]


@dataclass(frozen=True)
class BoxSpec:
    """Where boxes come from: kind "topic" (a Detection2DArray topic) or "csv" (`messages`).

    `key` says which frame time a box message's `t_ns` is: "stamp" (the image's header stamp,
    always so for a topic) or "time" (its receive time in the bag). `tolerance_s` None means
    exact: to the nanosecond for a topic, within `CSV_TOLERANCE_S` for a CSV.
    """

    kind: str
    topic: str = ""
    key: str = "stamp"
    messages: tuple[BoxMessage, ...] = ()
    tolerance_s: float | None = None
    csv_path: str = ""
    csv_sha256: str = ""

    @property
    def tolerance_ns(self) -> int:
        if self.tolerance_s is not None:
            return round(self.tolerance_s * SEC)
        return round(CSV_TOLERANCE_S * SEC) if self.kind == "csv" else 0

    def record(self) -> dict[str, Any]:
        """What dataset.json keeps: the source, not the boxes (a CSV by its content hash)."""
        out: dict[str, Any] = {"kind": self.kind, "tolerance_s": self.tolerance_s}
        if self.kind == "topic":
            out["topic"] = self.topic
        else:
            out.update(
                key=self.key,
                csv_sha256=self.csv_sha256,
                rows=sum(len(m.boxes) for m in self.messages),
            )
        return out


def check_tolerance(tolerance_s: float | None) -> None:
    """`--boxes-tolerance` must be a number of seconds in [0, MAX_TOLERANCE_S]."""
    if tolerance_s is not None and not 0.0 <= tolerance_s <= MAX_TOLERANCE_S:
        raise DatasetError(
            f"--boxes-tolerance {tolerance_s}: need 0 <= SECONDS <= {MAX_TOLERANCE_S} "
            "(approximate pairing is for stamp jitter, not for pairing other frames)"
        )


def pair(image_ns: Sequence[int], box_ns: Sequence[int], tolerance_ns: int) -> dict[int, int]:
    """Image index -> box message index, one to one: closest pairs first, each within
    `tolerance_ns` (0: equal times only). Ties go to the earlier image, then the earlier box
    message, so the pairing depends only on the times."""
    order = sorted(range(len(box_ns)), key=lambda i: (box_ns[i], i))
    times = [box_ns[i] for i in order]
    candidates: list[tuple[int, int, int]] = []
    for image, t_ns in enumerate(image_ns):
        lo = bisect.bisect_left(times, t_ns - tolerance_ns)
        hi = bisect.bisect_right(times, t_ns + tolerance_ns)
        candidates.extend((abs(times[pos] - t_ns), image, order[pos]) for pos in range(lo, hi))
    candidates.sort()
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for _dt, image, message in candidates:
        if image not in pairs and message not in used:
            pairs[image] = message
            used.add(message)
    return pairs


def read_box_topic(reader: Any, path: Path, topic: str) -> list[BoxMessage]:
    """Every Detection2DArray of `topic`, timed by header stamp (log time when it is 0).

    Raises:
        BagError: a message that does not deserialize or is not a Detection2DArray.
    """
    out = []
    for conn, log_ns, raw in iter_messages(reader, path, [topic]):
        msg = deserialize(reader, path, raw, conn.msgtype)
        try:
            stamp_ns = stamp_to_ns(msg.header.stamp)
            boxes = tuple(source_box(det) for det in msg.detections)
        except (AttributeError, TypeError, ValueError) as err:
            raise BagError(
                f"bag {str(path)!r}: a message on {topic!r} is not a valid {conn.msgtype} ({err})"
            ) from err
        out.append(BoxMessage(stamp_ns or log_ns, boxes))
    return out


def source_box(det: Any) -> SourceBox:
    """A Detection2D (ROS 2 or ROS 1 layout) as a `SourceBox`; attribute errors propagate."""
    bbox = det.bbox
    centre = getattr(bbox.center, "position", bbox.center)  # ROS 2 Pose2D.position, ROS 1 x/y
    box = Box(float(centre.x), float(centre.y), float(bbox.size_x), float(bbox.size_y))
    track = getattr(det, "id", "")
    return SourceBox(box, best_class(det.results), "" if track is None else str(track))


def best_class(results: Sequence[Any]) -> str | None:
    """The class_id of the highest-scoring hypothesis (the first of equals); None if there is
    none or it is empty. A NaN score ranks last."""
    best: tuple[float, str] | None = None
    for result in results:
        hypothesis = getattr(result, "hypothesis", result)  # ROS 2 nests it, ROS 1 does not
        value = getattr(hypothesis, "class_id", getattr(hypothesis, "id", None))
        score = float(getattr(hypothesis, "score", 0.0))
        score = score if math.isfinite(score) else -math.inf
        if value is not None and (best is None or score > best[0]):
            best = (score, str(value))
    if best is None or is_empty_label(best[1]):
        return None
    return best[1]


def read_boxes_csv(path: str | Path, tolerance_s: float | None = None) -> BoxSpec:
    """A box CSV as a `BoxSpec`: header row with `time` or `stamp`, `x, y, w, h` and optionally
    `label` and `id`; one box per row, rows of one time are one image's boxes (in file order).

    Raises:
        DatasetError: one line naming the file (and line): unreadable, not UTF-8, malformed
            CSV, a missing, unknown or doubled column, a value that is not a number, a time
            < 0, a size <= 0, no rows.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read box CSV {str(path)!r}: {err}") from err
    if "\0" in text:
        raise DatasetError(f"box CSV {str(path)!r} holds NUL bytes: not a text file")
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    groups: dict[int, list[SourceBox]] = {}
    key = ""
    try:
        header = next(rows, None)
        columns = _columns(path, header)
        key = next(k for k in CSV_TIME_KEYS if k in columns)
        count = 0
        for row in rows:
            if not row or all(not cell.strip() for cell in row):
                continue
            t_ns, box = _csv_box(f"{str(path)!r} line {rows.line_num}", row, columns, key)
            groups.setdefault(t_ns, []).append(box)
            count += 1
            if count > MAX_CSV_ROWS:
                raise DatasetError(f"box CSV {str(path)!r} has more than {MAX_CSV_ROWS} rows")
    except csv.Error as err:
        raise DatasetError(f"box CSV {str(path)!r}: malformed CSV: {err}") from err
    if not groups:
        raise DatasetError(f"box CSV {str(path)!r} has no rows")
    messages = tuple(BoxMessage(t, tuple(boxes)) for t, boxes in sorted(groups.items()))
    return BoxSpec(
        "csv",
        key=key,
        messages=messages,
        tolerance_s=tolerance_s,
        csv_path=str(path),
        csv_sha256=hashlib.sha256(data).hexdigest(),
    )


def _columns(path: Path, header: list[str] | None) -> dict[str, int]:
    """Column name -> position, from the header row (names trimmed, any case)."""
    known = (*CSV_TIME_KEYS, *CSV_REQUIRED, *CSV_OPTIONAL)
    expected = "a header row time|stamp,x,y,w,h[,label][,id]"
    if not header or all(not cell.strip() for cell in header):
        raise DatasetError(f"box CSV {str(path)!r} is empty; expected {expected}")
    names = [cell.strip().lower() for cell in header]
    columns: dict[str, int] = {}
    for position, name in enumerate(names):
        if name not in known:
            raise DatasetError(
                f"box CSV {str(path)!r} line 1: unknown column {name!r}; expected {expected}"
            )
        if name in columns:
            raise DatasetError(f"box CSV {str(path)!r} line 1: column {name!r} given twice")
        columns[name] = position
    times = [k for k in CSV_TIME_KEYS if k in columns]
    missing = [c for c in CSV_REQUIRED if c not in columns]
    if len(times) != 1 or missing:
        what = (
            "both time and stamp"
            if len(times) > 1
            else f"missing {', '.join(missing or ['time or stamp'])}"
        )
        raise DatasetError(f"box CSV {str(path)!r} line 1: {what}; expected {expected}")
    return columns


def _csv_box(
    where: str, row: list[str], columns: dict[str, int], key: str
) -> tuple[int, SourceBox]:
    if len(row) != len(columns):
        raise DatasetError(f"{where}: expected {len(columns)} fields, got {len(row)}")
    t_ns = _seconds_ns(where, key, row[columns[key]])
    x, y, w, h = (_number(where, c, row[columns[c]]) for c in CSV_REQUIRED)
    if not (w > 0 and h > 0):
        raise DatasetError(f"{where}: w and h must be > 0 pixels, got {w!r}, {h!r}")
    label = row[columns["label"]].strip() if "label" in columns else ""
    track = row[columns["id"]].strip() if "id" in columns else ""
    return t_ns, SourceBox(
        Box.from_xywh(x, y, w, h), None if is_empty_label(label) else label, track
    )


def _seconds_ns(where: str, name: str, text: str) -> int:
    """Decimal seconds as exact integer nanoseconds (a float would lose them at epoch times)."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise DatasetError(f"{where}: {name} must be seconds, got {text!r}") from None
    if not value.is_finite() or not 0 <= value <= MAX_SECONDS:
        raise DatasetError(f"{where}: {name} must be seconds in [0, 2^63 ns), got {text!r}")
    return int((value * SEC).to_integral_value())


def _number(where: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: {name} must be a number of pixels, got {text!r}") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: {name} must be finite, got {text!r}")
    return value
