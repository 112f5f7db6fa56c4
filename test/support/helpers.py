"""Builders shared by tests: small real models and images, no mocks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
}


def color_image(name: str, size: tuple[int, int] = (48, 64), seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 RGB image dominated by one colour, with noise so no two are identical."""
    rng = np.random.default_rng(seed)
    base = np.array(COLORS[name], dtype=np.int16)
    noise = rng.integers(-25, 26, size=(*size, 3), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_color_bundle(
    path: Path,
    classes: Sequence[str] = ("red", "green", "blue"),
    input_size: int = 32,
    seed: int = 0,
) -> Path:
    """Train a tiny uint8-input network for a few epochs and write it as a bundle."""
    import keras

    from tl_perception.bundle import bundle_meta, write_bundle

    keras.utils.set_random_seed(seed)
    images = np.stack(
        [color_image(c, (input_size, input_size), seed=i) for i in range(40) for c in classes]
    )
    labels = np.array([k for _ in range(40) for k in range(len(classes))])
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    history = model.fit(images, labels, epochs=30, batch_size=30, verbose=0)
    assert history.history["accuracy"][-1] == 1.0, "tiny colour model failed to train"
    meta = bundle_meta(
        class_names=classes, input_size=(input_size, input_size), backbone="test_tiny_cnn"
    )
    write_bundle(path, model, meta)
    return path
