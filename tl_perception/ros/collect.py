"""Record what a running `classifier_node` publishes while a bag plays to it (the demo's live run).

The collector subscribes to the node's `classification` in whichever format the node publishes
(vision_msgs/Classification or its JSON-in-String twin: the type is read from the graph once the
node is up), to the camera topic (to time each image's arrival) and to `/diagnostics`. Latency is
measured here as image arrival -> classification arrival on one clock, because a replayed bag
carries its recorded header stamps, which are far in the past.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from tl_perception.errors import TlPerceptionError
from tl_perception.ros.messages import (
    classification_to_dict,
    classification_type,
    format_of_type,
)
from tl_perception.ros.play import PlayOptions, play

SEC = 1_000_000_000
CLASSIFIER_NODE_NAME = "classifier"


@dataclass(frozen=True)
class LiveRecord:
    """One classification: the image stamp it answers, its top-1 class and the latency."""

    stamp_ns: int
    top1: str
    score: float
    latency_ms: float | None  # image arrival -> classification arrival, at the collector


@dataclass
class LiveResult:
    records: list[LiveRecord]
    published: int  # images play sent
    images_seen: int  # images the collector received
    seconds: float  # first to last classification
    diagnostics: dict[str, str] = field(default_factory=dict)  # the node's last status values


class _Collector(Node):
    def __init__(self, image_topic: str, classification_topic: str) -> None:
        super().__init__("tl_perception_collect")
        self._lock = threading.Lock()
        self.output_format = ""  # set by subscribe_results, from the node's publisher
        self._classification_topic = classification_topic
        self._reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.image_arrival: dict[int, int] = {}
        self.records: list[LiveRecord] = []
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_at = 0.0
        self.last_result_at = 0.0
        image_type = CompressedImage if image_topic.endswith("/compressed") else Image
        self.create_subscription(image_type, image_topic, self._on_image, self._reliable)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def subscribe_results(self, type_name: str) -> None:
        """Subscribe `classification` with the type the node publishes (either format)."""
        self.output_format = format_of_type(type_name)
        self.create_subscription(
            classification_type(self.output_format),
            self._classification_topic,
            self._on_result,
            self._reliable,
        )

    def _on_image(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec * SEC + msg.header.stamp.nanosec
        with self._lock:
            self.image_arrival.setdefault(stamp, time.monotonic_ns())

    def _on_result(self, msg: Any) -> None:
        now = time.monotonic_ns()
        stamp_ns, top1, score = parse_classification(msg)
        with self._lock:
            arrived = self.image_arrival.get(stamp_ns)
            latency = None if arrived is None else (now - arrived) / 1e6
            self.records.append(LiveRecord(stamp_ns, top1, score, latency))
            self.last_result_at = time.monotonic()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "processed_frames" in values and CLASSIFIER_NODE_NAME in status.name:
                with self._lock:
                    self.diagnostics = values
                    self.diagnostics_at = time.monotonic()


def parse_classification(msg: Any) -> tuple[int, str, float]:
    """(image stamp ns, top-1 class, score) from vision_msgs/Classification or its JSON twin."""
    body = classification_to_dict(msg)
    stamp = body["header"]["stamp"]["sec"] * SEC + body["header"]["stamp"]["nanosec"]
    results = body.get("results") or []
    if not results:
        return stamp, "", 0.0
    best = max(results, key=lambda h: h["score"])
    return stamp, str(best["class_id"]), float(best["score"])


def run_live(
    bag: Path,
    *,
    bag_topic: str,
    image_topic: str,
    classification_topic: str,
    node_alive: Callable[[], bool] = lambda: True,
    ready_timeout_s: float = 180.0,
    drain_s: float = 3.0,
    log: Callable[[str], None] = print,
) -> LiveResult:
    """Wait for the classifier, play `bag_topic` of `bag` to it on `image_topic`, collect results.

    `node_alive` lets the caller abort when the node's process has exited.
    """
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    collector = _Collector(image_topic, classification_topic)
    executor = SingleThreadedExecutor()
    executor.add_node(collector)
    spinner = threading.Thread(target=executor.spin, name="collect", daemon=True)
    spinner.start()
    try:
        _wait_ready(collector, image_topic, classification_topic, node_alive, ready_timeout_s)
        log(f"classifier ready on {image_topic}; playing {bag}")
        options = PlayOptions(
            bag=bag,
            topics=(bag_topic,),
            remap={bag_topic: image_topic},
            qos="reliable",
            wait_subscribers=2,  # the classifier and this collector
            wait_timeout_s=10.0,
        )
        published = play(options)
        last_count, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < drain_s:
            time.sleep(0.1)
            with collector._lock:
                count = len(collector.records)
            if count != last_count:
                last_count, quiet_since = count, time.monotonic()
        settled = time.monotonic()
        deadline = settled + 3.0  # one more diagnostics period, so final counts are included
        while time.monotonic() < deadline and collector.diagnostics_at < settled:
            time.sleep(0.1)
        with collector._lock:
            records = sorted(collector.records, key=lambda r: r.stamp_ns)
            arrivals = sorted(collector.image_arrival.values())
            diagnostics = dict(collector.diagnostics)
        seconds = (arrivals[-1] - arrivals[0]) / 1e9 if len(arrivals) > 1 else 0.0
        return LiveResult(records, published, len(arrivals), seconds, diagnostics)
    finally:
        executor.shutdown(timeout_sec=1.0)
        collector.destroy_node()
        if own_context:
            rclpy.try_shutdown()


def _wait_ready(
    collector: _Collector,
    image_topic: str,
    classification_topic: str,
    node_alive: Callable[[], bool],
    timeout_s: float,
) -> None:
    """The node subscribes to images only once its model is loaded: that is 'ready'.

    Then the collector subscribes to its results with the type the node's publisher has.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not node_alive():
            raise TlPerceptionError("classifier_node exited before it was ready; see its log")
        subs = collector.get_subscriptions_info_by_topic(image_topic)
        pubs = collector.get_publishers_info_by_topic(classification_topic)
        if any(s.node_name == CLASSIFIER_NODE_NAME for s in subs) and pubs:
            ours = [p for p in pubs if p.node_name == CLASSIFIER_NODE_NAME] or pubs
            collector.subscribe_results(ours[0].topic_type)
            time.sleep(0.5)  # let discovery settle on both ends
            return
        time.sleep(0.2)
    raise TlPerceptionError(
        f"classifier_node did not subscribe to {image_topic!r} within {timeout_s:.0f} s; "
        "see its log"
    )
