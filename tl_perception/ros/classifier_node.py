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

Lifecycle: the node is an rclpy `LifecycleNode` (a managed node). `configure` reads the
parameters, builds the cameras and loads and warms up the model (a broken bundle fails the
transition with the one-line reason, and the node stays unconfigured); `activate` creates the
publishers and subscriptions and starts the worker; `deactivate` stops both and keeps the model;
`cleanup` releases the model; `shutdown` releases everything from any state. `autostart` (default
true) walks to active in the constructor, so `ros2 run` behaves as a plain node and a refused
start-up still raises (the console script exits 2 with one line). Parameters are declared in the
constructor, so they can be set in every state; /diagnostics runs in every state and reports it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.timer import Timer
from std_msgs.msg import Header

from tl_perception.bundle import Bundle, read_bundle
from tl_perception.errors import BundleError, TlPerceptionError, one_line
from tl_perception.ros.camera import OUTPUT_QOS, Camera, CameraConfig
from tl_perception.ros.diagnostics import (
    RELOAD_IDLE,
    NodeStatus,
    build_diagnostics,
    build_unconfigured_diagnostics,
)
from tl_perception.ros.hard_frames import CaptureParams, HardFrames
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
    PARAMETERS,
    SERVING_MODEL_PATH,
    check_choice,
    check_choices,
    check_number_array,
    declare_all,
    declare_node_owned,
)
from tl_perception.ros.pipeline import (
    LABEL_SETTINGS,
    Pipeline,
    PipelineContext,
    Settings,
    Worker,
    label_settings,
)
from tl_perception.ros.rois import Roi, RoiConfigError, fixed_rois
from tl_perception.ros.stats import LatestFrames, LatestFrameSlot

DIAGNOSTICS_PERIOD_S = 1.0
QOS_RECHECK_PERIOD_S = 1.0
#: The primary lifecycle states, spelled as lifecycle_msgs/State labels them.
UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED = "unconfigured", "inactive", "active", "finalized"
#: After `shutdown` the console script spins this long before it exits, so the reply to the
#: change_state request that finalized the node reaches the caller.
FINALIZED_GRACE_S = 0.5
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
    "max_roi_pixels": int,
    "frame_id_must_match": bool,
    "publish_background": bool,
    "background_label": str,
    "publish_overlay": bool,
    "batch_wait_s": float,
    **LABEL_SETTINGS,  # smoothing, smoothing_alpha, switch_frames, track_timeout_s, unknown_...
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

    def publish(self, class_names: Sequence[str], serving_model_path: str) -> None:
        """Show what serves: declare the parameters on the first configure, update them after.

        Declaring runs the on-set callback too (rclpy does), hence the flag around it.
        """
        if self._node.has_parameter(CLASS_NAMES):
            self.write({SERVING_MODEL_PATH: serving_model_path, CLASS_NAMES: list(class_names)})
            return
        self._local.active = True
        try:
            declare_node_owned(self._node, class_names, serving_model_path)
        finally:
            self._local.active = False

    def clear(self) -> None:
        """Nothing serves (cleanup): empty values, if they were ever declared."""
        if self._node.has_parameter(CLASS_NAMES):
            self.write({SERVING_MODEL_PATH: "", CLASS_NAMES: []})

    def write(self, values: dict[str, Any]) -> None:
        self._local.active = True
        try:
            results = self._node.set_parameters([_typed(n, v) for n, v in values.items()])
        finally:
            self._local.active = False
        for name, result in zip(values, results, strict=True):
            if not result.successful:
                self._node.get_logger().error(f"could not update {name}: {result.reason}")


def _typed(name: str, value: Any) -> Parameter:
    """A list is a string array even when empty (rclpy would type `[]` as a byte array)."""
    if isinstance(value, list):
        return Parameter(name, Parameter.Type.STRING_ARRAY, value)
    return Parameter(name, value=value)


