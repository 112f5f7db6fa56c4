"""Classifier output -> the node's result fields, free of rclpy so it is unit-testable.

The JSON fallback uses exactly the field names of `vision_msgs/msg/Classification`, so a consumer
can switch between the two formats by changing only how it parses.

`label_hypotheses` turns one (smoothed) score vector into what is published: the published class
first (while the smoother holds a class it is not the top score), then the others best first,
or `unknown` first when the frame's own best score (before smoothing) is below the unknown
threshold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tl_perception.ros.rois import Roi

Hypotheses = list[tuple[str, float]]
#: The class published when the best score is below the unknown threshold. It is no class of
#: the model, so it has no index and is not in LabelInfo's class_map.
UNKNOWN_LABEL = "unknown"


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


@dataclass(frozen=True)
class HypothesisRule:
    """What one cycle publishes per frame or ROI: `top_k`, `score_threshold`, and the effective
    unknown threshold (None: never unknown)."""

    top_k: int
    score_threshold: float = 0.0
    unknown_threshold: float | None = None


@dataclass(frozen=True)
class Label:
    """One frame's or ROI's answer: the published class (or `UNKNOWN_LABEL`) and its hypotheses.

    `name` is the decision even when `score_threshold` left no hypothesis, so a caller can tell a
    background ROI from one that scored low.
    """

    name: str
    hypotheses: Hypotheses

    @property
    def unknown(self) -> bool:
        return self.name == UNKNOWN_LABEL


def label_hypotheses(
    scores: np.ndarray,
    class_names: Sequence[str],
    first: int,
    rule: HypothesisRule,
    *,
    frame_best: float,
) -> Label:
    """The hypotheses of one (C,) score vector whose published class is `first`.

    `first` leads even when another class scores higher (the smoother holds it), then the rest
    follow best first (ties: lower index first, like `Classifier.classify`). When `frame_best`,
    the frame's (ROI's) own best score before any smoothing, is below
    `rule.unknown_threshold` (chosen by `finetune` on exactly such scores), `unknown` with score
    1 - `frame_best` leads and the class hypotheses follow it, so a consumer still sees what the
    model leaned to. `score_threshold` leaves out class hypotheses scoring lower; if it leaves
    out `first`, no class hypothesis is published at all, so the one after it can never stand
    in for a held class.
    """
    best = float(scores[first])
    unknown = rule.unknown_threshold is not None and frame_best < rule.unknown_threshold
    name = UNKNOWN_LABEL if unknown else str(class_names[first])
    head: Hypotheses = [(UNKNOWN_LABEL, 1.0 - float(frame_best))] if unknown else []
    room = rule.top_k - len(head)
    if room <= 0 or best < rule.score_threshold:
        return Label(name, head)
    order = np.argsort(-scores, kind="stable")[: room + 1]
    picked = [first, *[int(i) for i in order if i != first][: room - 1]]
    tail = [
        (str(class_names[i]), float(scores[i])) for i in picked if scores[i] >= rule.score_threshold
    ]
    return Label(name, head + tail)


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
