"""vision_msgs definitions for rosbags: the one place bag writers get these message types from.

rosbags' typestores ship the core ROS messages but not vision_msgs, so writing a
`vision_msgs/msg/Detection2DArray` into a bag needs its `.msg` text registered first. The text
here is that of vision_msgs 4.1.1 (ROS 2 Humble and Jazzy), comments dropped; a test keeps it
equal to `interfaces/vision_msgs/msg/*.msg`, the copy the virtual environment builds for rclpy.
Readers do not need it for rosbag2 bags written by rosbags or `ros2 bag record`, which embed
their message definitions. ROS-free: rosbags only.
"""

from __future__ import annotations

from typing import Any

VISION_MSGS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": (
        "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n"
    ),
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"
    ),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox2D bbox\n"
        "string id\n"
    ),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nDetection2D[] detections\n",
    "vision_msgs/msg/Classification": ("std_msgs/Header header\nObjectHypothesis[] results\n"),
    "vision_msgs/msg/VisionClass": "uint16 class_id\nstring class_name\n",
    "vision_msgs/msg/LabelInfo": (
        "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n"
    ),
}


def register_vision_msgs(store: Any) -> Any:
    """Register the vision_msgs types in a rosbags typestore (idempotent); returns the store."""
    from rosbags.typesys import get_types_from_msg

    missing = {name: text for name, text in VISION_MSGS.items() if name not in store.types}
    types: dict[str, Any] = {}
    for name, text in missing.items():
        types.update(get_types_from_msg(text, name))
    if types:
        store.register(types)
    return store


def ros2_typestore() -> Any:
    """A ROS 2 Humble typestore (what synthetic bags are written with) plus vision_msgs."""
    from rosbags.typesys import Stores, get_typestore

    return register_vision_msgs(get_typestore(Stores.ROS2_HUMBLE))
