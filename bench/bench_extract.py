"""Extraction throughput: `tl-perception extract --workers N` vs a plain single-process loop.

Writes an MCAP bag of 640x480 CompressedImage (JPEG) frames to a temp dir, then times
  baseline: rosbags read -> rosbags-image decode -> cv2.imwrite (PNG), one process;
  extract:  tl-perception extract --workers N (PNG), including its planning pass.
Prints frames/s of both and the ratio. Usage: bench/bench_extract.py [--frames 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from tl_perception.bag.writer import Msg, write_bag


def make_bag(path: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (640, 480))
    msgs = []
    for i in range(count):
        frame = np.roll(base, i * 3, axis=1)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        msgs.append(
            Msg(
                "/camera/image/compressed",
                1_700_000_000 * 10**9 + i * 33_000_000,
                "compressed",
                buf.tobytes(),
            )
        )
    return write_bag(path, "mcap", msgs)


def baseline(bag: Path, out: Path) -> int:
    from rosbags.highlevel import AnyReader
    from rosbags.image import message_to_cvimage

    out.mkdir()
    count = 0
    with AnyReader([bag]) as reader:
        for conn, t_ns, raw in reader.messages(connections=reader.connections):
            img = message_to_cvimage(reader.deserialize(raw, conn.msgtype), "bgr8")
            cv2.imwrite(str(out / f"{t_ns}.png"), img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        tmp_path = Path(tmp)
        bag = make_bag(tmp_path / "bench", args.frames)
        started = time.perf_counter()
        count = baseline(bag, tmp_path / "baseline")
        base_s = time.perf_counter() - started
        cmd = [
            sys.executable,
            "-m",
            "tl_perception.cli",
            "extract",
            str(bag),
            "--topic",
            "/camera/image/compressed",
            "--label",
            "scene",
            "--out",
            str(tmp_path / "ds"),
            "--workers",
            str(args.workers),
            "--no-progress",
        ]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        ext_s = time.perf_counter() - started
        written = len(list((tmp_path / "ds" / "train" / "scene").iterdir()))
        assert written == count == args.frames, (written, count)
        print(f"frames: {count} (640x480 JPEG -> PNG)")
        print(f"baseline single-process loop: {count / base_s:7.1f} frames/s ({base_s:.1f} s)")
        print(f"extract --workers {args.workers}: {count / ext_s:7.1f} frames/s ({ext_s:.1f} s)")
        print(f"ratio: {base_s / ext_s:.2f}x")


if __name__ == "__main__":
    main()
