"""A small rclpy harness for classifier-node tests: publish images, collect what comes back.

Each harness owns its own rclpy Context and a SingleThreadedExecutor spun in a thread, so tests do
not share ROS state; every wait has a deadline so a broken node fails a test instead of hanging it.
The probe reads the node's output in either format (`output_format`, resolved like the node's:
vision_msgs where it imports) and keeps each result as the JSON body's dict, so one assertion
fits both.
"""

from __future__ import annotations

import array
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Log
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from tl_perception.images import image_fields, rgb_to_compressed
from tl_perception.ros.messages import (
    classification_to_dict,
    classification_type,
    detections_to_dict,
    detections_type,
    resolve_output_format,
    vision_msgs_available,
)
from tl_perception.ros.names import diagnostics_status_name

NODE_SCRIPT = Path(sys.executable).parent / "classifier_node"
#: Overrides for tests that check each frame's own classification: no smoothing, no hysteresis
#: (the node's defaults, ema + switch_frames 2, are tested in test_node_temporal.py).
RAW_LABELS: dict[str, Any] = {"smoothing": "none", "switch_frames": 1}


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll `predicate` until truthy; return its value, or raise AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {predicate}")


def raw_image(rgb: np.ndarray, encoding: str, sec: int, frame_id: str = "camera") -> Image:
    """A sensor_msgs/Image holding `rgb` in `encoding` (data as array('B'): fast to assign)."""
    fields = image_fields(rgb, encoding)
    msg = Image(**{k: v for k, v in fields.items() if k != "data"})
    msg.data = array.array("B", fields["data"])
    msg.header.stamp.sec = sec
    msg.header.stamp.nanosec = 1234
    msg.header.frame_id = frame_id
    return msg


def compressed_image(rgb: np.ndarray, fmt: str, sec: int, frame_id: str = "camera") -> Any:
    """A sensor_msgs/CompressedImage holding `rgb` as JPEG or PNG."""
    msg = CompressedImage(format=fmt)
    msg.data = array.array("B", rgb_to_compressed(rgb, fmt))
    msg.header.stamp.sec = sec
    msg.header.stamp.nanosec = 1234
    msg.header.frame_id = frame_id
    return msg


def detection_array(
    sec: int,
    boxes: Sequence[tuple[str, float, float, float, float]],
    nanosec: int = 1234,
    frame_id: str = "camera",
) -> Any:
    """A vision_msgs/Detection2DArray stamped like `raw_image(..., sec)`; boxes are
    (id, center_x, center_y, size_x, size_y) in pixels."""
    from vision_msgs.msg import Detection2D, Detection2DArray

    msg = Detection2DArray()
    msg.header.stamp.sec = sec
    msg.header.stamp.nanosec = nanosec
    msg.header.frame_id = frame_id
    for det_id, cx, cy, sx, sy in boxes:
        det = Detection2D()
        det.header = msg.header
        det.id = det_id
        det.bbox.center.position.x = float(cx)
        det.bbox.center.position.y = float(cy)
        det.bbox.size_x = float(sx)
        det.bbox.size_y = float(sy)
        msg.detections.append(det)
    return msg


