"""Per-frame work done in worker processes: decode, crop, hash, encode.

The main process reads the bag and sends plain tuples (no rosbags objects, which do not pickle),
so this module is all a worker imports. Decoding goes through `tl_perception.images`, the one
place that knows ROS encodings.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from tl_perception.errors import ImageDecodeError
from tl_perception.images import message_to_rgb

#: (x, y, w, h) in pixels
Crop = tuple[int, int, int, int]


@dataclass(frozen=True)
class FrameResult:
    """What a worker returns for one frame; `skip` names the reason when it was not usable."""

    skip: str | None
    width: int = 0
    height: int = 0
    sha256: str = ""
    phash: int = 0
    tmp_path: str = ""  # the encoded image, written by the worker under a hidden temp name


def message_fields(msg: Any, kind: str) -> tuple[Any, ...]:
    """A picklable copy of what decoding needs from an Image ("raw") or CompressedImage.

    `kind` comes from the topic's message type, not from the fields' values: a raw Image with
    an empty `encoding` is a bad raw frame, not a CompressedImage.
    """
    if kind == "raw":
        return ("raw", msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
    return ("compressed", msg.format, msg.data)


def process_frame(
    fields: tuple[Any, ...], crop: Crop | None, fmt: str, tmp_dir: str
) -> FrameResult:
    """Decode, crop, hash, encode and write one frame to a temp file in `tmp_dir`.

    The main process later renames the temp file into place or deletes it (dedup), so encoded
    images never travel back through a pipe. A bad frame returns a skip reason, never raises.
    """
    if fields[0] == "raw":
        _, encoding, height, width, step, data, big = fields
        msg = SimpleNamespace(
            encoding=encoding, height=height, width=width, step=step, data=data, is_bigendian=big
        )
    else:
        msg = SimpleNamespace(format=fields[1], data=fields[2])
    try:
        rgb = message_to_rgb(msg)
    except ImageDecodeError:
        return FrameResult(skip="decode_error")
    if crop is not None:
        x, y, w, h = crop
        if x + w > rgb.shape[1] or y + h > rgb.shape[0]:
            return FrameResult(skip="crop_outside_frame")
        rgb = np.ascontiguousarray(rgb[y : y + h, x : x + w])
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(f".{fmt}", bgr, params)
    if not ok:
        return FrameResult(skip="encode_error")
    fd, tmp_path = tempfile.mkstemp(prefix=".frame-", suffix=".tmp", dir=tmp_dir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf.tobytes())
    return FrameResult(
        skip=None,
        width=int(rgb.shape[1]),
        height=int(rgb.shape[0]),
        sha256=hashlib.sha256(rgb.tobytes()).hexdigest(),
        phash=dhash(rgb),
        tmp_path=tmp_path,
    )


def process_chunk(
    chunk: list[tuple[Any, ...]], crop: Crop | None, fmt: str, tmp_dir: str
) -> list[FrameResult]:
    """`process_frame` over a chunk (one pickling round trip per chunk, not per frame)."""
    return [process_frame(fields, crop, fmt, tmp_dir) for fields in chunk]


def init_worker() -> None:
    """One OpenCV thread per worker process: the processes are the parallelism."""
    cv2.setNumThreads(1)


def dhash(rgb: np.ndarray) -> int:
    """64-bit difference hash: sign of horizontal gradients of a 9x8 grey thumbnail.

    Robust to noise, compression and small brightness changes, so near-identical frames of a
    standing vehicle are a few bits apart while different scenes are ~32 bits apart.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()
