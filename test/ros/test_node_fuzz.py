"""Node fuzz: a seeded storm of malformed Image and CompressedImage messages.

Malformed frames (random encodings, dimensions, steps, truncated and oversize data, depth
formats, corrupt and truncated JPEG/PNG, header bombs declaring 60000x60000 pixels) are mixed
with good frames, about one in four, and sent in three phases:

1. paced, graph-free: one message at a time through a real camera's callback and one pipeline
   cycle with the real tiny colour model (pipeline_harness.py), so each message's fate is known
   exactly (the camera's counters move by one): every frame that cannot be decoded honestly is
   counted bad and never answered, every good frame is answered (with its colour where the frame
   keeps colour);
2. flood, over real DDS to a real node (in this process, on its own rclpy Context): the same mix
   as fast as the publisher goes, to shake the latest-frame-wins hand-over; no bad frame is
   answered, and /diagnostics balances its books (received = processed + dropped + bad) with the
   bad frames counted and no inference error;
3. after the storm, over DDS: good frames one at a time, every one answered.

Seeded (SEED) and bounded by time (PHASE_S).
"""

from __future__ import annotations

import array
import itertools
import os
import random
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from tl_perception.images import ENCODABLE, image_fields, rgb_to_compressed

from support.helpers import COLORS, color_image
from support.node_harness import RAW_LABELS, Probe, node_in_process, probe, wait_until
from support.pipeline_harness import Rig, rig

SEED = 20_260_101
PACED_MESSAGES = 260
PHASE_S = 6.0  # the flood's time bound
AFTER_STORM = 12

GOOD, BAD, EITHER = "good", "bad", "either"
#: Encodings whose decoded pixels keep the frame's colour (mono does not; Bayer keeps it roughly).
COLOUR_KEEPING = {"rgb8", "bgr8", "rgba8", "bgra8", "yuv422", "uyvy", "yuyv", "yuv422_yuy2"}
DEPTH_FORMATS = ("32FC1", "16UC1", "64FC1", "16SC1", "32SC1", "8SC1", "8UC1", "8UC4")


@dataclass
class Case:
    """One fuzz message and what an honest node must do with it."""

    msg: Any
    expect: str  # GOOD: answered; BAD: counted bad, never answered; EITHER: one or the other
    why: str
    colour: str | None = None  # GOOD frames whose answer must be this class


def _header(msg: Any, sec: int, rng: random.Random) -> Any:
    msg.header.stamp.sec = sec  # unique per message: results are matched by it
    msg.header.stamp.nanosec = rng.choice([0, 1234, 999_999_999, 2**32 - 1])
    msg.header.frame_id = rng.choice(["camera", "", "κάμερα/左", "x" * 300])
    return msg


def _raw(fields: dict[str, Any]) -> Image:
    msg = Image(**{k: v for k, v in fields.items() if k != "data"})
    msg.data = array.array("B", fields["data"])
    return msg


def _padded(fields: dict[str, Any], pad: int) -> dict[str, Any]:
    """The same image with `pad` extra bytes at the end of every row (step > width * bpp)."""
    if pad == 0:
        return fields
    rows = np.frombuffer(fields["data"], np.uint8).reshape(fields["height"], fields["step"])
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return {**fields, "step": fields["step"] + pad, "data": padded.tobytes()}


def good_raw(rng: random.Random, sec: int) -> Case:
    encoding = rng.choice(ENCODABLE)
    colour = rng.choice(list(COLORS))
    height, width = rng.randint(2, 72), rng.randint(1, 96)
    if encoding.startswith(("bayer", "yuv", "uyvy", "yuyv")):
        height, width = height + height % 2, width + width % 2
    fields = _padded(
        image_fields(color_image(colour, (height, width), seed=sec), encoding), rng.randint(0, 7)
    )
    msg = _raw(fields)
    msg.is_bigendian = rng.randint(0, 1) if encoding == "mono16" else 0
    keeps = encoding in COLOUR_KEEPING and min(height, width) >= 8
    return Case(
        _header(msg, sec, rng), GOOD, f"good {encoding} {width}x{height}", colour if keeps else None
    )