class CameraProbe:
    """One camera's side of the graph: its image (and detections) publishers and collectors of
    its `classification` and `classified_detections`, kept as the JSON bodies' dicts."""

    def __init__(self, probe: Probe, prefix: str, image_topic: str, qos: QoSProfile) -> None:
        node = probe.node
        self._lock = probe._lock
        self.image_pub = node.create_publisher(Image, image_topic, qos)
        self.compressed_pub = node.create_publisher(
            CompressedImage, f"{image_topic}/compressed", qos
        )
        self.detections_pub: Any = None
        self.results: list[dict[str, Any]] = []
        self.messages: list[Any] = []  # the classification messages as received
        self.detections: list[dict[str, Any]] = []  # classified_detections as dicts
        self.detection_messages: list[Any] = []
        self.overlays: list[Image] = []
        fmt = probe.output_format
        node.create_subscription(
            classification_type(fmt),
            f"{prefix}/classification",
            self._on_result,
            QoSProfile(depth=500),
        )
        node.create_subscription(
            detections_type(fmt),
            f"{prefix}/classified_detections",
            self._on_detections,
            QoSProfile(depth=500),
        )
        node.create_subscription(
            Image, f"{prefix}/classification/overlay", self._on_overlay, QoSProfile(depth=10)
        )
        if vision_msgs_available():
            from vision_msgs.msg import Detection2DArray

            self.detections_pub = node.create_publisher(
                Detection2DArray, f"{prefix}/detections", QoSProfile(depth=10)
            )

    def _on_result(self, msg: Any) -> None:
        body = classification_to_dict(msg)
        with self._lock:
            self.messages.append(msg)
            self.results.append(body)

    def _on_detections(self, msg: Any) -> None:
        body = detections_to_dict(msg)
        with self._lock:
            self.detection_messages.append(msg)
            self.detections.append(body)

    def _on_overlay(self, msg: Image) -> None:
        with self._lock:
            self.overlays.append(msg)

    def result_for(self, sec: int) -> dict[str, Any] | None:
        with self._lock:
            return next((r for r in self.results if r["header"]["stamp"]["sec"] == sec), None)

    def detections_for(self, sec: int) -> dict[str, Any] | None:
        """The classified_detections answering the frame stamped `sec` (either format)."""
        with self._lock:
            return next((r for r in self.detections if r["header"]["stamp"]["sec"] == sec), None)

    def message_for(self, sec: int) -> Any:
        """The classification message (either format) answering the frame stamped `sec`."""
        with self._lock:
            pairs = zip(self.messages, self.results, strict=True)
            return next((m for m, r in pairs if r["header"]["stamp"]["sec"] == sec), None)

    def detection_message_for(self, sec: int) -> Any:
        with self._lock:
            pairs = zip(self.detection_messages, self.detections, strict=True)
            return next((m for m, r in pairs if r["header"]["stamp"]["sec"] == sec), None)

    def publish_until(
        self, send: Callable[[int], None], found: Callable[[int], Any], sec: int, timeout: float
    ) -> Any:
        """Call `send(sec)` every 0.2 s until `found(sec)` is truthy; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            send(sec)
            try:
                return wait_until(lambda: found(sec), 0.2)
            except AssertionError:
                continue
        raise AssertionError(f"no answer for the frame stamped {sec} within {timeout} s")

    def publish_until_result(
        self, make: Callable[[int], Any], pub: Any, sec: int, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Publish a frame stamped `sec` every 0.2 s until its classification comes back."""
        return self.publish_until(lambda s: pub.publish(make(s)), self.result_for, sec, timeout)

    def publish_until_detections(
        self, send: Callable[[int], None], sec: int, timeout: float = 15.0
    ) -> dict[str, Any]:
        """`send(sec)` (an image and/or detections) until classified_detections for `sec`."""
        return self.publish_until(send, self.detections_for, sec, timeout)


