"""Encodings round-trip through the one conversion module, with cv_bridge's conventions."""

from __future__ import annotations

import array
import re
import resource
import struct
import time
from collections import Counter
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from tl_perception.errors import ImageDecodeError
from tl_perception.images import (
    ENCODABLE,
    MAX_PIXELS,
    RAW_ENCODINGS,
    compressed_to_rgb,
    image_fields,
    message_to_rgb,
    raw_to_rgb,
    read_image_file,
    rgb_to_compressed,
)

from support.helpers import color_image

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


def test_data_longer_than_step_times_height_is_a_bad_frame() -> None:
    """Issue 9 defect 5: sensor_msgs/Image defines len(data) == step * height."""
    fields = image_fields(_smooth_rgb(), "bgr8")  # 24x32, 3 bytes per pixel
    mislabelled = {**fields, "encoding": "mono16", "step": 2 * 32}  # 1.5x the bytes mono16 needs
    with pytest.raises(ImageDecodeError, match=r"too long: 2304 bytes.*step\*height"):
        message_to_rgb(SimpleNamespace(**mislabelled))
    with pytest.raises(ImageDecodeError, match="too long"):
        raw_to_rgb("rgb8", 2, 2, 6, bytes(13))


def _with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    sof = data.find(b"\xff\xc0")
    sof = sof if sof >= 0 else data.index(b"\xff\xc2")  # baseline or progressive
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def _with_png_size(data: bytes, width: int, height: int) -> bytes:
    return data[:16] + struct.pack(">II", width, height) + data[24:]


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_a_header_declaring_60000_by_60000_pixels_is_refused_before_decoding(fmt: str) -> None:
    data = rgb_to_compressed(_smooth_rgb(), fmt)
    huge = (_with_jpeg_size if fmt == "jpeg" else _with_png_size)(data, 60000, 60000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageDecodeError, match="60000x60000"):
        message_to_rgb(SimpleNamespace(format=fmt, data=huge))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64


def test_truncated_jpeg_and_foreign_formats_are_refused() -> None:
    data = rgb_to_compressed(_smooth_rgb(), "jpeg")
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        compressed_to_rgb(data[:-2])  # everything but the end-of-image marker
    ok, tiff = cv2.imencode(".tiff", _smooth_rgb())
    assert ok
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG, BMP or PNM"):
        compressed_to_rgb(tiff.tobytes(), "tiff")


@pytest.mark.parametrize(
    "msg",
    [
        SimpleNamespace(data="text"),  # a std_msgs/String
        SimpleNamespace(encoding="rgb8", height=1, width=1, data=b"abc"),  # no step
        SimpleNamespace(encoding=None, height=1, width=1, step=3, data=b"abc"),
        SimpleNamespace(encoding="rgb8", height="1", width=1.5, step=3, data=b"abc"),
        SimpleNamespace(encoding="rgb8", height=1, width=1, step=3, data=[1, 2, 300]),
        SimpleNamespace(encoding="rgb8", height=1, width=1, step=3, data=None),
        SimpleNamespace(format="jpeg", data=None),
        SimpleNamespace(format="jpeg"),
    ],
)
def test_anything_that_is_not_a_frame_is_an_image_decode_error(msg: SimpleNamespace) -> None:
    with pytest.raises(ImageDecodeError):
        message_to_rgb(msg)


def test_raw_data_may_be_any_byte_buffer() -> None:
    rgb = _smooth_rgb()
    fields = image_fields(rgb, "rgb8")
    for data in (fields["data"], memoryview(fields["data"]), array.array("B", fields["data"])):
        out = message_to_rgb(SimpleNamespace(**{**fields, "data": data}))
        np.testing.assert_array_equal(out, rgb)


FUZZ_ENCODINGS = [*RAW_ENCODINGS, "", "8UC3", "8UC1", "16UC1", "32FC1", "64FC4", "rgb8 ", "x"]
FUZZ_SIZES = [0, 1, 2, 3, 5, 16, 17, 255, 70000, 2**31, -1]


