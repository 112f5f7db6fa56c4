"""Bench camera: publish 640x480 bgr8 at a fixed rate, stamped with the send time.

Waits until the node under test and the recorder are subscribed, then sends `--count` frames on
absolute deadlines (no drift) and writes how many went out to `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from tl_perception.images import image_fields


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("bench_camera")
    publisher = node.create_publisher(Image, "image", QoSProfile(depth=10))  # cam2image's QoS
    rng = np.random.default_rng(0)
    frames = [
        image_fields(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "bgr8") for _ in range(4)
    ]
    deadline = time.monotonic() + args.ready_timeout
    while (
        publisher.get_subscription_count() < args.subscribers
        or node.count_subscribers("classification") < 1
        or node.count_publishers("classification") < 1
    ):
        if time.monotonic() > deadline:
            print("publisher: node or recorder never appeared", file=sys.stderr)
            return 1
        time.sleep(0.1)
    time.sleep(1.0)  # let discovery of the remaining endpoints settle
    period = 1.0 / args.rate
    start = time.monotonic()
    late = 0
    for i in range(args.count):
        due = start + i * period
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif wait < -period:
            late += 1
        msg = Image(**frames[i % len(frames)])
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = "camera"
        publisher.publish(msg)
    elapsed = time.monotonic() - start
    time.sleep(0.5)
    args.out.write_text(json.dumps({"sent": args.count, "seconds": elapsed, "late": late}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
