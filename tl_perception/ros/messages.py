"""Node output messages: vision_msgs when installed, otherwise std_msgs/String JSON.

`vision_msgs` is not on PyPI, so the JSON fallback keeps the node usable in a plain virtual
environment; it carries the same field names (see `results.classification_dict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from std_msgs.msg import Header, String

from tl_perception.errors import TlPerceptionError
from tl_perception.ros.results import Hypotheses, classification_json

OUTPUT_FORMATS: tuple[str, ...] = ("auto", "vision_msgs", "json")


class NodeConfigError(TlPerceptionError):
    """A node parameter holds a value the node cannot work with."""


def vision_msgs_available() -> bool:
    """Whether the vision_msgs Python package can be imported (a sourced ROS 2 install)."""
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_output_format(requested: str) -> str:
    """`auto` -> `vision_msgs` if importable else `json`; a missing vision_msgs is an error."""
    if requested not in OUTPUT_FORMATS:
        raise NodeConfigError(
            f"output_format {requested!r} is not one of {', '.join(OUTPUT_FORMATS)}"
        )
    available = vision_msgs_available()
    if requested == "auto":
        return "vision_msgs" if available else "json"
    if requested == "vision_msgs" and not available:
        raise NodeConfigError(
            "output_format 'vision_msgs' needs the vision_msgs package, which cannot be imported; "
            "install it (apt install ros-$ROS_DISTRO-vision-msgs) or set output_format:=json"
        )
    return requested


def classification_type(output_format: str) -> type:
    """The message class published on `classification`."""
    if output_format == "vision_msgs":
        from vision_msgs.msg import Classification

        return Classification
    return String


def build_classification(output_format: str, header: Header, results: Hypotheses) -> Any:
    """A Classification (header copied from the image) or its JSON twin in a String."""
    if output_format == "vision_msgs":
        from vision_msgs.msg import Classification, ObjectHypothesis

        msg = Classification()
        msg.header = header
        msg.results = [ObjectHypothesis(class_id=name, score=score) for name, score in results]
        return msg
    return String(
        data=classification_json(header.stamp.sec, header.stamp.nanosec, header.frame_id, results)
    )


def build_label_info(header: Header, class_names: Sequence[str], threshold: float) -> Any:
    """vision_msgs/LabelInfo: class index -> name, and the score threshold in use."""
    from vision_msgs.msg import LabelInfo, VisionClass

    msg = LabelInfo()
    msg.header = header
    msg.class_map = [
        VisionClass(class_id=index, class_name=name) for index, name in enumerate(class_names)
    ]
    msg.threshold = float(threshold)
    return msg
