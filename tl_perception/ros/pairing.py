"""Pair each image with the detections of the same stamp, online; free of rclpy.

A detector publishes `vision_msgs/Detection2DArray` with the header stamp of the image it ran on,
usually after the image itself arrived, sometimes before (another process, another transport).
`StampPairer` keeps the messages of each side that are still waiting for their partner and
pairs an arriving message with the waiting one of the other side whose stamp is nearest, within
`tolerance_ns` (0: the same stamp to the nanosecond, like message_filters' ExactTime policy).

Nothing waits for ever, and nothing is dropped silently (ros/ros_comm#1059 is the complaint about
synchronizers that do): a message is dropped unpaired, and counted, when

- `queue_size` messages of its side arrived after it and are waiting (the one that arrived
  first goes first: arrival, not stamp, so after a clock jump the old messages leave, not the
  new ones), or
- a pair forms with a later stamp: both streams arrive in stamp order, so a message older than
  a completed pair (by more than the tolerance) can no longer find its partner. This is
  ExactTime's rule too, and it counts a missing partner within one frame instead of after
  `queue_size` frames, or
- its side's stamps jump back (`ros2 bag play --loop`, a simulator reset, a restarted driver):
  every message of that side still waiting arrived before the jump, and would wait for ever or
  pair with a message of the next loop that merely has its stamp. So pairing starts again with
  the first message after the jump, in exact and approximate mode alike; a pair whose second
  message was still in flight at the jump is lost (counted), no more. (The other side's old
  messages go when its own stamps jump back, or out of the queue.)

The pairer also measures the image stamps' period (the median of the last `PERIOD_WINDOW` steps),
so the node can warn when the tolerance is at least half of it: then the nearest waiting
partner may be the neighbouring frame's, and greedy pairing can cross pairs.

Payloads are opaque (the node passes its messages), stamps are integer nanoseconds
(`stamps.stamp_to_ns`). Thread-safe: the image and detection callbacks may run concurrently.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

I = TypeVar("I")  # noqa: E741 (image payload)
D = TypeVar("D")  # detections payload

IMAGE, DETECTIONS = 0, 1
SIDES: tuple[str, str] = ("image", "detections")
#: Image stamp steps the frame period is the median of.
PERIOD_WINDOW = 15


@dataclass(frozen=True)
class Pair(Generic[I, D]):
    """An image and its detections; `stamp_ns` is the image's."""

    stamp_ns: int
    image: I
    detections: D


@dataclass(frozen=True)
class PairCounts:
    """Counts since start: pairs made, messages dropped unpaired, messages waiting now."""

    paired: int = 0
    unpaired_images: int = 0
    unpaired_detections: int = 0
    waiting_images: int = 0
    waiting_detections: int = 0
    image_period_ns: int | None = None  # median step of the image stamps; None: not yet known


class StampPairer(Generic[I, D]):
    """Online pairing of two stamped streams (see the module docstring for the rules)."""

    def __init__(self, tolerance_ns: int = 0, queue_size: int = 10) -> None:
        if tolerance_ns < 0:
            raise ValueError(f"tolerance_ns must be >= 0, got {tolerance_ns}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.tolerance_ns = tolerance_ns
        self.queue_size = queue_size
        self._lock = threading.Lock()
        # per side, in arrival order: (stamp, payload)
        self._waiting: tuple[deque[tuple[int, object]], deque[tuple[int, object]]] = (
            deque(),
            deque(),
        )
        self._paired = 0
        self._unpaired = [0, 0]
        self._newest: list[int | None] = [None, None]  # per side, since its last jump back
        self._steps: deque[int] = deque(maxlen=PERIOD_WINDOW)  # image stamp steps, ns

    def add_image(self, stamp_ns: int, image: I) -> Pair[I, D] | None:
        """Offer an image; the pair it completes, or None (it waits)."""
        return self._add(IMAGE, stamp_ns, image)

    def add_detections(self, stamp_ns: int, detections: D) -> Pair[I, D] | None:
        """Offer a detections message; the pair it completes, or None (it waits)."""
        return self._add(DETECTIONS, stamp_ns, detections)

    def counts(self) -> PairCounts:
        with self._lock:
            return PairCounts(
                paired=self._paired,
                unpaired_images=self._unpaired[IMAGE],
                unpaired_detections=self._unpaired[DETECTIONS],
                waiting_images=len(self._waiting[IMAGE]),
                waiting_detections=len(self._waiting[DETECTIONS]),
                image_period_ns=self._period_ns(),
            )

    def crossing_risk(self) -> bool:
        """Whether the tolerance is at least half the measured frame period (pairs may cross)."""
        period = self.counts().image_period_ns
        return self.tolerance_ns > 0 and period is not None and 2 * self.tolerance_ns >= period

    def clear(self) -> None:
        """Forget every waiting message without counting it (the inputs were closed)."""
        with self._lock:
            for waiting in self._waiting:
                waiting.clear()

    def _add(self, side: int, stamp_ns: int, payload: object) -> Pair[I, D] | None:
        with self._lock:
            self._follow_clock(side, stamp_ns)
            other = self._waiting[1 - side]
            match = self._nearest(other, stamp_ns)
            if match is None:
                self._wait(side, stamp_ns, payload)
                return None
            partner_stamp, partner = other[match]
            del other[match]
            self._paired += 1
            self._drop_older_than(min(stamp_ns, partner_stamp) - self.tolerance_ns)
            if side == IMAGE:
                return cast(Pair[I, D], Pair(stamp_ns, payload, partner))
            return cast(Pair[I, D], Pair(partner_stamp, partner, payload))

    def _nearest(self, waiting: deque[tuple[int, object]], stamp_ns: int) -> int | None:
        """Index of the waiting message nearest in stamp within the tolerance (first on a tie)."""
        best, best_gap = None, self.tolerance_ns + 1
        for index, (stamp, _payload) in enumerate(waiting):
            gap = abs(stamp - stamp_ns)
            if gap < best_gap:
                best, best_gap = index, gap
        return best

    def _follow_clock(self, side: int, stamp_ns: int) -> None:
        """Note a side's stamp: the image period, and a jump back (see the module docstring)."""
        newest = self._newest[side]
        self._newest[side] = stamp_ns
        if newest is None or stamp_ns >= newest - self.tolerance_ns:
            if side == IMAGE and newest is not None and stamp_ns > newest:
                self._steps.append(stamp_ns - newest)
            return
        if side == IMAGE:
            self._steps.clear()  # another timeline: measure the period afresh
        self._unpaired[side] += len(self._waiting[side])
        self._waiting[side].clear()

    def _period_ns(self) -> int | None:
        if len(self._steps) < 3:
            return None
        steps = sorted(self._steps)
        return steps[len(steps) // 2]

    def _wait(self, side: int, stamp_ns: int, payload: object) -> None:
        waiting = self._waiting[side]
        waiting.append((stamp_ns, payload))
        while len(waiting) > self.queue_size:
            waiting.popleft()  # the one that arrived first
            self._unpaired[side] += 1

    def _drop_older_than(self, stamp_ns: int) -> None:
        for side, waiting in enumerate(self._waiting):
            kept = [item for item in waiting if item[0] >= stamp_ns]
            self._unpaired[side] += len(waiting) - len(kept)
            if len(kept) != len(waiting):
                waiting.clear()
                waiting.extend(kept)
