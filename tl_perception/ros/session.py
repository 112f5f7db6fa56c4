"""One configuration of the classifier node, from `configure` to `cleanup`.

A `Session` is what a configured node holds: the config of the last configure (swapped by
run-time sets), the serving model and its reload thread (`reload.Reloader`), the cameras, the
pipeline and its worker, the hard-frame capture, and the outputs that exist only while active
(the latched `label_info`, the QoS re-check timer). Building one loads and warms up the model, so
a broken bundle or a bad parameter fails before anything is subscribed; `activate` and
`deactivate` open and close its graph side, `release` ends its threads. The lifecycle itself
(states, transitions, refusals) is `classifier_node`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Set
from typing import Any

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.timer import Timer
from std_msgs.msg import Header

from tl_perception.bundle import read_bundle
from tl_perception.crop import describe_policy
from tl_perception.errors import BundleError, NodeConfigError, one_line
from tl_perception.ros.camera import Camera, CameraConfig, check_camera_names
from tl_perception.ros.config import NodeConfig
from tl_perception.ros.diagnostics import NodeStatus, build_diagnostics
from tl_perception.ros.handoff import LatestFrames
from tl_perception.ros.hard_frames import HardFrames
from tl_perception.ros.messages import (
    build_label_info,
    resolve_output_format,
    vision_msgs_available,
)
from tl_perception.ros.names import camera_status_name, diagnostics_status_name
from tl_perception.ros.params import NodeOwnedWriter
from tl_perception.ros.pipeline import Pipeline, PipelineContext, Worker
from tl_perception.ros.reload import Reloader, Serving, load_classifier

QOS_RECHECK_PERIOD_S = 1.0
LATCHED_QOS = QoSProfile(
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


class Session:
    """The model, cameras, pipeline, worker, reload thread and capture of one configuration."""

    def __init__(self, node: Node, config: NodeConfig, owned: NodeOwnedWriter) -> None:
        """Check what the parameters need, load and warm up the model, build the rest; raises
        TlPerceptionError (a bad parameter, a broken bundle) with nothing left running."""
        self.config = config  # swapped by `apply`; a cycle reads it once
        self._node = node
        self._owned = owned
        self._logs = node.get_logger()
        output_format = resolve_output_format(config.output_format)
        check_camera_names(node, config.cameras)
        if config.pairs_detections and not vision_msgs_available():
            raise NodeConfigError(
                "roi_source 'detections' subscribes vision_msgs/Detection2DArray, but vision_msgs "
                "cannot be imported; install it (make venv builds it) or use roi_source fixed"
            )
        self._capture = HardFrames(config.capture(), config.crops_rois, self._logs)
        classifier = self._load(config.model_path)
        owned.publish(classifier.class_names, config.model_path)
        self._logs.info(
            f"loaded {config.model_path} ({len(classifier.class_names)} classes, input "
            f"{classifier.input_size}, backend {classifier.backend}, bundle takes "
            f"{describe_policy(classifier.bundle.crop_policy)})"
        )
        names = list(config.cameras) or [""]
        frames: LatestFrames[Any] = LatestFrames(len(names))
        camera_config = CameraConfig.of(config, output_format)
        self.cameras = [
            Camera(i, name, camera_config, frames, self._logs, self._frame_id_must_match)
            for i, name in enumerate(names)
        ]
        self._reloader = Reloader(
            Serving(classifier, config.model_path), self._load, self._logs, self._swapped
        )
        context = PipelineContext(
            classifier=lambda: self._reloader.current().classifier,
            config=lambda: self.config,
            now_ns=lambda: node.get_clock().now().nanoseconds,
            logger=self._logs,
            hard_frames=self._capture,
        )
        self.pipeline = Pipeline(self.cameras, frames, context)
        self._worker = Worker(self.pipeline)  # one per configuration: started on each activate
        self._outputs = threading.Lock()  # label_info: the reload thread publishes it too
        self._label_pub: Publisher | None = None
        self._qos_timer: Timer | None = None

    # ------------------------------------------------------------ activate / deactivate
    def activate(self) -> None:
        """Publishers, then the cameras' subscriptions, the worker, the QoS re-check and the
        capture (which never fails the activate: a capture problem turns it off)."""
        node, config = self._node, self.config
        if self.cameras[0].config.output_format == "vision_msgs":
            from vision_msgs.msg import LabelInfo

            with self._outputs:
                self._label_pub = node.create_publisher(LabelInfo, "label_info", LATCHED_QOS)
            self.publish_label_info()
        for camera in self.cameras:
            camera.open(node, config.publish_overlay)
        self._worker.start()
        if config.qos == "auto":
            self._qos_timer = node.create_timer(QOS_RECHECK_PERIOD_S, self._match_publisher_qos)
            self._match_publisher_qos()
        self._capture.open(lambda: self._reloader.current().classifier.bundle)

    def deactivate(self) -> None:
        """Stop the worker, then destroy the cameras' subscriptions and every output publisher
        (nothing is published while inactive) and close the capture; the model stays loaded.
        Idempotent: it also runs after a half-done activate."""
        if not self._worker.stop():
            self._logs.warning(
                "the classification thread is still in a cycle after 5 s; it ends after it "
                "(an activate before then resumes it: never two at once)"
            )
        if self._qos_timer is not None:
            self._node.destroy_timer(self._qos_timer)
            self._qos_timer = None
        for camera in self.cameras:
            camera.close(self._node)
        with self._outputs:
            if self._label_pub is not None:
                self._node.destroy_publisher(self._label_pub)
                self._label_pub = None
        self._capture.close()

    def release(self) -> None:
        """Write what the capture holds, end the reload thread (a load in progress finishes and
        is thrown away); idempotent."""
        self._capture.close()
        self._reloader.stop()

    # ------------------------------------------------------------ run-time parameters
    def check_bundle(self, model_path: str) -> None:
        """A `model_path` set: the bundle's metadata, at once (the network loads later)."""
        try:
            read_bundle(model_path)
        except BundleError as err:
            self._logs.error(
                f"refused model_path {model_path!r}: {one_line(err)}; still serving "
                f"{self._reloader.current().path!r}"
            )
            raise

    def apply(self, config: NodeConfig, names: Set[str]) -> None:
        """Swap in the config of a run-time set of the parameters `names` (one swap: no half
        update); a new `model_path` is queued for the reload thread."""
        self.config = config
        if "score_threshold" in names:
            self.publish_label_info()
        if config.publish_overlay:
            for camera in self.cameras:
                if camera.is_open:  # active
                    camera.ensure_overlay(self._node, publish_overlay=True)
        if "model_path" in names:
            self._reloader.request(config.model_path)

    # ------------------------------------------------------------ outputs
    def publish_label_info(self) -> None:
        """Latched label_info, while active (the publisher exists only then)."""
        with self._outputs:  # deactivate destroys the publisher under the same lock
            if self._label_pub is None:
                return
            header = Header(stamp=self._node.get_clock().now().to_msg())
            names = self._reloader.current().classifier.class_names
            self._label_pub.publish(build_label_info(header, names, self.config.score_threshold))

    def diagnostics(self, stamp: Time, lifecycle_state: str) -> DiagnosticArray:
        """The node's status and one per named camera (timer thread)."""
        fqn = self._node.get_fully_qualified_name()
        serving = self._reloader.current()
        status = NodeStatus(
            backend=serving.classifier.backend,
            model=str(serving.classifier.bundle.path),
            model_reload=self._reloader.status(),
            roi_source=self.config.roi_source,
            errors=self.pipeline.errors,
            batch=self.pipeline.batches.snapshot(),
            lifecycle_state=lifecycle_state,
            extra=self.pipeline.report(),
        )
        names = (
            diagnostics_status_name(fqn),
            [camera_status_name(fqn, c.name) for c in self.cameras],
        )
        reports = [camera.report(self._node) for camera in self.cameras]
        return build_diagnostics(names, stamp, status, reports)

    # ------------------------------------------------------------ callbacks
    def _load(self, model_path: str) -> Any:
        """The reload thread's loader: warmed up for the most crops a cycle can have now."""
        config = self.config
        return load_classifier(model_path, config.backend, config.num_threads, config.max_batch())

    def _swapped(self, new: Serving, old: Serving) -> None:
        """After a hot reload (reload thread): show what serves, its label info, its capture."""
        classifier = new.classifier
        self._owned.publish(classifier.class_names, new.path)
        self.publish_label_info()
        self._capture.reopen(classifier.bundle)  # the new model's capture context
        self._logs.info(
            f"swapped in {new.path!r} ({len(classifier.class_names)} classes, backend "
            f"{classifier.backend}); was {old.path!r}"
        )

    def _frame_id_must_match(self) -> bool:
        """The run-time `frame_id_must_match` (the cameras' callbacks ask it per pair)."""
        return self.config.frame_id_must_match

    def _match_publisher_qos(self) -> None:
        """`qos:=auto`: follow the publishers' reliability/durability, like `ros2 bag record`."""
        for camera in self.cameras:
            camera.match_qos(self._node)
