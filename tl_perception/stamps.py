"""ROS time stamps <-> integer nanoseconds: the one conversion, free of ROS imports.

Duck-typed (anything with `sec` and `nanosec`), so rclpy messages, rosbags dataclasses and
`builtin_interfaces/Time` all work, online and offline.
"""

from __future__ import annotations

from typing import Any

#: Nanoseconds per second.
SEC = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """`builtin_interfaces/Time` (sec, nanosec) as integer nanoseconds since the epoch."""
    return int(stamp.sec) * SEC + int(stamp.nanosec)


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    """Integer nanoseconds as the (sec, nanosec) pair of a `builtin_interfaces/Time`."""
    sec, nanosec = divmod(int(ns), SEC)
    return sec, nanosec


def is_unstamped(stamp: Any) -> bool:
    """A zero stamp: the publisher never set it (drivers and cv_bridge leave it 0 by default).

    Such a frame carries no capture time, so any latency measured from it is meaningless.
    """
    return int(stamp.sec) == 0 and int(stamp.nanosec) == 0
