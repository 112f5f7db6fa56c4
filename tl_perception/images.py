"""ROS image messages <-> numpy RGB: the one place that knows image encodings.

The node, the bag extractor, the synthetic bag writer and the tests all go through these functions,
so a frame decodes to the same pixels online and offline. Colour conversions follow cv_bridge's
conventions through `rosbags-image` (e.g. `bayer_rggb8` is OpenCV's BayerBG, `yuv422` is UYVY);
framing (`step`, truncation) is checked here because rosbags-image ignores row padding.
Messages are duck-typed: rclpy messages and rosbags dataclasses both work.
"""

from __future__ import annotations

import operator
import re
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.image.image import convert_color, to_cvtype

from tl_perception.errors import ImageDecodeError, one_line

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
_GENERIC_ENCODING = re.compile(r"(8|16|32|64)(U|S|F)C[0-9]+")
#: Largest frame decoded (32 Mi pixels: 8K UHD fits). Checked against the declared size before
#: anything is allocated, so a 60000x60000 JPEG header costs nothing (OpenCV's own limit is
#: 1 Gi pixels, i.e. 3 GiB of RGB).
MAX_PIXELS = 1 << 25
#: Largest image file `read_image_file` reads into memory.
MAX_FILE_BYTES = 256 << 20

# Channel order of each Bayer pattern's 2x2 cell: (row, col) -> RGB channel index.
_BAYER_CELLS = {
    "rggb": ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2)),
    "bggr": ((0, 0, 2), (0, 1, 1), (1, 0, 1), (1, 1, 0)),
    "gbrg": ((0, 0, 1), (0, 1, 2), (1, 0, 0), (1, 1, 1)),
    "grbg": ((0, 0, 1), (0, 1, 0), (1, 0, 2), (1, 1, 1)),
}


