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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
        self._inference_ms: deque[float] = deque(maxlen=window)
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._last = (self._monotonic(), 0, 0, 0)

    def count_received(self, dropped_one: bool) -> None:
        with self._lock:
            self.received += 1
            self.dropped += int(dropped_one)

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
            )
