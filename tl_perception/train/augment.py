"""Augmentation that suits road signs: small rotations, scale/shift, light, blur; never flips.

A horizontal flip would turn "keep left" into "keep right", so there is none. One function,
seeded per image, serves both the feature cache's augmented views and the end-to-end pipeline,
so both see the same kind of variation and each view is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentSpec:
    rotation_deg: float
    scale: float  # +- relative zoom
    shift: float  # +- fraction of the side
    brightness: float  # +- fraction of 255
    contrast: float  # +- relative
    blur_probability: float


AUGMENT_SPECS: dict[str, AugmentSpec | None] = {
    "none": None,
    "default": AugmentSpec(10.0, 0.10, 0.08, 0.15, 0.20, 0.25),
    "strong": AugmentSpec(15.0, 0.20, 0.12, 0.25, 0.35, 0.40),
}


def augment_rgb(rgb: np.ndarray, seed: int, spec: AugmentSpec) -> np.ndarray:
    """One random variation of an HxWx3 uint8 image; the same seed gives the same pixels."""
    rng = np.random.default_rng(seed)
    height, width = rgb.shape[:2]
    angle = rng.uniform(-spec.rotation_deg, spec.rotation_deg)
    zoom = 1.0 + rng.uniform(-spec.scale, spec.scale)
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, zoom)
    matrix[0, 2] += rng.uniform(-spec.shift, spec.shift) * width
    matrix[1, 2] += rng.uniform(-spec.shift, spec.shift) * height
    warped = cv2.warpAffine(
        rgb, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    out = np.asarray(warped, dtype=np.float32)
    contrast = 1.0 + rng.uniform(-spec.contrast, spec.contrast)
    brightness = rng.uniform(-spec.brightness, spec.brightness) * 255.0
    mean = out.mean()
    out = (out - mean) * contrast + mean + brightness
    if rng.random() < spec.blur_probability:
        sigma = rng.uniform(0.4, 1.0)
        out = np.asarray(cv2.GaussianBlur(out, (0, 0), sigmaX=sigma))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def view_seed(content_hash: str, view: int, seed: int = 0) -> int:
    """A stable per-(image, view) seed, so cached augmented views are reproducible."""
    return (int(content_hash[:12], 16) * 1_000_003 + view * 7919 + seed) % (2**63)
