"""The crop rule: exact integer geometry, fills, rejections and the strict `crop` object."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tl_perception.crop import (
    REASONS,
    Box,
    BoxRejectedError,
    CropError,
    CropPolicy,
    crop_batch,
    crop_rect,
    crop_roi,
    reject_reason,
    too_small,
)
from tl_perception.errors import TlPerceptionError
from tl_perception.msgdefs import ros2_typestore

TIGHT = CropPolicy(context=0.0, square=False, min_box=0)
NUMPY_PAD = {"replicate": "edge", "reflect": "reflect", "constant": "constant"}


def frame(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def reference_crop(rgb: np.ndarray, rect: tuple[int, int, int, int], policy: CropPolicy):
    """The same crop by numpy padding: an independent check of the fill and the offsets."""
    x0, y0, w, h = rect
    pad = max(w, h, rgb.shape[0], rgb.shape[1]) * 2
    kwargs = {"constant_values": policy.fill_value} if policy.fill == "constant" else {}
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode=NUMPY_PAD[policy.fill], **kwargs)
    return padded[pad + y0 : pad + y0 + h, pad + x0 : pad + x0 + w]


def test_integer_box_without_context_crops_exactly_its_pixels() -> None:
    rgb = frame()
    crop = crop_roi(rgb, Box.from_xywh(10, 5, 20, 12), TIGHT)
    np.testing.assert_array_equal(crop, rgb[5:17, 10:30])
    assert crop.flags.c_contiguous and crop.dtype == np.uint8


def test_crop_is_a_copy_not_a_view_of_the_frame() -> None:
    rgb = frame()
    crop = crop_roi(rgb, Box.from_xywh(0, 0, 8, 8), TIGHT)
    crop[:] = 0
    assert rgb[:8, :8].any()


def test_context_adds_a_fraction_of_the_box_on_each_side() -> None:
    rgb = frame(100, 100)
    policy = CropPolicy(context=0.1, square=False, min_box=0)
    box = Box(50.0, 50.0, 20.0, 40.0)  # 20x40 -> 24x48
    assert crop_rect(box, policy) == (38, 26, 24, 48)
    np.testing.assert_array_equal(crop_roi(rgb, box, policy), rgb[26:74, 38:62])


def test_square_enlarges_the_short_side_around_the_centre_with_real_pixels() -> None:
    rgb = frame(100, 100)
    policy = CropPolicy(context=0.0, square=True, min_box=0)
    box = Box.from_xywh(40, 30, 10, 30)  # centre (45, 45), 10x30 -> 30x30
    assert crop_rect(box, policy) == (30, 30, 30, 30)
    np.testing.assert_array_equal(crop_roi(rgb, box, policy), rgb[30:60, 30:60])
    wide = Box.from_xywh(20, 40, 40, 10)  # 40x10 -> 40x40, centre (40, 45)
    assert crop_rect(wide, CropPolicy(context=0.25, min_box=0)) == (10, 15, 60, 60)


def test_default_policy_suits_traffic_signs() -> None:
    policy = CropPolicy()
    assert (policy.context, policy.square, policy.fill, policy.min_box) == (
        0.1,
        True,
        "replicate",
        12.0,
    )


def test_rounding_is_half_up_and_independent_of_position() -> None:
    policy = CropPolicy(context=0.1, min_box=0)
    # centre - W/2 exactly on .5 rounds up, on both sides of zero.
    assert crop_rect(Box(5.5, 5.5, 6.0, 6.0), TIGHT)[:2] == (3, 3)
    assert crop_rect(Box(-0.5, -0.5, 4.0, 4.0), TIGHT)[:2] == (-2, -2)
    rng = np.random.default_rng(1)
    for _ in range(500):
        cx, cy = rng.uniform(-50, 700, size=2)
        sx, sy = rng.uniform(0.5, 300, size=2)
        x0, y0, w, h = crop_rect(Box(cx, cy, sx, sy), policy)
        assert w == h >= 1  # square means exactly square
        assert w == max(1, math.floor(max(sx, sy) * 1.2 + 0.5))
        # Shifting a box by whole pixels shifts its crop and never resizes it.
        shift = int(rng.integers(-100, 100))
        assert crop_rect(Box(cx + shift, cy - shift, sx, sy), policy) == (
            x0 + shift,
            y0 - shift,
            w,
            h,
        )


@pytest.mark.parametrize("fill", ["replicate", "reflect", "constant"])
def test_boxes_partly_outside_are_filled_per_policy(fill: str) -> None:
    rgb = frame(40, 50, seed=2)
    policy = CropPolicy(context=0.2, square=True, fill=fill, fill_value=77, min_box=0)
    rng = np.random.default_rng(3)
    for _ in range(200):
        box = Box(*rng.uniform(-10, 60, size=2), *rng.uniform(1, 45, size=2))
        if reject_reason(box, policy, rgb.shape[:2]) is not None:
            continue
        rect = crop_rect(box, policy)
        crop = crop_roi(rgb, box, policy)
        assert crop.shape == (rect[3], rect[2], 3)
        np.testing.assert_array_equal(crop, reference_crop(rgb, rect, policy))


def test_constant_fill_uses_the_value_on_every_channel() -> None:
    rgb = frame(10, 10)
    policy = CropPolicy(context=0.0, square=False, fill="constant", fill_value=9, min_box=0)
    crop = crop_roi(rgb, Box.from_xywh(-4, 0, 8, 10), policy)
    assert (crop[:, :4] == 9).all()
    np.testing.assert_array_equal(crop[:, 4:], rgb[:, :4])


def test_tiny_frames_and_crops_larger_than_the_frame() -> None:
    one = np.array([[[10, 20, 30]]], dtype=np.uint8)
    crop = crop_roi(one, Box(0.5, 0.5, 5.0, 3.0), CropPolicy(min_box=0))
    assert crop.shape == (6, 6, 3)  # 5x3 * 1.2 = 6x3.6, squared to 6x6
    assert (crop == [10, 20, 30]).all()
    big = crop_roi(frame(4, 6), Box(3.0, 2.0, 30.0, 30.0), CropPolicy(min_box=0))
    assert big.shape == (36, 36, 3)


def test_sub_pixel_box_gives_one_pixel_when_min_box_allows_it() -> None:
    rgb = frame()
    crop = crop_roi(rgb, Box(3.2, 4.7, 0.3, 0.3), TIGHT)
    np.testing.assert_array_equal(crop, rgb[4:5, 3:4])


def test_boxes_under_min_box_are_rejected_by_their_shorter_side() -> None:
    policy = CropPolicy(min_box=12)
    assert too_small(Box(20, 20, 11.9, 50), policy)
    assert not too_small(Box(20, 20, 12, 12), policy)
    with pytest.raises(BoxRejectedError, match="too_small") as info:
        crop_roi(frame(), Box(20, 20, 50, 8), policy)
    assert info.value.reason == "too_small"
    assert isinstance(info.value, TlPerceptionError)
    assert crop_roi(frame(), Box(20, 20, 12, 12), policy).shape == (14, 14, 3)


def test_fully_outside_invalid_and_absurd_boxes_are_rejected_with_a_reason() -> None:
    hw = (48, 64)
    cases = {
        Box(-20, 10, 10, 10): "outside",
        Box(10, 60, 10, 10): "outside",
        Box(69, 10, 10, 10): "outside",  # covers [64, 74): just past the right edge
        Box(10, 10, 0, 10): "invalid",
        Box(10, 10, -3, 10): "invalid",
        Box(math.nan, 10, 10, 10): "invalid",
        Box(10, 10, math.inf, 10): "invalid",
        Box(10, 10, 1e6, 1e6): "too_large",
        Box(10, 10, 1.7e308, 1.7e308): "too_large",  # x 1.2 overflows to inf
    }
    for box, reason in cases.items():
        assert reject_reason(box, TIGHT, hw) == reason, box
        with pytest.raises(BoxRejectedError) as info:
            crop_roi(frame(*hw), box, TIGHT)
        assert info.value.reason == reason
    assert set(cases.values()) | {"too_small"} == set(REASONS)
    # One pixel of the box inside the frame is enough; context then reaches into the fill.
    assert reject_reason(Box(68, 10, 10, 10), TIGHT, hw) is None


def test_frames_must_be_hxwx3_uint8() -> None:
    box = Box(5, 5, 4, 4)
    for bad in (
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 10, 3), np.uint8),
        [[1, 2, 3]],
    ):
        with pytest.raises(CropError, match="crop: expected"):
            crop_roi(bad, box, TIGHT)  # type: ignore[arg-type]


def test_crop_batch_keeps_input_order_and_lists_rejections() -> None:
    rgb = frame(60, 80, seed=5)
    policy = CropPolicy(min_box=6)
    boxes = [
        Box(20, 20, 10, 14),
        Box(-50, 20, 10, 10),
        Box(70, 50, 4, 4),
        Box(75, 55, 20, 20),
        Box(40, 30, math.nan, 5),
    ]
    batch = crop_batch(rgb, boxes, policy)
    assert batch.kept == [0, 3]
    assert batch.rejected == [(1, "outside"), (2, "too_small"), (4, "invalid")]
    assert batch.rejected_counts() == {"outside": 1, "too_small": 1, "invalid": 1}
    for crop, index in zip(batch.crops, batch.kept, strict=True):
        np.testing.assert_array_equal(crop, crop_roi(rgb, boxes[index], policy))
    assert crop_batch(rgb, [], policy).crops == []


def test_a_bounding_box_message_and_its_xywh_give_the_same_pixels() -> None:
    """Extraction reads boxes from Detection2D messages or CSV rows; both must crop alike."""
    types = ros2_typestore().types
    point = types["vision_msgs/msg/Point2D"](x=33.3, y=21.7)
    center = types["vision_msgs/msg/Pose2D"](position=point, theta=0.0)
    bbox = types["vision_msgs/msg/BoundingBox2D"](center=center, size_x=17.4, size_y=9.9)
    from_msg = Box.from_bbox(bbox)
    x, y, w, h = from_msg.to_xywh()
    from_csv = Box.from_xywh(x, y, w, h)
    rgb = frame()
    policy = CropPolicy(min_box=8)
    assert crop_rect(from_msg, policy) == crop_rect(from_csv, policy)
    np.testing.assert_array_equal(crop_roi(rgb, from_msg, policy), crop_roi(rgb, from_csv, policy))


def test_policy_round_trips_through_json() -> None:
    for policy in (
        CropPolicy(),
        CropPolicy(context=0.0, square=False, fill="constant", fill_value=114, min_box=0),
        CropPolicy(context=0.75, fill="reflect", min_box=20.5),
    ):
        data = json.loads(json.dumps(policy.to_dict()))
        assert data["version"] == 1
        assert sorted(data) == sorted(CropPolicy().to_dict())
        assert CropPolicy.from_dict(data) == policy


GOOD = CropPolicy().to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"contxt": 0.1}, "unknown key 'contxt'"),
        ({"version": 2}, "version 2 unknown"),
        ({"version": "1"}, "version '1' unknown"),
        ({"context": -0.1}, "context must be a number"),
        ({"context": 3.0}, "context must be a number"),
        ({"context": True}, "context must be a number"),
        ({"context": "0.1"}, "context must be a number"),
        ({"context": math.nan}, "context must be a number"),
        ({"square": 1}, "square must be true or false"),
        ({"fill": "edge"}, "fill must be one of replicate, reflect, constant"),
        ({"fill_value": 256}, "fill_value must be an integer 0-255"),
        ({"fill_value": 1.5}, "fill_value must be an integer 0-255"),
        ({"min_box": -1}, "min_box must be a number of pixels"),
        ({"min_box": None}, "min_box must be a number of pixels"),
    ],
)
def test_bad_crop_objects_fail_with_one_line_naming_the_field(change: dict, message: str) -> None:
    with pytest.raises(CropError, match=message) as info:
        CropPolicy.from_dict({**GOOD, **change}, where="bundle.json: crop")
    text = str(info.value)
    assert text.startswith("bundle.json: crop: ") and "\n" not in text


def test_crop_objects_need_every_field_and_must_be_objects() -> None:
    partial = {k: v for k, v in GOOD.items() if k != "square"}
    with pytest.raises(CropError, match="missing 'square'"):
        CropPolicy.from_dict(partial)
    with pytest.raises(CropError, match="expected an object, got list"):
        CropPolicy.from_dict([0.1])


def test_the_constructor_validates_like_from_dict() -> None:
    with pytest.raises(CropError, match="context must be"):
        CropPolicy(context=-1)
    with pytest.raises(CropError, match="fill must be"):
        CropPolicy(fill="mirror")
    assert CropPolicy(fill_value=np.int64(5)).fill_value == 5
    assert isinstance(CropPolicy(context=0).context, float)
