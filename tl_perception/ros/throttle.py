"""Log throttling, the one way the node spaces out repeated log lines; free of rclpy.

rclpy's own `throttle_duration_sec` is per call site, so one camera's warnings would silence
another's; a `Throttle` is keyed (e.g. per camera and kind of warning) and its clock is a
parameter, so tests need no sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Throttle:
    """At most one `ready` per key every `period_s`."""

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
