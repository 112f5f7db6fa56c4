"""Tracks: which boxes of consecutive frames show one object, so all its crops share one split.

Crops of one object in neighbouring frames are near-identical; were they split between train and
test, the test score would measure memory. A detector that tracks says so with `Detection2D.id`;
for boxes without an id, `link_tracks` links boxes of one label frame to frame by overlap:

- a box continues a track of its label whose last box overlaps it with IoU >= `LINK_IOU` (0.3,
  the usual SORT / ByteTrack matching threshold), last seen at most `LINK_GAP_S` (2 s, the gap
  that ends a frame sequence) before, so a box the detector missed for a frame or two does not
  split the object into two tracks;
- matching is greedy: the pair with the highest IoU first (ties: the older track, then the
  earlier box), each track and box used once per frame; an unmatched box starts a new track.

Deterministic: the result depends only on the frames, their order and the boxes' order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tl_perception.crop import Box

LINK_IOU = 0.3
LINK_GAP_S = 2.0


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (continuous pixel geometry); 0 for a box that is
    not finite or has no area, so a broken detector box never links."""
    values = (
        a.center_x,
        a.center_y,
        a.size_x,
        a.size_y,
        b.center_x,
        b.center_y,
        b.size_x,
        b.size_y,
    )
    if (
        not all(math.isfinite(v) for v in values)
        or min(a.size_x, a.size_y, b.size_x, b.size_y) <= 0
    ):
        return 0.0
    ax0, ay0, aw, ah = a.to_xywh()
    bx0, by0, bw, bh = b.to_xywh()
    w = min(ax0 + aw, bx0 + bw) - max(ax0, bx0)
    h = min(ay0 + ah, by0 + bh) - max(ay0, by0)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


@dataclass(frozen=True)
class LinkFrame:
    """The boxes of one frame to link: (label, box) pairs, at log time `t_ns`."""

    t_ns: int
    boxes: tuple[tuple[str, Box], ...]


@dataclass
class _Open:
    number: int
    label: str
    box: Box
    t_ns: int


def link_tracks(
    frames: Sequence[LinkFrame], threshold: float = LINK_IOU, gap_s: float = LINK_GAP_S
) -> list[list[int]]:
    """Track number (0, 1, ... in order of first appearance) of every box of every frame.

    `frames` must be in time order; result[i][j] is the track of `frames[i].boxes[j]`.
    """
    gap_ns = round(gap_s * 1e9)
    open_tracks: list[_Open] = []
    result: list[list[int]] = []
    count = 0
    for frame in frames:
        open_tracks = [t for t in open_tracks if frame.t_ns - t.t_ns <= gap_ns]
        pairs = sorted(
            (-overlap, k, j)
            for k, track in enumerate(open_tracks)
            for j, (label, box) in enumerate(frame.boxes)
            if label == track.label and (overlap := iou(track.box, box)) >= threshold
        )
        numbers: list[int | None] = [None] * len(frame.boxes)
        used: set[int] = set()
        for _neg, k, j in pairs:
            if k not in used and numbers[j] is None:
                used.add(k)
                numbers[j] = open_tracks[k].number
                open_tracks[k].box, open_tracks[k].t_ns = frame.boxes[j][1], frame.t_ns
        for j, (label, box) in enumerate(frame.boxes):
            if numbers[j] is None:
                numbers[j] = count
                open_tracks.append(_Open(count, label, box, frame.t_ns))
                count += 1
        result.append([n for n in numbers if n is not None])
    return result
