"""`play`: publish a bag's images, labels and detections to ROS 2 with rclpy.

The stand-in for `ros2 bag play` where rosbag2 is not installed. Messages keep their recorded
spacing (scaled by `rate`) and their recorded header stamps; rosbags messages are copied field by
field into rclpy messages, so nothing is re-encoded. Looping (`loops`) is `ros2 bag play --loop`'s:
the bag starts again right after its last message with the same recorded stamps, so every loop
makes the subscribers' clock jump back, as a simulator reset or a restarted driver does. This
module is the one place that converts rosbags messages to rclpy ones: `to_ros` and its table
`CONVERTERS`.
`vision_msgs/msg/Detection2DArray` (a detector's boxes, as `synth --kind road` writes them) is
played wherever vision_msgs imports (a ROS install, or `make venv`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
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

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
STRING_TYPE = "std_msgs/msg/String"
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"


def _header(header: Any) -> Header:
    stamp = header.stamp
    return Header(stamp=Time(sec=stamp.sec, nanosec=stamp.nanosec), frame_id=header.frame_id)


def _string(msg: Any) -> String:
    return String(data=msg.data)


def _compressed(msg: Any) -> CompressedImage:
    return CompressedImage(header=_header(msg.header), format=msg.format, data=bytes(msg.data))


def _image(msg: Any) -> Image:
    return Image(
        header=_header(msg.header),
        height=msg.height,
        width=msg.width,
        encoding=msg.encoding,
        is_bigendian=int(msg.is_bigendian),
        step=msg.step,
        data=bytes(msg.data),
    )


def _detections(msg: Any) -> Any:
    """Detection2DArray: every field (ids, boxes, hypotheses and their poses) as recorded."""
    from vision_msgs.msg import Detection2DArray

    out = Detection2DArray(header=_header(msg.header))
    out.detections = [_detection(d) for d in msg.detections]
    return out


def _detection(det: Any) -> Any:
    from vision_msgs.msg import Detection2D

    out = Detection2D(header=_header(det.header), id=det.id)
    out.bbox.center.position.x = float(det.bbox.center.position.x)
    out.bbox.center.position.y = float(det.bbox.center.position.y)
    out.bbox.center.theta = float(det.bbox.center.theta)
    out.bbox.size_x = float(det.bbox.size_x)
    out.bbox.size_y = float(det.bbox.size_y)
    out.results = [_hypothesis(r) for r in det.results]
    return out


def _hypothesis(result: Any) -> Any:
    from vision_msgs.msg import ObjectHypothesisWithPose

    out = ObjectHypothesisWithPose()
    out.hypothesis.class_id = result.hypothesis.class_id
    out.hypothesis.score = float(result.hypothesis.score)
    pose, src = out.pose, result.pose
    for name in ("x", "y", "z"):
        setattr(pose.pose.position, name, float(getattr(src.pose.position, name)))
    for name in ("x", "y", "z", "w"):
        setattr(pose.pose.orientation, name, float(getattr(src.pose.orientation, name)))
    pose.covariance = [float(c) for c in src.covariance]
    return out


#: rosbags message type -> its rclpy conversion.
CONVERTERS: dict[str, Callable[[Any], Any]] = {
    IMAGE_TYPE: _image,
    COMPRESSED_TYPE: _compressed,
    STRING_TYPE: _string,
    DETECTIONS_TYPE: _detections,
}


def playable_types() -> dict[str, type]:
    """The message types `play` publishes here: vision_msgs only where it imports."""
    types: dict[str, type] = {
        IMAGE_TYPE: Image,
        COMPRESSED_TYPE: CompressedImage,
        STRING_TYPE: String,
    }
    try:
        from vision_msgs.msg import Detection2DArray
    except ImportError:
        return types
    types[DETECTIONS_TYPE] = Detection2DArray
    return types


def to_ros(msg: Any, msgtype: str) -> Any:
    """An rclpy message with the fields of a rosbags message (header stamps as recorded)."""
    return CONVERTERS[msgtype](msg)


@dataclass(frozen=True)
class PlayOptions:
    bag: Path
    topics: tuple[str, ...] = ()
    rate: float = 1.0
    loops: int = 1  # times the bag is played; 0 = for ever (until Ctrl-C)
    remap: Mapping[str, str] = field(default_factory=dict)
    qos: str = "reliable"
    depth: int = 10
    wait_subscribers: int = 0
    wait_timeout_s: float = 10.0


def play(options: PlayOptions) -> int:
    """Publish the bag `loops` times (0: until Ctrl-C); returns the number of messages
    published."""
    if options.rate <= 0:
        raise BagError(f"--rate {options.rate}: must be > 0")
    if options.loops < 0:
        raise BagError(f"--loops {options.loops}: must be >= 0 (0: for ever, as --loop)")
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    node = Node("tl_perception_play")
    published = 0
    try:
        with open_bag(options.bag) as reader:
            types = playable_types()
            topics = _playable_topics(reader, options, types)
            reliability = (
                ReliabilityPolicy.BEST_EFFORT
                if options.qos == "sensor_data"
                else ReliabilityPolicy.RELIABLE
            )
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=options.depth, reliability=reliability
            )
            pubs = {
                t: node.create_publisher(types[m], options.remap.get(t, t), qos)
                for t, m in topics.items()
            }
            _wait_for_subscribers(node, list(pubs.values()), options)
            played = 0
            while rclpy.ok() and (options.loops == 0 or played < options.loops):
                published += _play_once(reader, options, pubs, topics, node)
                played += 1
            time.sleep(0.2)  # let the last messages leave before the publishers go away
    finally:
        node.destroy_node()
        if own_context:
            rclpy.try_shutdown()
    return published


def _playable_topics(
    reader: Any, options: PlayOptions, types: Mapping[str, type]
) -> dict[str, str]:
    available = {c.topic: c.msgtype for c in reader.connections}
    wanted = options.topics or tuple(t for t, m in available.items() if m in types)
    for topic in wanted:
        if topic not in available:
            raise BagError(f"topic {topic!r} not in bag; it has {', '.join(sorted(available))}")
        if available[topic] not in types:
            hint = " (vision_msgs does not import here)" if available[topic] in CONVERTERS else ""
            raise BagError(
                f"topic {topic!r} is {available[topic]}; play publishes {', '.join(types)}{hint}"
            )
    if not wanted:
        raise BagError(f"bag {str(options.bag)!r} has no image, String or detection topics to play")
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
