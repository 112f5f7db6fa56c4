"""Small image datasets on disk for the training tests (real PNG files, no mocks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tl_perception.train.config import FinetuneConfig

from support.helpers import color_image


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


def make_confusable_split(
    root: Path,
    train: Sequence[int],
    val: Sequence[int],
    classes: Sequence[str] = ("red", "green", "blue"),
) -> Path:
    """`root/{train,val}/<colour>/<i>.png` with these counts per class; every third image is noise.

    The noise images keep accuracy off 1.0 (so two trainings can be compared) and give the
    val split mistakes to calibrate on; the exact counts set how the batches fall.
    """
    rng = np.random.default_rng(7)
    for split, counts in (("train", train), ("val", val)):
        for name, count in zip(classes, counts, strict=True):
            for i in range(count):
                seed = i if split == "train" else 1000 + i
                rgb = color_image(name, (32, 32), seed=seed)
                if i % 3 == 0:
                    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                write_png(root / split / name / f"{i:03d}.png", rgb)
    return root


def tiny(tmp_path: Path, **overrides) -> FinetuneConfig:
    """A fast config: random MobileNetV2 a0.35 at 32 px, no TFLite export."""
    values = {
        "input_size": 32,
        "weights": "none",
        "strategy": "feature_extraction",
        "epochs": 2,
        "cache_dir": str(tmp_path / "cache"),
        "cache_augmentations": 1,
        "export_tflite": False,
        "evaluate": False,
    }
    values.update(overrides)
    return FinetuneConfig(**values)
