"""GTSRB-like traffic sign templates drawn with OpenCV: shapes, borders, digits and symbols.

Each template is an RGB image plus an alpha mask on a square canvas, drawn once per object so that
colour fading and border widths vary between objects. Class names are slugs; `keep_left` is the
mirror image of `keep_right` on purpose (a classifier must not learn flip invariance).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

RED = (200, 25, 35)
WHITE = (245, 245, 242)
BLUE = (25, 75, 175)
YELLOW = (250, 200, 30)
BLACK = (22, 22, 22)

SIGN_CLASSES: tuple[str, ...] = (
    "stop",
    "yield",
    "no_entry",
    "speed_limit_30",
    "speed_limit_50",
    "speed_limit_70",
    "priority_road",
    "keep_right",
    "keep_left",
    "ahead_only",
)

Canvas = tuple[np.ndarray, np.ndarray]  # (rgb uint8 HxWx3, alpha uint8 HxW)


def draw_sign(name: str, size: int, rng: np.random.Generator) -> Canvas:
    """Draw sign `name` on a `size`x`size` canvas; colours fade a little per object."""
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    alpha = np.zeros((size, size), dtype=np.uint8)
    fade = float(rng.uniform(0.0, 0.25))
    border = float(rng.uniform(0.06, 0.1))
    _DRAWERS[name](rgb, alpha, size, border, fade)
    return rgb, alpha


def _c(color: tuple[int, int, int], fade: float) -> tuple[int, int, int]:
    """A colour faded towards grey by `fade` (sun-bleached paint)."""
    grey = 170.0
    return tuple(round(v * (1 - fade) + grey * fade) for v in color)  # type: ignore[return-value]


def _poly(img: np.ndarray, pts: np.ndarray, color: tuple[int, ...]) -> None:
    cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color, lineType=cv2.LINE_AA)


def _regular(n: int, radius: float, centre: float, start_deg: float) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 / n * np.arange(n))
    return np.stack([centre + radius * np.cos(angles), centre + radius * np.sin(angles)], axis=1)


def _text(img: np.ndarray, text: str, size: int, width_frac: float, color: tuple[int, ...]) -> None:
    """Centre `text` so that it spans `width_frac` of the canvas."""
    font = cv2.FONT_HERSHEY_DUPLEX
    thickness = max(2, size // 22)
    (w, _h), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = width_frac * size / w
    (w, h), _ = cv2.getTextSize(text, font, scale, thickness)
    org = (round((size - w) / 2), round((size + h) / 2))
    cv2.putText(img, text, org, font, scale, color, thickness, cv2.LINE_AA)


def _disc(rgb: np.ndarray, alpha: np.ndarray, size: int, color: tuple[int, ...]) -> None:
    centre = (size // 2, size // 2)
    radius = int(size * 0.48)
    cv2.circle(alpha, centre, radius, 255, -1, cv2.LINE_AA)
    cv2.circle(rgb, centre, radius, color, -1, cv2.LINE_AA)


def _stop(rgb: np.ndarray, alpha: np.ndarray, size: int, border: float, fade: float) -> None:
    half = size / 2
    outer = _regular(8, size * 0.49, half, 22.5)
    _poly(alpha, outer, (255,))
    _poly(rgb, outer, _c(WHITE, fade))
    _poly(rgb, _regular(8, size * (0.49 - border / 2), half, 22.5), _c(RED, fade))
    _text(rgb, "STOP", size, 0.66, _c(WHITE, fade))


def _yield(rgb: np.ndarray, alpha: np.ndarray, size: int, border: float, fade: float) -> None:
    top, bottom, left, right = size * 0.1, size * 0.92, size * 0.03, size * 0.97
    outer = np.array([[left, top], [right, top], [size / 2, bottom]])
    _poly(alpha, outer, (255,))
    _poly(rgb, outer, _c(RED, fade))
    centroid = outer.mean(axis=0)
    inner = centroid + (outer - centroid) * (1 - 3.2 * border)
    _poly(rgb, inner, _c(WHITE, fade))


def _no_entry(rgb: np.ndarray, alpha: np.ndarray, size: int, border: float, fade: float) -> None:
    _disc(rgb, alpha, size, _c(RED, fade))
    bar_h = size * (0.09 + border)
    cv2.rectangle(
        rgb,
        (int(size * 0.2), int(size / 2 - bar_h)),
        (int(size * 0.8), int(size / 2 + bar_h)),
        _c(WHITE, fade),
        -1,
        cv2.LINE_AA,
    )


def _speed_limit(limit: int) -> Callable[[np.ndarray, np.ndarray, int, float, float], None]:
    def draw(rgb: np.ndarray, alpha: np.ndarray, size: int, border: float, fade: float) -> None:
        _disc(rgb, alpha, size, _c(RED, fade))
        centre = (size // 2, size // 2)
        cv2.circle(rgb, centre, int(size * (0.48 - border * 1.4)), _c(WHITE, fade), -1, cv2.LINE_AA)
        _text(rgb, str(limit), size, 0.52, _c(BLACK, fade))

    return draw


def _priority_road(
    rgb: np.ndarray, alpha: np.ndarray, size: int, border: float, fade: float
) -> None:
    half = size / 2
    _poly(alpha, _regular(4, size * 0.49, half, 0), (255,))
    _poly(rgb, _regular(4, size * 0.49, half, 0), _c(WHITE, fade))
    _poly(rgb, _regular(4, size * 0.45, half, 0), _c(BLACK, fade))
    _poly(rgb, _regular(4, size * 0.43, half, 0), _c(WHITE, fade))
    _poly(rgb, _regular(4, size * (0.3 - border), half, 0), _c(YELLOW, fade))


def _arrow(
    rgb: np.ndarray, size: int, start: tuple[float, float], end: tuple[float, float]
) -> None:
    p0 = (int(size * start[0]), int(size * start[1]))
    p1 = (int(size * end[0]), int(size * end[1]))
    cv2.arrowedLine(rgb, p0, p1, WHITE, max(3, size // 9), cv2.LINE_AA, tipLength=0.45)


def _keep_right(rgb: np.ndarray, alpha: np.ndarray, size: int, border: float, fade: float) -> None:
    _disc(rgb, alpha, size, _c(WHITE, fade))
    cv2.circle(rgb, (size // 2, size // 2), int(size * 0.45), _c(BLUE, fade), -1, cv2.LINE_AA)
    _arrow(rgb, size, (0.3, 0.3), (0.7, 0.7))


def _keep_left(rgb: np.ndarray, alpha: np.ndarray, size: int, border: float, fade: float) -> None:
    _keep_right(rgb, alpha, size, border, fade)
    rgb[:] = rgb[:, ::-1]
    alpha[:] = alpha[:, ::-1]


def _ahead_only(rgb: np.ndarray, alpha: np.ndarray, size: int, border: float, fade: float) -> None:
    _disc(rgb, alpha, size, _c(WHITE, fade))
    cv2.circle(rgb, (size // 2, size // 2), int(size * 0.45), _c(BLUE, fade), -1, cv2.LINE_AA)
    _arrow(rgb, size, (0.5, 0.8), (0.5, 0.2))


_DRAWERS: dict[str, Callable[[np.ndarray, np.ndarray, int, float, float], None]] = {
    "stop": _stop,
    "yield": _yield,
    "no_entry": _no_entry,
    "speed_limit_30": _speed_limit(30),
    "speed_limit_50": _speed_limit(50),
    "speed_limit_70": _speed_limit(70),
    "priority_road": _priority_road,
    "keep_right": _keep_right,
    "keep_left": _keep_left,
    "ahead_only": _ahead_only,
}
assert tuple(_DRAWERS) == SIGN_CLASSES
