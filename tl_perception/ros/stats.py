"""Frame bookkeeping for the classifier node, free of rclpy so it is unit-testable.

`LatestFrameSlot` is the "latest frame wins" hand-over between the subscription callback and the
inference worker: the callback never blocks and never queues, so latency cannot grow with a
backlog; every frame overwritten before the worker took it is counted as dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """A one-item mailbox: `put` replaces, `take` waits for an item and empties the slot."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T) -> bool:
        """Store `item`; return True when it replaced a frame the worker never saw (a drop)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> T | None:
        """The newest item, or None after `timeout` seconds or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake a waiting worker so it can stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class LatestFrames(Generic[T]):
    """One latest-frame slot per camera behind one condition: `take_all` hands the worker the
    newest item of every camera that has one, so all of them go through one batched inference.

    Cameras in step (hardware-triggered, or driven by one clock) deliver their frames within a
    millisecond or two of each other; a worker that woke on the first would classify it alone
    and the others in a second cycle. `take_all(gather_s=...)` therefore waits, at most
    `gather_s` after the first frame, for the cameras whose previous frame came within
    `gather_s` of the previous frame of a camera that has one now. Cameras not in step (their
    frames spread over the period) are never waited for, and a camera that stops is not waited
    for after one period. With one camera it behaves exactly like `LatestFrameSlot`.
    """

    def __init__(self, count: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._items: list[T | None] = [None] * count
        self._arrived = [-math.inf] * count  # monotonic time of each camera's newest put
        self._previous = [-math.inf] * count  # ... and of the put before it
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._closed = False

    def put(self, index: int, item: T) -> bool:
        """Store camera `index`'s newest item; True when it replaced one never taken (a drop)."""
        now = self._monotonic()
        with self._cond:
            replaced = self._items[index] is not None
            self._items[index] = item
            self._previous[index], self._arrived[index] = self._arrived[index], now
            self._cond.notify()
            return replaced

    def take_all(self, timeout: float, gather_s: float = 0.0) -> list[tuple[int, T]]:
        """(camera index, item) for every camera with an item, in camera order; [] after
        `timeout` seconds or once closed. The slots are empty afterwards."""
        with self._cond:
            if not self._closed and all(item is None for item in self._items):
                self._cond.wait(timeout)
            if gather_s > 0.0 and len(self._items) > 1:
                self._gather(gather_s)
            taken = [(i, item) for i, item in enumerate(self._items) if item is not None]
            for i, _item in taken:
                self._items[i] = None
            return taken

    def _gather(self, gather_s: float) -> None:
        """Wait (condition held) for the missing cameras in step with a present one."""
        present = [i for i, item in enumerate(self._items) if item is not None]
        if not present:
            return
        deadline = min(self._arrived[i] for i in present) + gather_s
        while not self._closed:
            present = [i for i, item in enumerate(self._items) if item is not None]
            missing = [i for i, item in enumerate(self._items) if item is None]
            expected = [
                m
                for m in missing
                if any(abs(self._arrived[m] - self._previous[p]) <= gather_s for p in present)
            ]
            remaining = deadline - self._monotonic()
            if not expected or remaining <= 0.0:
                return
            self._cond.wait(remaining)

    def discard(self, index: int) -> None:
        """Empty camera `index`'s slot (its inputs were closed)."""
        with self._cond:
            self._items[index] = None

    def wake(self) -> None:
        """Return a waiting `take_all` at once (empty-handed), e.g. to stop the worker."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Wake a waiting worker so it can stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


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
    errors: int
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
        self.errors = 0
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

    def count_error(self) -> None:
        with self._lock:
            self.errors += 1

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
                errors=self.errors,
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


@dataclass(frozen=True)
class ExtraStatus:
    """More values for the node's /diagnostics status, and the warnings that hold now (labels,
    unknown threshold, capture)."""

    values: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


class Throttle:
    """At most one `ready` per key every `period_s` (per-camera log throttling: rclpy's own
    throttle is per call site, so one camera's warnings would silence another's)."""

    def __init__(self, period_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._period = period_s
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> bool:
        now = self._monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                return False
            self._last[key] = now
            return True
