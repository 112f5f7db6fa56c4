"""Classifier output -> the node's result fields, free of rclpy so it is unit-testable.

The JSON fallback uses exactly the field names of `vision_msgs/msg/Classification`, so a consumer
can switch between the two formats by changing only how it parses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tl_perception.ros.rois import Roi

Hypotheses = list[tuple[str, float]]


@dataclass(frozen=True)
class RoiResult:
    """One classified ROI: the region and its hypotheses (top_k, threshold applied, best first)."""

    roi: Roi
    hypotheses: Hypotheses


def select_hypotheses(
    ranked: Sequence[tuple[str, float]], top_k: int, score_threshold: float
) -> Hypotheses:
    """The best `top_k` (class name, score) pairs at or above `score_threshold`, best first."""
    ordered = sorted(ranked, key=lambda pair: pair[1], reverse=True)
    return [(str(name), float(score)) for name, score in ordered if score >= score_threshold][
        :top_k
    ]


def classification_dict(
    sec: int, nanosec: int, frame_id: str, results: Hypotheses
) -> dict[str, Any]:
    """The JSON-fallback message body, field for field like vision_msgs/Classification."""
    return {"header": _header(sec, nanosec, frame_id), "results": _hypotheses(results)}


def classification_json(sec: int, nanosec: int, frame_id: str, results: Hypotheses) -> str:
    """`classification_dict` serialised compactly (one message = one JSON object)."""
    return json.dumps(classification_dict(sec, nanosec, frame_id, results), separators=(",", ":"))


def _header(sec: int, nanosec: int, frame_id: str) -> dict[str, Any]:
    return {"stamp": {"sec": int(sec), "nanosec": int(nanosec)}, "frame_id": frame_id}


def _hypotheses(results: Hypotheses) -> list[dict[str, Any]]:
    return [{"class_id": name, "score": round(score, 6)} for name, score in results]


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


def detections_json(sec: int, nanosec: int, frame_id: str, results: Sequence[RoiResult]) -> str:
    """`detections_dict` serialised compactly (floats round-trip exactly)."""
    return json.dumps(detections_dict(sec, nanosec, frame_id, results), separators=(",", ":"))


def overlay_text(results: Hypotheses) -> str:
    """The label drawn on the overlay image: best class and score, or a dash when none pass."""
    if not results:
        return "-"
    name, score = results[0]
    return f"{name} {score:.2f}"
