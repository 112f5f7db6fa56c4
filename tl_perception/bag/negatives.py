"""Background crops ("negatives"): regions of a frame that show none of its boxes.

A model trained only on crops of signs must still say "no sign here" when a detector fires on a
sign-coloured patch; negatives teach it that. Each negative is a box whose crop, by the run's
`CropPolicy` (context and square included), lies entirely inside the frame (real pixels, no
fill: fill would tell the model "this is a negative") and does not touch the crop, nor the box, of
any box of the frame, labelled or not, nor another negative of the frame: IoU 0 with all of them.

Sizes: each negative takes the size of one of the frame's boxes that the policy accepts, chosen at
random, so negatives look like what the detector boxes. A frame without such boxes uses squares
with a side uniform in [max(min_box, 5% of the frame's shorter side), max(that, 25% of it)].
Positions are uniform over the places where the crop fits; `NEGATIVE_TRIES` tries per negative,
after which the frame has no room for it (the caller counts `negative_no_room`).

Everything is drawn from one generator seeded per frame (`negative_seed`), so the result does not
depend on the worker that computes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from tl_perception.crop import Box, CropPolicy, box_rect, crop_rect, reject_reason

NEGATIVE_TRIES = 30
DEFAULT_SIDE = (0.05, 0.25)  # of the frame's shorter side, when the frame has no usable box

Rect = tuple[int, int, int, int]


def negative_seed(seed: int, bag: str, index: int) -> int:
    """The generator seed of frame `index` of `bag` (any `--seed`, negative ones too)."""
    digest = hashlib.sha256(f"negatives:{seed}:{bag}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def negative_boxes(
    frame_hw: tuple[int, int], boxes: Sequence[Box], policy: CropPolicy, count: int, seed: int
) -> list[Box]:
    """Up to `count` background boxes for a frame of (height, width) holding `boxes`."""
    rng = np.random.default_rng(seed)
    taken = [r for box in boxes for r in _rects(box, policy)]
    sizes = [(b.size_x, b.size_y) for b in boxes if reject_reason(b, policy, frame_hw) is None]
    out: list[Box] = []
    for _ in range(count):
        box = _place(rng, frame_hw, sizes, policy, taken)
        if box is None:
            continue
        out.append(box)
        taken.append(crop_rect(box, policy))
    return out


def _rects(box: Box, policy: CropPolicy) -> list[Rect]:
    """The box's own pixels and its crop; none for a box that has no geometry."""
    if reject_reason(box, policy, (1 << 30, 1 << 30)) == "invalid":
        return []
    return [box_rect(box), crop_rect(box, policy)]


def _place(
    rng: np.random.Generator,
    frame_hw: tuple[int, int],
    sizes: list[tuple[float, float]],
    policy: CropPolicy,
    taken: list[Rect],
) -> Box | None:
    height, width = frame_hw
    short = min(height, width)
    lo = max(policy.min_box, DEFAULT_SIDE[0] * short, 1.0)
    hi = max(lo, DEFAULT_SIDE[1] * short)
    for _ in range(NEGATIVE_TRIES):
        if sizes:
            size_x, size_y = sizes[int(rng.integers(len(sizes)))]
        else:
            size_x = size_y = float(rng.uniform(lo, hi))
        _x, _y, w, h = crop_rect(Box(0.0, 0.0, size_x, size_y), policy)
        if w > width or h > height:
            continue
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        # Centred so that crop_rect gives exactly (x0, y0, w, h): W/2 is exact in float64.
        box = Box(x0 + w / 2, y0 + h / 2, size_x, size_y)
        rect = crop_rect(box, policy)
        if reject_reason(box, policy, frame_hw) is None and not any(
            _touch(rect, other) for other in taken
        ):
            return box
    return None


def _touch(a: Rect, b: Rect) -> bool:
    """Whether two integer rects share a pixel (IoU > 0)."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