def bad_raw(rng: random.Random, sec: int) -> Case:
    base = good_raw(rng, sec)
    msg: Image = base.msg
    row = len(msg.data) // msg.height if msg.height else 0
    kind = rng.choice(
        [
            "encoding",
            "depth",
            "zero",
            "step_small",
            "truncated",
            "oversize",
            "huge_declared",
            "empty_data",
        ]
    )
    if kind == "encoding":
        msg.encoding = rng.choice(["rgb42", "", "RGB8", "ßß", "8UC5", "bgr8 ", "x" * 200])
    elif kind == "depth":
        msg.encoding = rng.choice(DEPTH_FORMATS)
        channels = 4 if msg.encoding == "8UC4" else 1
        size = int(re.match(r"\d+", msg.encoding).group()) // 8
        msg.step = msg.width * size * channels
        msg.data = array.array("B", bytes(msg.step * msg.height))
    elif kind == "zero":
        if rng.random() < 0.5:
            msg.height = 0
        else:
            msg.width = 0
    elif kind == "step_small":
        msg.step = rng.randint(0, max(0, row - 1)) if row > 1 else 0
        if msg.step >= row:
            msg.width = msg.width * 4 + 4  # rows then need far more than step bytes
    elif kind == "truncated":
        msg.data = msg.data[: rng.randint(0, len(msg.data) - 1)]
    elif kind == "oversize":
        msg.data.extend(rng.randbytes(rng.randint(1, 3 * len(msg.data) + 1)))
    elif kind == "huge_declared":
        msg.height = msg.width = 60_000
        msg.step = 60_000 * 3
    else:
        msg.data = array.array("B")
    return Case(msg, BAD, f"{kind} ({base.why})")


def _with_crc_fixed(png: bytearray, chunk_at: int, length: int) -> bytearray:
    """Recompute one PNG chunk's CRC, so a forged header is a *valid* header."""
    body = bytes(png[chunk_at + 4 : chunk_at + 8 + length])
    png[chunk_at + 8 + length : chunk_at + 12 + length] = struct.pack(">I", zlib.crc32(body))
    return png


def bomb(fmt: str, side: int) -> bytes:
    """A small, well-formed JPEG/PNG whose header declares side x side pixels."""
    data = bytearray(rgb_to_compressed(color_image("red", (16, 16)), fmt))
    if fmt == "jpeg":
        at = data.find(b"\xff\xc0")
        data[at + 5 : at + 9] = struct.pack(">HH", side, side)
        return bytes(data)
    at = data.find(b"IHDR") - 4
    data[at + 8 : at + 16] = struct.pack(">II", side, side)
    return bytes(_with_crc_fixed(data, at, 13))


def good_compressed(rng: random.Random, sec: int) -> Case:
    fmt = rng.choice(["jpeg", "png"])
    colour = rng.choice(list(COLORS))
    size = (rng.randint(8, 90), rng.randint(8, 120))
    msg = CompressedImage(format=rng.choice([fmt, f"bgr8; {fmt} compressed bgr8"]))
    msg.data = array.array("B", rgb_to_compressed(color_image(colour, size, seed=sec), fmt))
    return Case(_header(msg, sec, rng), GOOD, f"good {fmt} {size}", colour)


def bad_compressed(rng: random.Random, sec: int) -> Case:
    base = good_compressed(rng, sec)
    msg: CompressedImage = base.msg
    data = bytes(msg.data)
    kind = rng.choice(
        ["truncated", "garbage", "empty", "bomb", "bomb_under_cv_limit", "depth", "flipped"]
    )
    expect = BAD
    if kind == "truncated":
        data = data[: rng.randint(0, len(data) - 3)]
        if data.endswith(b"\xff\xd9"):
            data = data[:-1]  # a cut that happens to end in JPEG's end marker is not truncated
    elif kind == "garbage":
        data = rng.choice([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b""]) + rng.randbytes(
            rng.randint(1, 400)
        )
    elif kind == "empty":
        data = b""
    elif kind == "bomb":
        data = bomb(rng.choice(["jpeg", "png"]), 60_000)
    elif kind == "bomb_under_cv_limit":  # OpenCV itself would decode this one: 1.2 GB, 7 s
        data = bomb("jpeg", 20_000)
    elif kind == "depth":  # image_transport's compressedDepth: a 12-byte header, then PNG
        msg.format = "16UC1; compressedDepth png"
        depth = rgb_to_compressed(color_image("blue", (16, 16)), "png")
        data = struct.pack("<iff", 0, 0.0, 0.0) + depth
    else:  # a flipped byte may leave a decodable picture: JPEG/PNG bodies carry no checksum
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        data, expect = bytes(flipped), EITHER
    msg.data = array.array("B", data)
    return Case(msg, expect, f"{kind} ({base.why})")