class Probe:
    """The test side of the graph: image publishers and collectors of the node's outputs.

    The node's default camera (`cameras` empty) is `probe.default`, whose publishers and
    collectors are also the probe's own attributes (`image_pub`, `results`, ...); with
    `cameras=[...]` each named camera has its `CameraProbe` in `probe.cameras[name]`.
    """

    def __init__(
        self,
        namespace: str = "",
        reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE,
        image_topic: str = "image",
        output_format: str = "auto",
        cameras: Sequence[str] = (),
    ) -> None:
        """`namespace`: the node's namespace (its topics); `image_topic` is relative to it.

        `output_format`: the node's; with vision_msgs the probe also keeps the latched LabelInfo.
        """
        self.output_format = resolve_output_format(output_format)
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node("probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        qos = QoSProfile(depth=10, reliability=reliability)
        ns = self._ns = namespace.rstrip("/")
        topic = image_topic if image_topic.startswith("/") else f"{ns}/{image_topic}"
        self.default = CameraProbe(self, ns, topic, qos)
        self.cameras = {
            name: CameraProbe(self, f"{ns}/{name}", f"{ns}/{name}/image", qos) for name in cameras
        }
        self.image_pub = self.default.image_pub
        self.compressed_pub = self.default.compressed_pub
        self.detections_pub = self.default.detections_pub
        self.results = self.default.results
        self.messages = self.default.messages
        self.overlays = self.default.overlays
        self.label_infos: list[Any] = []
        self.diagnostics: list[dict[str, str]] = []  # the node's status
        self.camera_diagnostics: dict[str, list[dict[str, str]]] = {}  # with named cameras
        if self.output_format == "vision_msgs":
            from vision_msgs.msg import LabelInfo

            latched = QoSProfile(
                depth=1,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
            )
            self.node.create_subscription(
                LabelInfo, f"{ns}/label_info", self._on_label_info, latched
            )
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, QoSProfile(depth=50)
        )
        self.logs: list[Any] = []  # rcl_interfaces/Log of every node, as /rosout carries them
        rosout = QoSProfile(  # as rcl publishes it: a late subscriber still gets the lines
            depth=1000,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.node.create_subscription(Log, "/rosout", self._on_log, rosout)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us
                return

    def _on_log(self, msg: Any) -> None:
        with self._lock:
            self.logs.append(msg)

    def log_lines(self, words: str, node: str = "classifier") -> list[str]:
        """The /rosout messages of `node` (its last name) that contain `words`."""
        with self._lock:
            return [m.msg for m in self.logs if m.name.split(".")[-1] == node and words in m.msg]

    def _on_label_info(self, msg: Any) -> None:
        with self._lock:
            self.label_infos.append(msg)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        node_status = diagnostics_status_name(f"{self._ns}/classifier")
        with self._lock:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                values["_level"] = str(int.from_bytes(status.level, "little"))
                values["_message"] = status.message
                if status.name == node_status:
                    self.diagnostics.append(values)
                elif status.name.startswith(f"{node_status} ("):
                    camera = status.name[len(node_status) + 2 : -1]
                    self.camera_diagnostics.setdefault(camera, []).append(values)

    def wait_for_subscriber(self, pub: Any, timeout: float = 15.0) -> None:
        wait_until(lambda: pub.get_subscription_count() > 0, timeout)

    def result_for(self, sec: int) -> dict[str, Any] | None:
        return self.default.result_for(sec)

    def detections_for(self, sec: int) -> dict[str, Any] | None:
        return self.default.detections_for(sec)

    def publish_until_result(
        self, make: Callable[[int], Any], pub: Any, sec: int, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Publish a frame stamped `sec` every 0.2 s until its classification comes back."""
        return self.default.publish_until_result(make, pub, sec, timeout)

    def message_for(self, sec: int) -> Any:
        """The classification message (either format) answering the frame stamped `sec`."""
        return self.default.message_for(sec)

    def latest_label_info(self) -> Any:
        with self._lock:
            return self.label_infos[-1] if self.label_infos else None

    def latest_diagnostics(self) -> dict[str, str] | None:
        with self._lock:
            return self.diagnostics[-1] if self.diagnostics else None

    def diagnostics_where(
        self, check: Callable[[dict[str, str]], Any], timeout: float = 5.0
    ) -> dict[str, str]:
        """The first status of the node (from now on, or the latest) for which `check` holds."""
        return wait_until(lambda: (d := self.latest_diagnostics()) and check(d) and d, timeout)

    def next_diagnostics(
        self, check: Callable[[dict[str, str]], Any] = bool, timeout: float = 5.0
    ) -> dict[str, str]:
        """The first status of the node published after this call for which `check` holds."""
        with self._lock:
            seen = len(self.diagnostics)

        def found() -> dict[str, str] | None:
            with self._lock:
                return next((d for d in self.diagnostics[seen:] if check(d)), None)

        return wait_until(found, timeout)

    def latest_camera_diagnostics(self, camera: str) -> dict[str, str] | None:
        with self._lock:
            found = self.camera_diagnostics.get(camera)
            return found[-1] if found else None

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)


#: The last name of each camera's result topic (full frames, ROIs).
RESULT_TOPICS = ("classification", "classified_detections")


def wait_for_outputs(node: Any, timeout: float = 15.0) -> None:
    """Until every result publisher of the node (rclpy's public `Node.publishers`) has matched
    a subscriber: a reliable message published before that is lost (volatile), so single-shot
    tests wait for it."""

    def matched() -> bool:
        results = [p for p in node.publishers if p.topic_name.rsplit("/", 1)[-1] in RESULT_TOPICS]
        return bool(results) and all(p.get_subscription_count() > 0 for p in results)

    wait_until(matched, timeout)


@contextmanager
def probe(**kwargs: Any) -> Iterator[Probe]:
    p = Probe(**kwargs)
    try:
        yield p
    finally:
        p.close()


@contextmanager
def node_in_process(overrides: dict[str, Any], **node_kwargs: Any) -> Iterator[Any]:
    """A ClassifierNode in this process on its own Context and executor thread."""
    from rclpy.parameter import Parameter

    from tl_perception.ros.classifier_node import ClassifierNode

    context = Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = None
    try:
        node = ClassifierNode(
            context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
            **node_kwargs,
        )
        executor.add_node(node)
        thread = threading.Thread(target=_spin, args=(executor, context), daemon=True)
        thread.start()
        yield node
    finally:
        executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


@contextmanager
def roi_node_and_probe(overrides: dict[str, Any], namespace: str) -> Iterator[tuple[Any, Probe]]:
    """A node (ROI mode) and its probe in `namespace`, once both see each other's topics."""
    with node_in_process(overrides, namespace=namespace) as node, probe(namespace=namespace) as p:
        p.wait_for_subscriber(p.image_pub)
        p.wait_for_subscriber(p.detections_pub)
        wait_for_outputs(node)
        yield node, p


def _spin(executor: SingleThreadedExecutor, context: Context) -> None:
    while context.ok():
        try:
            executor.spin_once(timeout_sec=0.05)
        except Exception:
            return


def start_node_process(
    args: Sequence[str], env: dict[str, str] | None = None, prefix: Sequence[str] = ()
) -> subprocess.Popen:
    """`classifier_node --ros-args ...` as `ros2 run` starts it (stderr captured); `prefix`
    runs it under another command (e.g. `setpriv ...`, `unshare ...`)."""
    return subprocess.Popen(
        [*prefix, str(NODE_SCRIPT), "--ros-args", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """SIGINT (as Ctrl-C), then kill after `timeout`; return the output."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            out, _ = proc.communicate(timeout=timeout)
            return out
        except subprocess.TimeoutExpired:
            proc.kill()
    out, _ = proc.communicate(timeout=timeout)
    return out
