"""The hand-off between the subscription callbacks and the classification thread; free of rclpy.

"Latest frame wins": a callback never blocks and never queues, so latency cannot grow with a
backlog; every frame overwritten before the worker took it is counted as dropped by the caller
(`put` says whether it replaced one). `LatestFrames` holds one slot per camera behind one
condition so the worker takes every camera's newest frame at once (one batched inference);
`LatestFrameSlot` is the one-item mailbox (the hot-reload requests use it too).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
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
        `timeout` seconds or a `wake`. The slots are empty afterwards."""
        with self._cond:
            if all(item is None for item in self._items):
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
        while True:
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
