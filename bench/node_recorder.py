"""Bench recorder: timestamp every image and every result, until SIGINT.

Per frame stamp it records when the image arrived here and when its result arrived, so
`result - image` approximates the node's receive -> publish time (plus one small message hop),
and `result - stamp` is the end-to-end latency. Images and vision_msgs results are taken raw
(serialized) and only their header stamp is read from the CDR bytes: turning a 32-detection
Detection2DArray into Python objects takes ~1 ms, which would be counted as the node's.
Results are `classification` (either format,
vision_msgs/Classification or the JSON String) or, in ROI mode, `classified_detections`
(Detection2DArray or its JSON twin): the recorder subscribes whichever the graph shows a
publisher for, with the type the graph reports. `--cameras a,b` records `a/image` and
`a/classification` ... per camera.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from tl_perception.ros.messages import (
    DETECTION_TYPE_NAMES,
    classification_to_dict,
    classification_type,
    detections_to_dict,
    detections_type,
    format_of_type,
)

OUTPUTS = ("classification", "classified_detections")


def stamp_ns(body: dict[str, Any]) -> int:
    stamp = body["header"]["stamp"]
    return int(stamp["sec"]) * 10**9 + int(stamp["nanosec"])


def cdr_header(data: bytes) -> tuple[int, int]:
    """(stamp ns, offset after the header) of a serialized message that starts with a
    std_msgs/Header (CDR: 4-byte encapsulation, int32 sec, uint32 nanosec, string frame_id)."""
    endian = "<" if data[1] == 1 else ">"
    sec, nanosec, length = struct.unpack_from(f"{endian}iII", data, 4)
    end = 16 + length - 4  # payload offset (after the encapsulation) of the string's end
    return sec * 10**9 + nanosec, 4 + ((end + 3) & ~3)


def cdr_sequence_length(data: bytes, offset: int) -> int:
    endian = "<" if data[1] == 1 else ">"
    return struct.unpack_from(f"{endian}I", data, offset)[0]


class Camera:
    """One camera's images and results."""

    def __init__(self, node: Any, prefix: str) -> None:
        self.prefix = prefix
        self.images: dict[int, int] = {}
        self.results: dict[int, int] = {}
        self.rois: dict[int, int] = {}  # stamp -> detections in the result (ROI mode)
        self.subscribed: set[str] = set()
        node.create_subscription(
            Image, f"{prefix}image", self.on_image, QoSProfile(depth=10), raw=True
        )

    def on_image(self, data: bytes) -> None:
        now = time.time_ns()
        self.images[cdr_header(data)[0]] = now

    def result_callback(self, parse: Callable[[Any], dict[str, Any]]) -> Callable[[Any], None]:
        def on_result(msg: Any) -> None:
            now = time.time_ns()
            body = parse(msg)
            self.results[stamp_ns(body)] = now
            if "detections" in body:
                self.rois[stamp_ns(body)] = len(body["detections"])

        return on_result

    def subscribe_outputs(self, node: Any) -> None:
        for output in OUTPUTS:
            topic = f"{self.prefix}{output}"
            publishers = node.get_publishers_info_by_topic(topic)
            if output in self.subscribed or not publishers:
                continue
            type_name = publishers[0].topic_type
            if output == "classification":
                msg_type, parse = (
                    classification_type(format_of_type(type_name)),
                    classification_to_dict,
                )
            else:
                fmt = "vision_msgs" if type_name == DETECTION_TYPE_NAMES["vision_msgs"] else "json"
                msg_type, parse = detections_type(fmt), detections_to_dict
            node.create_subscription(
                msg_type, topic, self.result_callback(parse), QoSProfile(depth=100)
            )
            self.subscribed.add(output)

    def dump(self) -> dict[str, Any]:
        return {
            "images": {str(k): v for k, v in self.images.items()},
            "results": {str(k): v for k, v in self.results.items()},
            "rois": {str(k): v for k, v in self.rois.items()},
        }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cameras", default="", help="comma-separated camera names")
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("bench_recorder")
    names = [n for n in args.cameras.split(",") if n]
    cameras = {name: Camera(node, f"{name}/" if name else "") for name in names or [""]}
    diagnostics: dict[str, dict[str, str]] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if "classifier" in status.name:
                diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=10))
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    last_check = 0.0
    while not stop:
        if time.monotonic() - last_check > 0.2:
            for camera in cameras.values():
                camera.subscribe_outputs(node)
            last_check = time.monotonic()
        rclpy.spin_once(node, timeout_sec=0.05)
    report: dict[str, Any] = {"diagnostics": diagnostics}
    if names:
        report["cameras"] = {name: camera.dump() for name, camera in cameras.items()}
    else:
        report.update(cameras[""].dump())
    args.out.write_text(json.dumps(report))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
