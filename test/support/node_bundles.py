"""Real tiny bundles and frames for the node's ROI and multi-camera tests (no mocks).

- `make_pixel_bundle`: an untrained network whose scores are a fixed function of every input
  pixel (Flatten -> Dense -> softmax): two crops that differ by one pixel column get different
  scores, so comparing scores is comparing crops. With `crop` it carries a crop policy in
  bundle.json, as `finetune` writes it from the dataset.
- `patch_frame`: a noisy grey frame with solid colour patches where the test's boxes are, for
  the colour bundle of conftest (`color_bundle`: red, green, blue); `PATCHES` and `box_of` are
  one such layout and its detector boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tl_perception.crop import CropPolicy

from support.helpers import COLORS


def make_pixel_bundle(
    path: Path,
    crop: CropPolicy | None,
    classes: Sequence[str] = ("a", "b", "c", "d"),
    input_size: int = 16,
    seed: int = 0,
) -> Path:
    """A bundle whose output depends on every pixel of the (resized) crop; no training."""
    import keras

    from tl_perception.bundle import bundle_meta, write_bundle

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(4.0 / 255.0, offset=-2.0)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    extra = {"crop": crop.to_dict()} if crop is not None else {}
    meta = bundle_meta(
        class_names=classes,
        input_size=(input_size, input_size),
        backbone="test_pixel_dense",
        **extra,
    )
    write_bundle(path, model, meta)
    return path


def patch_frame(
    size: tuple[int, int],
    patches: Sequence[tuple[str, int, int, int, int]],
    seed: int = 0,
) -> np.ndarray:
    """An HxW RGB frame of grey noise with (colour, x, y, w, h) patches painted on it."""
    height, width = size
    rng = np.random.default_rng(seed)
    frame = rng.integers(100, 156, size=(height, width, 3), dtype=np.uint8)
    for color, x, y, w, h in patches:
        noise = rng.integers(-20, 21, size=(h, w, 3))
        patch = np.clip(np.array(COLORS[color]) + noise, 0, 255).astype(np.uint8)
        frame[y : y + h, x : x + w] = patch
    return frame


ROI_SIZE = (120, 160)
#: id -> (colour, x, y, w, h): the patches of an ROI frame (`patch_frame(ROI_SIZE, ...)`)
PATCHES = {
    "r": ("red", 10, 10, 40, 40),
    "b": ("blue", 60, 10, 40, 40),
    "g": ("green", 110, 60, 40, 40),
}
Det = tuple[str, float, float, float, float]  # (id, centre x, centre y, width, height)


def box_of(det_id: str, patch: str) -> Det:
    """A detection with id `det_id` exactly on the patch `patch` of `PATCHES`."""
    _colour, x, y, w, h = PATCHES[patch]
    return det_id, x + w / 2, y + h / 2, float(w), float(h)
