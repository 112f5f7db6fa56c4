"""Write a synthetic drive as a real bag (rosbag2 MCAP or sqlite3, or ROS 1) with rosbags writers.

Topics: the camera (`sensor_msgs/Image` bgr8 on /camera/image_raw, or `CompressedImage` JPEG on
/camera/image_raw/compressed) and `/label` (`std_msgs/String`), published 1 ms before each frame
in which an object is visible, and never during the empty road between objects. Header stamps are
the recording times; frame_id is "camera". The bag is written beside `out` and renamed into
place, so an interrupted run never leaves half a bag.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.errors import TlPerceptionError
from tl_perception.images import image_fields, rgb_to_compressed
from tl_perception.synth.drive import Run, drive_frames, plan_drive, resolve_classes

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
LABEL_TOPIC = "/label"
STORAGES: tuple[str, ...] = ("mcap", "sqlite3", "ros1")
START_NS = 1_700_000_000 * 1_000_000_000  # a realistic epoch for the first frame
LABEL_LEAD_NS = 1_000_000  # the label arrives 1 ms before the frame it describes
FRAME_ID = "camera"
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthSummary:
    """What was written: enough to check a bag or to score predictions against it."""

    path: Path
    kind: str
    storage: str
    image_topic: str
    label_topic: str
    frames: int
    classes: tuple[str, ...]
    runs: tuple[Run, ...] = field(repr=False)

    @property
    def labelled_frames(self) -> int:
        return sum(r.length for r in self.runs if r.label is not None)

    def frames_per_class(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for run in self.runs:
            if run.label is not None:
                counts[run.label] += run.length
        return dict(sorted(counts.items()))


def write_synthetic_bag(
    out: str | Path,
    *,
    kind: str = "signs",
    frames: int = 300,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    size: tuple[int, int] = (160, 120),
    rate: float = 10.0,
    compressed: bool = False,
    storage: str = "mcap",
    overwrite: bool = False,
) -> SynthSummary:
    """Render a drive and write it to `out` (a rosbag2 directory, or a ROS 1 `.bag` file).

    Raises:
        TlPerceptionError: bad options, or `out` exists and `overwrite` is false.
    """
    out = Path(out)
    chosen = resolve_classes(kind, classes)
    if storage not in STORAGES:
        raise TlPerceptionError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    if rate <= 0:
        raise TlPerceptionError(f"--rate must be positive, got {rate}")
    if min(size) < 16:
        raise TlPerceptionError(f"--size must be at least 16x16, got {size[0]}x{size[1]}")
    if storage == "ros1" and out.suffix != ".bag":
        raise TlPerceptionError(f"a ROS 1 bag is one file ending in .bag, got OUT {str(out)!r}")
    if out.exists() and not overwrite:
        raise TlPerceptionError(f"{out} already exists; remove it or choose another OUT")
    runs = plan_drive(chosen, frames, seed)
    image_topic = COMPRESSED_TOPIC if compressed else IMAGE_TOPIC
    period_ns = round(1e9 / rate)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    try:
        staged = stage / out.name
        with _BagSink(staged, storage, image_topic) as sink:
            for frame in drive_frames(kind, runs, seed, size):
                t_ns = START_NS + frame.index * period_ns
                if frame.label is not None:
                    sink.label(t_ns - LABEL_LEAD_NS, frame.label)
                sink.image(t_ns, frame.rgb, compressed)
        if out.exists():
            _remove(out)
        os.replace(staged, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return SynthSummary(
        path=out,
        kind=kind,
        storage=storage,
        image_topic=image_topic,
        label_topic=LABEL_TOPIC,
        frames=frames,
        classes=chosen,
        runs=tuple(runs),
    )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


class _BagSink:
    """One writer API over rosbag2 (CDR) and rosbag1 (ROS 1 serialisation)."""

    def __init__(self, path: Path, storage: str, image_topic: str) -> None:
        from rosbags.typesys import Stores, get_typestore

        self._ros1 = storage == "ros1"
        self._store = get_typestore(Stores.ROS1_NOETIC if self._ros1 else Stores.ROS2_HUMBLE)
        self._types = self._store.types
        if self._ros1:
            from rosbags.rosbag1 import Writer as Writer1

            self._writer: Any = Writer1(path)
        else:
            from rosbags.rosbag2 import StoragePlugin
            from rosbags.rosbag2 import Writer as Writer2

            plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
            self._writer = Writer2(path, version=9, storage_plugin=plugin)
        self._image_topic = image_topic
        self._conns: dict[str, Any] = {}
        self._seq = 0

    def __enter__(self) -> _BagSink:
        self._writer.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()

    def _write(self, topic: str, msgtype: str, t_ns: int, msg: Any) -> None:
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self._store)
        if self._ros1:
            data = self._store.serialize_ros1(msg, msgtype)
        else:
            data = self._store.serialize_cdr(msg, msgtype)
        self._writer.write(self._conns[topic], t_ns, data)

    def label(self, t_ns: int, text: str) -> None:
        msgtype = "std_msgs/msg/String"
        self._write(LABEL_TOPIC, msgtype, t_ns, self._types[msgtype](data=text))

    def image(self, t_ns: int, rgb: np.ndarray, compressed: bool) -> None:
        stamp = self._types["builtin_interfaces/msg/Time"](
            sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000
        )
        header_fields: dict[str, Any] = {"stamp": stamp, "frame_id": FRAME_ID}
        if self._ros1:
            header_fields["seq"] = self._seq
            self._seq += 1
        header = self._types["std_msgs/msg/Header"](**header_fields)
        if compressed:
            msgtype = "sensor_msgs/msg/CompressedImage"
            data = np.frombuffer(rgb_to_compressed(rgb, "jpeg", JPEG_QUALITY), dtype=np.uint8)
            msg = self._types[msgtype](header=header, format="jpeg", data=data)
        else:
            msgtype = "sensor_msgs/msg/Image"
            fields = image_fields(rgb, "bgr8")
            fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
            msg = self._types[msgtype](header=header, **fields)
        self._write(self._image_topic, msgtype, t_ns, msg)
