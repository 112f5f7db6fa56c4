"""Vehicle and non-vehicle templates: rear views of boxy cars, vans and trucks versus roadside
things a vehicle detector sees (trees, bushes, facades, guard rails, empty road).

Like the signs, each template is an RGB canvas plus alpha, drawn once per object with its own
colours and proportions.
"""

from __future__ import annotations

import cv2
import numpy as np

VEHICLE_CLASSES: tuple[str, ...] = ("vehicle", "non_vehicle")

Canvas = tuple[np.ndarray, np.ndarray]
WHITE = (240, 240, 235)

_CAR_COLORS = (
    (200, 30, 30),
    (30, 30, 35),
    (230, 230, 230),
    (40, 70, 160),
    (150, 150, 155),
    (20, 110, 60),
    (230, 200, 40),
    (110, 60, 30),
)


def draw_vehicle_object(name: str, size: int, rng: np.random.Generator) -> Canvas:
    """Draw a `vehicle` or `non_vehicle` object on a `size`x`size` canvas."""
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    alpha = np.zeros((size, size), dtype=np.uint8)
    if name == "vehicle":
        _vehicle(rgb, alpha, size, rng)
    else:
        drawers = (_tree, _bush, _facade, _guard_rail, _road_patch)
        drawers[int(rng.integers(len(drawers)))](rgb, alpha, size, rng)
    return rgb, alpha


def _rect(
    img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: tuple[int, ...]
) -> None:
    cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), color, -1, cv2.LINE_AA)


def _vehicle(rgb: np.ndarray, alpha: np.ndarray, size: int, rng: np.random.Generator) -> None:
    body = tuple(int(v) for v in _CAR_COLORS[int(rng.integers(len(_CAR_COLORS)))])
    tall = float(rng.uniform(0.55, 0.9))  # sedan .. van
    left, right = size * 0.06, size * 0.94
    bottom = size * 0.92
    top = bottom - size * tall
    roof_inset = size * float(rng.uniform(0.05, 0.14))
    cabin_bottom = top + (bottom - top) * float(rng.uniform(0.38, 0.5))
    # Wheels first (they peek out below the body), then the body and the cabin.
    for x in (left + size * 0.04, right - size * 0.2):
        _rect(rgb, x, bottom - size * 0.08, x + size * 0.16, bottom + size * 0.05, (15, 15, 15))
        _rect(alpha, x, bottom - size * 0.08, x + size * 0.16, bottom + size * 0.05, (255,))
    body_pts = np.array(
        [
            [left + roof_inset, top],
            [right - roof_inset, top],
            [right, cabin_bottom],
            [right, bottom],
            [left, bottom],
            [left, cabin_bottom],
        ]
    )
    cv2.fillPoly(rgb, [body_pts.astype(np.int32)], body, cv2.LINE_AA)
    cv2.fillPoly(alpha, [body_pts.astype(np.int32)], 255, cv2.LINE_AA)
    window = np.array(
        [
            [left + roof_inset + size * 0.04, top + size * 0.04],
            [right - roof_inset - size * 0.04, top + size * 0.04],
            [right - size * 0.06, cabin_bottom - size * 0.02],
            [left + size * 0.06, cabin_bottom - size * 0.02],
        ]
    )
    shade = int(rng.integers(30, 90))
    cv2.fillPoly(rgb, [window.astype(np.int32)], (shade, shade + 10, shade + 25), cv2.LINE_AA)
    light_y = cabin_bottom + (bottom - cabin_bottom) * 0.2
    light_h = size * 0.08
    for x in (left + size * 0.03, right - size * 0.17):
        _rect(rgb, x, light_y, x + size * 0.14, light_y + light_h, (220, 20, 20))
        _rect(rgb, x + size * 0.09, light_y, x + size * 0.14, light_y + light_h, (245, 160, 40))
    plate_w, plate_h = size * 0.24, size * 0.08
    plate_y = light_y + light_h + size * 0.04
    _rect(rgb, size / 2 - plate_w / 2, plate_y, size / 2 + plate_w / 2, plate_y + plate_h, WHITE)
    _rect(rgb, left, bottom - size * 0.07, right, bottom, (35, 35, 38))


