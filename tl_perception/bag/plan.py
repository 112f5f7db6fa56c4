"""Which frames of a bag to keep, with which label and in which sequence (no image decoding).

A *sequence* is one continuous run of a label in one bag: it starts when the label changes or the
camera stream has a gap longer than `SEQUENCE_GAP_S`. Sequences are the unit of the split
assignment, so near-identical neighbouring frames never land in two splits.
"""

from __future__ import annotations

import bisect
import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_perception.bag.reader import deserialize, iter_messages, label_of
from tl_perception.dataset import safe_class_dir
from tl_perception.errors import DatasetError

SEQUENCE_GAP_S = 2.0
UNLABELED_DIR = "unlabeled"
SEC = 1_000_000_000


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
    """A frame selected for the dataset; `index` counts the bag's messages on the image topic."""

    index: int
    log_ns: int
    label: str
    class_dir: str
    sequence: str


def read_label_csv(path: str | Path) -> tuple[tuple[float, float, str], ...]:
    """Rows `start,end,label` (seconds from the bag's first message); an optional header row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read label CSV {str(path)!r}: {err}") from err
    ranges = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:3]] == ["start", "end", "label"]:
            continue
        if len(row) != 3:
            raise DatasetError(
                f"{str(path)!r} line {lineno}: expected 3 fields start,end,label, got {len(row)}"
            )
        try:
            start, end = float(row[0]), float(row[1])
        except ValueError:
            raise DatasetError(
                f"{str(path)!r} line {lineno}: start and end must be seconds, got {row[:2]!r}"
            ) from None
        if not end > start >= 0:
            raise DatasetError(f"{str(path)!r} line {lineno}: need 0 <= start < end, got {row!r}")
        ranges.append((start, end, row[2].strip()))
    if not ranges:
        raise DatasetError(f"label CSV {str(path)!r} has no rows start,end,label")
    return tuple(ranges)


def plan_bag(
    reader: Any,
    path: Path,
    bag: str,
    topic: str,
    labels: LabelSpec,
    selection: FrameFilter,
    skipped: Counter[str],
) -> list[PlannedFrame]:
    """Select and label the frames of `topic` in one open bag; counts skips into `skipped`."""
    first_ns = reader.start_time
    label_times, label_values = _label_track(reader, path, labels)
    tolerance_ns = round(labels.tolerance_s * SEC)
    planned: list[PlannedFrame] = []
    in_window = 0
    run = -1
    run_key: str | None = None
    previous_ns: int | None = None
    last_kept_ns: int | None = None
    for index, (_conn, log_ns, _raw) in enumerate(iter_messages(reader, path, [topic])):
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
        label = _label_at(labels, rel_s, log_ns, label_times, label_values, tolerance_ns)
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
        class_dir = UNLABELED_DIR if labels.kind == "none" else safe_class_dir(label)
        if class_dir != run_key:
            run += 1
            run_key = class_dir
        planned.append(PlannedFrame(index, log_ns, label, class_dir, f"{bag}:{class_dir}:{run}"))
    return planned


def _label_track(reader: Any, path: Path, labels: LabelSpec) -> tuple[list[int], list[str]]:
    """Times and values of the label topic, sorted by time (empty unless kind == "topic")."""
    times: list[int] = []
    values: list[str] = []
    if labels.kind != "topic":
        return times, values
    for conn, log_ns, raw in iter_messages(reader, path, [labels.topic]):
        value = label_of(deserialize(reader, path, raw, conn.msgtype))
        times.append(log_ns)
        values.append("" if value is None else value)
    return times, values


def _label_at(
    labels: LabelSpec,
    rel_s: float,
    log_ns: int,
    times: list[int],
    values: list[str],
    tolerance_ns: int,
) -> str | None:
    if labels.kind == "fixed":
        return labels.name
    if labels.kind == "none":
        return ""
    if labels.kind == "csv":
        for start, end, name in labels.ranges:
            if start <= rel_s < end:
                return name
        return None
    pos = bisect.bisect_right(times, log_ns) - 1
    if pos < 0 or log_ns - times[pos] > tolerance_ns:
        return None
    return values[pos]
