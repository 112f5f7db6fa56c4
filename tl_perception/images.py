"""ROS image messages <-> numpy RGB: the one place that knows image encodings.

The node, the bag extractor, the synthetic bag writer and the tests all go through these functions,
so a frame decodes to the same pixels online and offline. Colour conversions follow cv_bridge's
conventions through `rosbags-image` (e.g. `bayer_rggb8` is OpenCV's BayerBG, `yuv422` is UYVY);
framing (`step`, truncation) is checked here because rosbags-image ignores row padding.
Messages are duck-typed: rclpy messages and rosbags dataclasses both work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.image.image import ImageError, convert_color, to_cvtype

from tl_perception.errors import ImageDecodeError

#: Encodings a camera commonly sends that decode to RGB (see rosbags-image for the full table).
RAW_ENCODINGS: tuple[str, ...] = (
    "rgb8",
    "bgr8",
    "rgba8",
    "bgra8",
    "mono8",
    "mono16",
    "rgb16",
    "bgr16",
    "rgba16",
    "bgra16",
    "bayer_rggb8",
    "bayer_bggr8",
    "bayer_gbrg8",
    "bayer_grbg8",
    "bayer_rggb16",
    "bayer_bggr16",
    "bayer_gbrg16",
    "bayer_grbg16",
    "yuv422",
    "uyvy",
    "yuyv",
    "yuv422_yuy2",
)
#: Encodings `rgb_to_raw` can produce (for test publishers and synthetic bags): all the 8-bit
#: ones and mono16.
ENCODABLE: tuple[str, ...] = tuple(
    e for e in RAW_ENCODINGS if not e.endswith("16") or e == "mono16"
)
COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")

# Channel order of each Bayer pattern's 2x2 cell: (row, col) -> RGB channel index.
_BAYER_CELLS = {
    "rggb": ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2)),
    "bggr": ((0, 0, 2), (0, 1, 1), (1, 0, 1), (1, 1, 0)),
    "gbrg": ((0, 0, 1), (0, 1, 2), (1, 0, 0), (1, 1, 1)),
    "grbg": ((0, 0, 1), (0, 1, 0), (1, 0, 2), (1, 1, 1)),
}


def is_compressed(msg: Any) -> bool:
    """CompressedImage carries `format`; Image carries `encoding`."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def message_to_rgb(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs Image or CompressedImage to an HxWx3 uint8 RGB array.

    Raises:
        ImageDecodeError: unknown encoding, wrong step, truncated data, empty or corrupt image.
    """
    if is_compressed(msg):
        return compressed_to_rgb(msg.data, getattr(msg, "format", ""))
    return raw_to_rgb(
        msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian)
    )


def raw_to_rgb(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: bool = False,
) -> np.ndarray:
    """Decode raw `sensor_msgs/Image` fields to RGB uint8, validating framing first."""
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image: {width}x{height}")
    try:
        depth, _fmt, typestr, nchan = to_cvtype(encoding)
    except ImageError as err:
        raise ImageDecodeError(f"unsupported encoding {encoding!r}") from err
    row_bytes = width * nchan * depth // 8
    if step < row_bytes:
        raise ImageDecodeError(
            f"step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({encoding})"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < step * height:
        raise ImageDecodeError(
            f"truncated image data: {buf.size} bytes, expected step*height = {step * height}"
        )
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    dtype = np.dtype(typestr)
    pixels = np.ascontiguousarray(rows).view(dtype)
    pixels = pixels.reshape((height, width) if nchan == 1 else (height, width, nchan))
    if dtype.itemsize > 1 and is_bigendian != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    try:
        rgb = convert_color(pixels, encoding, "rgb8")
    except (ImageError, cv2.error) as err:
        raise ImageDecodeError(f"cannot convert {encoding!r} to rgb8: {err}") from err
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def compressed_to_rgb(data: Any, fmt: str = "") -> np.ndarray:
    """Decode JPEG/PNG bytes (any channel count or depth) to RGB uint8."""
    return _decode_rgb(
        np.frombuffer(data, dtype=np.uint8),
        empty=f"empty compressed image (format {fmt!r})",
        corrupt=f"corrupt or unsupported compressed image (format {fmt!r})",
    )


def _decode_rgb(buf: np.ndarray, *, empty: str, corrupt: str) -> np.ndarray:
    """cv2.imdecode to RGB; the messages say what the bytes were (message or file)."""
    if buf.size == 0:
        raise ImageDecodeError(empty)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError(corrupt)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_raw(rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """Encode an RGB uint8 image as `encoding`; returns (data, step) for a sensor_msgs/Image."""
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    if encoding == "rgb8":
        out = rgb
    elif encoding == "bgr8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "rgba8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding == "bgra8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    elif encoding == "mono8":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "mono16":
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype("<u2") * np.uint16(257)
    elif encoding.startswith("bayer_") and encoding.endswith("8"):
        out = _mosaic(rgb, encoding[len("bayer_") : -1])
    elif encoding in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2"):
        out = _rgb_to_yuv422(rgb, uyvy=encoding in ("yuv422", "uyvy"))
    else:
        raise ImageDecodeError(f"cannot encode to {encoding!r}; supported: {', '.join(ENCODABLE)}")
    out = np.ascontiguousarray(out)
    step = out.nbytes // height
    assert step * height == out.nbytes and width > 0
    return out.tobytes(), step


def image_fields(rgb: np.ndarray, encoding: str) -> dict[str, Any]:
    """Fields of a sensor_msgs/Image (less header) holding `rgb` in `encoding`."""
    data, step = rgb_to_raw(rgb, encoding)
    return {
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": step,
        "data": data,
    }


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Encode RGB as JPEG or PNG bytes for a sensor_msgs/CompressedImage."""
    bgr = cv2.cvtColor(_check_rgb(rgb), cv2.COLOR_RGB2BGR)
    if fmt in ("jpeg", "jpg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        raise ImageDecodeError(f"unknown compressed format {fmt!r}; use jpeg or png")
    if not ok:
        raise ImageDecodeError(f"OpenCV failed to encode {fmt}")
    return buf.tobytes()


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageDecodeError(f"expected HxWx3 uint8 RGB, got {rgb.dtype} {rgb.shape}")
    return rgb


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    if pattern not in _BAYER_CELLS:
        raise ImageDecodeError(f"unknown Bayer pattern {pattern!r}")
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    for row, col, channel in _BAYER_CELLS[pattern]:
        out[row::2, col::2] = rgb[row::2, col::2, channel]
    return out


def _rgb_to_yuv422(rgb: np.ndarray, uyvy: bool) -> np.ndarray:
    """BT.601 limited range, the matrix OpenCV's YUV2RGB_UYVY/YUY2 inverts."""
    if rgb.shape[1] % 2:
        raise ImageDecodeError("YUV 4:2:2 needs an even width")
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    u = (u[:, 0::2] + u[:, 1::2]) / 2
    v = (v[:, 0::2] + v[:, 1::2]) / 2
    y0, y1 = y[:, 0::2], y[:, 1::2]
    quads = (u, y0, v, y1) if uyvy else (y0, u, y1, v)
    packed = np.stack(quads, axis=-1).reshape(rgb.shape[0], rgb.shape[1] * 2)
    return np.clip(np.rint(packed), 0, 255).astype(np.uint8)


def read_image_file(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG, BMP or PPM file as RGB uint8; ImageDecodeError if unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else np.empty(0, np.uint8)
    return _decode_rgb(
        data, empty=f"{path}: missing or empty image file", corrupt=f"{path}: not a readable image"
    )


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width) exactly as inference does, so training sees the same pixels.

    INTER_AREA when shrinking (no aliasing), INTER_LINEAR when growing.
    """
    height, width = size
    rgb = np.ascontiguousarray(rgb)  # e.g. the RGB view of an RGBA frame
    if rgb.shape[:2] == (height, width):
        return rgb
    shrinking = rgb.shape[0] * rgb.shape[1] > height * width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)
