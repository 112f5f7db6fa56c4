"""Record what a running `classifier_node` publishes while a bag plays to it (the demo's live run).

Two kinds of run, one collector:

- whole frames: the node's `classification` (vision_msgs/Classification or its JSON twin);
- regions of interest (`roi_source:=detections`): the bag's images *and* its detector boxes are
  played, and the node's `classified_detections` (vision_msgs/Detection2DArray or its JSON twin)
  is recorded, one `RoiLiveRecord` per message with every detection's id and top-1 class.

The result type is read from the graph once the node is up, so either output format works. The
collector also subscribes to the played inputs (to time each arrival) and to `/diagnostics`.
Latency is measured here, on one clock, from arrival to answer, because a replayed bag carries
its recorded header stamps, which are far in the past. For ROIs it runs from the later of the
image and its detections (the node cannot start before both are there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
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
    detections_format_of_type,
    detections_to_dict,
    detections_type,
    format_of_type,
)
from tl_perception.ros.names import NODE_NAME
from tl_perception.ros.play import PlayOptions, play
from tl_perception.stamps import SEC, stamp_to_ns

Log = Callable[[str], None]


@dataclass(frozen=True)
class LiveRecord:
    """One classification: the image stamp it answers, its top-1 class and the latency."""

    stamp_ns: int
    top1: str
    score: float
    latency_ms: float | None  # image arrival -> classification arrival, at the collector


@dataclass(frozen=True)
class RoiAnswer:
    """One detection of a `classified_detections` message: its id and the best hypothesis."""

    id: str
    top1: str
    score: float


@dataclass(frozen=True)
class RoiLiveRecord:
    """One `classified_detections` message: the image stamp it answers and its detections."""

    stamp_ns: int
    detections: tuple[RoiAnswer, ...]
    latency_ms: float | None  # later of image and detections arrival -> answer arrival
    image_latency_ms: float | None  # image arrival -> answer arrival


@dataclass(frozen=True)
class LivePlan:
    """What to play to the node and where it answers.

    `play` maps bag topics to the live topics they are published on; `image_topic` (and, for
    ROIs, `detections_topic`) is what the node subscribes, so the collector waits for the node
    there and times arrivals; `results_topic` is `classification` or `classified_detections`.
    """

    bag: Path
    play: Mapping[str, str]
    image_topic: str
    results_topic: str
    detections_topic: str | None = None
    ready_timeout_s: float = 180.0
    drain_s: float = 3.0

    @property
    def rois(self) -> bool:
        return self.detections_topic is not None


@dataclass
class LiveResult:
    records: list[LiveRecord]  # whole-frame classifications (empty for ROIs)
    published: int  # messages play sent (images, and detections when played)
    images_seen: int  # images the collector received
    seconds: float  # first to last image arrival
    diagnostics: dict[str, str] = field(default_factory=dict)  # the node's last status values
    rois: list[RoiLiveRecord] = field(default_factory=list)  # classified_detections messages
    detections_seen: int = 0  # detection messages the collector received


class _Collector(Node):
    def __init__(self, plan: LivePlan) -> None:
        super().__init__("tl_perception_collect")
        self._lock = threading.Lock()
        self.plan = plan
        self.output_format = ""  # set by subscribe_results, from the node's publisher
        self._reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.image_arrival: dict[int, int] = {}
        self.detections_arrival: dict[int, int] = {}
        self.records: list[LiveRecord] = []
        self.rois: list[RoiLiveRecord] = []
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_at = 0.0
        self.last_result_at = 0.0
        image_type = CompressedImage if plan.image_topic.endswith("/compressed") else Image
        self._subscribe_arrivals(image_type, plan.image_topic, self.image_arrival)
        if plan.detections_topic is not None:
            from vision_msgs.msg import Detection2DArray

            self._subscribe_arrivals(
                Detection2DArray, plan.detections_topic, self.detections_arrival
            )
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _subscribe_arrivals(self, msg_type: type, topic: str, arrivals: dict[int, int]) -> None:
        """Record when each stamp first arrives on `topic` (the node's input)."""

        def on_message(msg: Any) -> None:
            stamp = stamp_to_ns(msg.header.stamp)
            with self._lock:
                arrivals.setdefault(stamp, time.monotonic_ns())

        self.create_subscription(msg_type, topic, on_message, self._reliable)

    def subscribe_results(self, type_name: str) -> None:
        """Subscribe the results topic with the type the node publishes (either format)."""
        if self.plan.rois:
            self.output_format = detections_format_of_type(type_name)
            msg_type = detections_type(self.output_format)
        else:
            self.output_format = format_of_type(type_name)
            msg_type = classification_type(self.output_format)
        self.create_subscription(msg_type, self.plan.results_topic, self._on_result, self._reliable)

    def _on_result(self, msg: Any) -> None:
        now = time.monotonic_ns()
        with self._lock:
            if self.plan.rois:
                self.rois.append(self._roi_record(msg, now))
            else:
                stamp_ns, top1, score = parse_classification(msg)
                latency = _since(self.image_arrival.get(stamp_ns), now)
                self.records.append(LiveRecord(stamp_ns, top1, score, latency))
            self.last_result_at = time.monotonic()

    def _roi_record(self, msg: Any, now: int) -> RoiLiveRecord:
        stamp_ns, answers = parse_detections(msg)
        image = self.image_arrival.get(stamp_ns)
        boxes = self.detections_arrival.get(stamp_ns)
        ready = None if image is None or boxes is None else max(image, boxes)
        return RoiLiveRecord(stamp_ns, answers, _since(ready, now), _since(image, now))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "processed_frames" in values and NODE_NAME in status.name:
                with self._lock:
                    self.diagnostics = values
                    self.diagnostics_at = time.monotonic()

    def count(self) -> int:
        with self._lock:
            return len(self.rois) + len(self.records)


def _since(start_ns: int | None, now_ns: int) -> float | None:
    return None if start_ns is None else (now_ns - start_ns) / 1e6


def _dict_stamp_ns(body: dict[str, Any]) -> int:
    """The header stamp of a message read as a dict (`classification_to_dict` and its twin)."""
    stamp = body["header"]["stamp"]
    return int(stamp["sec"]) * SEC + int(stamp["nanosec"])


def parse_classification(msg: Any) -> tuple[int, str, float]:
    """(image stamp ns, top-1 class, score) from vision_msgs/Classification or its JSON twin."""
    body = classification_to_dict(msg)
    stamp = _dict_stamp_ns(body)
    best = _best(body.get("results") or [])
    return stamp, best[0], best[1]


def parse_detections(msg: Any) -> tuple[int, tuple[RoiAnswer, ...]]:
    """(image stamp ns, each detection's id and best hypothesis) from `classified_detections`,
    vision_msgs/Detection2DArray or its JSON twin. A detection without results has top-1 ""."""
    body = detections_to_dict(msg)
    stamp = _dict_stamp_ns(body)
    answers = []
    for det in body.get("detections") or []:
        top1, score = _best(det.get("results") or [])
        answers.append(RoiAnswer(str(det.get("id", "")), top1, score))
    return stamp, tuple(answers)


def _best(results: list[dict[str, Any]]) -> tuple[str, float]:
    if not results:
        return "", 0.0
    best = max(results, key=lambda h: h["score"])
    return str(best["class_id"]), float(best["score"])


def collect_live(
    plan: LivePlan, *, node_alive: Callable[[], bool] = lambda: True, log: Log = print
) -> LiveResult:
    """Wait for the classifier, play the plan's topics to it, and collect what it answers."""
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    collector = _Collector(plan)
    executor = SingleThreadedExecutor()
    executor.add_node(collector)
    spinner = threading.Thread(target=executor.spin, name="collect", daemon=True)
    spinner.start()
    try:
        _wait_ready(collector, node_alive)
        log(f"classifier ready on {', '.join(_inputs(plan))}; playing {plan.bag}")
        options = PlayOptions(
            bag=plan.bag,
            topics=tuple(plan.play),
            remap=dict(plan.play),
            qos="reliable",
            wait_subscribers=2,  # the classifier and this collector
            wait_timeout_s=10.0,
        )
        published = play(options)
        _drain(collector, plan.drain_s)
        return _result(collector, published)
    finally:
        executor.shutdown(timeout_sec=1.0)
        collector.destroy_node()
        if own_context:
            rclpy.try_shutdown()


def _inputs(plan: LivePlan) -> list[str]:
    return [plan.image_topic] + ([plan.detections_topic] if plan.detections_topic else [])


def _drain(collector: _Collector, drain_s: float) -> None:
    """Wait until no answer came for `drain_s`, then for one more diagnostics period."""
    last_count, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < drain_s:
        time.sleep(0.1)
        count = collector.count()
        if count != last_count:
            last_count, quiet_since = count, time.monotonic()
    settled = time.monotonic()
    deadline = settled + 3.0  # one more diagnostics period, so final counts are included
    while time.monotonic() < deadline and collector.diagnostics_at < settled:
        time.sleep(0.1)


def _result(collector: _Collector, published: int) -> LiveResult:
    with collector._lock:
        records = sorted(collector.records, key=lambda r: r.stamp_ns)
        rois = sorted(collector.rois, key=lambda r: r.stamp_ns)
        arrivals = sorted(collector.image_arrival.values())
        diagnostics = dict(collector.diagnostics)
        detections_seen = len(collector.detections_arrival)
    seconds = (arrivals[-1] - arrivals[0]) / 1e9 if len(arrivals) > 1 else 0.0
    return LiveResult(
        records, published, len(arrivals), seconds, diagnostics, rois, detections_seen
    )


def _wait_ready(collector: _Collector, node_alive: Callable[[], bool]) -> None:
    """The node subscribes to its inputs only once its model is loaded: that is 'ready'.

    Then the collector subscribes to its results with the type the node's publisher has.
    """
    plan = collector.plan
    deadline = time.monotonic() + plan.ready_timeout_s
    while time.monotonic() < deadline:
        if not node_alive():
            raise TlPerceptionError("classifier_node exited before it was ready; see its log")
        subscribed = all(
            any(s.node_name == NODE_NAME for s in collector.get_subscriptions_info_by_topic(t))
            for t in _inputs(plan)
        )
        pubs = collector.get_publishers_info_by_topic(plan.results_topic)
        if subscribed and pubs:
            ours = [p for p in pubs if p.node_name == NODE_NAME] or pubs
            collector.subscribe_results(ours[0].topic_type)
            time.sleep(0.5)  # let discovery settle on both ends
            return
        time.sleep(0.2)
    raise TlPerceptionError(
        f"classifier_node did not subscribe to {' and '.join(repr(t) for t in _inputs(plan))} "
        f"within {plan.ready_timeout_s:.0f} s; see its log"
    )
