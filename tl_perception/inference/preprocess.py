"""Turn camera frames of any size and channel layout into the model's uint8 input batch.

The network carries its own normalisation, so the only work left outside it is channel fixing and
the one resize, `images.resize_rgb`: the same function the trainer uses, so no preprocessing skew.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tl_perception.errors import ImageDecodeError
from tl_perception.images import resize_rgb


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Coerce HxW, HxWx1, HxWx3 or HxWx4 uint8 to HxWx3 RGB (grey replicated, alpha dropped).

    Raises:
        ImageDecodeError: wrong dtype, empty image or an unsupported channel layout.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ImageDecodeError(
            f"expected a uint8 image, got dtype {image.dtype}; convert with .astype(np.uint8) "
            "after scaling to 0-255"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        rgb = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 3:
        rgb = image
    elif image.ndim == 3 and image.shape[2] == 4:
        rgb = image[:, :, :3]
    else:
        raise ImageDecodeError(
            f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError(f"empty image of shape {image.shape}")
    return rgb


def make_batch(images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stack images of any size into an (N, H, W, 3) uint8 batch at the model's input size."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if len(images) == 0:
        return np.zeros((0, size[0], size[1], 3), dtype=np.uint8)
    batch = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i] = resize_rgb(to_rgb(image), size)
    return batch
