"""Background crops ("negatives"): regions of a frame that show none of its boxes.

A model trained only on crops of signs must still say "no sign here" when a detector fires on a
sign-coloured patch; negatives teach it that. Each negative is a box whose crop, by the run's
`CropPolicy` (context and square included), does not touch the crop, nor the box, of any box of
the frame, labelled or not, nor another negative of the frame: IoU 0 with all of them.

Negatives copy the frame's positives, so that nothing but the content tells them apart: each one
takes one of the frame's boxes that the policy accepts, chosen at random, as its template. It gets
the template's size (negatives look like what the detector boxes) and the template's *border*:
a positive near the frame's edge has a crop that reaches past it, filled by the policy's `fill`,
so its negative's crop reaches past an edge by as many pixels (on the same side or the opposite
one, chosen at random) and is filled the same way. A template whose crop lies inside the frame
gives a negative inside the frame. So the share of filled crops, and how much of each is fill,
is the same for negatives as for positives: neither "fill means sign" nor "fill means no sign"
can be learnt. A frame without usable boxes uses squares inside the frame, with a side uniform
in [max(min_box, 5% of the frame's shorter side), max(that, 25% of it)]. Along an axis where the
crop stays inside, the position is uniform; `NEGATIVE_TRIES` tries per negative, after which the
frame has no room for it (the caller counts `negative_no_room`).

Everything is drawn from one generator seeded per frame (`negative_seed`), so the result does not
depend on the worker that computes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tl_perception.crop import Box, CropPolicy, box_rect, crop_rect, reject_reason

NEGATIVE_TRIES = 30
DEFAULT_SIDE = (0.05, 0.25)  # of the frame's shorter side, when the frame has no usable box

Rect = tuple[int, int, int, int]


@dataclass(frozen=True)
class _Template:
    """A positive to copy: its box size, and how many pixels of its crop lie past the frame's
    edges, (before, after) per axis (x: left, right; y: top, bottom)."""

    size_x: float
    size_y: float
    overhang_x: tuple[int, int] = (0, 0)
    overhang_y: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, box: Box, policy: CropPolicy, frame_hw: tuple[int, int]) -> _Template:
        height, width = frame_hw
        x0, y0, w, h = crop_rect(box, policy)
        return cls(
            box.size_x,
            box.size_y,
            (max(0, -x0), max(0, x0 + w - width)),
            (max(0, -y0), max(0, y0 + h - height)),
        )


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
    templates = [
        _Template.of(b, policy, frame_hw)
        for b in boxes
        if reject_reason(b, policy, frame_hw) is None
    ]
    out: list[Box] = []
    for _ in range(count):
        box = _place(rng, frame_hw, templates, policy, taken)
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
    templates: list[_Template],
    policy: CropPolicy,
    taken: list[Rect],
) -> Box | None:
    height, width = frame_hw
    short = min(height, width)
    lo = max(policy.min_box, DEFAULT_SIDE[0] * short, 1.0)
    hi = max(lo, DEFAULT_SIDE[1] * short)
    for _ in range(NEGATIVE_TRIES):
        if templates:
            template = templates[int(rng.integers(len(templates)))]
        else:
            side = float(rng.uniform(lo, hi))
            template = _Template(side, side)
        _x, _y, w, h = crop_rect(Box(0.0, 0.0, template.size_x, template.size_y), policy)
        x0 = _start(rng, w, width, template.overhang_x)
        y0 = _start(rng, h, height, template.overhang_y)
        if x0 is None or y0 is None:
            continue
        # Centred so that crop_rect gives exactly (x0, y0, w, h): W/2 is exact in float64.
        box = Box(x0 + w / 2, y0 + h / 2, template.size_x, template.size_y)
        rect = crop_rect(box, policy)
        if reject_reason(box, policy, frame_hw) is None and not any(
            _touch(rect, other) for other in taken
        ):
            return box
    return None


def _start(
    rng: np.random.Generator, length: int, size: int, overhang: tuple[int, int]
) -> int | None:
    """Where a crop of `length` starts along an axis of `size` pixels: past the edge by the
    template's overhang (mirrored to the other edge half of the time), else uniformly inside
    (None: it does not fit inside)."""
    before, after = overhang
    if before == after == 0:
        return int(rng.integers(0, size - length + 1)) if length <= size else None
    if rng.random() < 0.5:
        before, after = after, before
    return -before if before else size - length + after


def _touch(a: Rect, b: Rect) -> bool:
    """Whether two integer rects share a pixel (IoU > 0)."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
