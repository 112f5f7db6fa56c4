"""The node's counters, free of rclpy so they are unit-testable: per camera (`FrameStats`,
`RoiStats`) and per node (`BatchStats`), each thread-safe (the callbacks and the worker add, the
diagnostics timer reads a snapshot).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, NaN when there are no values."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass(frozen=True)
class StatsSnapshot:
    """What one diagnostics period reports (rates over the period, counts since start)."""

    input_rate_hz: float
    processed_rate_hz: float
    received: int
    processed: int
    dropped: int
    bad: int
    inference_ms_p50: float
    inference_ms_p95: float
    latency_ms_p50: float
    latency_ms_p95: float
    bad_in_period: int
    unstamped: int = 0  # processed frames with stamp 0, left out of the latency percentiles
    stamp_jumps_back: int = 0  # arriving image stamps earlier than the one before


class FrameStats:
    """Thread-safe counters and latency windows shared by the callback, worker and timer."""

    def __init__(self, window: int = 200, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.bad = 0
        self.unstamped = 0
        self.stamp_jumps_back = 0
        self._newest_stamp = -1  # ns; the latest image stamp seen since the last jump back
        self._inference_ms: deque[float] = deque(maxlen=window)
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._last = (self._monotonic(), 0, 0, 0)

    def count_received(self, dropped_one: bool) -> None:
        with self._lock:
            self.received += 1
            self.dropped += int(dropped_one)

    def note_stamp(self, stamp_ns: int) -> bool:
        """An arriving image's stamp; True (counted) when it went back: the clock jumped (a bag
        loop, a simulator reset, a restarted driver)."""
        with self._lock:
            jumped = stamp_ns < self._newest_stamp
            self.stamp_jumps_back += int(jumped)
            self._newest_stamp = stamp_ns
            return jumped

    def count_dropped(self) -> None:
        """A frame replaced before the worker took it, counted apart from its arrival (ROI
        mode: the pair is made when its second message arrives, not with the image)."""
        with self._lock:
            self.dropped += 1

    def count_bad(self) -> None:
        with self._lock:
            self.bad += 1

    def count_processed(self, inference_ms: float, latency_ms: float | None) -> None:
        """One classified frame; `latency_ms` None = unstamped (no capture time to measure from).

        An unstamped frame (stamp 0) would add the whole epoch, ~1.7e12 ms, to the
        stamp-to-publish window and ruin its p50/p95, so it is only counted.
        """
        with self._lock:
            self.processed += 1
            self._inference_ms.append(inference_ms)
            if latency_ms is None:
                self.unstamped += 1
            else:
                self._latency_ms.append(latency_ms)

    def snapshot(self) -> StatsSnapshot:
        """Counts so far and rates since the previous snapshot."""
        with self._lock:
            now = self._monotonic()
            then, received, processed, bad = self._last
            elapsed = max(now - then, 1e-9)
            self._last = (now, self.received, self.processed, self.bad)
            inference = list(self._inference_ms)
            latency = list(self._latency_ms)
            return StatsSnapshot(
                input_rate_hz=(self.received - received) / elapsed,
                processed_rate_hz=(self.processed - processed) / elapsed,
                received=self.received,
                processed=self.processed,
                dropped=self.dropped,
                bad=self.bad,
                inference_ms_p50=percentile(inference, 50),
                inference_ms_p95=percentile(inference, 95),
                latency_ms_p50=percentile(latency, 50),
                latency_ms_p95=percentile(latency, 95),
                bad_in_period=self.bad - bad,
                unstamped=self.unstamped,
                stamp_jumps_back=self.stamp_jumps_back,
            )


@dataclass(frozen=True)
class FrameRois:
    """What became of one frame's ROIs (boxes = classified + over_max + rejected)."""

    boxes: int
    classified: int
    published: int
    background: int  # classified with the background class as best
    over_max: int  # beyond max_rois (or the camera's share of it), not classified
    rejected: Mapping[str, int]  # crop.REASONS and budget.OVER_BUDGET -> boxes not cropped
    duplicate_ids: int = 0  # classified ROIs whose id another ROI of the frame has too


#: The frame-level counters of `RoiSnapshot` besides the per-ROI ones of `FrameRois`.
FRAME_COUNTERS: tuple[str, ...] = ("frame_id_mismatches", "frame_id_refused")
_ROI_COUNTERS: tuple[str, ...] = (
    "boxes",
    "classified",
    "published",
    "background",
    "over_max",
    "duplicate_ids",
)


@dataclass(frozen=True)
class RoiSnapshot:
    """ROI counts since start, per camera; `frame_id_*`: detection messages whose frame_id is
    not the image's, and those of them refused (`frame_id_must_match`)."""

    boxes: int = 0
    classified: int = 0
    published: int = 0
    background: int = 0
    over_max: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    duplicate_ids: int = 0
    frame_id_mismatches: int = 0
    frame_id_refused: int = 0


class RoiStats:
    """Thread-safe ROI counters: the worker adds, the diagnostics timer reads."""

    def __init__(self, reasons: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(_ROI_COUNTERS + FRAME_COUNTERS, 0)
        self._rejected = dict.fromkeys(reasons, 0)

    def add(self, frame: FrameRois) -> None:
        with self._lock:
            for name in _ROI_COUNTERS:
                self._totals[name] += getattr(frame, name)
            for reason, count in frame.rejected.items():
                self._rejected[reason] = self._rejected.get(reason, 0) + count

    def count_frame_id_mismatch(self, refused: bool) -> None:
        with self._lock:
            self._totals["frame_id_mismatches"] += 1
            self._totals["frame_id_refused"] += int(refused)

    def snapshot(self) -> RoiSnapshot:
        with self._lock:
            return RoiSnapshot(rejected=dict(self._rejected), **self._totals)


@dataclass(frozen=True)
class BatchSnapshot:
    """Over the last calls: inference ms, batch size, and the whole cycle (take -> published)."""

    inference_ms_p50: float = math.nan
    inference_ms_p95: float = math.nan
    size_p50: float = math.nan
    size_max: int = 0
    cycle_ms_p50: float = math.nan
    cycle_ms_p95: float = math.nan


class BatchStats:
    """Per cycle (all crops of all cameras in one inference call): the call's time and size,
    and the cycle's whole time from taking the frames to the last publish."""

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self._ms: deque[float] = deque(maxlen=window)
        self._sizes: deque[int] = deque(maxlen=window)
        self._cycles: deque[float] = deque(maxlen=window)

    def add(self, inference_ms: float, size: int) -> None:
        with self._lock:
            self._ms.append(inference_ms)
            self._sizes.append(size)

    def add_cycle(self, cycle_ms: float) -> None:
        with self._lock:
            self._cycles.append(cycle_ms)

    def snapshot(self) -> BatchSnapshot:
        with self._lock:
            return BatchSnapshot(
                inference_ms_p50=percentile(self._ms, 50),
                inference_ms_p95=percentile(self._ms, 95),
                size_p50=percentile(self._sizes, 50),
                size_max=max(self._sizes, default=0),
                cycle_ms_p50=percentile(self._cycles, 50),
                cycle_ms_p95=percentile(self._cycles, 95),
            )
