"""Road scenes seen from a moving car, with one object (sign or vehicle) growing as it approaches.

A run of frames shares one `Look` (background, object template, pose, blur, noise, lighting,
occluder) drawn from its own random stream, so each frame is a function of (seed, run, frame) only.
The background zooms about the vanishing point to suggest forward motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tl_perception.synth.signs import draw_sign
from tl_perception.synth.vehicles import draw_vehicle_object

TEMPLATE_SIZE = 128


@dataclass(frozen=True)
class Look:
    """Everything that stays fixed while one object is in view."""

    background: np.ndarray  # HxWx3 float32 in [0, 255]
    vanishing_point: tuple[float, float]
    template: np.ndarray | None  # TEMPLATE_SIZE^2 x3 uint8, None for an empty stretch of road
    alpha: np.ndarray | None  # TEMPLATE_SIZE^2 float32 in [0, 1]
    roadside: bool  # signs stand beside the road on a pole; vehicles sit in the lane ahead
    side: float  # +1 right of the road, -1 left
    size_range: tuple[float, float]  # object side as a fraction of the frame height
    rotation_deg: float
    yaw: float  # perspective: one vertical edge shorter than the other
    offset: tuple[float, float]  # extra (dx, dy) as fractions of the frame size
    blur_sigma: float
    noise_sigma: float
    gain: float
    gamma: float
    cast: np.ndarray  # per-channel colour multiplier


def make_look(
    kind: str, label: str | None, size: tuple[int, int], rng: np.random.Generator
) -> Look:
    """Draw a new background and, for `label`, the object with its pose and photometrics."""
    width, height = size
    background, vp = road_background(width, height, rng)
    template = alpha = None
    if label is not None:
        if kind == "signs":
            rgb, mask = draw_sign(label, TEMPLATE_SIZE, rng)
        else:
            rgb, mask = draw_vehicle_object(label, TEMPLATE_SIZE, rng)
        if rng.random() < 0.3:
            _occlude(rgb, mask, rng)
        template, alpha = rgb, mask.astype(np.float32) / 255.0
    signs = kind == "signs"
    return Look(
        background=background,
        vanishing_point=vp,
        template=template,
        alpha=alpha,
        roadside=signs,
        side=1.0 if rng.random() < 0.75 else -1.0,
        size_range=(
            (float(rng.uniform(0.36, 0.46)), float(rng.uniform(0.72, 0.86)))
            if signs
            else (float(rng.uniform(0.5, 0.62)), float(rng.uniform(0.85, 1.0)))
        ),
        rotation_deg=float(rng.normal(0.0, 5.0)),
        yaw=float(rng.uniform(-0.22, 0.22)),
        offset=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.06, 0.06))),
        blur_sigma=float(rng.choice([0.0, 0.0, rng.uniform(0.4, 1.3)])),
        noise_sigma=float(rng.uniform(2.0, 9.0)),
        gain=float(rng.uniform(0.6, 1.25)),
        gamma=float(rng.uniform(0.8, 1.25)),
        cast=rng.uniform(0.9, 1.1, size=3).astype(np.float32),
    )


def render_frame(look: Look, progress: float, rng: np.random.Generator) -> np.ndarray:
    """The frame at `progress` in [0, 1] through the run: RGB uint8."""
    frame = zoom_about(look.background, look.vanishing_point, 1.0 + 0.35 * progress)
    if look.template is not None and look.alpha is not None:
        frame = _composite(frame, look, progress)
    frame = np.power(np.clip(frame, 0, 255) / 255.0, look.gamma) * 255.0
    frame = frame * look.gain * look.cast
    frame = frame + rng.normal(0.0, look.noise_sigma, size=frame.shape)
    out: np.ndarray = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return out


def _composite(frame: np.ndarray, look: Look, progress: float) -> np.ndarray:
    assert look.template is not None and look.alpha is not None  # render_frame checked
    height, width = frame.shape[:2]
    ease = progress * progress * (3 - 2 * progress)
    lo, hi = look.size_range
    side_px = (lo + (hi - lo) * ease) * height
    half = side_px / 2
    if look.roadside:
        # Beside the road, drifting outwards as the car closes in; mostly inside the frame.
        cx = width / 2 + look.side * (0.15 + 0.55 * ease) * max(width / 2 - half, 0.0)
        cy = height * (0.42 - 0.08 * ease)
    else:
        cx = look.vanishing_point[0] + 0.1 * look.side * width * ease
        cy = look.vanishing_point[1] + half * 0.55
    cx += look.offset[0] * width
    cy += look.offset[1] * height
    if look.roadside:
        pole_w = max(2, int(side_px * 0.07))
        cv2.rectangle(
            frame,
            (int(cx - pole_w / 2), int(cy)),
            (int(cx + pole_w / 2), height),
            (120.0, 120.0, 125.0),
            -1,
        )
    yaw = look.yaw
    corners = np.array(
        [
            [-half, -half * (1 - yaw)],
            [half, -half * (1 + yaw)],
            [half, half * (1 + yaw)],
            [-half, half * (1 - yaw)],
        ]
    )
    theta = np.deg2rad(look.rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    dst = (corners @ rot.T + [cx, cy]).astype(np.float32)
    size = float(TEMPLATE_SIZE)
    src = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    obj = cv2.warpPerspective(look.template, matrix, (width, height), flags=cv2.INTER_AREA)
    alpha = cv2.warpPerspective(look.alpha, matrix, (width, height), flags=cv2.INTER_LINEAR)
    if look.blur_sigma > 0:
        obj = cv2.GaussianBlur(obj, (0, 0), look.blur_sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), look.blur_sigma)
    alpha = alpha[..., None]
    blended: np.ndarray = frame * (1.0 - alpha) + obj.astype(np.float32) * alpha
    return blended


def zoom_about(image: np.ndarray, centre: tuple[float, float], factor: float) -> np.ndarray:
    """The image magnified about `centre`: the road seen from a little further on."""
    matrix = np.array(
        [[factor, 0.0, centre[0] * (1 - factor)], [0.0, factor, centre[1] * (1 - factor)]]
    )
    height, width = image.shape[:2]
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def road_background(
    width: int, height: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float]]:
    """Sky, road with lane markings, verge, buildings and trees; float32 RGB."""
    img = np.zeros((height, width, 3), dtype=np.float32)
    horizon = int(height * rng.uniform(0.36, 0.5))
    vp = (float(width * rng.uniform(0.4, 0.6)), float(horizon))
    sky_top = rng.choice([(70, 130, 210), (150, 160, 175), (230, 150, 90), (110, 160, 220)])
    sky_low = np.array([215, 225, 235], dtype=np.float32) * rng.uniform(0.8, 1.05)
    t = np.linspace(0, 1, max(horizon, 1), dtype=np.float32)[:, None, None]
    img[:horizon] = np.asarray(sky_top, np.float32) * (1 - t) + sky_low * t
    verge = rng.choice([(70, 120, 50), (110, 130, 70), (150, 145, 130), (90, 90, 80)])
    img[horizon:] = verge
    # Buildings and trees along the horizon.
    for _ in range(int(rng.integers(3, 9))):
        bw = width * rng.uniform(0.06, 0.22)
        bx = width * rng.uniform(-0.05, 1.0)
        bh = height * rng.uniform(0.08, 0.3)
        color = tuple(float(v) for v in rng.integers(90, 200, size=3))
        cv2.rectangle(img, (int(bx), int(horizon - bh)), (int(bx + bw), horizon), color, -1)
        for wy in np.arange(horizon - bh + 3, horizon - 3, max(bh / 4, 3)):
            cv2.line(img, (int(bx + 2), int(wy)), (int(bx + bw - 2), int(wy)), (60, 70, 90), 1)
    for _ in range(int(rng.integers(2, 7))):
        tx = width * rng.uniform(0, 1)
        tr = height * rng.uniform(0.04, 0.12)
        green = (float(rng.integers(30, 80)), float(rng.integers(80, 140)), 40.0)
        cv2.circle(img, (int(tx), int(horizon - tr * 0.6)), int(tr), green, -1, cv2.LINE_AA)
    # Road: a trapezoid from the vanishing point, with a dashed centre line.
    asphalt = float(rng.uniform(70, 115))
    road = np.array(
        [
            [vp[0] - width * 0.02, horizon],
            [vp[0] + width * 0.02, horizon],
            [width * rng.uniform(0.9, 1.15), height],
            [width * rng.uniform(-0.15, 0.1), height],
        ],
        dtype=np.int32,
    )
    cv2.fillPoly(img, [road], (asphalt, asphalt, asphalt + 4), cv2.LINE_AA)
    bottom_x = (road[2][0] + road[3][0]) / 2
    for k in range(6):
        a, b = (k / 6) ** 1.6, ((k + 0.5) / 6) ** 1.6
        p0 = (int(vp[0] + (bottom_x - vp[0]) * a), int(horizon + (height - horizon) * a))
        p1 = (int(vp[0] + (bottom_x - vp[0]) * b), int(horizon + (height - horizon) * b))
        cv2.line(img, p0, p1, (235, 235, 220), max(1, int(1 + 3 * b)), cv2.LINE_AA)
    # Low-frequency texture so no two backgrounds are flat.
    coarse = rng.normal(0, 12, size=(max(height // 16, 2), max(width // 16, 2), 3))
    img += cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 255), vp


def _occlude(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Hide part of the object behind a branch or a post (drawn into the template)."""
    size = rgb.shape[0]
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(3, 7))):
            cx = size * (rng.choice([0.05, 0.95]) + rng.uniform(-0.1, 0.1))
            cy = size * rng.uniform(0.0, 1.0)
            r = int(size * rng.uniform(0.1, 0.2))
            green = (int(rng.integers(20, 70)), int(rng.integers(80, 140)), 30)
            cv2.circle(rgb, (int(cx), int(cy)), r, green, -1, cv2.LINE_AA)
            cv2.circle(mask, (int(cx), int(cy)), r, 255, -1, cv2.LINE_AA)
    else:
        x = int(size * rng.uniform(0.0, 0.85))
        w = int(size * rng.uniform(0.08, 0.15))
        grey = int(rng.integers(60, 140))
        cv2.rectangle(rgb, (x, 0), (x + w, size), (grey, grey, grey), -1)
        cv2.rectangle(mask, (x, 0), (x + w, size), 255, -1)
