"""Regions of interest for the node: where they come from, how they are cut; free of rclpy.

`roi_source` says what the node classifies in each frame:

- `full_frame`: the whole frame, published on `classification` (the node's original behaviour);
- `detections`: the boxes of the `vision_msgs/Detection2DArray` paired with the frame by stamp;
- `fixed`: the boxes of the `rois` parameter (x, y, w, h in pixels, top-left), ids `roi0`, ...

Crops are cut only by `tl_perception.crop` (`crop_batch`) with the bundle's crop policy, the
one extraction used for the training crops. A bundle without a policy was trained on whole
frames; asked for ROIs anyway, the node cuts each box exactly (`EXACT_POLICY`: no context, not
squared, boxes under 1 px refused), which is the only cut that adds no assumption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tl_perception.bundle import Bundle
from tl_perception.crop import Box, CropPolicy
from tl_perception.errors import RoiConfigError

#: Used when the bundle has no crop policy: the box's own pixels, nothing added.
EXACT_POLICY = CropPolicy(context=0.0, square=False, fill="replicate", fill_value=0, min_box=1.0)


@dataclass(frozen=True)
class Roi:
    """One region to classify: its id, its box, and what the output copies back.

    `bbox` is the input `BoundingBox2D` message when the ROI came from a detection (the output
    carries it unchanged), None for fixed ROIs; `theta` is the box's rotation, which the crop
    ignores (crop.Box is axis-aligned) and the output keeps.
    """

    id: str
    box: Box
    theta: float = 0.0
    bbox: Any = None


def policy_for(bundle: Bundle) -> CropPolicy:
    """The bundle's crop policy, or `EXACT_POLICY` for a bundle of whole frames."""
    return bundle.crop_policy or EXACT_POLICY


def fixed_rois(values: Sequence[float] | None) -> tuple[Roi, ...]:
    """The `rois` parameter (x, y, w, h, x, y, w, h, ...) as ROIs `roi0`, `roi1`, ...

    Raises:
        RoiConfigError: a length that is not a multiple of 4, a value that is not finite, or a
            width or height <= 0 (a box the node could never crop, refused at once).
    """
    numbers = [] if values is None else list(values)
    if len(numbers) % 4:
        raise RoiConfigError(
            f"parameter rois must hold x, y, w, h per box (a multiple of 4 numbers), got "
            f"{len(numbers)}"
        )
    rois = []
    for index in range(0, len(numbers), 4):
        x, y, w, h = (float(v) for v in numbers[index : index + 4])
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise RoiConfigError(
                f"parameter rois box {index // 4} ({x}, {y}, {w}, {h}): needs finite x, y and "
                "w, h > 0"
            )
        rois.append(Roi(f"roi{index // 4}", Box.from_xywh(x, y, w, h)))
    return tuple(rois)


def frame_ids_differ(image_frame_id: str, detections_frame_id: str) -> bool:
    """Whether detections claim another camera frame than their image: both frame_ids set and
    different. An empty frame_id states nothing (many detectors leave it so)."""
    return bool(image_frame_id and detections_frame_id and image_frame_id != detections_frame_id)


def detection_rois(msg: Any, limit: int | None = None) -> list[Roi]:
    """The ROIs of a vision_msgs 4 `Detection2DArray`, in message order (duck-typed); only the
    first `limit`, so a runaway detector costs nothing for the boxes beyond it.

    Whatever the detector sent is kept, NaN or negative sizes included: `crop.reject_reason`
    judges each box later, so bad boxes are counted by reason rather than raised.
    """
    rois = []
    for detection in msg.detections[:limit]:
        bbox = detection.bbox
        rois.append(Roi(str(detection.id), Box.from_bbox(bbox), float(bbox.center.theta), bbox))
    return rois
