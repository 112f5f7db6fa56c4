"""The optional debug image: the input frame with the best class and score drawn on it, or, in
ROI mode, every classified box with its label."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from tl_perception.crop import box_rect
from tl_perception.ros.labels import Hypotheses
from tl_perception.ros.messages import RoiResult


def draw_overlay(rgb: np.ndarray, results: Hypotheses) -> np.ndarray:
    """A copy of `rgb` with a dark banner holding e.g. 'stop 0.97' in its top-left corner."""
    out = np.ascontiguousarray(rgb).copy()
    text = overlay_text(results)
    scale = max(0.4, min(out.shape[0], out.shape[1]) / 400.0)
    thickness = max(1, round(scale * 2))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(out, (0, 0), (width + 8, height + baseline + 8), (0, 0, 0), thickness=-1)
    _put_label(out, text, (4, height + 4), scale, thickness)
    return out


def draw_rois(rgb: np.ndarray, results: Sequence[RoiResult]) -> np.ndarray:
    """A copy of `rgb` with each classified ROI's box and 'class score' label drawn on it."""
    out = np.ascontiguousarray(rgb).copy()
    scale = max(0.35, min(out.shape[0], out.shape[1]) / 800.0)
    thickness = max(1, round(scale * 2))
    for item in results:
        x0, y0, w, h = box_rect(item.roi.box)
        cv2.rectangle(out, (x0, y0), (x0 + w - 1, y0 + h - 1), (255, 255, 0), thickness)
        text = f"{item.roi.id}: {overlay_text(item.hypotheses)}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y0 - th - baseline - 4)
        cv2.rectangle(out, (x0, top), (x0 + tw + 4, top + th + baseline + 4), (0, 0, 0), -1)
        _put_label(out, text, (x0 + 2, top + th + 2), scale, thickness)
    return out


def _put_label(
    out: np.ndarray, text: str, origin: tuple[int, int], scale: float, thickness: int
) -> None:
    """White anti-aliased `text` on `out` in place, its baseline starting at `origin`."""
    cv2.putText(
        out,
        text,
        origin,
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )


def overlay_text(results: Hypotheses) -> str:
    """The label drawn on the overlay image: best class and score, or a dash when none pass."""
    if not results:
        return "-"
    name, score = results[0]
    return f"{name} {score:.2f}"
