"""Classifier output -> the node's result fields, free of rclpy so it is unit-testable.

The JSON fallback uses exactly the field names of `vision_msgs/msg/Classification`, so a consumer
can switch between the two formats by changing only how it parses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Hypotheses = list[tuple[str, float]]


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
    return {
        "header": {"stamp": {"sec": int(sec), "nanosec": int(nanosec)}, "frame_id": frame_id},
        "results": [{"class_id": name, "score": round(score, 6)} for name, score in results],
    }


def classification_json(sec: int, nanosec: int, frame_id: str, results: Hypotheses) -> str:
    """`classification_dict` serialised compactly (one message = one JSON object)."""
    return json.dumps(classification_dict(sec, nanosec, frame_id, results), separators=(",", ":"))


def overlay_text(results: Hypotheses) -> str:
    """The label drawn on the overlay image: best class and score, or a dash when none pass."""
    if not results:
        return "-"
    name, score = results[0]
    return f"{name} {score:.2f}"
