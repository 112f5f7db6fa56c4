"""The optional debug image: the input frame with the best class and score drawn on it."""

from __future__ import annotations

import cv2
import numpy as np

from tl_perception.ros.results import Hypotheses, overlay_text


def draw_overlay(rgb: np.ndarray, results: Hypotheses) -> np.ndarray:
    """A copy of `rgb` with a dark banner holding e.g. 'stop 0.97' in its top-left corner."""
    out = np.ascontiguousarray(rgb).copy()
    text = overlay_text(results)
    scale = max(0.4, min(out.shape[0], out.shape[1]) / 400.0)
    thickness = max(1, round(scale * 2))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(out, (0, 0), (width + 8, height + baseline + 8), (0, 0, 0), thickness=-1)
    cv2.putText(
        out,
        text,
        (4, height + 4),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )
    return out
