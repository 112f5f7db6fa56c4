"""`classifier_node`: classify camera images with a model bundle and publish the top classes.

Data path: the subscription callback only stores the newest message (latest frame wins, older
unprocessed frames are counted as dropped); one worker thread decodes it with
`images.message_to_rgb`, classifies it and publishes, so latency never grows with a queue.
Parameters are listed in `params.PARAMETERS` and docs/node.md.

Hot reload: setting `model_path` validates the bundle's metadata at once (refused: the set fails)
and queues a request for one reload thread, which loads requests one at a time. Each request
carries a sequence number; a load whose request was superseded meanwhile is thrown away, and a
failure of a superseded request changes nothing, so the last request always wins. `model_path` is
the user's request and the node never writes it; the node publishes what serves in its own
`serving_model_path` and `class_names`, through the public `set_parameters` (see
`params.declare_node_owned` for why they are not `read_only`).
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
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from tl_perception.bundle import read_bundle
from tl_perception.errors import BundleError, ImageDecodeError, TlPerceptionError, one_line
from tl_perception.images import image_fields, message_to_rgb
from tl_perception.ros import qos as qos_rules
from tl_perception.ros.diagnostics import RELOAD_IDLE, NodeStatus, build_diagnostics
from tl_perception.ros.messages import (
    build_classification,
    build_label_info,
    classification_type,
    resolve_output_format,
)
from tl_perception.ros.names import NODE_NAME, diagnostics_status_name
from tl_perception.ros.overlay import draw_overlay
from tl_perception.ros.params import (
    CLASS_NAMES,
    NODE_OWNED,
    NODE_OWNED_REFUSAL,
    SERVING_MODEL_PATH,
    declare_all,
    declare_node_owned,
)
from tl_perception.ros.results import select_hypotheses
from tl_perception.ros.stats import FrameStats, LatestFrameSlot
from tl_perception.stamps import is_unstamped, stamp_to_ns

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


class NodeOwnedWriter:
    """The node's own writes of its node-owned parameters, with public rclpy API only.

    rclpy calls the on-set callback in the thread that calls `set_parameters`, so a thread-local
    flag tells the node's own writes apart from a `ros2 param set` served at the same moment on
    the executor thread, without a window in which an outside write could slip through.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._local = threading.local()

    def allowed(self) -> bool:
        """Whether the current set_parameters call is the node's own."""
        return bool(getattr(self._local, "active", False))

    def write(self, values: dict[str, Any]) -> None:
        self._local.active = True
        try:
            results = self._node.set_parameters(
                [Parameter(name, value=value) for name, value in values.items()]
            )
        finally:
            self._local.active = False
        for name, result in zip(values, results, strict=True):
            if not result.successful:
                self._node.get_logger().error(f"could not update {name}: {result.reason}")


