"""`classifier_node`: classify camera images (whole, or regions of interest) with a model bundle
and publish the top classes.

Data path: each camera's subscription callbacks only store the newest frame (in ROI mode the
newest image paired with its detections; latest frame wins, older unprocessed frames are counted
as dropped); one worker thread takes the newest frame of every camera, decodes, crops and
classifies them all in one batched inference and publishes per camera, so latency never grows
with a queue. Per-camera state: `camera.py`; the processing: `pipeline.py`; ROIs: `rois.py`;
pairing: `pairing.py`. Parameters are listed in `params.PARAMETERS` and docs/node.md.

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
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from tl_perception.bundle import Bundle, read_bundle
from tl_perception.errors import BundleError, TlPerceptionError, one_line
from tl_perception.ros.camera import OUTPUT_QOS, Camera, CameraConfig
from tl_perception.ros.diagnostics import RELOAD_IDLE, NodeStatus, build_diagnostics
from tl_perception.ros.messages import (
    NodeConfigError,
    build_label_info,
    resolve_output_format,
    vision_msgs_available,
)
from tl_perception.ros.names import NODE_NAME, camera_status_name, diagnostics_status_name
from tl_perception.ros.params import (
    CLASS_NAMES,
    NODE_OWNED,
    NODE_OWNED_REFUSAL,
    SERVING_MODEL_PATH,
    check_number_array,
    declare_all,
    declare_node_owned,
)
from tl_perception.ros.pipeline import Pipeline, PipelineContext, Settings, Worker
from tl_perception.ros.rois import Roi, RoiConfigError, fixed_rois
from tl_perception.ros.stats import LatestFrames, LatestFrameSlot

DIAGNOSTICS_PERIOD_S = 1.0
QOS_RECHECK_PERIOD_S = 1.0
LATCHED_QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def load_classifier(model_path: str, backend: str, num_threads: int, max_batch: int = 1) -> Any:
    """Load and warm up a Classifier for batches of up to `max_batch` crops; BundleError names
    what is wrong with the bundle."""
    from tl_perception.inference import Classifier

    if not model_path:
        raise BundleError("parameter model_path is empty; pass -p model_path:=<bundle directory>")
    classifier = Classifier(model_path, backend=backend, num_threads=num_threads or None)
    classifier.warmup(max_batch=max_batch)
    return classifier


def describe_policy(bundle: Bundle) -> str:
    """For the start-up log: the bundle's crop policy, or what ROIs are cut with without one."""
    policy = bundle.crop_policy
    if policy is None:
        return "none: whole frames; ROIs cut exactly"
    return ", ".join(f"{k} {v}" for k, v in policy.to_dict().items() if k != "version")


def check_cameras(node: Node, names: list[str]) -> list[str]:
    """The `cameras` parameter: distinct names that make valid relative topic names."""
    if len(set(names)) != len(names):
        raise NodeConfigError(f"parameter cameras has duplicates: {names}")
    for name in names:
        try:
            if not name or name.startswith(("/", "~")):
                raise ValueError("must be a relative name")
            node.resolve_topic_name(f"{name}/image")
        except Exception as err:  # rclpy raises its own validation errors
            raise NodeConfigError(
                f"parameter cameras: {name!r} is not a usable camera name ({one_line(err)})"
            ) from err
    return list(names)


