"""Every wire format of the node, in both directions: vision_msgs when installed, otherwise the
JSON twins in std_msgs/String.

A ROS install provides vision_msgs; `make venv` builds the same definitions into the virtual
environment (interfaces/vision_msgs). The JSON fallback is for an environment that has neither
(or `output_format:=json`). It uses the messages' own field names, with two levels flattened in
`classified_detections` (see `detections_dict`), so a consumer can switch between the formats by
changing only how it parses. One function builds each JSON shape (`classification_dict`,
`detections_dict`); the readers (`classification_to_dict`, `detections_to_dict`) turn either
format into that shape through the same functions, so writer and reader cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from std_msgs.msg import Header, String

from tl_perception.crop import Box
from tl_perception.errors import NodeConfigError
from tl_perception.ros.config import OUTPUT_FORMATS, OutputChoice
from tl_perception.ros.labels import Hypotheses
from tl_perception.ros.rois import Roi

#: The two formats on the wire (`output_format:=auto` resolves to one of them).
OutputFormat = Literal["vision_msgs", "json"]
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


@dataclass(frozen=True)
class RoiResult:
    """One classified ROI: the region and its hypotheses (top_k, threshold applied, best first)."""

    roi: Roi
    hypotheses: Hypotheses


def vision_msgs_available() -> bool:
    """Whether vision_msgs imports (a sourced ROS 2 install, or built into the venv)."""
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_output_format(requested: OutputChoice | str) -> OutputFormat:
    """`auto` -> `vision_msgs` if importable else `json`; a missing vision_msgs is an error."""
    if requested not in OUTPUT_FORMATS:
        raise NodeConfigError(
            f"output_format {requested!r} is not one of {', '.join(OUTPUT_FORMATS)}"
        )
    available = vision_msgs_available()
    if requested == "json" or (requested == "auto" and not available):
        return "json"
    if not available:
        raise NodeConfigError(
            "output_format 'vision_msgs' needs the vision_msgs package, which cannot be imported; "
            "install it (apt install ros-$ROS_DISTRO-vision-msgs; in the virtual environment "
            "make venv builds it) or set output_format:=json"
        )
    return "vision_msgs"


def format_of_type(type_name: str) -> OutputFormat:
    """`vision_msgs` or `json` for a type name from the graph, so a consumer follows the node."""
    return _format_of(type_name, TYPE_NAMES, "classification")


def detections_format_of_type(type_name: str) -> OutputFormat:
    """`vision_msgs` or `json` for a `classified_detections` type name from the graph."""
    return _format_of(type_name, DETECTION_TYPE_NAMES, "classified_detections")


def _format_of(type_name: str, names: Mapping[str, str], output: str) -> OutputFormat:
    """The output format whose message type on `output` is `type_name` (one of `names`)."""
    if type_name == names["vision_msgs"]:
        return "vision_msgs"
    if type_name == names["json"]:
        return "json"
    raise NodeConfigError(f"{type_name!r} is not a {output} type ({', '.join(names.values())})")


# --------------------------------------------------------------------- the JSON shapes
def classification_dict(
    sec: int, nanosec: int, frame_id: str, results: Hypotheses
) -> dict[str, Any]:
    """The JSON twin of `classification`, field for field like vision_msgs/Classification."""
    return {"header": _header(sec, nanosec, frame_id), "results": _hypotheses(results)}


def detections_dict(
    sec: int, nanosec: int, frame_id: str, results: Sequence[RoiResult]
) -> dict[str, Any]:
    """The JSON twin of `classified_detections` (vision_msgs/Detection2DArray).

    Field names are the message's, with two levels flattened as in the `classification` twin:
    `bbox.center.position.{x,y}` is `bbox.center.{x,y}`, and each result's
    `hypothesis.{class_id,score}` is `{class_id,score}` (the pose is never set).
    """
    return {
        "header": _header(sec, nanosec, frame_id),
        "detections": [
            {
                "id": item.roi.id,
                "bbox": {
                    "center": {
                        "x": item.roi.box.center_x,
                        "y": item.roi.box.center_y,
                        "theta": item.roi.theta,
                    },
                    "size_x": item.roi.box.size_x,
                    "size_y": item.roi.box.size_y,
                },
                "results": _hypotheses(item.hypotheses),
            }
            for item in results
        ],
    }


def _header(sec: int, nanosec: int, frame_id: str) -> dict[str, Any]:
    return {"stamp": {"sec": int(sec), "nanosec": int(nanosec)}, "frame_id": frame_id}


def _hypotheses(results: Hypotheses) -> list[dict[str, Any]]:
    return [{"class_id": name, "score": round(score, 6)} for name, score in results]


def classification_json(sec: int, nanosec: int, frame_id: str, results: Hypotheses) -> str:
    """`classification_dict` serialised compactly (one message = one JSON object)."""
    return _compact(classification_dict(sec, nanosec, frame_id, results))


def detections_json(sec: int, nanosec: int, frame_id: str, results: Sequence[RoiResult]) -> str:
    """`detections_dict` serialised compactly (floats round-trip exactly)."""
    return _compact(detections_dict(sec, nanosec, frame_id, results))


def _compact(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


# --------------------------------------------------------------------- messages -> the shapes
def classification_to_dict(msg: Any) -> dict[str, Any]:
    """Either `classification` format -> `classification_dict`'s shape."""
    if isinstance(msg, String):
        return json.loads(msg.data)
    stamp = msg.header.stamp
    results = [(str(h.class_id), float(h.score)) for h in msg.results]
    return classification_dict(stamp.sec, stamp.nanosec, msg.header.frame_id, results)


def detections_to_dict(msg: Any) -> dict[str, Any]:
    """Either `classified_detections` format -> `detections_dict`'s shape."""
    if isinstance(msg, String):
        return json.loads(msg.data)
    stamp = msg.header.stamp
    results = [
        RoiResult(
            Roi(str(d.id), Box.from_bbox(d.bbox), float(d.bbox.center.theta)),
            [(str(r.hypothesis.class_id), float(r.hypothesis.score)) for r in d.results],
        )
        for d in msg.detections
    ]
    return detections_dict(stamp.sec, stamp.nanosec, msg.header.frame_id, results)


# --------------------------------------------------------------------- the shapes -> messages
def classification_type(output_format: OutputFormat) -> type:
    """The message class published on `classification`."""
    if output_format == "vision_msgs":
        from vision_msgs.msg import Classification

        return Classification
    return String


def detections_type(output_format: OutputFormat) -> type:
    """The message class published on `classified_detections`."""
    if output_format == "vision_msgs":
        from vision_msgs.msg import Detection2DArray

        return Detection2DArray
    return String


def build_classification(output_format: OutputFormat, header: Header, results: Hypotheses) -> Any:
    """A Classification (header copied from the image) or its JSON twin in a String."""
    if output_format == "json":
        stamp = header.stamp
        return String(data=classification_json(stamp.sec, stamp.nanosec, header.frame_id, results))
    from vision_msgs.msg import Classification, ObjectHypothesis

    msg = Classification()
    msg.header = header
    msg.results = [ObjectHypothesis(class_id=name, score=score) for name, score in results]
    return msg


def build_detections(
    output_format: OutputFormat, header: Header, results: Sequence[RoiResult]
) -> Any:
    """A Detection2DArray (header copied from the image; each detection keeps its id and bbox,
    its results are the hypotheses) or its JSON twin in a String."""
    if output_format == "json":
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
