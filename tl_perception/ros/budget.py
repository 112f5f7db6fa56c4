"""The ROI budget of one cycle, shared fairly between cameras; free of rclpy.

A cycle classifies the ROIs of every camera with a new frame in one batched inference, so its
cost is shared too: the crops cut, the pixels copied for them (a detector scaled wrong can ask
for a crop 4x the frame's side: 7680 x 7680 px for one 1080p box), the images in the batch.
Two limits bound it: `max_rois` crops and `max_roi_pixels` crop pixels per cycle.

They are shared round-robin in message order: every camera's first acceptable box, then every
camera's second, and so on. A box whose crop does not fit in the pixels left is refused
(`over_budget`) and the camera's next, smaller boxes are still tried; once `max_rois` crops are
taken, every box left is `over_max`. So a camera that floods the cycle with boxes, or with huge
boxes, takes only what the others leave: each camera gets at least its fair share (an equal part
of the cycle) whenever it wants it, and the whole budget when it is alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: The rejection reason of a box refused for the cycle's pixel budget (beside `crop.REASONS`).
OVER_BUDGET = "over_budget"
#: Crop pixels per cycle (all cameras): 48 MiB of RGB crops, e.g. 128 crops of 360 x 360 px or
#: three crops the size of a 1080p frame's longer side.
DEFAULT_MAX_ROI_PIXELS = 16 * 1024 * 1024


@dataclass
class Share:
    """One camera's part of the cycle: positions (into its demand list) of the boxes to crop,
    in order, and how many boxes did not get a place by count or by pixels."""

    kept: list[int] = field(default_factory=list)
    over_max: int = 0
    over_budget: int = 0


def share_budget(demands: Sequence[Sequence[int]], max_rois: int, max_pixels: int) -> list[Share]:
    """Each camera's share of `max_rois` crops and `max_pixels` pixels; `demands[c]` are the
    pixel sizes of camera c's acceptable crops in message order (see the module docstring)."""
    shares = [Share() for _ in demands]
    rois_left, pixels_left = max_rois, max_pixels
    for position in range(max((len(d) for d in demands), default=0)):
        for sizes, share in zip(demands, shares, strict=True):
            if position >= len(sizes):
                continue
            if rois_left <= 0:
                share.over_max += 1
            elif sizes[position] > pixels_left:
                share.over_budget += 1
            else:
                share.kept.append(position)
                rois_left -= 1
                pixels_left -= sizes[position]
    return shares
