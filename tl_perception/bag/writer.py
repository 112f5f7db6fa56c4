"""Write real bags (rosbag2 MCAP or sqlite3, ROS 1 `.bag`) with rosbags writers.

The one place that writes bags: tests, benchmarks and synthetic drives build messages here, so
every bag the project makes is framed the same way and read back by the same reader
(`bag/reader.py`). A bag is written under a hidden name beside its target and renamed into place,
so an interrupted write never leaves half a bag where a reader would look. No ROS install needed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.crop import Box
from tl_perception.images import image_fields, rgb_to_compressed
from tl_perception.msgdefs import register_vision_msgs
from tl_perception.stamps import ns_to_sec_nanosec

STORAGES: tuple[str, ...] = ("mcap", "sqlite3", "ros1")
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
DETECTIONS = "vision_msgs/msg/Detection2DArray"
#: `Msg.kind` -> ROS message type
MSGTYPES: dict[str, str] = {
    "image": IMAGE,
    "compressed": COMPRESSED,
    "string": STRING,
    "detections": DETECTIONS,
}


@dataclass(frozen=True)
class Msg:
    """One message for `write_bag`.

    `kind` "image": payload `(rgb, encoding)`, or a mapping of raw `sensor_msgs/Image` fields
    (height, width, encoding, step, data, is_bigendian) to write frames that are bad on purpose;
    "compressed": `(rgb, "jpeg"|"png")` or the bytes themselves (format "jpeg"); "string": text;
    "detections": a sequence of `Det` (a vision_msgs/Detection2DArray).
    The header stamp is the log time `t_ns` unless `stamp_ns` is given.
    """

    topic: str
    t_ns: int
    kind: str
    payload: Any
    stamp_ns: int | None = None


@dataclass(frozen=True)
class Det:
    """One vision_msgs/Detection2D: its box, hypotheses `(class_id, score)` and track id."""

    box: Box
    results: tuple[tuple[str, float], ...] = ()
    id: str = ""


class BagWriter:
    """One writer API over rosbag2 (CDR) and rosbag1; connections are added on first use.

    `types` holds the store's message classes, vision_msgs included (`msgdefs`).

    Use as a context manager; the bag appears at `path` only when the block exits cleanly.
    """

    def __init__(self, path: str | Path, storage: str, *, overwrite: bool = False) -> None:
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
        self.path = Path(path)
        if storage == "ros1" and self.path.suffix != ".bag":
            raise ValueError(f"a ROS 1 bag is one file ending in .bag, got {str(self.path)!r}")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists")
        self.storage = storage
        self.ros1 = storage == "ros1"
        store = get_typestore(Stores.ROS1_NOETIC if self.ros1 else Stores.ROS2_HUMBLE)
        self.store = register_vision_msgs(store)
        self.types = self.store.types
        self._conns: dict[str, Any] = {}
        self._seq = 0
        self._writer: Any = None
        self._stage: Path | None = None

    def __enter__(self) -> BagWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stage = Path(
            tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".staging", dir=self.path.parent)
        )
        staged = self._stage / self.path.name
        if self.ros1:
            from rosbags.rosbag1 import Writer as Writer1

            self._writer = Writer1(staged)
        else:
            from rosbags.rosbag2 import StoragePlugin
            from rosbags.rosbag2 import Writer as Writer2

            plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
            self._writer = Writer2(staged, version=9, storage_plugin=plugin)
        self._writer.open()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        assert self._stage is not None
        try:
            self._writer.close()
            if exc_type is None:
                if self.path.exists():
                    _remove(self.path)
                os.replace(self._stage / self.path.name, self.path)
        finally:
            shutil.rmtree(self._stage, ignore_errors=True)

    def connection(self, topic: str, msgtype: str, msgdef: str | None = None) -> Any:
        """The connection of `topic`; `msgdef` overrides the type's definition (wrong types)."""
        if topic not in self._conns:
            extra: dict[str, Any] = {}
            if msgdef is not None:
                extra = {"msgdef": msgdef}
                extra["md5sum" if self.ros1 else "rihs01"] = "0" * (32 if self.ros1 else 64)
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, typestore=None if msgdef else self.store, **extra
            )
        return self._conns[topic]

    def write_raw(self, topic: str, msgtype: str, t_ns: int, data: bytes) -> None:
        """Write serialized bytes as they are (also bytes that do not deserialize)."""
        self._writer.write(self.connection(topic, msgtype), t_ns, data)

    def serialize(self, msg: Any, msgtype: str) -> bytes:
        """`msg` (an object of `self.types`) in this bag's serialization (ROS 1 or CDR)."""
        if self.ros1:
            return bytes(self.store.serialize_ros1(msg, msgtype))
        return bytes(self.store.serialize_cdr(msg, msgtype))

    def write(self, topic: str, msgtype: str, t_ns: int, msg: Any) -> None:
        """Serialize a message object of `self.types` and write it."""
        self.write_raw(topic, msgtype, t_ns, self.serialize(msg, msgtype))

    def header(self, stamp_ns: int, frame_id: str = "camera") -> Any:
        """A std_msgs/Header (ROS 1 headers also get an increasing `seq`)."""
        sec, nanosec = ns_to_sec_nanosec(stamp_ns)
        stamp = self.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        fields: dict[str, Any] = {"stamp": stamp, "frame_id": frame_id}
        if self.ros1:
            fields["seq"] = self._seq
            self._seq += 1
        return self.types["std_msgs/msg/Header"](**fields)

    def image(
        self,
        topic: str,
        t_ns: int,
        fields: Mapping[str, Any],
        stamp_ns: int | None = None,
        frame_id: str = "camera",
    ) -> None:
        """A sensor_msgs/Image from its fields (see `images.image_fields`), as given."""
        values = {"is_bigendian": 0, **fields}
        values["data"] = np.frombuffer(bytes(values["data"]), dtype=np.uint8)
        header = self.header(t_ns if stamp_ns is None else stamp_ns, frame_id)
        self.write(topic, IMAGE, t_ns, self.types[IMAGE](header=header, **values))

    def compressed(
        self,
        topic: str,
        t_ns: int,
        data: bytes,
        fmt: str = "jpeg",
        stamp_ns: int | None = None,
        frame_id: str = "camera",
    ) -> None:
        """A sensor_msgs/CompressedImage carrying `data` (JPEG/PNG bytes, or anything)."""
        header = self.header(t_ns if stamp_ns is None else stamp_ns, frame_id)
        msg = self.types[COMPRESSED](
            header=header, format=fmt, data=np.frombuffer(data, dtype=np.uint8)
        )
        self.write(topic, COMPRESSED, t_ns, msg)

    def string(self, topic: str, t_ns: int, text: str) -> None:
        """A std_msgs/String."""
        self.write(topic, STRING, t_ns, self.types[STRING](data=text))

    def detections(
        self, topic: str, t_ns: int, dets: Sequence[Det], stamp_ns: int | None = None
    ) -> None:
        """A vision_msgs/Detection2DArray; it and each detection carry the header."""
        types = self.types
        header = self.header(t_ns if stamp_ns is None else stamp_ns)
        items = [
            types["vision_msgs/msg/Detection2D"](
                header=header,
                results=[self._hypothesis(class_id, score) for class_id, score in det.results],
                bbox=types["vision_msgs/msg/BoundingBox2D"](
                    center=types["vision_msgs/msg/Pose2D"](
                        position=types["vision_msgs/msg/Point2D"](
                            x=det.box.center_x, y=det.box.center_y
                        ),
                        theta=0.0,
                    ),
                    size_x=det.box.size_x,
                    size_y=det.box.size_y,
                ),
                id=det.id,
            )
            for det in dets
        ]
        self.write(topic, DETECTIONS, t_ns, types[DETECTIONS](header=header, detections=items))

    def _hypothesis(self, class_id: str, score: float) -> Any:
        types = self.types
        pose = types["geometry_msgs/msg/Pose"](
            position=types["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
            orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
        )
        return types["vision_msgs/msg/ObjectHypothesisWithPose"](
            hypothesis=types["vision_msgs/msg/ObjectHypothesis"](class_id=class_id, score=score),
            pose=types["geometry_msgs/msg/PoseWithCovariance"](
                pose=pose, covariance=np.zeros(36, dtype=np.float64)
            ),
        )

    def add(self, msg: Msg) -> None:
        """Write one `Msg`."""
        if msg.kind == "detections":
            self.detections(msg.topic, msg.t_ns, msg.payload, msg.stamp_ns)
        elif msg.kind == "string":
            self.string(msg.topic, msg.t_ns, msg.payload)
        elif msg.kind == "image":
            if isinstance(msg.payload, Mapping):
                fields = dict(msg.payload)
            else:
                rgb, encoding = msg.payload
                fields = image_fields(rgb, encoding)
            self.image(msg.topic, msg.t_ns, fields, msg.stamp_ns)
        elif msg.kind == "compressed":
            if isinstance(msg.payload, bytes):
                data, fmt = msg.payload, "jpeg"
            else:
                rgb, fmt = msg.payload
                data = rgb_to_compressed(rgb, fmt, quality=95)
            self.compressed(msg.topic, msg.t_ns, data, fmt, msg.stamp_ns)
        else:
            raise ValueError(f"unknown message kind {msg.kind!r}; use one of {sorted(MSGTYPES)}")


def write_bag(
    path: str | Path, storage: str, messages: Iterable[Msg], *, overwrite: bool = False
) -> Path:
    """Write `messages` in the order given; storage is "mcap", "sqlite3" (rosbag2 directories)
    or "ros1" (a `.bag` file). Returns `path`."""
    with BagWriter(path, storage, overwrite=overwrite) as writer:
        for msg in messages:
            writer.add(msg)
    return Path(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