def storm(good: Callable[..., Case], bad: Callable[..., Case], seed: int) -> Iterator[Case]:
    """Endless seeded mix: about one good frame in four."""
    rng = random.Random(seed)
    sec = 10_000
    while True:
        sec += 1
        yield good(rng, sec) if rng.random() < 0.25 else bad(rng, sec)


# ------------------------------------------------------------------ 1. paced, graph-free
@pytest.fixture(scope="module")
def classifier(color_bundle: Path) -> Any:
    from tl_perception.inference import Classifier

    return Classifier(color_bundle)


def judge(r: Rig, case: Case) -> str:
    """One message through the camera's callback and one worker cycle: its exact fate."""
    received, processed, bad, _dropped, errors = r.books()
    r.camera.on_image(case.msg)
    r.cycle()
    now = r.books()
    assert now[0] == received + 1 and sum(now[1:4]) + now[4] == now[0], now
    if now[4] > errors:
        return "error"
    return GOOD if now[1] > processed else BAD if now[2] > bad else "dropped"


def run_paced(r: Rig, cases: Iterator[Case]) -> None:
    """Every message's fate known exactly: each frame that cannot be decoded honestly is
    counted bad and never answered, each good frame is answered (with its colour where the frame
    keeps colour)."""
    judged = [(case, judge(r, case)) for case in itertools.islice(cases, PACED_MESSAGES)]
    wrong = [f"{c.why}: {fate}" for c, fate in judged if c.expect not in (EITHER, fate)]
    assert not wrong, "\n".join(wrong[:20])
    for case, fate in judged:
        result = r.camera.body_for(case.msg.header.stamp.sec)
        if fate == GOOD:
            assert result is not None, f"no classification published for {case.why}"
            if case.colour is not None:
                assert result["results"][0]["class_id"] == case.colour, (case.why, result)
        else:
            assert result is None, f"answered a frame it could not decode: {case.why}"
    assert sum(fate == BAD for _, fate in judged) > PACED_MESSAGES // 2
    assert r.pipeline.errors == 0


def test_raw_image_messages_each_meet_their_fate(classifier: Any) -> None:
    r = rig(classifier, **RAW_LABELS, publish_overlay=True)
    r.camera.overlay_subscribed = True
    run_paced(r, storm(good_raw, bad_raw, SEED))
    assert r.camera.overlays, "overlays were enabled and subscribed"


def test_compressed_image_messages_each_meet_their_fate(classifier: Any) -> None:
    run_paced(rig(classifier, **RAW_LABELS), storm(good_compressed, bad_compressed, SEED + 1))


# ------------------------------------------------------------------ 2. and 3. over DDS
def settled(p: Probe, timeout: float = 30.0) -> dict[str, str]:
    """The node's status once two in a row agree that every frame received was dealt with
    (the flood delivered, DDS retransmissions included, and worked off)."""
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while time.monotonic() < deadline:
        diag = p.next_diagnostics(timeout=5.0)
        books = [int(diag[f"{k}_frames"]) for k in ("received", "processed", "dropped", "bad")]
        if books[0] == sum(books[1:]) and last.get("received_frames") == diag["received_frames"]:
            return diag
        last = diag
    raise AssertionError(f"the node never went quiet after the flood: {last}")


