"""Per-frame work done in worker processes: decode, crop (a fixed region, or each box and the
negatives of a region-of-interest run), hash, encode.

The main process reads the bag and sends plain tuples (no rosbags objects, which do not pickle),
so this module is all a worker imports. Decoding goes through `tl_perception.images`, the one
place that knows ROS encodings.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from tl_perception.bag.negatives import negative_boxes
from tl_perception.crop import Box, CropPolicy, crop_batch, crop_roi
from tl_perception.errors import ImageDecodeError
from tl_perception.images import message_to_rgb

#: (x, y, w, h) in pixels
Crop = tuple[int, int, int, int]


@dataclass(frozen=True)
class Work:
    """How every frame of a run is processed; sent once per chunk of frames."""

    fmt: str
    tmp_dir: str  # where encoded images go under temp names (the dataset directory)
    crop: Crop | None = None  # `--crop`: one fixed region of every frame
    policy: CropPolicy | None = None  # the crop policy of a region-of-interest run


@dataclass(frozen=True)
class RoiJob:
    """The boxes of one frame to crop, and the negatives to add, in a region-of-interest run."""

    boxes: tuple[Box, ...]  # to crop, in this order
    avoid: tuple[Box, ...]  # every box of the frame, labelled or not: negatives keep clear
    negatives: int = 0
    seed: int = 0  # `negatives.negative_seed` of the frame


@dataclass(frozen=True)
class FrameResult:
    """One image a worker made (or why not): `kind` "frame", "box" or "negative".

    A region-of-interest job returns one "box" result per box, in order, then one "negative"
    result per negative asked for; a frame that does not decode returns one "frame" result.
    """

    skip: str | None
    width: int = 0
    height: int = 0
    sha256: str = ""
    phash: int = 0
    tmp_path: str = ""  # the encoded image, written by the worker under a hidden temp name
    kind: str = "frame"
    box: Box | None = None  # the negative's box


def message_fields(msg: Any, kind: str) -> tuple[Any, ...]:
    """A picklable copy of what decoding needs from an Image ("raw") or CompressedImage.

    `kind` comes from the topic's message type, not from the fields' values: a raw Image with
    an empty `encoding` is a bad raw frame, not a CompressedImage.
    """
    if kind == "raw":
        return ("raw", msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
    return ("compressed", msg.format, msg.data)


def decode_fields(fields: tuple[Any, ...]) -> np.ndarray:
    """The RGB pixels of `message_fields` (ImageDecodeError if they are not an image)."""
    if fields[0] == "raw":
        _, encoding, height, width, step, data, big = fields
        msg = SimpleNamespace(
            encoding=encoding, height=height, width=width, step=step, data=data, is_bigendian=big
        )
    else:
        msg = SimpleNamespace(format=fields[1], data=fields[2])
    return message_to_rgb(msg)


def process_frame(
    fields: tuple[Any, ...], work: Work, roi: RoiJob | None = None
) -> list[FrameResult]:
    """Decode one frame; write it (or its `--crop`, or each box's crop and its negatives) to
    temp files in `work.tmp_dir`.

    The main process later renames the temp files into place or deletes them (dedup), so encoded
    images never travel back through a pipe. Bad frames and rejected boxes return a skip reason
    (for boxes one of `crop.REASONS`), never raise.
    """
    try:
        rgb = decode_fields(fields)
    except ImageDecodeError:
        return [FrameResult(skip="decode_error")]
    if roi is not None:
        assert work.policy is not None
        return _crops(rgb, roi, work, work.policy)
    if work.crop is not None:
        x, y, w, h = work.crop
        if x + w > rgb.shape[1] or y + h > rgb.shape[0]:
            return [FrameResult(skip="crop_outside_frame")]
        rgb = np.ascontiguousarray(rgb[y : y + h, x : x + w])
    return [_encoded(rgb, work, "frame")]


def _crops(rgb: np.ndarray, roi: RoiJob, work: Work, policy: CropPolicy) -> list[FrameResult]:
    """Each box's crop (by the one crop function), then the frame's negatives."""
    batch = crop_batch(rgb, roi.boxes, policy)
    by_index = {i: FrameResult(skip=reason, kind="box") for i, reason in batch.rejected}
    for index, crop in zip(batch.kept, batch.crops, strict=True):
        by_index[index] = _encoded(crop, work, "box")
    out = [by_index[i] for i in range(len(roi.boxes))]
    found = negative_boxes(rgb.shape[:2], roi.avoid, policy, roi.negatives, roi.seed)
    for box in found:
        out.append(replace(_encoded(crop_roi(rgb, box, policy), work, "negative"), box=box))
    missing = roi.negatives - len(found)
    out += [FrameResult(skip="negative_no_room", kind="negative")] * missing
    return out


def _encoded(rgb: np.ndarray, work: Work, kind: str) -> FrameResult:
    """Hash and encode `rgb`, written to a hidden temp file."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    fmt = work.fmt
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(f".{fmt}", bgr, params)
    if not ok:
        return FrameResult(skip="encode_error", kind=kind)
    fd, tmp_path = tempfile.mkstemp(prefix=".frame-", suffix=".tmp", dir=work.tmp_dir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(buf.tobytes())
    return FrameResult(
        skip=None,
        width=int(rgb.shape[1]),
        height=int(rgb.shape[0]),
        sha256=hashlib.sha256(rgb.tobytes()).hexdigest(),
        phash=dhash(rgb),
        tmp_path=tmp_path,
        kind=kind,
    )


def process_chunk(
    chunk: list[tuple[tuple[Any, ...], RoiJob | None]], work: Work
) -> list[list[FrameResult]]:
    """`process_frame` over a chunk (one pickling round trip per chunk, not per frame)."""
    return [process_frame(fields, work, roi) for fields, roi in chunk]


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
