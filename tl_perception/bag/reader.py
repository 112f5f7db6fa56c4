"""Opening bags of every kind with rosbags, naming them, and telling image from label topics.

A bag is untrusted input: whatever rosbags raises while opening or reading it (corrupt chunks,
truncated files, unknown storage) becomes one `BagError` naming the bag, so the CLI exits with 2.
A bag is identified by its content, not its file name (`bag_source`): `day1/drive.mcap` and
`day2/drive.mcap` are two bags, a copy of one bag is the same bag.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_perception.dataset import slug
from tl_perception.errors import BagError

IMAGE_TYPES: dict[str, str] = {
    "sensor_msgs/msg/Image": "raw",
    "sensor_msgs/msg/CompressedImage": "compressed",
}
LABEL_TYPES: tuple[str, ...] = ("std_msgs/msg/String", "vision_msgs/msg/Classification")


@dataclass(frozen=True)
class TopicInfo:
    """What `inspect` shows per topic."""

    name: str
    msgtype: str
    count: int
    rate_hz: float | None

    @property
    def is_image(self) -> bool:
        return self.msgtype in IMAGE_TYPES

    @property
    def is_label(self) -> bool:
        return self.msgtype in LABEL_TYPES


@dataclass(frozen=True)
class BagSource:
    """A bag as a dataset records it; `name` is unique per content and readable.

    `name` = `<file stem or rosbag2 directory name, slugged>-<first 8 hex of sha256>`; it prefixes
    the bag's image files and sequence ids, so two different bags never share either.
    """

    path: Path
    name: str
    sha256: str
    size: int

    def record(self) -> dict[str, Any]:
        """The entry of `dataset.json` `sources`."""
        return {
            "name": self.name,
            "path": str(self.path.resolve()),
            "sha256": self.sha256,
            "bytes": self.size,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> BagSource:
        """The source a `record` describes (a resume marker's)."""
        return cls(Path(record["path"]), record["name"], record["sha256"], int(record["bytes"]))


_HASH_BLOCK = 1 << 20


def bag_source(path: str | Path) -> BagSource:
    """Name a bag by its content: SHA-256 of its storage files (a rosbag2 directory's files
    other than metadata.yaml, with their names). Reading it once costs about as much as the
    planning pass; it is what makes a same-named bag from another day a different bag.

    Raises:
        BagError: the path is not a bag or cannot be read.
    """
    path = Path(path)
    check_bag_path(path)
    digest = hashlib.sha256()
    size = 0
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.name != "metadata.yaml" and not p.name.startswith(".")
        )
    else:
        files = [path]
    try:
        for file in files:
            if path.is_dir():
                digest.update(f"{file.name}\0".encode())
            with file.open("rb") as fh:
                while block := fh.read(_HASH_BLOCK):
                    digest.update(block)
                    size += len(block)
    except OSError as err:
        raise BagError(f"cannot read bag {str(path)!r}: {err.strerror or err}") from err
    stem = path.name if path.is_dir() else path.stem
    sha = digest.hexdigest()
    return BagSource(path, f"{slug(stem) or 'bag'}-{sha[:8]}", sha, size)


def check_bag_path(path: Path) -> None:
    """Reject paths that cannot be a bag before rosbags sees them."""
    if not path.exists():
        raise BagError(f"bag {str(path)!r} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(
            f"{str(path)!r} is a directory without metadata.yaml, not a rosbag2 bag; "
            "pass the .mcap/.db3 file itself or a rosbag2 directory"
        )
    if path.is_file() and path.suffix not in (".bag", ".mcap", ".db3"):
        raise BagError(
            f"{str(path)!r} is not a bag: expected a ROS 1 .bag, a bare .mcap or .db3, "
            "or a rosbag2 directory"
        )


@contextlib.contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open `rosbags.highlevel.AnyReader` for one bag; every failure is a `BagError`."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from tl_perception.msgdefs import register_vision_msgs

    path = Path(path)
    check_bag_path(path)
    try:
        # A bag without embedded definitions (old rosbag2) is read with the latest ROS 2 types,
        # vision_msgs included (rosbags' stores lack them).
        store = register_vision_msgs(get_typestore(Stores.LATEST))
        reader = AnyReader([path], default_typestore=store)
        reader.open()
    except Exception as err:  # rosbags raises many kinds on corrupt input
        raise BagError(f"cannot read bag {str(path)!r}: {_describe(err)}") from err
    try:
        yield reader
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def iter_messages(
    reader: Any,
    path: Path,
    topics: Sequence[str],
    start: int | None = None,
    stop: int | None = None,
) -> Iterator[tuple[Any, int, bytes]]:
    """(connection, log time ns, raw bytes) of `topics` in time order, log times in
    [start, stop) when given (rosbags seeks by its chunk index); corruption -> BagError."""
    conns = [c for c in reader.connections if c.topic in topics]
    if not conns:
        return
    try:
        yield from reader.messages(connections=conns, start=start, stop=stop)
    except BagError:
        raise
    except Exception as err:
        raise BagError(f"bag {str(path)!r} is corrupt or truncated: {_describe(err)}") from err


def deserialize(reader: Any, path: Path, raw: bytes, msgtype: str) -> Any:
    """Deserialize one message; undecodable bytes are a BagError (the bag is corrupt)."""
    try:
        return reader.deserialize(raw, msgtype)
    except Exception as err:
        raise BagError(f"bag {str(path)!r} holds an undecodable {msgtype}: {err}") from err


def topic_infos(reader: Any) -> list[TopicInfo]:
    """Topics sorted by name, with message count and mean rate over the whole bag."""
    infos = []
    duration_s = max(reader.duration, 0) / 1e9
    for name, info in sorted(reader.topics.items()):
        count = int(info.msgcount)
        rate = (count - 1) / duration_s if count > 1 and duration_s > 0 else None
        infos.append(TopicInfo(name, info.msgtype or "?", count, rate))
    return infos


def require_topic(reader: Any, path: Path, topic: str, kinds: tuple[str, ...], role: str) -> str:
    """The msgtype of `topic`, which must exist and be one of `kinds`; else a BagError."""
    infos = topic_infos(reader)
    by_name = {i.name: i for i in infos}
    if topic not in by_name:
        candidates = [i.name for i in infos if i.msgtype in kinds]
        raise BagError(
            f"topic {topic!r} not in bag {str(path)!r}; {role} topics there: "
            f"{', '.join(candidates) or 'none'}"
        )
    msgtype = by_name[topic].msgtype
    if msgtype not in kinds:
        raise BagError(
            f"topic {topic!r} in {str(path)!r} is {msgtype}; {role} topics must be "
            f"{' or '.join(kinds)}"
        )
    return msgtype


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
