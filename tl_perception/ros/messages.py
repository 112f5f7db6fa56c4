"""Node output messages: vision_msgs when installed, otherwise std_msgs/String JSON.

A ROS install provides vision_msgs; `make venv` builds the same definitions into the virtual
environment (interfaces/vision_msgs). The JSON fallback is for an environment that has neither
(or `output_format:=json`); it carries the same field names (see `results.classification_dict`),
and `classification_to_dict` reads either format, so consumers work with both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from std_msgs.msg import Header, String

from tl_perception.errors import TlPerceptionError
from tl_perception.ros.results import (
    Hypotheses,
    RoiResult,
    classification_dict,
    classification_json,
    detections_json,
)

OUTPUT_FORMATS: tuple[str, ...] = ("auto", "vision_msgs", "json")
# ROS type names of the two `classification` formats, as the graph reports them.
TYPE_NAMES: dict[str, str] = {
    "vision_msgs": "vision_msgs/msg/Classification",
    "json": "std_msgs/msg/String",
}
# ... and of the two `classified_detections` formats.
DETECTION_TYPE_NAMES: dict[str, str] = {
    "vision_msgs": "vision_msgs/msg/Detection2DArray",
    "json": "std_msgs/msg/String",
}


class NodeConfigError(TlPerceptionError):
    """A node parameter holds a value the node cannot work with."""


def vision_msgs_available() -> bool:
    """Whether vision_msgs imports (a sourced ROS 2 install, or built into the venv)."""
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
            "install it (apt install ros-$ROS_DISTRO-vision-msgs; in the virtual environment "
            "make venv builds it) or set output_format:=json"
        )
    return requested


def classification_type(output_format: str) -> type:
    """The message class published on `classification`."""
    if output_format == "vision_msgs":
        from vision_msgs.msg import Classification

        return Classification
    return String


def format_of_type(type_name: str) -> str:
    """`vision_msgs` or `json` for a type name from the graph, so a consumer follows the node."""
    return _format_of(type_name, TYPE_NAMES, "classification")


def detections_format_of_type(type_name: str) -> str:
    """`vision_msgs` or `json` for a `classified_detections` type name from the graph."""
    return _format_of(type_name, DETECTION_TYPE_NAMES, "classified_detections")


def _format_of(type_name: str, names: Mapping[str, str], output: str) -> str:
    """The output format whose message type on `output` is `type_name` (one of `names`)."""
    for output_format, name in names.items():
        if type_name == name:
            return output_format
    raise NodeConfigError(f"{type_name!r} is not a {output} type ({', '.join(names.values())})")


def classification_to_dict(msg: Any) -> dict[str, Any]:
    """Either format -> the JSON body's dict (`header.stamp.sec/nanosec`, `frame_id`, `results`)."""
    if isinstance(msg, String):
        return json.loads(msg.data)
    stamp = msg.header.stamp
    results = [(str(h.class_id), float(h.score)) for h in msg.results]
    return classification_dict(stamp.sec, stamp.nanosec, msg.header.frame_id, results)


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


def detections_type(output_format: str) -> type:
    """The message class published on `classified_detections`."""
    if output_format == "vision_msgs":
        from vision_msgs.msg import Detection2DArray

        return Detection2DArray
    return String


def build_detections(output_format: str, header: Header, results: Sequence[RoiResult]) -> Any:
    """A Detection2DArray (header copied from the image; each detection keeps its id and bbox,
    its results are the hypotheses) or its JSON twin in a String."""
    if output_format != "vision_msgs":
        stamp = header.stamp
        return String(data=detections_json(stamp.sec, stamp.nanosec, header.frame_id, results))
    from vision_msgs.msg import Detection2D, Detection2DArray

    msg = Detection2DArray()
    msg.header = header
    detections = []
    for item in results:
        detection = Detection2D()
        detection.header = header
        detection.id = item.roi.id
        detection.bbox = item.roi.bbox if item.roi.bbox is not None else _bbox(item)
        detection.results = _hypotheses_with_pose(item.hypotheses)
        detections.append(detection)
    msg.detections = detections
    return msg


def _bbox(item: RoiResult) -> Any:
    from vision_msgs.msg import BoundingBox2D

    bbox = BoundingBox2D()
    bbox.center.position.x = item.roi.box.center_x
    bbox.center.position.y = item.roi.box.center_y
    bbox.center.theta = item.roi.theta
    bbox.size_x = item.roi.box.size_x
    bbox.size_y = item.roi.box.size_y
    return bbox


def _hypotheses_with_pose(results: Hypotheses) -> list[Any]:
    from vision_msgs.msg import ObjectHypothesisWithPose

    out = []
    for name, score in results:
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = name
        hypothesis.hypothesis.score = score
        out.append(hypothesis)
    return out


def detections_to_dict(msg: Any) -> dict[str, Any]:
    """Either `classified_detections` format -> the JSON twin's dict (see `detections_dict`)."""
    if isinstance(msg, String):
        return json.loads(msg.data)
    stamp = msg.header.stamp
    return {
        "header": {
            "stamp": {"sec": stamp.sec, "nanosec": stamp.nanosec},
            "frame_id": msg.header.frame_id,
        },
        "detections": [
            {
                "id": d.id,
                "bbox": {
                    "center": {
                        "x": d.bbox.center.position.x,
                        "y": d.bbox.center.position.y,
                        "theta": d.bbox.center.theta,
                    },
                    "size_x": d.bbox.size_x,
                    "size_y": d.bbox.size_y,
                },
                "results": [
                    {"class_id": r.hypothesis.class_id, "score": round(r.hypothesis.score, 6)}
                    for r in d.results
                ],
            }
            for d in msg.detections
        ],
    }