class ClassifierNode(LifecycleNode):
    """Subscribe images (of one or several cameras), classify the newest frames on a worker
    thread, publish results per camera; a managed (lifecycle) node.

    What each transition does, and undoes when it fails:

    - configure (unconfigured -> inactive): read the parameters, build the cameras and the
      pipeline, load and warm up the model, start the reload thread; a refusal (broken bundle,
      bad parameter) is FAILURE with its one-line reason logged, and the node stays unconfigured;
    - activate (inactive -> active): publishers, the cameras' subscriptions, the worker, the QoS
      timer; deactivate (active -> inactive) stops and destroys them and keeps the model;
    - cleanup (inactive -> unconfigured): the reload thread ends, the model is released;
    - shutdown (any state -> finalized): everything above, whatever was running.

    An unexpected exception in a transition is ERROR: `on_error` releases everything and the
    node is unconfigured again. The per-camera state is in `camera.Camera`, the processing in
    `pipeline.Pipeline`. The `_on_configured` ... `_on_cleaned_up` hooks are where
    per-configuration resources (e.g. a capture writer) open and close.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lifecycle_state = UNCONFIGURED
        self._starting = False  # autostart in progress: a refusal is raised, not logged
        self._transition_error: Exception | None = None
        self._configure_error = ""  # one line, shown in /diagnostics while unconfigured
        self._owned = NodeOwnedWriter(self)
        self._reload_lock = threading.RLock()  # guards the request sequence and the swap
        self._reload_seq = 0
        self._reload_state = RELOAD_IDLE
        self._label_pub: Publisher | None = None
        self._qos_timer: Timer | None = None
        self._clear_configuration()
        try:
            config = declare_all(self)  # a value of the wrong type or choice stops start-up
            self._autostart = bool(config["autostart"])
            self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
            self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
            self.add_on_set_parameters_callback(self._on_set_parameters)
            if self._autostart:
                self._walk_to_active()
        except BaseException:
            # A refused start-up (bad parameter, broken bundle) must not leave a half-built
            # node in the graph: a caller that goes on (a test, a launch retry) would see it.
            self.destroy_node()
            raise
        if not self._autostart:
            self.get_logger().info(
                "autostart is false: unconfigured until a lifecycle manager configures and "
                f"activates it (ros2 lifecycle set {self.get_fully_qualified_name()} configure)"
            )

    def _walk_to_active(self) -> None:
        """`autostart`: configure, then activate; a failed step raises its error."""
        self._starting = True
        try:
            for trigger in (self.trigger_configure, self.trigger_activate):
                if trigger() != TransitionCallbackReturn.SUCCESS:
                    raise self._transition_error or NodeConfigError("start-up transition failed")
        finally:
            self._starting = False

    def _clear_configuration(self) -> None:
        """The unconfigured state: no model, no cameras, no pipeline, no reload thread."""
        self._classifier: Any = None
        self._serving_path = ""
        self._settings: Settings | None = None
        self._cameras: list[Camera] = []
        self._pipeline: Pipeline | None = None
        self._worker: Worker | None = None  # one per configuration: started on each activate
        self._hard_frames: HardFrames | None = None
        self._reloader: threading.Thread | None = None
        self._stop = threading.Event()
        self._reload_requests: LatestFrameSlot[tuple[int, str]] = LatestFrameSlot()

    @property
    def lifecycle_state(self) -> str:
        """The primary state: unconfigured, inactive, active or finalized."""
        return self._lifecycle_state

    # ---------------------------------------------------------------- lifecycle transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """unconfigured -> inactive: parameters, cameras, the model."""
        return self._transition("configure", self._configure, INACTIVE, self._cleanup)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """inactive -> active: subscribe, publish, classify."""
        return self._transition("activate", self._activate, ACTIVE, self._deactivate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """active -> inactive: inputs and outputs gone, the model kept."""
        return self._transition("deactivate", self._deactivate, INACTIVE, self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """inactive -> unconfigured: the model released."""
        return self._transition("cleanup", self._cleanup, UNCONFIGURED, self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Any primary state -> finalized: threads stopped, everything released."""
        return self._transition("shutdown", self._shutdown, FINALIZED, self._shutdown)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After an unexpected exception in a transition: release everything, unconfigured."""
        try:
            self._deactivate()
            self._cleanup()
        except Exception as err:  # cannot even release: finalized (rclpy's rule for FAILURE)
            self.get_logger().error(f"error processing failed: {one_line(err)}; finalized")
            self._lifecycle_state = FINALIZED
            return TransitionCallbackReturn.FAILURE
        self._lifecycle_state = UNCONFIGURED
        return TransitionCallbackReturn.SUCCESS

    def _transition(
        self, name: str, step: Callable[[], None], goal: str, undo: Callable[[], None]
    ) -> TransitionCallbackReturn:
        """Run one transition's `step`; on an exception `undo` what it half did.

        rclpy itself turns an exception into ERROR without a word, hence the logging here.
        """
        self._transition_error = None
        try:
            step()
        except Exception as err:
            self._transition_error = err
            return self._failed(name, err, undo)
        if name == "configure":
            self._configure_error = ""
        self._lifecycle_state = goal
        self.get_logger().info(f"{name}: now {goal}")
        return TransitionCallbackReturn.SUCCESS

    def _failed(
        self, name: str, err: Exception, undo: Callable[[], None]
    ) -> TransitionCallbackReturn:
        """A refused configure or activate (TlPerceptionError: broken bundle, bad parameter) is
        FAILURE, logged in one line (during autostart the caller raises it instead), and the
        node stays where it was. Anything else, and any failure to release, is ERROR: error
        processing (`on_error`) releases everything."""
        refused = isinstance(err, TlPerceptionError) and name in ("configure", "activate")
        if name == "configure":
            self._configure_error = one_line(err)
        try:
            undo()
        except Exception as undo_err:  # report the first error; error processing follows
            self.get_logger().error(f"{name}: undoing failed too: {one_line(undo_err)}")
            refused = False
        if not (self._starting and refused):
            why = one_line(err) if refused else f"{type(err).__name__}: {one_line(err)}"
            self.get_logger().error(
                f"{name} failed: {why}; "
                + (f"still {self._lifecycle_state}" if refused else "error processing follows")
            )
        return TransitionCallbackReturn.FAILURE if refused else TransitionCallbackReturn.ERROR

    # ---------------------------------------------------------------- configure / cleanup
    def _configure(self) -> None:
        """Parameters (validated before anything heavy), cameras, the model, the node-owned
        parameters, the reload thread."""
        config = self._read_parameters()
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
            max_roi_pixels=config["max_roi_pixels"],
            frame_id_must_match=config["frame_id_must_match"],
            publish_background=config["publish_background"],
            background_label=config["background_label"],
            publish_overlay=config["publish_overlay"],
            batch_rois=config["batch_rois"],
            fixed_rois=self._fixed_rois(config["rois"]),
            batch_wait_s=config["batch_wait_s"],
            **label_settings(config),
        )
        self._hard_frames = HardFrames(
            CaptureParams.from_config(config), self._roi_source != "full_frame", self.get_logger()
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
        self._owned.publish(self._classifier.class_names, self._serving_path)
        self.get_logger().info(
            f"loaded {self._model_path} ({len(self._classifier.class_names)} classes, "
            f"input {self._classifier.input_size}, backend {self._classifier.backend}, "
            f"crop {describe_policy(self._classifier.bundle)})"
        )
        self._build_cameras()
        self._start_reloads()
        self._on_configured()

    def _read_parameters(self) -> dict[str, Any]:
        """Every parameter's value now (run-time sets since start-up count), converted and
        checked as `declare_all` does at declaration."""
        values = {}
        for name, spec in PARAMETERS.items():
            value = self.get_parameter_or(name).value  # None: a typed array never set
            if spec.kind == "number_array":
                value = check_number_array(name, value)
            elif spec.kind == "string_array":
                value = [] if value is None else list(value)
            check_choice(name, value)
            values[name] = value
        return values

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
        """The most crops one cycle can have: what the warm-up prepares batches for (ROI
        modes: `max_rois` is the cycle's, shared by the cameras)."""
        assert self._settings is not None
        cameras = max(1, len(self._camera_names))
        if self._roi_source == "fixed":
            return min(len(self._settings.fixed_rois) * cameras, self._settings.max_rois)
        if self._roi_source == "detections":
            return self._settings.max_rois
        return cameras

    def _build_cameras(self) -> None:
        """The cameras (their counters live until cleanup) and the pipeline over them."""
        names = self._camera_names or [""]
        frames: LatestFrames[Any] = LatestFrames(len(names))
        self._cameras = [
            Camera(i, name, self._camera_config, frames, self._frame_id_must_match)
            for i, name in enumerate(names)
        ]
        context = PipelineContext(
            classifier=lambda: self._classifier,
            settings=self._cycle_settings,
            now_ns=lambda: self.get_clock().now().nanoseconds,
            logger=self.get_logger(),
            hard_frames=self._hard_frames,
        )
        self._pipeline = Pipeline(self._cameras, frames, context)
        self._worker = Worker(self._pipeline, lambda: self._max_rate_hz)

    def _frame_id_must_match(self) -> bool:
        """The run-time `frame_id_must_match` (the cameras' callbacks ask it per pair)."""
        settings = self._settings
        return settings.frame_id_must_match if settings is not None else True

    def _cycle_settings(self) -> Settings:
        """The settings a cycle uses; the worker runs only while configured."""
        settings = self._settings
        assert settings is not None, "a cycle ran on an unconfigured node"
        return settings

    def _cleanup(self) -> None:
        """Release the model and the cameras; the node-owned parameters show that nothing
        serves."""
        self._release()
        self._owned.clear()

    def _release(self) -> None:
        """End the reload thread, then drop the model, the cameras and the pipeline."""
        self._on_cleaned_up()
        self._stop_reloads()
        self._clear_configuration()

    # ---------------------------------------------------------------- activate / deactivate
    def _activate(self) -> None:
        """Publishers, then the cameras' subscriptions, the worker and the QoS timer."""
        assert self._pipeline is not None and self._settings is not None
        if self._output_format == "vision_msgs":
            from vision_msgs.msg import LabelInfo

            self._label_pub = self.create_publisher(LabelInfo, "label_info", LATCHED_QOS)
            self._publish_label_info()
        for camera in self._cameras:
            camera.open(self, self._settings.publish_overlay)
        assert self._worker is not None
        self._worker.start()
        if self._camera_config.qos_mode == "auto":
            self._qos_timer = self.create_timer(QOS_RECHECK_PERIOD_S, self._match_publisher_qos)
            self._match_publisher_qos()
        self._on_activated()

    def _deactivate(self) -> None:
        """Stop the worker, then destroy the cameras' subscriptions and every output publisher
        (nothing is published while inactive); the model stays loaded."""
        if self._worker is not None and not self._worker.stop():
            self.get_logger().warning(
                "the classification thread is still in a cycle after 5 s; it ends after it "
                "(an activate before then resumes it: never two at once)"
            )
        if self._qos_timer is not None:
            self.destroy_timer(self._qos_timer)
            self._qos_timer = None
        for camera in self._cameras:
            camera.close(self)
        with self._reload_lock:  # a reload thread may be publishing label_info right now
            if self._label_pub is not None:
                self.destroy_publisher(self._label_pub)
                self._label_pub = None
        self._on_deactivated()

    def _shutdown(self) -> None:
        """Whatever runs stops, everything is released; /diagnostics stops too."""
        self._deactivate()
        self._cleanup()
        self._diag_timer.cancel()

    # ---------------------------------------------------------------- hooks
    # Per-configuration resources (e.g. the hard-frame capture writer) open and close here.
    # Each close hook must be idempotent: it also runs when a transition failed half-way, on
    # shutdown and error processing, and from destroy_node, whatever was opened.
    def _on_configured(self) -> None:
        """End of configure: model, settings and cameras exist. Raise TlPerceptionError to
        refuse the configuration (the transition fails and `_on_cleaned_up` runs)."""

    def _on_activated(self) -> None:
        """End of activate: the worker runs and the inputs are subscribed."""
        self._open_capture()

    def _on_deactivated(self) -> None:
        """End of deactivate (the worker has stopped: nothing more is classified)."""
        self._close_capture()

    def _on_cleaned_up(self) -> None:
        """Start of cleanup, shutdown or a failed configure, before the model is released."""
        self._close_capture()

    def _open_capture(self) -> None:
        """The hard-frame capture for the serving bundle (CaptureError fails the activate)."""
        if self._hard_frames is not None:
            self._hard_frames.open(lambda: self._classifier.bundle)

    def _close_capture(self) -> None:
        """Write what the capture holds and release its directory; idempotent."""
        if self._hard_frames is not None:
            self._hard_frames.close()

    # ---------------------------------------------------------------- the reload thread
    def _start_reloads(self) -> None:
        """One reload thread per configuration: hot reload works while inactive too."""
        self._stop = threading.Event()
        self._reload_requests = LatestFrameSlot()
        self._reloader = threading.Thread(
            target=self._reload_loop,
            args=(self._stop, self._reload_requests),
            name="reload",
            daemon=True,
        )
        self._reloader.start()

    def _stop_reloads(self) -> None:
        """End the reload thread (a load in progress finishes first, and is thrown away)."""
        with self._reload_lock:
            self._reload_seq += 1  # whatever is loading now is stale
            self._reload_state = RELOAD_IDLE
        self._stop.set()
        self._reload_requests.close()
        reloader = self._reloader
        if reloader is not None and reloader.is_alive():
            reloader.join(timeout=5.0)
        self._reloader = None

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
        """Unexpected exceptions while classifying, since configure (logged, never fatal)."""
        return self._pipeline.errors if self._pipeline is not None else 0

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
        """Latched label_info, while active (the publisher exists only then)."""
        with self._reload_lock:  # deactivate destroys the publisher under the same lock
            settings, classifier = self._settings, self._classifier
            if self._label_pub is None or settings is None or classifier is None:
                return
            header = Header(stamp=self.get_clock().now().to_msg())
            self._label_pub.publish(
                build_label_info(header, classifier.class_names, settings.score_threshold)
            )

    def _publish_diagnostics(self) -> None:
        """Every state: unconfigured (and why, after a failed configure), inactive or active
        with the cameras' statistics."""
        fqn = self.get_fully_qualified_name()
        stamp = self.get_clock().now().to_msg()
        classifier, pipeline = self._classifier, self._pipeline
        if classifier is None or pipeline is None:
            self._diag_pub.publish(
                build_unconfigured_diagnostics(
                    diagnostics_status_name(fqn),
                    stamp,
                    str(self.get_parameter("model_path").value),
                    self._configure_error,
                )
            )
            return
        status = NodeStatus(
            backend=classifier.backend,
            model=str(classifier.bundle.path),
            model_reload=self._reload_state,
            roi_source=self._roi_source,
            errors=pipeline.errors,
            batch=pipeline.batches.snapshot(),
            lifecycle_state=self._lifecycle_state,
            extra=pipeline.report(),
        )
        names = (
            diagnostics_status_name(fqn),
            [camera_status_name(fqn, c.name) for c in self._cameras],
        )
        reports = [camera.report(self) for camera in self._cameras]
        self._diag_pub.publish(build_diagnostics(names, stamp, status, reports))

    # ---------------------------------------------------------------- run-time parameters
    def _on_set_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        """Apply the run-time parameters (one new `Settings` object); queue a model reload.

        Everything that can refuse the set is checked before anything changes.
        """
        by_name = {p.name: p.value for p in params}
        for name in NODE_OWNED:
            if name in by_name and not self._owned.allowed():
                return SetParametersResult(successful=False, reason=f"{name} {NODE_OWNED_REFUSAL}")
        try:
            check_choices(by_name)  # e.g. smoothing: rclpy checks no string choices
        except NodeConfigError as err:
            return SetParametersResult(successful=False, reason=one_line(err))
        changes: dict[str, Any] = {}
        if "rois" in by_name:
            try:
                rois = fixed_rois(check_number_array("rois", by_name["rois"]))
            except (RoiConfigError, NodeConfigError) as err:
                return SetParametersResult(successful=False, reason=one_line(err))
            if self.get_parameter("roi_source").value == "fixed" and not rois:
                return SetParametersResult(successful=False, reason="roi_source fixed needs rois")
            changes["fixed_rois"] = rois
        new_model = by_name.get("model_path")
        if new_model is not None and self._settings is not None:
            try:
                read_bundle(new_model)  # cheap validation; the network loads in the background
            except BundleError as err:
                reason = one_line(err)
                self.get_logger().error(
                    f"refused model_path {new_model!r}: {reason}; still serving "
                    f"{self._serving_path!r}"
                )
                return SetParametersResult(successful=False, reason=reason)
        if self._settings is None:
            # Unconfigured: nothing serves; the values are stored and read at the next configure
            # (model_path included: a broken bundle fails that configure, with the reason).
            return SetParametersResult(successful=True)
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

    def _reload_loop(
        self, stop: threading.Event, requests: LatestFrameSlot[tuple[int, str]]
    ) -> None:
        """One reload at a time; a request replaced before it was taken is never loaded.

        `stop` and `requests` are this configuration's: a thread that outlives its cleanup
        never serves the next configuration's requests."""
        while not stop.is_set():
            request = requests.take(timeout=0.2)
            if request is None:
                continue
            try:
                self._load_and_swap(*request)
            except Exception as err:  # the reload thread must outlive any bundle
                self.get_logger().error(f"hot reload failed unexpectedly: {one_line(err)}")

    def _load_and_swap(self, seq: int, model_path: str) -> None:
        """Load a bundle next to the serving one and swap it in, unless a newer request came
        (or cleanup, which makes every request stale)."""
        with self._reload_lock:
            if seq != self._reload_seq or model_path == self._serving_path:
                return  # superseded, or asks for what already serves
            max_batch = self._max_batch()
        self.get_logger().info(f"loading {model_path!r} in the background")
        try:
            classifier = load_classifier(
                model_path, self._backend_choice, self._num_threads, max_batch
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
                self.get_logger().info(
                    f"loaded {model_path!r}, discarded: a newer request came (or cleanup)"
                )
                return
            old_path = self._serving_path
            self._classifier = classifier  # one assignment: the worker sees old or new, whole
            self._serving_path = model_path
            self._reload_state = RELOAD_IDLE
            self._owned.write(
                {SERVING_MODEL_PATH: model_path, CLASS_NAMES: list(classifier.class_names)}
            )
        self._publish_label_info()
        if self._hard_frames is not None:
            self._hard_frames.reopen(classifier.bundle)  # the new model's capture context
        self.get_logger().info(
            f"swapped in {model_path!r} ({len(classifier.class_names)} classes, "
            f"backend {classifier.backend}); was {old_path!r}"
        )

    # ---------------------------------------------------------------- shutdown
    def destroy_node(self) -> None:
        """Whatever the state (Ctrl-C ends an active node): stop the threads, release all."""
        self._deactivate()
        self._release()
        super().destroy_node()


def spin_until_finalized(executor: SingleThreadedExecutor, node: ClassifierNode) -> None:
    """Spin until the context ends (Ctrl-C) or the node is finalized (`shutdown`): a finalized
    node can never serve again, so the process ends; it spins a moment longer so the caller of
    that shutdown gets its reply."""
    while rclpy.ok() and node.lifecycle_state != FINALIZED:
        executor.spin_once(timeout_sec=0.1)
    deadline = time.monotonic() + FINALIZED_GRACE_S
    while rclpy.ok() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)


def main(args: list[str] | None = None) -> int:
    """Console script `classifier_node` (what `ros2 run tl_perception classifier_node` starts)."""
    rclpy.init(args=args)
    node = None
    try:
        node = ClassifierNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin_until_finalized(executor, node)
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
