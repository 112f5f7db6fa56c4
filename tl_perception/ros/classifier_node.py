"""`classifier_node`: classify camera images with a model bundle and publish the top classes.

Data path: the subscription callback only stores the newest message (latest frame wins, older
unprocessed frames are counted as dropped); one worker thread decodes it with
`images.message_to_rgb`, classifies it and publishes, so latency never grows with a queue.
Parameters are listed in `params.PARAMETERS` and docs/node.md.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from tl_perception.bundle import read_bundle
from tl_perception.errors import BundleError, ImageDecodeError, TlPerceptionError
from tl_perception.images import image_fields, message_to_rgb
from tl_perception.ros import qos as qos_rules
from tl_perception.ros.diagnostics import build_diagnostics
from tl_perception.ros.messages import (
    build_classification,
    build_label_info,
    classification_type,
    resolve_output_format,
)
from tl_perception.ros.overlay import draw_overlay
from tl_perception.ros.params import CLASS_NAMES, declare_all, declare_class_names
from tl_perception.ros.results import select_hypotheses
from tl_perception.ros.stats import FrameStats, LatestFrameSlot

NODE_NAME = "classifier"
DIAGNOSTICS_PERIOD_S = 1.0
QOS_RECHECK_PERIOD_S = 1.0
BAD_FRAME_LOG_THROTTLE_S = 5.0
OUTPUT_QOS = QoSProfile(depth=10)
LATCHED_QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def load_classifier(model_path: str, backend: str, num_threads: int) -> Any:
    """Load and warm up a Classifier; BundleError names what is wrong with the bundle."""
    from tl_perception.inference import Classifier

    if not model_path:
        raise BundleError("parameter model_path is empty; pass -p model_path:=<bundle directory>")
    classifier = Classifier(model_path, backend=backend, num_threads=num_threads or None)
    classifier.warmup()
    return classifier


class ClassifierNode(Node):
    """Subscribe images, classify the newest one on a worker thread, publish results."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # 1. Parameters, validated before anything heavy happens.
        config = declare_all(self)
        self._model_path: str = config["model_path"]
        self._backend_choice: str = config["backend"]
        self._num_threads: int = config["num_threads"]
        self._transport: str = config["image_transport"]
        self._qos_mode: str = config["qos"]
        self._top_k: int = config["top_k"]
        self._score_threshold: float = config["score_threshold"]
        self._max_rate_hz: float = config["max_rate_hz"]
        self._publish_overlay: bool = config["publish_overlay"]
        self._overlay_pub = None
        self._output_format = resolve_output_format(config["output_format"])

        # 2. The model (fails start-up with one BundleError line).
        self._classifier = load_classifier(
            self._model_path, self._backend_choice, self._num_threads
        )
        declare_class_names(self, self._classifier.class_names)
        self.get_logger().info(
            f"loaded {self._model_path} ({len(self._classifier.class_names)} classes, "
            f"input {self._classifier.input_size}, backend {self._classifier.backend})"
        )

        # 3. Publishers.
        self._result_pub = self.create_publisher(
            classification_type(self._output_format), "classification", OUTPUT_QOS
        )
        self._label_pub = None
        if self._output_format == "vision_msgs":
            from vision_msgs.msg import LabelInfo

            self._label_pub = self.create_publisher(LabelInfo, "label_info", LATCHED_QOS)
            self._publish_label_info()
        self._ensure_overlay_publisher()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)

        # 4. Subscription (recreated when `qos:=auto` finds publishers with other policies).
        self._stats = FrameStats()
        self._slot: LatestFrameSlot[Any] = LatestFrameSlot()
        self._incompatible_qos_events = 0
        self._subscription = None
        self._input_qos = qos_rules.preset_profile(self._qos_mode)
        self._subscribe(self._input_qos, reason=f"qos:={self._qos_mode}")

        # 5. Worker thread, 6. timers and run-time parameter changes.
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._worker_loop, name="classify", daemon=True)
        self._worker.start()
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        if self._qos_mode == "auto":
            self.create_timer(QOS_RECHECK_PERIOD_S, self._match_publisher_qos)
            self._match_publisher_qos()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ---------------------------------------------------------------- input and QoS
    @property
    def input_topic(self) -> str:
        """The fully resolved (remapped) topic the node listens on."""
        base = self.resolve_topic_name("image")
        return f"{base}/compressed" if self._transport == "compressed" else base

    def _subscribe(self, profile: QoSProfile, reason: str) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
        msg_type = CompressedImage if self._transport == "compressed" else Image
        self._input_qos = profile
        self._subscription = self.create_subscription(
            msg_type,
            self.input_topic,
            self._on_image,
            profile,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos),
        )
        self.get_logger().info(
            f"subscribed {self.input_topic} ({msg_type.__name__}) with QoS "
            f"[{qos_rules.describe(profile)}] ({reason})"
        )

    def _match_publisher_qos(self) -> None:
        """`qos:=auto`: follow the publishers' reliability/durability, like `ros2 bag record`."""
        offered = [info.qos_profile for info in self.get_publishers_info_by_topic(self.input_topic)]
        wanted = qos_rules.match_publishers(offered)
        if wanted is not None and not qos_rules.same_policies(wanted, self._input_qos):
            self._subscribe(wanted, reason=f"qos:=auto matched {len(offered)} publisher(s)")

    def _on_incompatible_qos(self, event: Any) -> None:
        self._incompatible_qos_events += 1
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        self.get_logger().warning(
            f"a publisher on {self.input_topic} offers a QoS incompatible with this node's "
            f"[{qos_rules.describe(self._input_qos)}]: policy {policy}; no images arrive from it. "
            "Use qos:=auto, or match the publisher (e.g. qos:=sensor_data for best effort)."
        )

    def _on_image(self, msg: Any) -> None:
        """Keep only the newest frame; the worker does everything else."""
        self._stats.count_received(dropped_one=self._slot.put(msg))

    # ---------------------------------------------------------------- worker
    def _worker_loop(self) -> None:
        next_allowed = 0.0
        while not self._stop.is_set():
            if self._max_rate_hz > 0.0:
                wait = next_allowed - time.monotonic()
                if wait > 0.0 and self._stop.wait(wait):
                    break
            msg = self._slot.take(timeout=0.2)
            if msg is None:
                continue
            started = time.monotonic()
            if self._max_rate_hz > 0.0:
                next_allowed = started + 1.0 / self._max_rate_hz
            try:
                self._process(msg)
            except Exception as err:  # keep serving: one bad inference must not kill the node
                self._stats.count_error()
                self.get_logger().error(
                    f"classification failed: {type(err).__name__}: {err}",
                    throttle_duration_sec=BAD_FRAME_LOG_THROTTLE_S,
                )
        self._slot.close()

    def _process(self, msg: Any) -> None:
        try:
            rgb = message_to_rgb(msg)
        except ImageDecodeError as err:
            self._stats.count_bad()
            self.get_logger().warning(
                f"bad frame on {self.input_topic} (stamp {msg.header.stamp.sec}."
                f"{msg.header.stamp.nanosec:09d}): {err}",
                throttle_duration_sec=BAD_FRAME_LOG_THROTTLE_S,
            )
            return
        classifier = self._classifier  # one reference per frame: a hot swap is atomic
        top_k, threshold = self._top_k, self._score_threshold
        started = time.perf_counter()
        ranked = classifier.classify([rgb], top_k=top_k)[0]
        inference_ms = (time.perf_counter() - started) * 1000.0
        results = select_hypotheses(ranked, top_k, threshold)
        self._result_pub.publish(build_classification(self._output_format, msg.header, results))
        latency = self.get_clock().now() - Time.from_msg(msg.header.stamp)
        self._stats.count_processed(inference_ms, latency.nanoseconds / 1e6)
        overlay_pub = self._overlay_pub
        if self._publish_overlay and overlay_pub and overlay_pub.get_subscription_count() > 0:
            overlay = Image(header=msg.header, **image_fields(draw_overlay(rgb, results), "rgb8"))
            overlay_pub.publish(overlay)

    # ---------------------------------------------------------------- outputs
    def _publish_label_info(self) -> None:
        if self._label_pub is not None:
            header = Header(stamp=self.get_clock().now().to_msg())
            self._label_pub.publish(
                build_label_info(header, self._classifier.class_names, self._score_threshold)
            )

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(
            build_diagnostics(
                f"{self.get_fully_qualified_name()}: image classification",
                self.get_clock().now().to_msg(),
                self._stats.snapshot(),
                backend=self._classifier.backend,
                model=str(self._classifier.bundle.path),
                qos=qos_rules.describe(self._input_qos),
                incompatible_qos_events=self._incompatible_qos_events,
            )
        )

    def _ensure_overlay_publisher(self) -> None:
        if self._publish_overlay and self._overlay_pub is None:
            self._overlay_pub = self.create_publisher(Image, "classification/overlay", 2)

    # ---------------------------------------------------------------- run-time parameters
    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Apply top_k / score_threshold / max_rate_hz / publish_overlay; hot-reload model_path."""
        by_name = {p.name: p.value for p in params}
        new_model = by_name.get("model_path")
        if new_model is not None and new_model != self._model_path:
            try:
                read_bundle(new_model)  # cheap validation; the network loads in the background
            except BundleError as err:
                self.get_logger().error(
                    f"refused model_path {new_model!r}: {err}; still serving {self._model_path!r}"
                )
                return SetParametersResult(successful=False, reason=str(err))
        if "top_k" in by_name:
            self._top_k = int(by_name["top_k"])
        if "score_threshold" in by_name:
            self._score_threshold = float(by_name["score_threshold"])
            self._publish_label_info()
        if "max_rate_hz" in by_name:
            self._max_rate_hz = float(by_name["max_rate_hz"])
        if "publish_overlay" in by_name:
            self._publish_overlay = bool(by_name["publish_overlay"])
            self._ensure_overlay_publisher()
        if new_model is not None and new_model != self._model_path:
            threading.Thread(
                target=self._reload, args=(new_model,), name="reload", daemon=True
            ).start()
        return SetParametersResult(successful=True)

    def _reload(self, model_path: str) -> None:
        """Load a bundle next to the serving one and swap it in; on failure keep the old one."""
        with self._reload_lock:
            old_path = self._model_path
            self.get_logger().info(f"loading {model_path!r} in the background")
            try:
                classifier = load_classifier(model_path, self._backend_choice, self._num_threads)
            except (TlPerceptionError, ValueError, OSError) as err:
                self.get_logger().error(
                    f"hot reload of {model_path!r} failed: {err}; still serving {old_path!r}"
                )
                self._restore_model_path(model_path, old_path)
                return
            self._classifier = classifier
            self._model_path = model_path
            self._set_class_names(classifier.class_names)
            self._publish_label_info()
            self.get_logger().info(
                f"swapped in {model_path!r} ({len(classifier.class_names)} classes, "
                f"backend {classifier.backend}); was {old_path!r}"
            )

    def _restore_model_path(self, refused: str, serving: str) -> None:
        """Show the model that really serves: put `model_path` back once rclpy stored `refused`."""
        deadline = time.monotonic() + 2.0
        while self.get_parameter("model_path").value != refused and time.monotonic() < deadline:
            time.sleep(0.01)
        self.set_parameters([Parameter("model_path", value=serving)])

    def _set_class_names(self, names: Sequence[str]) -> None:
        # `class_names` is read-only to users; rclpy has no public way for the node itself to
        # update a read-only parameter, so replace the stored value directly.
        self._parameters[CLASS_NAMES] = Parameter(
            CLASS_NAMES, Parameter.Type.STRING_ARRAY, list(names)
        )

    # ---------------------------------------------------------------- shutdown
    def destroy_node(self) -> None:
        self._stop.set()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `classifier_node` (what `ros2 run tl_perception classifier_node` starts)."""
    rclpy.init(args=args)
    node = None
    try:
        node = ClassifierNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except TlPerceptionError as err:
        rclpy.logging.get_logger(NODE_NAME).error(f"cannot start: {err}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