def is_compressed(msg: Any) -> bool:
    """CompressedImage carries `format` and no `encoding`; Image carries `encoding`.

    Decided by the fields present, not their values: an Image with an empty `encoding` is still a
    raw Image (and a bad one), never a CompressedImage.
    """
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def message_to_rgb(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs Image or CompressedImage to an HxWx3 uint8 RGB array.

    Raises:
        ImageDecodeError: the only exception, for anything that is not a decodable frame:
            unknown encoding, wrong step or size, truncated data, an image larger than
            `MAX_PIXELS`, a corrupt image, or a message that is neither type.
    """
    if is_compressed(msg):
        return compressed_to_rgb(getattr(msg, "data", b""), str(getattr(msg, "format", "")))
    missing = [f for f in ("encoding", "height", "width", "step", "data") if not hasattr(msg, f)]
    if missing:
        raise ImageDecodeError(
            f"not a sensor_msgs Image or CompressedImage: {type(msg).__name__} lacks {missing}"
        )
    return raw_to_rgb(
        msg.encoding,
        msg.height,
        msg.width,
        msg.step,
        msg.data,
        bool(getattr(msg, "is_bigendian", False)),
    )


def raw_to_rgb(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: bool = False,
) -> np.ndarray:
    """Decode raw `sensor_msgs/Image` fields to RGB uint8, validating framing first.

    sensor_msgs/Image defines `len(data) == step * height`; a frame with more or fewer bytes
    is malformed (often a wrong `encoding` or `step`), so it is refused, not guessed at.
    """
    try:
        height, width, step = (operator.index(v) for v in (height, width, step))
    except TypeError:
        raise ImageDecodeError(
            f"height, width and step must be integers, got {height!r}, {width!r}, {step!r}"
        ) from None
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image: {width}x{height}")
    _check_pixels(width, height)
    if not isinstance(encoding, str):
        raise ImageDecodeError(f"encoding must be a string, got {type(encoding).__name__}")
    if not encoding:
        raise ImageDecodeError("empty encoding: the frame does not say how its bytes are laid out")
    if _GENERIC_ENCODING.fullmatch(encoding):
        # 8UC3, 32FC1, ...: channels without a colour meaning (cv_bridge refuses them as rgb8);
        # casting a 32FC3 of 0.5 to uint8 would classify a black frame.
        raise ImageDecodeError(f"{encoding} is not a colour encoding (depth or generic data)")
    try:
        depth, _fmt, typestr, nchan = to_cvtype(encoding)
    except Exception as err:  # rosbags-image: ImageFormatError, or worse on odd strings
        raise ImageDecodeError(f"unsupported encoding {encoding[:64]!r}") from err
    row_bytes = width * nchan * depth // 8
    if step < row_bytes:
        raise ImageDecodeError(
            f"step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({encoding})"
        )
    if encoding in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2") and width % 2:
        raise ImageDecodeError(f"{encoding} needs an even width, got {width}")
    buf = _as_bytes(data)
    expected = step * height
    if buf.size != expected:
        what = "truncated image data" if buf.size < expected else "image data too long"
        raise ImageDecodeError(
            f"{what}: {buf.size} bytes, but sensor_msgs/Image holds step*height = "
            f"{step}*{height} = {expected} ({encoding} {width}x{height}; wrong encoding or step?)"
        )
    rows = buf.reshape(height, step)[:, :row_bytes]
    dtype = np.dtype(typestr)
    pixels = np.ascontiguousarray(rows).view(dtype)
    pixels = pixels.reshape((height, width) if nchan == 1 else (height, width, nchan))
    if dtype.itemsize > 1 and is_bigendian != (sys.byteorder == "big"):
        pixels = pixels.byteswap()
    try:
        rgb = convert_color(pixels, encoding, "rgb8")
    except Exception as err:  # ImageError, cv2.error, ...: third-party code on untrusted input
        raise ImageDecodeError(f"cannot convert {encoding!r} to rgb8: {_one_line(err)}") from err
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape != (height, width, 3):
        raise ImageDecodeError(f"{encoding!r} did not convert to {width}x{height} rgb8")
    return np.ascontiguousarray(rgb)


def compressed_to_rgb(data: Any, fmt: str = "") -> np.ndarray:
    """Decode JPEG/PNG bytes (any channel count or depth) to RGB uint8."""
    return _decode_rgb(
        _as_bytes(data),
        empty=f"empty compressed image (format {fmt!r})",
        corrupt=f"corrupt or unsupported compressed image (format {fmt!r})",
    )


def _decode_rgb(buf: np.ndarray, *, empty: str, corrupt: str) -> np.ndarray:
    """cv2.imdecode to RGB after checking the declared size; messages say what the bytes were."""
    if buf.size == 0:
        raise ImageDecodeError(empty)
    kind, width, height = image_header(buf, corrupt)
    _check_pixels(width, height, f"{corrupt}: {kind} header declares")
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise ImageDecodeError(f"{corrupt}: {_one_line(err)}") from err
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError(corrupt)
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.shape[0] * bgr.shape[1] > MAX_PIXELS:
        raise ImageDecodeError(f"{corrupt}: decoded to an unexpected shape {bgr.shape}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_header(buf: np.ndarray | bytes, what: str = "image") -> tuple[str, int, int]:
    """(kind, width, height) an image file declares, read from its header without decoding.

    Only the formats the project reads are accepted (JPEG, PNG, BMP, PNM), so no other decoder
    in OpenCV ever sees untrusted bytes.

    Raises:
        ImageDecodeError: unknown format, or a header that is truncated or corrupt.
    """
    raw = buf.tobytes() if isinstance(buf, np.ndarray) else bytes(buf)
    data = raw[:8]
    if data.startswith(b"\xff\xd8"):
        width, height = _jpeg_size(raw, what)
        return "JPEG", width, height
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(raw) < 24 or raw[12:16] != b"IHDR":
            raise ImageDecodeError(f"{what}: truncated PNG header")
        return "PNG", int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    if data.startswith(b"BM"):
        return ("BMP", *_bmp_size(raw, what))
    if len(data) >= 2 and data[:1] == b"P" and data[1:2] in b"123456":
        return ("PNM", *_pnm_size(raw, what))
    raise ImageDecodeError(f"{what}: not a JPEG, PNG, BMP or PNM image")


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(raw: bytes, what: str) -> tuple[int, int]:
    """Width and height from the first SOF segment; a JPEG without EOI after it is truncated."""
    pos = 2
    while True:
        pos = raw.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(raw):
            raise ImageDecodeError(f"{what}: truncated JPEG (no frame header)")
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ImageDecodeError(f"{what}: JPEG has no frame header before its scan")
        if pos + 4 > len(raw):
            raise ImageDecodeError(f"{what}: truncated JPEG header")
        length = int.from_bytes(raw[pos + 2 : pos + 4], "big")
        if length < 2:
            raise ImageDecodeError(f"{what}: corrupt JPEG segment length {length}")
        if marker in _JPEG_SOF:
            if length < 8 or pos + 9 > len(raw):
                raise ImageDecodeError(f"{what}: truncated JPEG frame header")
            height = int.from_bytes(raw[pos + 5 : pos + 7], "big")
            width = int.from_bytes(raw[pos + 7 : pos + 9], "big")
            if raw.rfind(b"\xff\xd9") < pos:
                raise ImageDecodeError(f"{what}: truncated JPEG (no end-of-image marker)")
            return width, height
        pos += 2 + length


def _bmp_size(raw: bytes, what: str) -> tuple[int, int]:
    if len(raw) < 26:
        raise ImageDecodeError(f"{what}: truncated BMP header")
    if int.from_bytes(raw[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER
        return int.from_bytes(raw[18:20], "little"), int.from_bytes(raw[20:22], "little")
    width = int.from_bytes(raw[18:22], "little", signed=True)
    height = int.from_bytes(raw[22:26], "little", signed=True)
    return abs(width), abs(height)


def _pnm_size(raw: bytes, what: str) -> tuple[int, int]:
    """Width and height tokens after the magic; `#` comments run to the end of a line."""
    tokens: list[int] = []
    pos, end = 2, min(len(raw), 4096)
    while len(tokens) < 2:
        while pos < end and raw[pos : pos + 1] in (b" ", b"\t", b"\n", b"\r", b"\v", b"\f"):
            pos += 1
        if pos < end and raw[pos : pos + 1] == b"#":
            newline = raw.find(b"\n", pos, end)
            pos = end if newline < 0 else newline + 1
            continue
        start = pos
        while pos < end and raw[pos : pos + 1].isdigit():
            pos += 1
        if pos == start or pos - start > 9:
            raise ImageDecodeError(f"{what}: corrupt PNM header")
        tokens.append(int(raw[start:pos]))
    return tokens[0], tokens[1]


def _check_pixels(width: int, height: int, prefix: str = "image of") -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{prefix} an empty size {width}x{height}")
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{prefix} {width}x{height} pixels, more than the {MAX_PIXELS} this decoder accepts"
        )


def _as_bytes(data: Any) -> np.ndarray:
    """A flat uint8 view of message data: bytes, memoryview, numpy or array.array('B')."""
    try:
        buf = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError):
        try:
            buf = np.asarray(data, dtype=np.uint8)  # e.g. a list of ints
        except (TypeError, ValueError, OverflowError) as err:
            raise ImageDecodeError(f"image data is not bytes: {type(data).__name__}") from err
    return buf.reshape(-1)


def _one_line(err: BaseException) -> str:
    """The informative line of an exception: OpenCV's come as several, the last `>` one says
    what was wrong."""
    detail = [line for line in str(err).splitlines() if line.strip().startswith(">")]
    return one_line(detail[-1].strip().lstrip("> ") if detail else err, limit=200)


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
    out: np.ndarray = np.clip(np.rint(packed), 0, 255).astype(np.uint8)
    return out


def read_image_file(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG, BMP or PPM file as RGB uint8; ImageDecodeError if unreadable."""
    path = Path(path)
    try:
        size = path.stat().st_size if path.is_file() else 0
        if size > MAX_FILE_BYTES:
            raise ImageDecodeError(f"{path}: {size} bytes is too large for an image file")
        data = np.fromfile(str(path), dtype=np.uint8) if size else np.empty(0, np.uint8)
    except OSError as err:
        raise ImageDecodeError(f"{path}: cannot read: {err.strerror or err}") from err
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
