"""Small image datasets on disk for the training tests (real PNG files, no mocks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from helpers import color_image


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_color_dataset(
    root: Path,
    per_class: int = 12,
    classes: Sequence[str] = ("red", "green", "blue"),
    size: int = 40,
) -> Path:
    """`root/<colour>/<i>.png`: classes any feature separates by colour."""
    for name in classes:
        for i in range(per_class):
            write_png(root / name / f"{i:03d}.png", color_image(name, (size, size), seed=i))
    return root


def make_noise_dataset(root: Path, per_class: int = 12, classes: int = 3, size: int = 40) -> Path:
    """Classes whose images come from one and the same noise distribution: nothing separates."""
    rng = np.random.default_rng(123)
    for c in range(classes):
        for i in range(per_class):
            rgb = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            write_png(root / f"class_{c}" / f"{i:03d}.png", rgb)
    return root