def run_storm(p: Probe, pub: Any, cases: Iterator[Case]) -> None:
    p.wait_for_subscriber(pub)
    time.sleep(1.5)  # let qos:=auto settle on the publisher's QoS before the flood
    flood: list[Case] = []  # the mix as fast as the publisher goes: latest frame wins
    deadline = time.monotonic() + PHASE_S
    while time.monotonic() < deadline:
        case = next(cases)
        pub.publish(case.msg)
        flood.append(case)
    after = []  # after the storm: good frames one at a time, every one answered
    for case in itertools.islice((c for c in cases if c.expect == GOOD), AFTER_STORM):
        pub.publish(case.msg)
        after.append(wait_until(lambda c=case: p.result_for(c.msg.header.stamp.sec), 10.0))
        if case.colour is not None:
            assert after[-1]["results"][0]["class_id"] == case.colour, (case.why, after[-1])
    for case in flood:
        if case.expect == BAD:
            assert p.result_for(case.msg.header.stamp.sec) is None, f"answered {case.why}"
    diag = settled(p)
    assert diag["inference_errors"] == "0", diag
    # The flood outruns DDS (keep-last history): only what arrived can be counted.
    assert 0 < int(diag["received_frames"]) - AFTER_STORM <= len(flood)
    assert int(diag["processed_frames"]) >= AFTER_STORM
    assert int(diag["bad_frames"]) > 0  # the flood's bad frames are counted, not answered


@pytest.mark.slow
def test_raw_image_storm(color_bundle: Path) -> None:
    overrides = {
        **RAW_LABELS,
        "model_path": str(color_bundle),
        "output_format": "json",
        "publish_overlay": True,
    }
    with (
        node_in_process(overrides, namespace="/fuzzraw"),
        probe(namespace="/fuzzraw", output_format="json") as p,
    ):
        run_storm(p, p.image_pub, storm(good_raw, bad_raw, SEED))
        assert p.overlays, "overlays were enabled and subscribed"


@pytest.mark.slow
def test_compressed_image_storm(color_bundle: Path) -> None:
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "image_transport": "compressed"}
    with (
        node_in_process(overrides, namespace="/fuzzjpg"),
        probe(namespace="/fuzzjpg") as p,
    ):
        run_storm(p, p.compressed_pub, storm(good_compressed, bad_compressed, SEED + 1))


#: Run in a child whose OpenCV refuses images over 4096 pixels (its own limit, read at load):
#: prints the size OpenCV's decoder read from the header, or what it refused.
_OPENCV_READS = """
import sys, cv2, numpy as np
data = np.frombuffer(sys.stdin.buffer.read(), np.uint8)
try:
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    print("decoded", None if image is None else image.shape)
except cv2.error as err:
    print("refused", "validateInputImageSize" in str(err))
"""


def opencv_reads(data: bytes) -> str:
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "4096"}
    command = [sys.executable, "-c", _OPENCV_READS]
    done = subprocess.run(
        command, input=data, capture_output=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


@pytest.mark.parametrize(("fmt", "side"), [("jpeg", 60_000), ("png", 60_000), ("jpeg", 20_000)])
def test_header_bombs_are_well_formed_headers(fmt: str, side: int) -> None:
    """The fuzz's bombs must be refused for their size, not for a broken header: OpenCV's own
    decoder reads the bomb's header (and refuses it only at its pixel limit, after readHeader
    succeeded), and the very same bytes declaring the true 16 x 16 decode to the red image."""
    from tl_perception.errors import ImageDecodeError
    from tl_perception.images import compressed_to_rgb, image_header

    data = bomb(fmt, side)
    if fmt == "png":
        assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    assert image_header(data)[1:] == (side, side)
    with pytest.raises(ImageDecodeError, match=f"{side}x{side}"):
        compressed_to_rgb(data, fmt)
    assert opencv_reads(data) == "refused True"  # a well-formed header over OpenCV's limit
    honest = bomb(fmt, 16)  # the bomb's bytes with the size the data really has
    assert opencv_reads(honest) == "decoded (16, 16, 3)"
    red = compressed_to_rgb(honest, fmt)
    assert red.shape == (16, 16, 3) and int(red[..., 0].min()) > 150 > int(red[..., 2].max())
