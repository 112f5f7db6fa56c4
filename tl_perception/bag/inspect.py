"""`inspect`: what is in a bag, and which topics `extract` can use (the first thing a user runs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tl_perception.bag.reader import (
    IMAGE_TYPES,
    TopicInfo,
    deserialize,
    iter_messages,
    open_bag,
    topic_infos,
)
from tl_perception.errors import ImageDecodeError


@dataclass(frozen=True)
class TopicReport:
    """One topic; `encoding` and `resolution` come from the first frame of image topics."""

    info: TopicInfo
    encoding: str | None = None
    resolution: tuple[int, int] | None = None


@dataclass(frozen=True)
class BagReport:
    path: Path
    duration_s: float
    message_count: int
    topics: tuple[TopicReport, ...]

    @property
    def image_topics(self) -> tuple[str, ...]:
        return tuple(t.info.name for t in self.topics if t.info.is_image)

    @property
    def label_topics(self) -> tuple[str, ...]:
        return tuple(t.info.name for t in self.topics if t.info.is_label)


def inspect_bag(path: str | Path) -> BagReport:
    """Summarise one bag; raises BagError when it cannot be read."""
    from tl_perception.images import message_to_rgb

    path = Path(path)
    with open_bag(path) as reader:
        reports = []
        for info in topic_infos(reader):
            first = None
            if info.is_image and info.count > 0:
                first = next(iter(iter_messages(reader, path, [info.name])), None)
            if first is None:
                reports.append(TopicReport(info))
                continue
            conn, _t, raw = first
            msg = deserialize(reader, path, raw, conn.msgtype)
            if IMAGE_TYPES[conn.msgtype] == "raw":
                width, height = getattr(msg, "width", None), getattr(msg, "height", None)
                resolution = None
                if isinstance(width, int) and isinstance(height, int):
                    resolution = (width, height)
                reports.append(TopicReport(info, str(getattr(msg, "encoding", "?")), resolution))
                continue
            try:
                rgb = message_to_rgb(msg)
                decoded: tuple[int, int] | None = (rgb.shape[1], rgb.shape[0])
            except ImageDecodeError:
                decoded = None
            reports.append(TopicReport(info, f"compressed:{getattr(msg, 'format', '?')}", decoded))
        return BagReport(path, reader.duration / 1e9, reader.message_count, tuple(reports))


def format_report(report: BagReport) -> str:
    """A human-readable table of a bag's topics."""
    lines = [
        f"{report.path}  {report.duration_s:.1f} s  {report.message_count} messages",
    ]
    width = max([len("topic"), *(len(t.info.name) for t in report.topics)])
    lines.append(f"  {'topic':<{width}}  {'type':<34} {'count':>7} {'rate':>9}  image")
    for topic in report.topics:
        info = topic.info
        rate = f"{info.rate_hz:.2f} Hz" if info.rate_hz else "-"
        image = ""
        if info.is_image:
            res = f"{topic.resolution[0]}x{topic.resolution[1]}" if topic.resolution else "?"
            image = f"{topic.encoding} {res}"
        lines.append(
            f"  {info.name:<{width}}  {info.msgtype:<34} {info.count:>7} {rate:>9}  {image}"
        )
    lines.append(f"  image topics (--topic):       {', '.join(report.image_topics) or 'none'}")
    lines.append(f"  label topics (--label-topic): {', '.join(report.label_topics) or 'none'}")
    return "\n".join(lines)
