"""Test images and message lists for bags; the bags are written by `tl_perception.bag.writer`.

Messages are `Msg(topic, t_ns, kind, payload)` (see `writer.Msg`); times start at `T0`.
"""

from __future__ import annotations

import numpy as np

from tl_perception.bag.writer import Msg
from tl_perception.stamps import SEC

T0 = 1_700_000_000 * SEC  # a realistic epoch for the first message


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (32, 24), seed: int = 0) -> np.ndarray:
    """A WxH image of colour `rgb` with a little seeded texture (so frames differ slightly)."""
    width, height = size
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = rgb
    if seed:
        rng = np.random.default_rng(seed)
        noise = rng.integers(-3, 4, size=img.shape)
        img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
    return img


def pattern(seed: int, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """A random blocky image: frames with different seeds have very different perceptual hashes."""
    width, height = size
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    return np.kron(small, np.ones((height // 3 + 1, width // 4 + 1, 1), dtype=np.uint8))[
        :height, :width
    ].copy()


def frames(
    topic: str,
    images: list[np.ndarray],
    *,
    start_s: float = 0.0,
    period_s: float = 0.1,
    kind: str = "image",
    encoding: str = "rgb8",
) -> list[Msg]:
    """Image messages at a fixed rate starting `start_s` after T0."""
    out = []
    for i, rgb in enumerate(images):
        t_ns = T0 + round((start_s + i * period_s) * SEC)
        out.append(Msg(topic, t_ns, kind, (rgb, encoding)))
    return out


def label(topic: str, at_s: float, text: str) -> Msg:
    """A std_msgs/String label `at_s` seconds after T0."""
    return Msg(topic, T0 + round(at_s * SEC), "string", text)
