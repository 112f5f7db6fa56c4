"""Write real bags (ROS 2 MCAP, ROS 2 sqlite3, ROS 1) with rosbags writers, for tests and benches.

A bag is a list of `Msg(topic, t_ns, kind, payload)`; `kind` is "image" (payload: (rgb, encoding)),
"compressed" (payload: (rgb, "jpeg"|"png") or raw bytes) or "string" (payload: text).
Header stamps equal the log time unless `stamp_ns` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore

from tl_perception.images import image_fields, rgb_to_compressed

MSGTYPES = {
    "image": "sensor_msgs/msg/Image",
    "compressed": "sensor_msgs/msg/CompressedImage",
    "string": "std_msgs/msg/String",
}
SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC  # a realistic epoch for the first message


@dataclass(frozen=True)
class Msg:
    topic: str
    t_ns: int
    kind: str
    payload: Any
    stamp_ns: int | None = None


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (32, 24), seed: int = 0) -> np.ndarray:
    """A WxH image of colour `rgb` with a little seeded texture (so frames differ slightly)."""
    width, height = size
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = rgb
    if seed:
        rng = np.random.default_rng(seed)
        noise = rng.integers(-3, 4, size=img.shape)
        img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
    return img


def pattern(seed: int, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """A random blocky image: frames with different seeds have very different perceptual hashes."""
    width, height = size
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return np.kron(small, np.ones((height // 3 + 1, width // 4 + 1, 1), dtype=np.uint8))[
        :height, :width
    ].copy()


def write_bag(path: Path, storage: str, messages: list[Msg]) -> Path:
    """Write `messages` to a bag: storage is "mcap", "sqlite3" (rosbag2 dirs) or "ros1" (`.bag`)."""
    path = Path(path)
    if storage == "ros1":
        store = get_typestore(Stores.ROS1_NOETIC)
        with Writer1(path) as writer:
            conns: dict[str, Any] = {}
            for msg in messages:
                if msg.topic not in conns:
                    conns[msg.topic] = writer.add_connection(
                        msg.topic, MSGTYPES[msg.kind], typestore=store
                    )
                obj = build_message(store, msg, ros1=True)
                data = store.serialize_ros1(obj, MSGTYPES[msg.kind])
                writer.write(conns[msg.topic], msg.t_ns, data)
        return path
    store = get_typestore(Stores.ROS2_HUMBLE)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer2(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for msg in messages:
            if msg.topic not in conns:
                conns[msg.topic] = writer.add_connection(
                    msg.topic, MSGTYPES[msg.kind], typestore=store
                )
            obj = build_message(store, msg, ros1=False)
            writer.write(conns[msg.topic], msg.t_ns, store.serialize_cdr(obj, MSGTYPES[msg.kind]))
    return path


def build_message(store: Any, msg: Msg, ros1: bool) -> Any:
    """A rosbags message object of `store` for `msg`."""
    types = store.types
    if msg.kind == "string":
        return types["std_msgs/msg/String"](data=msg.payload)
    stamp = msg.t_ns if msg.stamp_ns is None else msg.stamp_ns
    time = types["builtin_interfaces/msg/Time"](sec=stamp // SEC, nanosec=stamp % SEC)
    header_fields: dict[str, Any] = {"stamp": time, "frame_id": "camera"}
    if ros1:
        header_fields["seq"] = 0
    header = types["std_msgs/msg/Header"](**header_fields)
    if msg.kind == "image":
        rgb, encoding = msg.payload
        fields = image_fields(rgb, encoding)
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        return types["sensor_msgs/msg/Image"](header=header, **fields)
    if isinstance(msg.payload, bytes):
        data, fmt = msg.payload, "jpeg"
    else:
        rgb, fmt = msg.payload
        data = rgb_to_compressed(rgb, fmt, quality=95)
    return types["sensor_msgs/msg/CompressedImage"](
        header=header, format=fmt, data=np.frombuffer(data, dtype=np.uint8)
    )


def frames(
    topic: str,
    images: list[np.ndarray],
    *,
    start_s: float = 0.0,
    period_s: float = 0.1,
    kind: str = "image",
    encoding: str = "rgb8",
) -> list[Msg]:
    """Image messages at a fixed rate starting `start_s` after T0."""
    out = []
    for i, rgb in enumerate(images):
        t_ns = T0 + round((start_s + i * period_s) * SEC)
        out.append(Msg(topic, t_ns, kind, (rgb, encoding)))
    return out


def label(topic: str, at_s: float, text: str) -> Msg:
    """A std_msgs/String label `at_s` seconds after T0."""
    return Msg(topic, T0 + round(at_s * SEC), "string", text)
