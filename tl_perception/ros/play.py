"""`play`: publish a bag's images, compressed images and String labels to ROS 2 with rclpy.

The stand-in for `ros2 bag play` where rosbag2 is not installed. Messages keep their recorded
spacing (scaled by `rate`) and their recorded header stamps; rosbags messages are copied field by
field into rclpy messages, so nothing is re-encoded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from tl_perception.bag.reader import iter_messages, open_bag
from tl_perception.errors import BagError

PLAYABLE: dict[str, Any] = {
    "sensor_msgs/msg/Image": Image,
    "sensor_msgs/msg/CompressedImage": CompressedImage,
    "std_msgs/msg/String": String,
}


@dataclass(frozen=True)
class PlayOptions:
    bag: Path
    topics: tuple[str, ...] = ()
    rate: float = 1.0
    loop: bool = False
    remap: Mapping[str, str] = field(default_factory=dict)
    qos: str = "reliable"
    depth: int = 10
    wait_subscribers: int = 0
    wait_timeout_s: float = 10.0


def to_ros(msg: Any, msgtype: str) -> Any:
    """An rclpy message with the fields of a rosbags message (header stamps as recorded)."""
    if msgtype == "std_msgs/msg/String":
        return String(data=msg.data)
    stamp = msg.header.stamp
    header = Header(stamp=Time(sec=stamp.sec, nanosec=stamp.nanosec), frame_id=msg.header.frame_id)
    if msgtype == "sensor_msgs/msg/CompressedImage":
        return CompressedImage(header=header, format=msg.format, data=bytes(msg.data))
    return Image(
        header=header,
        height=msg.height,
        width=msg.width,
        encoding=msg.encoding,
        is_bigendian=int(msg.is_bigendian),
        step=msg.step,
        data=bytes(msg.data),
    )


def play(options: PlayOptions) -> int:
    """Publish the bag once (or forever with `loop`); returns the number of messages published."""
    if options.rate <= 0:
        raise BagError(f"--rate {options.rate}: must be > 0")
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    node = Node("tl_perception_play")
    published = 0
    try:
        with open_bag(options.bag) as reader:
            topics = _playable_topics(reader, options)
            reliability = (
                ReliabilityPolicy.BEST_EFFORT
                if options.qos == "sensor_data"
                else ReliabilityPolicy.RELIABLE
            )
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=options.depth, reliability=reliability
            )
            pubs = {
                t: node.create_publisher(PLAYABLE[m], options.remap.get(t, t), qos)
                for t, m in topics.items()
            }
            _wait_for_subscribers(node, list(pubs.values()), options)
            while True:
                published += _play_once(reader, options, pubs, topics, node)
                if not options.loop:
                    break
            time.sleep(0.2)  # let the last messages leave before the publishers go away
    finally:
        node.destroy_node()
        if own_context:
            rclpy.try_shutdown()
    return published


def _playable_topics(reader: Any, options: PlayOptions) -> dict[str, str]:
    available = {c.topic: c.msgtype for c in reader.connections}
    wanted = options.topics or tuple(t for t, m in available.items() if m in PLAYABLE)
    for topic in wanted:
        if topic not in available:
            raise BagError(f"topic {topic!r} not in bag; it has {', '.join(sorted(available))}")
        if available[topic] not in PLAYABLE:
            raise BagError(
                f"topic {topic!r} is {available[topic]}; play publishes {', '.join(PLAYABLE)}"
            )
    if not wanted:
        raise BagError(f"bag {str(options.bag)!r} has no image or String topics to play")
    return {t: available[t] for t in wanted}


def _wait_for_subscribers(node: Node, pubs: Sequence[Any], options: PlayOptions) -> None:
    if options.wait_subscribers <= 0:
        return
    deadline = time.monotonic() + options.wait_timeout_s
    while time.monotonic() < deadline:
        if all(p.get_subscription_count() >= options.wait_subscribers for p in pubs):
            return
        time.sleep(0.05)
    node.get_logger().warning("timed out waiting for subscribers; playing anyway")


def _play_once(
    reader: Any, options: PlayOptions, pubs: dict[str, Any], topics: dict[str, str], node: Node
) -> int:
    count = 0
    first_ns: int | None = None
    started = time.monotonic()
    for conn, log_ns, raw in iter_messages(reader, options.bag, list(topics)):
        if first_ns is None:
            first_ns = log_ns
        due = started + (log_ns - first_ns) / 1e9 / options.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if not rclpy.ok():
            break
        pubs[conn.topic].publish(to_ros(reader.deserialize(raw, conn.msgtype), conn.msgtype))
        count += 1
    node.get_logger().info(f"published {count} messages from {options.bag}")
    return count
