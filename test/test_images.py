"""Encodings round-trip through the one conversion module, with cv_bridge's conventions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import color_image

from tl_perception.errors import ImageDecodeError
from tl_perception.images import (
    ENCODABLE,
    image_fields,
    message_to_rgb,
    raw_to_rgb,
    rgb_to_compressed,
)

# Lossless encodings must give back the exact pixels; the others only approximately.
EXACT = {"rgb8", "bgr8", "rgba8", "bgra8"}


def _smooth_rgb() -> np.ndarray:
    """A smooth gradient, so Bayer and 4:2:2 chroma subsampling lose little."""
    y, x = np.mgrid[0:24, 0:32]
    return np.stack([x * 8, y * 10, 255 - x * 8], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("encoding", ENCODABLE)
def test_raw_encodings_round_trip(encoding: str) -> None:
    rgb = _smooth_rgb()
    msg = SimpleNamespace(**image_fields(rgb, encoding))
    out = message_to_rgb(msg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if encoding in EXACT:
        np.testing.assert_array_equal(out, rgb)
    elif encoding.startswith("mono"):
        gray = out[..., 0].astype(int)
        assert np.all(out[..., 0] == out[..., 1])
        expected = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])
        assert np.abs(gray - expected).max() <= 2
    else:
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(out[inner].astype(int) - rgb[inner].astype(int)).mean() < 12


def test_bayer_rggb_is_opencv_bayer_bg_like_cv_bridge() -> None:
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    out = message_to_rgb(SimpleNamespace(**image_fields(red, "bayer_rggb8")))
    assert out[2:-2, 2:-2, 0].min() > 150 and out[2:-2, 2:-2, 2].max() < 50


def test_padded_step_is_honoured() -> None:
    rgb = color_image("red", (5, 7))
    row = rgb.reshape(5, 21)
    padded = np.zeros((5, 24), np.uint8)
    padded[:, :21] = row
    out = raw_to_rgb("rgb8", 5, 7, 24, padded.tobytes())
    np.testing.assert_array_equal(out, rgb)


def test_mono16_big_endian() -> None:
    gray = np.full((2, 2), 0x8000, dtype=">u2")
    out = raw_to_rgb("mono16", 2, 2, 4, gray.tobytes(), is_bigendian=True)
    assert out[0, 0, 0] == 127 or out[0, 0, 0] == 128


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"encoding": "rgb8", "height": 4, "width": 4, "step": 10, "data": bytes(48)}, "step"),
        ({"encoding": "rgb8", "height": 4, "width": 4, "step": 12, "data": bytes(40)}, "truncated"),
        ({"encoding": "weird9", "height": 4, "width": 4, "step": 12, "data": bytes(48)}, "weird9"),
        ({"encoding": "rgb8", "height": 0, "width": 0, "step": 0, "data": b""}, "empty"),
    ],
)
def test_bad_frames_raise_one_clear_error(fields: dict, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        message_to_rgb(SimpleNamespace(is_bigendian=0, **fields))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_decodes_to_rgb(fmt: str) -> None:
    rgb = color_image("blue", (16, 16))
    out = message_to_rgb(SimpleNamespace(format=fmt, data=rgb_to_compressed(rgb, fmt, 95)))
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < (0.01 if fmt == "png" else 10)


def test_corrupt_jpeg_raises() -> None:
    data = rgb_to_compressed(color_image("red", (16, 16)))[:40]
    with pytest.raises(ImageDecodeError, match="corrupt"):
        message_to_rgb(SimpleNamespace(format="jpeg", data=data))