def _fuzz_raw(rng: np.random.Generator) -> SimpleNamespace:
    encoding = FUZZ_ENCODINGS[rng.integers(len(FUZZ_ENCODINGS))]
    height, width = (int(FUZZ_SIZES[i]) for i in rng.integers(len(FUZZ_SIZES), size=2))
    bytes_pp = int(rng.choice([1, 2, 3, 4, 6, 8]))
    step = max(width, 0) * bytes_pp + int(rng.choice([-1, 0, 0, 0, 1, 3]))
    size = max(step, 0) * max(height, 0)
    if size > 1 << 20:  # a declared size far beyond the data sent
        size = int(rng.integers(0, 4096))
    size = max(0, size + int(rng.choice([0, 0, 0, -1, 1, -size // 2, size // 2 + 1])))
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    return SimpleNamespace(
        encoding=encoding,
        height=height,
        width=width,
        step=step,
        data=data,
        is_bigendian=int(rng.integers(2)),
    )


def _fuzz_compressed(rng: np.random.Generator, seeds: list[tuple[str, bytes]]) -> SimpleNamespace:
    fmt, data = seeds[rng.integers(len(seeds))]
    buf = bytearray(data)
    action = rng.integers(6)
    if action == 0:  # truncated
        buf = buf[: int(rng.integers(0, len(buf)))]
    elif action == 1:  # bit flips
        for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 20))):
            buf[pos] ^= 1 << int(rng.integers(8))
    elif action == 2:  # a random splice
        pos = int(rng.integers(0, len(buf)))
        buf[pos : pos + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    elif action == 3:  # an absurd declared size
        w, h = (int(v) for v in rng.choice([1, 6000, 60000, 65535], size=2))
        if fmt == "jpeg":
            buf = bytearray(_with_jpeg_size(bytes(buf), w, h))
        elif fmt == "png":
            buf = bytearray(_with_png_size(bytes(buf), w, h))
        else:
            buf = bytearray(f"P6\n{w} {h}\n255\n".encode()) + buf[-64:]
    elif action == 4:  # garbage after a valid magic
        buf = buf[:4] + rng.integers(0, 256, int(rng.integers(0, 512)), dtype=np.uint8).tobytes()
    return SimpleNamespace(format=fmt, data=bytes(buf))


def _encoded_seeds() -> list[tuple[str, bytes]]:
    rgb = _smooth_rgb()
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    seeds = [("jpeg", rgb_to_compressed(rgb, "jpeg")), ("png", rgb_to_compressed(rgb, "png"))]
    for ext in (".bmp", ".ppm", ".pgm"):
        ok, buf = cv2.imencode(ext, bgr if ext != ".pgm" else bgr[..., 0])
        assert ok
        seeds.append((ext[1:], buf.tobytes()))
    ok, progressive = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    seeds.append(("jpeg", progressive.tobytes()))
    return seeds


def test_decode_fuzz_raises_only_image_decode_error_and_never_allocates_much() -> None:
    """Random encodings, sizes, steps, truncated/oversize data and mangled JPEG/PNG/BMP/PNM:
    every outcome is RGB uint8 within MAX_PIXELS or one ImageDecodeError line."""
    rng = np.random.default_rng(20240509)
    seeds = _encoded_seeds()
    deadline = time.monotonic() + 5.0
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes: Counter[str] = Counter()
    for case in range(20000):
        if time.monotonic() > deadline and case >= 500:
            break
        msg = _fuzz_raw(rng) if case % 2 else _fuzz_compressed(rng, seeds)
        try:
            rgb = message_to_rgb(msg)
        except ImageDecodeError as err:
            assert "\n" not in str(err) and str(err), repr(err)
            outcomes["refused"] += 1
            continue
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, (msg, rgb.shape)
        assert rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS
        outcomes["decoded"] += 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert outcomes["refused"] > 100 and outcomes["decoded"] > 20, outcomes
    assert grown_mib < 256, f"peak memory grew by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("size", [(60000, 60000), (1, 1 << 26)])
def test_image_files_declaring_huge_sizes_are_refused(tmp_path, size: tuple[int, int]) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_with_png_size(rgb_to_compressed(_smooth_rgb(), "png"), *size))
    with pytest.raises(ImageDecodeError, match=r"big\.png.*PNG header declares"):
        read_image_file(path)


@pytest.mark.parametrize("encoding", ["8UC3", "16UC3", "32FC3", "32FC1", "8SC3", "64FC1"])
def test_generic_encodings_are_bad_frames_not_cast_to_colour(encoding: str) -> None:
    depth = int(re.match(r"\d+", encoding).group()) // 8  # type: ignore[union-attr]
    channels = int(encoding[-1])
    data = bytes(2 * 2 * channels * depth)
    with pytest.raises(ImageDecodeError, match="not a colour encoding"):
        raw_to_rgb(encoding, 2, 2, 2 * channels * depth, data)