class ClassifierNode(Node):
    """Subscribe images, classify the newest one on a worker thread, publish results."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            self._setup()
        except BaseException:
            # A refused start-up (bad parameter, broken bundle) must not leave a half-built
            # node in the graph: a caller that goes on (a test, a launch retry) would see it.
            Node.destroy_node(self)
            raise

    def _setup(self) -> None:
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
        self._overlay_pub: Publisher | None = None
        self._output_format = resolve_output_format(config["output_format"])

        # 2. The model (fails start-up with one BundleError line).
        self._classifier = load_classifier(
            self._model_path, self._backend_choice, self._num_threads
        )
        self._serving_path = self._model_path
        self._owned = NodeOwnedWriter(self)
        declare_node_owned(self, self._classifier.class_names, self._serving_path)
        self.get_logger().info(
            f"loaded {self._model_path} ({len(self._classifier.class_names)} classes, "
            f"input {self._classifier.input_size}, backend {self._classifier.backend})"
        )

        # 3. Publishers.
        self._result_pub = self.create_publisher(
            classification_type(self._output_format), "classification", OUTPUT_QOS
        )
        self._label_pub: Publisher | None = None
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
        self._subscription: Subscription | None = None
        self._input_qos = qos_rules.preset_profile(self._qos_mode)
        self._subscribe(self._input_qos, reason=f"qos:={self._qos_mode}")

        # 5. Worker and reload threads, 6. timers and run-time parameter changes.
        self._stop = threading.Event()
        self._reload_lock = threading.RLock()  # guards the request sequence and the swap
        self._reload_seq = 0
        self._reload_state = RELOAD_IDLE
        self._reload_requests: LatestFrameSlot[tuple[int, str]] = LatestFrameSlot()
        self._worker = threading.Thread(target=self._worker_loop, name="classify", daemon=True)
        self._worker.start()
        self._reloader = threading.Thread(target=self._reload_loop, name="reload", daemon=True)
        self._reloader.start()
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

    @property
    def reload_status(self) -> str:
        """`idle`, `loading <path>` or `failed <path>: <reason>` (also in /diagnostics)."""
        return self._reload_state

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
                    f"classification failed: {type(err).__name__}: {one_line(err)}",
                    throttle_duration_sec=BAD_FRAME_LOG_THROTTLE_S,
                )
        self._slot.close()

    def _process(self, msg: Any) -> None:
        try:
            rgb = message_to_rgb(msg)
        except Exception as err:  # any frame the decoder cannot turn into pixels is a bad frame
            self._stats.count_bad()
            # ImageDecodeError says why; anything else is a decoder bug, named so it gets fixed.
            why = one_line(err)
            if not isinstance(err, ImageDecodeError):
                why = f"the decoder raised {type(err).__name__}: {why}"
            self.get_logger().warning(
                f"bad frame on {self.input_topic} (stamp {msg.header.stamp.sec}."
                f"{msg.header.stamp.nanosec:09d}): {why}",
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
        latency_ms = None  # stamp 0: no capture time, kept out of the latency statistic
        if not is_unstamped(msg.header.stamp):
            latency_ms = (self.get_clock().now().nanoseconds - stamp_to_ns(msg.header.stamp)) / 1e6
        self._stats.count_processed(inference_ms, latency_ms)
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
        offered = [info.qos_profile for info in self.get_publishers_info_by_topic(self.input_topic)]
        classifier = self._classifier
        status = NodeStatus(
            backend=classifier.backend,
            model=str(classifier.bundle.path),
            qos=qos_rules.describe(self._input_qos),
            incompatible_qos_events=self._incompatible_qos_events,
            incompatible_qos_publishers=qos_rules.count_incompatible(offered, self._input_qos),
            model_reload=self._reload_state,
        )
        self._diag_pub.publish(
            build_diagnostics(
                diagnostics_status_name(self.get_fully_qualified_name()),
                self.get_clock().now().to_msg(),
                self._stats.snapshot(),
                status,
            )
        )

    def _ensure_overlay_publisher(self) -> None:
        if self._publish_overlay and self._overlay_pub is None:
            self._overlay_pub = self.create_publisher(Image, "classification/overlay", 2)

    # ---------------------------------------------------------------- run-time parameters
    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Apply top_k / score_threshold / max_rate_hz / publish_overlay; queue a model reload.

        Everything that can refuse the set is checked before anything changes.
        """
        by_name = {p.name: p.value for p in params}
        for name in NODE_OWNED:
            if name in by_name and not self._owned.allowed():
                return SetParametersResult(successful=False, reason=f"{name} {NODE_OWNED_REFUSAL}")
        new_model = by_name.get("model_path")
        if new_model is not None:
            try:
                read_bundle(new_model)  # cheap validation; the network loads in the background
            except BundleError as err:
                reason = one_line(err)
                self.get_logger().error(
                    f"refused model_path {new_model!r}: {reason}; still serving "
                    f"{self._serving_path!r}"
                )
                return SetParametersResult(successful=False, reason=reason)
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
        if new_model is not None:
            self._request_reload(new_model)
        return SetParametersResult(successful=True)

    def _request_reload(self, model_path: str) -> None:
        """Make `model_path` the newest request; any request before it is now stale."""
        with self._reload_lock:
            self._reload_seq += 1
            seq = self._reload_seq
            self._model_path = model_path
            serving = model_path == self._serving_path
            self._reload_state = RELOAD_IDLE if serving else f"loading {model_path}"
        self._reload_requests.put((seq, model_path))

    def _reload_loop(self) -> None:
        """One reload at a time; a request replaced before it was taken is never loaded."""
        while not self._stop.is_set():
            request = self._reload_requests.take(timeout=0.2)
            if request is None:
                continue
            try:
                self._load_and_swap(*request)
            except Exception as err:  # the reload thread must outlive any bundle
                self.get_logger().error(f"hot reload failed unexpectedly: {one_line(err)}")

    def _load_and_swap(self, seq: int, model_path: str) -> None:
        """Load a bundle next to the serving one and swap it in, unless a newer request came."""
        if seq != self._reload_seq or model_path == self._serving_path:
            return  # superseded, or asks for what already serves
        self.get_logger().info(f"loading {model_path!r} in the background")
        try:
            classifier = load_classifier(model_path, self._backend_choice, self._num_threads)
        except Exception as err:  # a broken bundle must never stop the serving model
            with self._reload_lock:
                current = seq == self._reload_seq
                if current:
                    self._reload_state = f"failed {model_path}: {one_line(err)}"
            log = self.get_logger().error if current else self.get_logger().info
            log(
                f"hot reload of {model_path!r} failed: {one_line(err)}; still serving "
                f"{self._serving_path!r}" + ("" if current else " (a newer request is pending)")
            )
            return
        with self._reload_lock:
            if seq != self._reload_seq:
                self.get_logger().info(f"loaded {model_path!r}, discarded: a newer request came")
                return
            old_path = self._serving_path
            self._classifier = classifier  # one assignment: the worker sees old or new, whole
            self._serving_path = model_path
            self._reload_state = RELOAD_IDLE
            self._owned.write(
                {SERVING_MODEL_PATH: model_path, CLASS_NAMES: list(classifier.class_names)}
            )
        self._publish_label_info()
        self.get_logger().info(
            f"swapped in {model_path!r} ({len(classifier.class_names)} classes, "
            f"backend {classifier.backend}); was {old_path!r}"
        )

    # ---------------------------------------------------------------- shutdown
    def destroy_node(self) -> None:
        self._stop.set()
        self._slot.close()
        self._reload_requests.close()
        for thread in (self._worker, self._reloader):
            if thread.is_alive():
                thread.join(timeout=5.0)
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
        rclpy.logging.get_logger(NODE_NAME).error(f"cannot start: {one_line(err)}")
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
