"""The crop rule: the one place that cuts a region of interest (ROI) out of a camera frame.

Extraction, evaluation and the node all call `crop_roi` (or `crop_batch`) with the `CropPolicy`
stored in the dataset and then the bundle, so what the node classifies is, pixel for pixel, what
the model was trained on. Resizing to the model's input is not done here: the crop keeps the
frame's resolution and the classifier resizes it with the one resize function
(`tl_perception.images.resize_rgb`).

Pixel geometry (documented in docs/formats.md, "The crop policy"): continuous image coordinates
with pixel (col, row) covering [col, col + 1) x [row, row + 1), as OpenCV's `cv::Rect` from
x, y, w, h. A box is a vision_msgs `BoundingBox2D`: centre and full size in pixels, floats.

Integer rounding, in this order and in float64 only (the same arithmetic in every process, and
independent of where the box sits, so a square crop is exactly square):

1. width  = size_x * (1 + 2 * context), height = size_y * (1 + 2 * context)
2. if square: width = height = max(width, height)
3. W = max(1, floor(width + 0.5)), H = max(1, floor(height + 0.5))   (integer sizes first)
4. x0 = floor(center_x - W / 2 + 0.5), y0 = floor(center_y - H / 2 + 0.5)
5. the crop is columns [x0, x0 + W) and rows [y0, y0 + H); pixels outside the frame are filled

An integer top-left box (`Box.from_xywh` with integer x, y, w, h) and context 0 therefore crops
exactly `rgb[y:y + h, x:x + w]`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from tl_perception.errors import TlPerceptionError

POLICY_VERSION = 1
FILLS: tuple[str, ...] = ("replicate", "reflect", "constant")
MAX_CONTEXT = 2.0  # a crop 5x the box per side pair; Apollo's 2.5x crop is context 0.75
#: A crop side longer than MAX_CROP_FACTOR times max(the frame's longer side, MIN_CROP_LIMIT) is
#: refused: a broken detector box (1e9 px) must not allocate gigabytes of fill.
MAX_CROP_FACTOR = 4
MIN_CROP_LIMIT = 256
#: Why a box is not cropped; callers count rejections by these names.
REASONS: tuple[str, ...] = ("invalid", "too_small", "outside", "too_large")

_KEYS: tuple[str, ...] = ("version", "context", "square", "fill", "fill_value", "min_box")


class CropError(TlPerceptionError):
    """A crop policy, box or frame that cannot be used."""


class BoxRejectedError(CropError):
    """`crop_roi` refused a box; `reason` is one of `REASONS` so callers can count it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels like vision_msgs/BoundingBox2D: centre and full size.

    Holds whatever a detector said (even NaN or negative sizes): `reject_reason` judges it, so a
    node can count bad boxes instead of catching errors. A rotation (`center.theta`) is ignored.
    """

    center_x: float
    center_y: float
    size_x: float
    size_y: float

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float) -> Box:
        """From top-left x, y and width, height in pixels (CSV rows, `rois` parameters)."""
        x, y, w, h = float(x), float(y), float(w), float(h)
        return cls(x + w / 2, y + h / 2, w, h)

    @classmethod
    def from_bbox(cls, bbox: Any) -> Box:
        """From a vision_msgs BoundingBox2D message (rclpy or rosbags; duck-typed)."""
        position = bbox.center.position
        return cls(float(position.x), float(position.y), float(bbox.size_x), float(bbox.size_y))

    def to_xywh(self) -> tuple[float, float, float, float]:
        """Top-left x, y and width, height (manifest rows)."""
        return (
            self.center_x - self.size_x / 2,
            self.center_y - self.size_y / 2,
            self.size_x,
            self.size_y,
        )


@dataclass(frozen=True)
class CropPolicy:
    """How a box becomes the image a classifier sees. Defaults suit traffic signs:

    - `context` 0.1: a tenth of the box added on each side. GTSRB, on which sign classifiers are
      usually (pre)trained, has exactly this 10% border around each sign, and a little of the pole
      and background helps tell a sign from a sign-coloured patch. 0 crops the box tight
      (Autoware's classifier); Apollo's 2.5x crop is 0.75.
    - `square` True: the shorter side is enlarged around the centre (real pixels, not padding)
      until the crop is square, so resizing to the model's square input keeps the sign's aspect
      (Autoware letterboxes, AWML pads to square; a sign squeezed flat is another shape).
    - `fill` "replicate": the part of a crop outside the frame repeats the edge pixels. A
      constant bar would tell the model where in the frame a sign was; "constant" (with
      `fill_value`, 0-255 on every channel) and "reflect" are there for other conventions.
    - `min_box` 12 px: boxes whose shorter side is smaller are not classified. GTSRB's smallest
      images are 15 px including their border, a 12 px sign; below that a pictogram is a few
      pixels wide and classifying it only adds noise.
    """

    context: float = 0.1
    square: bool = True
    fill: str = "replicate"
    fill_value: int = 0
    min_box: float = 12.0

    def __post_init__(self) -> None:
        _check_fields(self.to_dict(), "crop policy")
        object.__setattr__(self, "context", float(self.context))
        object.__setattr__(self, "min_box", float(self.min_box))
        object.__setattr__(self, "fill_value", int(self.fill_value))

    def to_dict(self) -> dict[str, Any]:
        """The `crop` object of dataset.json and bundle.json: every field, always."""
        return {
            "version": POLICY_VERSION,
            "context": self.context,
            "square": self.square,
            "fill": self.fill,
            "fill_value": self.fill_value,
            "min_box": self.min_box,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "crop") -> CropPolicy:
        """Read a `crop` object strictly: every field required, no unknown keys.

        Nothing defaults, so a later change of defaults can never change how an old bundle
        crops. `where` names the object in the one-line `CropError` (e.g. "bundle.json: crop").
        """
        if not isinstance(data, Mapping):
            raise CropError(f"{where}: expected an object, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in _KEYS)
        if unknown:
            raise CropError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(_KEYS)}")
        missing = [k for k in _KEYS if k not in data]
        if missing:
            raise CropError(f"{where}: missing {missing[0]!r}; required: {', '.join(_KEYS)}")
        _check_fields(data, where)
        return cls(**{k: data[k] for k in _KEYS if k != "version"})


def _check_fields(data: Mapping[str, Any], where: str) -> None:
    """One line per kind of bad value; shared by the constructor and `from_dict`."""
    version = data["version"]
    if not is_int(version) or version != POLICY_VERSION:
        raise CropError(f"{where}: version {version!r} unknown; this tl_perception reads 1")
    context = data["context"]
    if not is_number(context) or not 0.0 <= context <= MAX_CONTEXT:
        raise CropError(f"{where}: context must be a number in [0, {MAX_CONTEXT}], got {context!r}")
    if not isinstance(data["square"], bool):
        raise CropError(f"{where}: square must be true or false, got {data['square']!r}")
    if data["fill"] not in FILLS:
        raise CropError(f"{where}: fill must be one of {', '.join(FILLS)}, got {data['fill']!r}")
    value = data["fill_value"]
    if not is_int(value) or not 0 <= value <= 255:
        raise CropError(f"{where}: fill_value must be an integer 0-255, got {value!r}")
    min_box = data["min_box"]
    if not is_number(min_box) or min_box < 0:
        raise CropError(f"{where}: min_box must be a number of pixels >= 0, got {min_box!r}")


def is_int(value: Any) -> TypeGuard[int]:
    """An integer of a file format or parameter (true and false are not integers here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[float]:
    """A finite number of a file format or parameter (true and false are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value)


def policy_record(policy: CropPolicy | None) -> dict[str, Any] | None:
    """The `crop_policy` value of dataset.json and bundle.json: null for whole frames."""
    return policy.to_dict() if policy is not None else None


def describe_policy(policy: CropPolicy | None) -> str:
    """For logs and one-line errors: `whole frames` or `crops cut with context 0.1, ...`."""
    if policy is None:
        return "whole frames"
    fields = ", ".join(f"{k} {v}" for k, v in policy.to_dict().items() if k != "version")
    return f"crops cut with {fields}"


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def too_small(box: Box, policy: CropPolicy) -> bool:
    """True when the box's shorter side is under `policy.min_box` pixels."""
    return min(box.size_x, box.size_y) < policy.min_box


def box_rect(box: Box) -> tuple[int, int, int, int]:
    """The box's own pixels as integer x0, y0, w, h (context 0, not squared; same rounding)."""
    return _rect(box.center_x, box.center_y, box.size_x, box.size_y)


def crop_rect(box: Box, policy: CropPolicy) -> tuple[int, int, int, int]:
    """The crop as integer x0, y0, w, h; it may reach outside the frame (that part is filled)."""
    width, height = _crop_size(box, policy)
    return _rect(box.center_x, box.center_y, width, height)


def _crop_size(box: Box, policy: CropPolicy) -> tuple[float, float]:
    """Steps 1 and 2 of the rule: the crop's width and height before rounding."""
    grow = 1.0 + 2.0 * policy.context
    width, height = box.size_x * grow, box.size_y * grow
    if policy.square:
        width = height = max(width, height)
    return width, height


def _rect(cx: float, cy: float, width: float, height: float) -> tuple[int, int, int, int]:
    w = max(1, _round_half_up(width))
    h = max(1, _round_half_up(height))
    return _round_half_up(cx - w / 2), _round_half_up(cy - h / 2), w, h


def reject_reason(box: Box, policy: CropPolicy, frame_hw: tuple[int, int]) -> str | None:
    """Why `box` is not cropped from a frame of (height, width), or None when it is.

    "invalid": a non-finite value or a size <= 0 (e.g. Autoware's 0x0 "not detected" ROI);
    "too_small": see `too_small`; "outside": none of the box's own pixels lie in the frame;
    "too_large": a crop side over `MAX_CROP_FACTOR` times the frame's longer side (at least
    `MIN_CROP_LIMIT`).
    """
    values = (box.center_x, box.center_y, box.size_x, box.size_y)
    if not all(math.isfinite(v) for v in values) or box.size_x <= 0 or box.size_y <= 0:
        return "invalid"
    if too_small(box, policy):
        return "too_small"
    height, width = frame_hw
    x0, y0, w, h = box_rect(box)
    if x0 >= width or y0 >= height or x0 + w <= 0 or y0 + h <= 0:
        return "outside"
    if max(_crop_size(box, policy)) > MAX_CROP_FACTOR * max(height, width, MIN_CROP_LIMIT):
        return "too_large"  # judged before rounding: a box near float max must not overflow
    return None


def crop_roi(rgb: np.ndarray, box: Box, policy: CropPolicy) -> np.ndarray:
    """Cut `box` out of an HxWx3 uint8 frame by `policy`: a new contiguous HxWx3 uint8 array.

    Raises:
        CropError: the frame is not HxWx3 uint8.
        BoxRejectedError: `reject_reason` gave a reason (`.reason`).
    """
    check_frame(rgb)
    reason = reject_reason(box, policy, rgb.shape[:2])
    if reason is not None:
        raise BoxRejectedError(reason, f"box {box} rejected: {reason}")
    return _cut(rgb, crop_rect(box, policy), policy)


def _count_reasons(rejected: Sequence[tuple[int, str]]) -> dict[str, int]:
    """Reason -> number of boxes (for /diagnostics and extraction summaries)."""
    counts: dict[str, int] = {}
    for _index, reason in rejected:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


@dataclass(frozen=True)
class CropBatch:
    """The crops of one frame: `crops[i]` is the crop of `boxes[kept[i]]`, in input order."""

    crops: list[np.ndarray]
    kept: list[int]
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (box index, reason)

    def rejected_counts(self) -> dict[str, int]:
        """Reason -> number of boxes (for /diagnostics and extraction summaries)."""
        return _count_reasons(self.rejected)


@dataclass(frozen=True)
class CropPlan:
    """The crops of one frame before a pixel is copied: `rects[i]` (x0, y0, w, h) is the crop
    of `boxes[kept[i]]`, in input order; `rejected` lists (box index, reason).

    Planning first lets a caller judge what the crops would cost (`pixels`) against a budget
    before any memory is allocated, then `cut_crops` only the ones it accepts.
    """

    kept: list[int]
    rects: list[tuple[int, int, int, int]]
    rejected: list[tuple[int, str]]

    def pixels(self) -> list[int]:
        """Pixels of each planned crop (w * h), in `kept` order."""
        return [w * h for _x, _y, w, h in self.rects]

    def rejected_counts(self) -> dict[str, int]:
        return _count_reasons(self.rejected)


def plan_crops(frame_hw: tuple[int, int], boxes: Sequence[Box], policy: CropPolicy) -> CropPlan:
    """Judge every box of a frame of (height, width): where its crop lies, or why it is refused."""
    plan = CropPlan(kept=[], rects=[], rejected=[])
    for index, box in enumerate(boxes):
        reason = reject_reason(box, policy, frame_hw)
        if reason is None:
            plan.kept.append(index)
            plan.rects.append(crop_rect(box, policy))
        else:
            plan.rejected.append((index, reason))
    return plan


def cut_crops(
    rgb: np.ndarray, plan: CropPlan, policy: CropPolicy, which: Sequence[int] | None = None
) -> list[np.ndarray]:
    """The planned crops (only positions `which` of `plan.kept`, if given), pixel for pixel as
    `crop_roi` cuts them.

    Raises:
        CropError: the frame is not HxWx3 uint8.
    """
    check_frame(rgb)
    chosen = range(len(plan.rects)) if which is None else which
    return [_cut(rgb, plan.rects[i], policy) for i in chosen]


def crop_batch(rgb: np.ndarray, boxes: Sequence[Box], policy: CropPolicy) -> CropBatch:
    """Crop every acceptable box of one frame; rejected boxes are listed, never raised.

    Raises:
        CropError: the frame is not HxWx3 uint8.
    """
    check_frame(rgb)
    plan = plan_crops(rgb.shape[:2], boxes, policy)
    return CropBatch(cut_crops(rgb, plan, policy), plan.kept, plan.rejected)


def check_frame(rgb: Any) -> None:
    """CropError unless `rgb` is an HxWx3 uint8 numpy frame (what every crop function takes)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise CropError(f"crop: expected a uint8 numpy frame, got {_describe(rgb)}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise CropError(f"crop: expected an HxWx3 frame, got shape {rgb.shape}")


def _describe(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__


def _cut(rgb: np.ndarray, rect: tuple[int, int, int, int], policy: CropPolicy) -> np.ndarray:
    """The rect's pixels; outside the frame, the frame extended by the policy's fill."""
    x0, y0, w, h = rect
    height, width = rgb.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + w <= width and y0 + h <= height:
        inside: np.ndarray = rgb[y0 : y0 + h, x0 : x0 + w].copy()
        return inside
    rows = _source_index(y0, h, height, policy.fill)
    cols = _source_index(x0, w, width, policy.fill)
    out: np.ndarray = rgb[rows[:, None], cols[None, :]]
    if policy.fill == "constant":
        out[(rows != np.arange(y0, y0 + h))] = policy.fill_value
        out[:, (cols != np.arange(x0, x0 + w))] = policy.fill_value
    return out


def _source_index(start: int, length: int, size: int, fill: str) -> np.ndarray:
    """Frame row (or column) each crop row shows: the whole frame's edge is extended, as
    OpenCV's BORDER_REPLICATE / BORDER_REFLECT_101 would extend it (constant: clipped, then
    overwritten)."""
    index = np.arange(start, start + length)
    if fill == "reflect" and size > 1:
        period = 2 * (size - 1)
        index = np.abs(index) % period
        index = np.where(index >= size, period - index, index)
    return np.clip(index, 0, size - 1)
