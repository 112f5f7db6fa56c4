"""Bench recorder: timestamp every image and every classification, until SIGINT.

Per frame stamp it records when the image arrived here and when its classification arrived, so
`classification - image` approximates the node's receive -> publish time (plus one small
message hop), and `classification - stamp` is the end-to-end latency. The node under test may
publish either format (vision_msgs/Classification or the JSON String): the recorder subscribes
`classification` with the type the graph reports once a publisher appears.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from tl_perception.ros.messages import classification_to_dict, classification_type, format_of_type


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("bench_recorder")
    image_ns: dict[int, int] = {}
    result_ns: dict[int, int] = {}
    diagnostics: dict[str, str] = {}

    def on_image(msg: Image) -> None:
        image_ns[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = time.time_ns()

    def on_result(msg: object) -> None:
        now = time.time_ns()
        stamp = classification_to_dict(msg)["header"]["stamp"]
        result_ns[stamp["sec"] * 10**9 + stamp["nanosec"]] = now

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("classifier"):
                diagnostics.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(Image, "image", on_image, QoSProfile(depth=10))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=10))
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    subscribed = False
    while not stop:
        if not subscribed:
            publishers = node.get_publishers_info_by_topic("classification")
            if publishers:
                result_type = classification_type(format_of_type(publishers[0].topic_type))
                node.create_subscription(
                    result_type, "classification", on_result, QoSProfile(depth=100)
                )
                subscribed = True
        rclpy.spin_once(node, timeout_sec=0.05)
    args.out.write_text(
        json.dumps(
            {
                "images": {str(k): v for k, v in image_ns.items()},
                "results": {str(k): v for k, v in result_ns.items()},
                "diagnostics": diagnostics,
            }
        )
    )
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
