"""Labels from a label topic: the one label track, used by extraction and the demo's scoring alike.

A label topic (`std_msgs/String`, or the best result of a `vision_msgs/Classification`) says what
is in view from each message on. A message that carries no label (an empty or blank String, a
Classification without results) says "nothing" from then on: it ends the previous label rather
than being ignored, so frames after it are unlabelled (`no_label`), never a class of their own.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_perception.bag.reader import deserialize, iter_messages, open_bag
from tl_perception.dataset import is_empty_label


def label_of(msg: Any) -> str | None:
    """The label a String (its data) or Classification (best-scoring result) carries; None if
    it carries none (empty or blank text, no results, a result without class_id)."""
    data = getattr(msg, "data", None)
    if isinstance(data, str):
        return None if is_empty_label(data) else data
    results = list(getattr(msg, "results", None) or [])
    if not results:
        return None
    best = max(results, key=_score)
    value = getattr(best, "class_id", getattr(best, "id", None))
    return None if value is None or is_empty_label(str(value)) else str(value)


def _score(result: Any) -> float:
    try:
        return float(getattr(result, "score", 0.0))
    except (TypeError, ValueError):
        return 0.0


@dataclass(frozen=True)
class LabelTrack:
    """Log times (ns, ascending) of a label topic's messages and the label each carries."""

    times: tuple[int, ...] = ()
    values: tuple[str | None, ...] = ()

    @classmethod
    def from_messages(cls, messages: Sequence[tuple[int, str | None]]) -> LabelTrack:
        """A track from (log time ns, label or None) pairs in any order (stable by time)."""
        ordered = sorted(messages, key=lambda item: item[0])
        return cls(tuple(t for t, _ in ordered), tuple(v for _, v in ordered))

    @classmethod
    def read(cls, reader: Any, path: Path, topic: str) -> LabelTrack:
        """The track of `topic` in an open bag (`reader.open_bag`)."""
        return cls.from_messages(
            [
                (log_ns, label_of(deserialize(reader, path, raw, conn.msgtype)))
                for conn, log_ns, raw in iter_messages(reader, path, [topic])
            ]
        )

    def at(self, t_ns: int, tolerance_ns: int) -> str | None:
        """The label in force at `t_ns`: that of the latest message at or before it, if that
        message is at most `tolerance_ns` old and carries a label; else None."""
        pos = bisect.bisect_right(self.times, t_ns) - 1
        if pos < 0 or t_ns - self.times[pos] > tolerance_ns:
            return None
        return self.values[pos]

    def __len__(self) -> int:
        return len(self.times)


def read_label_track(bag: str | Path, topic: str) -> LabelTrack:
    """Open `bag` and read the track of `topic` (no ROS needed); BagError if unreadable."""
    bag = Path(bag)
    with open_bag(bag) as reader:
        return LabelTrack.read(reader, bag, topic)