def _tree(rgb: np.ndarray, alpha: np.ndarray, size: int, rng: np.random.Generator) -> None:
    trunk_w = size * float(rng.uniform(0.08, 0.16))
    _rect(rgb, size / 2 - trunk_w / 2, size * 0.5, size / 2 + trunk_w / 2, size, (90, 60, 35))
    _rect(alpha, size / 2 - trunk_w / 2, size * 0.5, size / 2 + trunk_w / 2, size, (255,))
    for _ in range(int(rng.integers(6, 12))):
        cx = size * float(rng.uniform(0.25, 0.75))
        cy = size * float(rng.uniform(0.15, 0.55))
        r = int(size * float(rng.uniform(0.12, 0.25)))
        green = (int(rng.integers(20, 70)), int(rng.integers(90, 160)), int(rng.integers(20, 60)))
        cv2.circle(rgb, (int(cx), int(cy)), r, green, -1, cv2.LINE_AA)
        cv2.circle(alpha, (int(cx), int(cy)), r, 255, -1, cv2.LINE_AA)


def _bush(rgb: np.ndarray, alpha: np.ndarray, size: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(8, 16))):
        cx = size * float(rng.uniform(0.1, 0.9))
        cy = size * float(rng.uniform(0.55, 0.85))
        axes = (int(size * rng.uniform(0.1, 0.22)), int(size * rng.uniform(0.08, 0.16)))
        green = (int(rng.integers(30, 90)), int(rng.integers(100, 170)), int(rng.integers(20, 70)))
        cv2.ellipse(rgb, (int(cx), int(cy)), axes, 0, 0, 360, green, -1, cv2.LINE_AA)
        cv2.ellipse(alpha, (int(cx), int(cy)), axes, 0, 0, 360, 255, -1, cv2.LINE_AA)


def _facade(rgb: np.ndarray, alpha: np.ndarray, size: int, rng: np.random.Generator) -> None:
    wall = tuple(int(v) for v in rng.integers(110, 220, size=3))
    rgb[:] = wall
    alpha[:] = 255
    rows, cols = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    cell_w, cell_h = size / cols, size / rows
    glass = (int(rng.integers(40, 90)), int(rng.integers(60, 110)), int(rng.integers(90, 150)))
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * cell_w + cell_w * 0.2, r * cell_h + cell_h * 0.2
            _rect(rgb, x0, y0, x0 + cell_w * 0.6, y0 + cell_h * 0.55, glass)


def _guard_rail(rgb: np.ndarray, alpha: np.ndarray, size: int, rng: np.random.Generator) -> None:
    grey = int(rng.integers(150, 210))
    for x in np.linspace(size * 0.05, size * 0.9, int(rng.integers(3, 6))):
        _rect(rgb, x, size * 0.45, x + size * 0.05, size, (80, 80, 85))
        _rect(alpha, x, size * 0.45, x + size * 0.05, size, (255,))
    for y in (size * 0.45, size * 0.6):
        _rect(rgb, 0, y, size, y + size * 0.1, (grey, grey, grey + 5))
        _rect(alpha, 0, y, size, y + size * 0.1, (255,))


def _road_patch(rgb: np.ndarray, alpha: np.ndarray, size: int, rng: np.random.Generator) -> None:
    asphalt = int(rng.integers(60, 110))
    rgb[:] = (asphalt, asphalt, asphalt + 3)
    alpha[:] = 255
    if rng.random() < 0.7:
        x = size * float(rng.uniform(0.3, 0.6))
        for y in np.arange(0, size, size * 0.4):
            _rect(rgb, x, y, x + size * 0.08, y + size * 0.22, (235, 235, 230))
