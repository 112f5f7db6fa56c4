"""Turn camera frames of any size and channel layout into the model's uint8 input batch.

The network carries its own normalisation, so the only work left outside it is channel fixing and
the one resize, `images.resize_rgb`: the same function the trainer uses, so no preprocessing skew.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

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
    batch = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    fill_batch(images, batch)
    return batch


#: Source pixels from which a batch is resized on a thread pool: OpenCV's INTER_AREA resize runs
#: on one core (~0.85 ms for 640x480 -> 224x224 here), so the frames of four cameras take 3.4 ms
#: one after another. Crops (ROIs) are far smaller: dispatching them would cost more than it saves.
PARALLEL_PIXELS = 1 << 19


def fill_batch(
    images: Sequence[np.ndarray] | np.ndarray, out: np.ndarray, pool: Executor | None = None
) -> None:
    """Write images of any size into `out[:N]`, an (>=N, H, W, 3) uint8 array (reused per call,
    so a frame's batch allocates nothing of the batch's size). With `pool` the images are
    resized in parallel (OpenCV releases the GIL); see `worth_parallel`."""
    size = (int(out.shape[1]), int(out.shape[2]))

    def one(i: int) -> None:
        out[i] = resize_rgb(to_rgb(images[i]), size)

    if pool is None:
        for i in range(len(images)):
            one(i)
        return
    for _ in pool.map(one, range(len(images))):
        pass


def worth_parallel(images: Sequence[np.ndarray] | np.ndarray) -> bool:
    """Several images of `PARALLEL_PIXELS` in all: whole frames of several cameras, not crops."""
    return len(images) > 1 and sum(np.asarray(im).size for im in images) >= 3 * PARALLEL_PIXELS
