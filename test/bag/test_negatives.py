"""Negatives (bag/negatives.py) have the positives' border statistics: a positive whose crop is
filled past the frame's edge gets negatives filled as much, so fill never tells them apart."""

from __future__ import annotations

from tl_perception.bag.negatives import negative_boxes, negative_seed
from tl_perception.crop import Box, CropPolicy, crop_rect

FRAME = (60, 80)  # height, width
POLICY = CropPolicy(context=0.25, square=True, min_box=4)


def overhang(box: Box) -> tuple[int, int]:
    """Pixels of the box's crop past the frame's edges: (horizontally, vertically)."""
    height, width = FRAME
    x0, y0, w, h = crop_rect(box, POLICY)
    return max(0, -x0, x0 + w - width), max(0, -y0, y0 + h - height)


def test_negatives_are_filled_past_the_edge_as_often_and_as_much_as_the_positives() -> None:
    edge = Box.from_xywh(0, 20, 12, 12)  # at the left edge: its 18 px crop starts at x = -3
    inner = Box.from_xywh(40, 30, 12, 12)  # its crop lies inside
    assert (overhang(edge), overhang(inner)) == ((3, 0), (0, 0))
    found = [
        neg
        for frame in range(300)
        for neg in negative_boxes(FRAME, [edge, inner], POLICY, 1, negative_seed(0, "b", frame))
    ]
    assert len(found) > 250
    filled = [overhang(neg) for neg in found if overhang(neg) != (0, 0)]
    assert set(filled) == {(3, 0)}  # exactly the positive's fill, never another amount
    share = len(filled) / len(found)
    assert 0.35 < share < 0.65, share  # one positive of two is filled: about half
    sides = {crop_rect(neg, POLICY)[0] < 0 for neg in found if overhang(neg) != (0, 0)}
    assert sides == {True, False}  # left edge and the mirrored right edge


def test_negatives_of_positives_inside_the_frame_are_never_filled() -> None:
    inside = [Box.from_xywh(20, 20, 10, 10), Box.from_xywh(50, 10, 12, 14)]
    found = [
        neg
        for frame in range(50)
        for neg in negative_boxes(FRAME, inside, POLICY, 2, negative_seed(1, "b", frame))
    ]
    assert found and all(overhang(neg) == (0, 0) for neg in found)
