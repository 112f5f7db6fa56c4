"""Bench camera(s): publish 640x480 bgr8 at a fixed rate, stamped with the send time.

Waits until the node(s) under test and the recorder are subscribed, then sends `--count` frames
on absolute deadlines (no drift) and writes how many went out to `--out` (JSON).

`--rois N` also publishes, right after each image, a vision_msgs/Detection2DArray on
`detections` with the image's stamp and N sign-sized boxes (a detector's output).
`--cameras a,b,...` publishes on `a/image` (and `a/detections`), `b/image`, ... instead of
`image`; all cameras on the same deadline (a hardware-triggered rig), or spread over the frame
period with `--stagger`. `--flood M` gives the first camera's detector M boxes per frame
instead of `--rois` (a detector gone wrong beside well-behaved ones).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from tl_perception.images import image_fields

WIDTH, HEIGHT = 640, 480


def boxes(count: int) -> list[tuple[float, float, float, float]]:
    """`count` boxes (centre x, y, width, height) of 24-72 px on a grid over the frame."""
    cols = max(1, int(np.ceil(np.sqrt(count * WIDTH / HEIGHT))))
    rows = max(1, int(np.ceil(count / cols)))
    out = []
    for i in range(count):
        row, col = divmod(i, cols)
        size = 24.0 + 48.0 * ((i * 7) % 11) / 10.0
        cx = (col + 0.5) * WIDTH / cols
        cy = (row + 0.5) * HEIGHT / rows
        out.append((cx, cy, size, size * 1.1))
    return out


def detection_array(stamp: Any, frame_id: str, count: int) -> Any:
    from vision_msgs.msg import Detection2D, Detection2DArray

    msg = Detection2DArray()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    for i, (cx, cy, sx, sy) in enumerate(boxes(count)):
        det = Detection2D()
        det.header = msg.header
        det.id = f"b{i}"
        det.bbox.center.position.x, det.bbox.center.position.y = cx, cy
        det.bbox.size_x, det.bbox.size_y = sx, sy
        msg.detections.append(det)
    return msg


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--subscribers", type=int, default=2, help="per image topic")
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    parser.add_argument("--rois", type=int, default=0, help="boxes per frame on `detections`")
    parser.add_argument("--flood", type=int, default=0, help="the first camera's boxes instead")
    parser.add_argument("--cameras", default="", help="comma-separated camera names")
    parser.add_argument("--stagger", action="store_true", help="spread cameras over a period")
    parser.add_argument("--output", default="classification", help="the node's output topic")
    parser.add_argument("--ready", type=Path, help="touched when sending starts")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("bench_camera")
    names = [n for n in args.cameras.split(",") if n] or [""]
    prefixes = [f"{n}/" if n else "" for n in names]
    qos = QoSProfile(depth=10)  # cam2image's QoS
    image_pubs = [node.create_publisher(Image, f"{p}image", qos) for p in prefixes]
    det_pubs: list[Any] = []
    if args.rois:
        from vision_msgs.msg import Detection2DArray

        det_pubs = [
            node.create_publisher(Detection2DArray, f"{p}detections", qos) for p in prefixes
        ]
    rng = np.random.default_rng(0)
    frames = [
        image_fields(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "bgr8")
        for _ in range(4)
    ]
    counts = [args.flood or args.rois, *[args.rois] * (len(names) - 1)]
    templates = (
        [detection_array(Time(), n or "camera", c) for n, c in zip(names, counts, strict=True)]
        if det_pubs
        else []
    )
    outputs = [f"{p}{args.output}" for p in prefixes]
    deadline = time.monotonic() + args.ready_timeout
    while (
        any(pub.get_subscription_count() < args.subscribers for pub in image_pubs)
        or any(pub.get_subscription_count() < 1 for pub in det_pubs)
        or any(node.count_subscribers(t) < 1 or node.count_publishers(t) < 1 for t in outputs)
    ):
        if time.monotonic() > deadline:
            print("publisher: node or recorder never appeared", file=sys.stderr)
            return 1
        time.sleep(0.1)
    time.sleep(1.0)  # let discovery of the remaining endpoints settle
    period = 1.0 / args.rate
    offsets = [i * period / len(names) if args.stagger else 0.0 for i in range(len(names))]
    schedule = sorted(
        (i * period + off, cam) for i in range(args.count) for cam, off in enumerate(offsets)
    )
    if args.ready:
        args.ready.touch()
    start = time.monotonic()
    late = 0
    for n, (due_s, cam) in enumerate(schedule):
        wait = start + due_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif wait < -period:
            late += 1
        msg = Image(**frames[n % len(frames)])
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = names[cam] or "camera"
        image_pubs[cam].publish(msg)
        if det_pubs:
            dets = templates[cam]
            dets.header.stamp = msg.header.stamp
            for det in dets.detections:
                det.header.stamp = msg.header.stamp
            det_pubs[cam].publish(dets)
    elapsed = time.monotonic() - start
    time.sleep(0.5)
    report = {"sent": args.count * len(names), "per_camera": args.count, "seconds": elapsed}
    report["late"] = late
    args.out.write_text(json.dumps(report))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