#: Run-time parameters that live in `pipeline.Settings`, with their conversion.
RUN_TIME_SETTINGS: dict[str, Any] = {
    "top_k": int,
    "score_threshold": float,
    "max_rois": int,
    "publish_background": bool,
    "background_label": str,
    "publish_overlay": bool,
    "batch_wait_s": float,
}


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
    """Subscribe images (of one or several cameras), classify the newest frames on a worker
    thread, publish results per camera.

    Start-up is split the way a lifecycle node's transitions are: `_configure` (parameters,
    model), `_activate` (publishers, cameras' subscriptions, the worker, reload thread and
    timers); `_deactivate` stops the worker and destroys the cameras' endpoints, `_stop_reloads`
    ends the reload thread. The per-camera state is in `camera.Camera`, the processing in
    `pipeline.Pipeline`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            self._configure()
            self._activate()
        except BaseException:
            # A refused start-up (bad parameter, broken bundle) must not leave a half-built
            # node in the graph: a caller that goes on (a test, a launch retry) would see it.
            self._deactivate()
            self._stop_reloads()
            Node.destroy_node(self)
            raise

    # ---------------------------------------------------------------- configure / activate
    def _configure(self) -> None:
        """Parameters (validated before anything heavy), the model, the node-owned parameters."""
        self._worker: Worker | None = None
        self._cameras: list[Camera] = []
        config = declare_all(self)
        self._model_path: str = config["model_path"]
        self._backend_choice: str = config["backend"]
        self._num_threads: int = config["num_threads"]
        self._max_rate_hz: float = config["max_rate_hz"]
        self._output_format = resolve_output_format(config["output_format"])
        self._camera_names = check_cameras(self, config["cameras"])
        self._roi_source: str = config["roi_source"]
        self._settings = Settings(
            roi_source=self._roi_source,
            top_k=config["top_k"],
            score_threshold=config["score_threshold"],
            max_rois=config["max_rois"],
            publish_background=config["publish_background"],
            background_label=config["background_label"],
            publish_overlay=config["publish_overlay"],
            batch_rois=config["batch_rois"],
            fixed_rois=self._fixed_rois(config["rois"]),
            batch_wait_s=config["batch_wait_s"],
        )
        self._camera_config = CameraConfig(
            transport=config["image_transport"],
            qos_mode=config["qos"],
            roi_source=self._roi_source,
            output_format=self._output_format,
            sync_tolerance_ns=round(config["sync_tolerance_s"] * 1e9),
            sync_queue=config["sync_queue"],
        )
        if self._roi_source == "detections" and not vision_msgs_available():
            raise NodeConfigError(
                "roi_source 'detections' subscribes vision_msgs/Detection2DArray, but vision_msgs "
                "cannot be imported; install it (make venv builds it) or use roi_source fixed"
            )
        self._classifier = load_classifier(
            self._model_path, self._backend_choice, self._num_threads, self._max_batch()
        )
        self._serving_path = self._model_path
        self._owned = NodeOwnedWriter(self)
        declare_node_owned(self, self._classifier.class_names, self._serving_path)
        self.get_logger().info(
            f"loaded {self._model_path} ({len(self._classifier.class_names)} classes, "
            f"input {self._classifier.input_size}, backend {self._classifier.backend}, "
            f"crop {describe_policy(self._classifier.bundle)})"
        )
        self._reload_lock = threading.RLock()  # guards the request sequence and the swap
        self._reload_seq = 0
        self._reload_state = RELOAD_IDLE
        self._reload_requests: LatestFrameSlot[tuple[int, str]] = LatestFrameSlot()
        self._stop = threading.Event()

    def _fixed_rois(self, values: list[float]) -> tuple[Roi, ...]:
        try:
            rois = fixed_rois(values)
        except RoiConfigError as err:
            raise NodeConfigError(f"parameter {err}") from err
        if self._roi_source == "fixed" and not rois:
            raise NodeConfigError(
                "roi_source 'fixed' needs boxes: -p rois:=[x, y, w, h, ...] (pixels, top-left)"
            )
        return rois

    def _max_batch(self) -> int:
        """The most crops one cycle can have: what the warm-up prepares batches for."""
        per_frame = 1
        if self._roi_source == "fixed":
            per_frame = min(len(self._settings.fixed_rois), self._settings.max_rois)
        elif self._roi_source == "detections":
            per_frame = self._settings.max_rois
        return per_frame * max(1, len(self._camera_names))

    def _activate(self) -> None:
        """Publishers, cameras (subscriptions), the worker, the reload thread and the timers."""
        self._label_pub: Publisher | None = None
        if self._output_format == "vision_msgs":
            from vision_msgs.msg import LabelInfo

            self._label_pub = self.create_publisher(LabelInfo, "label_info", LATCHED_QOS)
            self._publish_label_info()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        names = self._camera_names or [""]
        self._frames: LatestFrames[Any] = LatestFrames(len(names))
        self._cameras = [
            Camera(i, name, self._camera_config, self._frames) for i, name in enumerate(names)
        ]
        for camera in self._cameras:
            camera.open(self, self._settings.publish_overlay)
        context = PipelineContext(
            classifier=lambda: self._classifier,
            settings=lambda: self._settings,
            now_ns=lambda: self.get_clock().now().nanoseconds,
            logger=self.get_logger(),
        )
        self._pipeline = Pipeline(self._cameras, self._frames, context)
        self._worker = Worker(self._pipeline, lambda: self._max_rate_hz)
        self._worker.start()
        self._reloader = threading.Thread(target=self._reload_loop, name="reload", daemon=True)
        self._reloader.start()
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        if self._camera_config.qos_mode == "auto":
            self.create_timer(QOS_RECHECK_PERIOD_S, self._match_publisher_qos)
            self._match_publisher_qos()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _deactivate(self) -> None:
        """Stop the worker, then destroy the cameras' subscriptions and publishers."""
        worker = getattr(self, "_worker", None)  # absent when start-up failed early
        if worker is not None:
            worker.stop()
            self._worker = None
        for camera in getattr(self, "_cameras", []):
            camera.close(self)

    def _stop_reloads(self) -> None:
        """End the reload thread (a load in progress finishes first)."""
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._reload_requests.close()
        reloader = getattr(self, "_reloader", None)
        if reloader is not None and reloader.is_alive():
            reloader.join(timeout=5.0)

    # ---------------------------------------------------------------- inputs and QoS
    @property
    def cameras(self) -> list[Camera]:
        """The node's cameras (one unnamed camera when the `cameras` parameter is empty)."""
        return list(self._cameras)

    @property
    def input_topic(self) -> str:
        """The fully resolved (remapped) image topic of the first camera."""
        return self._cameras[0].image_topic(self)

    @property
    def input_qos(self) -> QoSProfile:
        """The first camera's image subscription QoS (it changes under `qos:=auto`)."""
        image = self._cameras[0].image_input
        assert image is not None
        return image.profile

    @property
    def incompatible_qos_events(self) -> int:
        """DDS incompatible-QoS events on every input since start."""
        return sum(
            e.incompatible_events
            for c in self._cameras
            for e in (c.image_input, c.detections_input)
            if e is not None
        )

    @property
    def inference_errors(self) -> int:
        """Unexpected exceptions while classifying, since start (logged, never fatal)."""
        return self._pipeline.errors

    @property
    def worker_alive(self) -> bool:
        """Whether the classification thread runs (it must survive any frame)."""
        return self._worker is not None and self._worker.is_alive()

    @property
    def reload_status(self) -> str:
        """`idle`, `loading <path>` or `failed <path>: <reason>` (also in /diagnostics)."""
        return self._reload_state

    def _match_publisher_qos(self) -> None:
        """`qos:=auto`: follow the publishers' reliability/durability, like `ros2 bag record`."""
        for camera in self._cameras:
            camera.match_qos(self)

    # ---------------------------------------------------------------- outputs
    def _publish_label_info(self) -> None:
        if self._label_pub is not None:
            header = Header(stamp=self.get_clock().now().to_msg())
            self._label_pub.publish(
                build_label_info(
                    header, self._classifier.class_names, self._settings.score_threshold
                )
            )

    def _publish_diagnostics(self) -> None:
        classifier = self._classifier
        status = NodeStatus(
            backend=classifier.backend,
            model=str(classifier.bundle.path),
            model_reload=self._reload_state,
            roi_source=self._roi_source,
            errors=self._pipeline.errors,
            batch=self._pipeline.batches.snapshot(),
        )
        fqn = self.get_fully_qualified_name()
        names = (
            diagnostics_status_name(fqn),
            [camera_status_name(fqn, c.name) for c in self._cameras],
        )
        reports = [camera.report(self) for camera in self._cameras]
        self._diag_pub.publish(
            build_diagnostics(names, self.get_clock().now().to_msg(), status, reports)
        )

    # ---------------------------------------------------------------- run-time parameters
    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Apply the run-time parameters (one new `Settings` object); queue a model reload.

        Everything that can refuse the set is checked before anything changes.
        """
        by_name = {p.name: p.value for p in params}
        for name in NODE_OWNED:
            if name in by_name and not self._owned.allowed():
                return SetParametersResult(successful=False, reason=f"{name} {NODE_OWNED_REFUSAL}")
        changes: dict[str, Any] = {}
        if "rois" in by_name:
            try:
                rois = fixed_rois(check_number_array("rois", by_name["rois"]))
            except (RoiConfigError, NodeConfigError) as err:
                return SetParametersResult(successful=False, reason=one_line(err))
            if self._roi_source == "fixed" and not rois:
                return SetParametersResult(successful=False, reason="roi_source fixed needs rois")
            changes["fixed_rois"] = rois
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
        for name, convert in RUN_TIME_SETTINGS.items():
            if name in by_name:
                changes[name] = convert(by_name[name])
        if changes:
            self._settings = replace(self._settings, **changes)  # one swap: no half update
        if "score_threshold" in by_name:
            self._publish_label_info()
        if "max_rate_hz" in by_name:
            self._max_rate_hz = float(by_name["max_rate_hz"])
        if self._settings.publish_overlay:
            for camera in self._cameras:
                camera.ensure_overlay(self, publish_overlay=True)
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
            classifier = load_classifier(
                model_path, self._backend_choice, self._num_threads, self._max_batch()
            )
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
        self._deactivate()
        self._stop_reloads()
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
