"""One camera of the classifier node: its topics, subscriptions, publishers and counters.

The node makes one `Camera` per name in `cameras` (or one unnamed camera on `image`). A camera
owns everything that is per camera: the input subscriptions (image, and detections in
`roi_source:=detections`) with their QoS rule, the pairing of images with detections, its
latest-frame slot on the shared `LatestFrames` board, its output publishers, its counters for
`/diagnostics` and its log throttle (`warn`, `warn_once`). `open` creates the subscriptions and
publishers and `close` destroys them, so a lifecycle node can call them from activate and
deactivate; nothing else here touches the graph. The processing of frames lives in
`pipeline.py`; a camera that was never opened still takes frames through `on_image` and
`on_detections`, which is how the graph-free tests drive it.

All topic names are relative (`N/image`, `N/classification`, ...), so namespaces and remaps
apply as usual.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image

from tl_perception.crop import REASONS
from tl_perception.errors import NodeConfigError, one_line
from tl_perception.ros import qos as qos_rules
from tl_perception.ros.budget import OVER_BUDGET
from tl_perception.ros.config import NodeConfig, QosMode, Transport
from tl_perception.ros.diagnostics import CameraReport, PairingPeriod
from tl_perception.ros.handoff import LatestFrames
from tl_perception.ros.messages import OutputFormat, classification_type, detections_type
from tl_perception.ros.pairing import Pair, PairCounts, StampPairer
from tl_perception.ros.qos import AutoQosInput
from tl_perception.ros.rois import frame_ids_differ
from tl_perception.ros.stats import FrameStats, RoiStats
from tl_perception.ros.throttle import Throttle
from tl_perception.stamps import SEC, stamp_to_ns

OUTPUT_QOS = QoSProfile(depth=10)
OVERLAY_DEPTH = 2
#: A camera logs each kind of repeated warning (bad frames, unpaired messages, stamps that jump
#: back, ROIs over a limit) at most this often, with the counts in between where it has them.
LOG_PERIOD_S = 5.0


@dataclass(frozen=True)
class CameraTopics:
    """A camera's relative topic names: `image`, ... for the unnamed camera, `N/image`, ...
    for camera N."""

    name: str
    image: str
    detections: str
    classification: str
    classified_detections: str
    overlay: str

    @classmethod
    def of(cls, name: str) -> CameraTopics:
        prefix = f"{name}/" if name else ""
        return cls(
            name=name,
            image=f"{prefix}image",
            detections=f"{prefix}detections",
            classification=f"{prefix}classification",
            classified_detections=f"{prefix}classified_detections",
            overlay=f"{prefix}classification/overlay",
        )


@dataclass(frozen=True)
class CameraConfig:
    """The parameters that shape every camera: all read-only, so fixed per configuration."""

    transport: Transport
    qos_mode: QosMode
    output_format: OutputFormat
    crops_rois: bool = False  # ROI mode: results on classified_detections
    pairs_detections: bool = False  # roi_source detections: a pairer, a detections input
    sync_tolerance_ns: int = 0
    sync_queue: int = 10

    @classmethod
    def of(cls, config: NodeConfig, output_format: OutputFormat) -> CameraConfig:
        return cls(
            transport=config.image_transport,
            qos_mode=config.qos,
            output_format=output_format,
            crops_rois=config.crops_rois,
            pairs_detections=config.pairs_detections,
            sync_tolerance_ns=round(config.sync_tolerance_s * SEC),
            sync_queue=config.sync_queue,
        )

    @property
    def compressed(self) -> bool:
        return self.transport == "compressed"


def check_camera_names(node: Node, names: Sequence[str]) -> None:
    """NodeConfigError unless every `cameras` name makes valid relative topic names."""
    for name in names:
        try:
            if not name or name.startswith(("/", "~")):
                raise ValueError("must be a relative name")
            node.resolve_topic_name(f"{name}/image")
        except Exception as err:  # rclpy raises its own validation errors
            raise NodeConfigError(
                f"parameter cameras: {name!r} is not a usable camera name ({one_line(err)})"
            ) from err


class Camera:
    """Per-camera inputs, outputs and counters; the worker reads frames from `frames[index]`.

    `must_match()` is the current `frame_id_must_match` (a run-time parameter): a pair whose
    detections name another frame than its image is refused here, before it could replace a
    good pair waiting for the worker.
    """

    def __init__(
        self,
        index: int,
        name: str,
        config: CameraConfig,
        frames: LatestFrames[Any],
        logger: Any,
        must_match: Callable[[], bool] = lambda: True,
    ) -> None:
        self.index = index
        self.name = name
        self.config = config
        self.logger = logger  # any object with info, warning and error (the node's)
        self.topics = CameraTopics.of(name)
        self.stats = FrameStats()
        self.rois = RoiStats((*REASONS, OVER_BUDGET)) if config.crops_rois else None
        self.pairer: StampPairer[Any, Any] | None = None
        if config.pairs_detections:
            self.pairer = StampPairer(config.sync_tolerance_ns, config.sync_queue)
        self.detections_received = 0
        self._frames = frames
        self._must_match = must_match
        self._image: AutoQosInput | None = None
        self._detections: AutoQosInput | None = None
        self.result_pub: Publisher | None = None
        self.overlay_pub: Publisher | None = None
        self._pair_last = PairCounts()
        self._mismatches_last = 0
        self._unpaired = _Unpaired()
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # `warn_once` keys (worker and timer threads)
        self._throttle = Throttle(LOG_PERIOD_S)

    @property
    def label(self) -> str:
        """The camera's name in log lines."""
        return self.name or "(default)"

    # ------------------------------------------------------------ graph: create and destroy
    def open(self, node: Node, publish_overlay: bool) -> None:
        """Create this camera's publishers, then its subscriptions (frames flow after this)."""
        if self.config.crops_rois:
            out_type, out_topic = (
                detections_type(self.config.output_format),
                self.topics.classified_detections,
            )
        else:
            out_type, out_topic = (
                classification_type(self.config.output_format),
                self.topics.classification,
            )
        self.result_pub = node.create_publisher(out_type, out_topic, OUTPUT_QOS)
        self.ensure_overlay(node, publish_overlay)
        image_type = CompressedImage if self.config.compressed else Image
        self._image = AutoQosInput(
            image_type, self.image_topic(node), self.on_image, self.config.qos_mode
        )
        self._image.open(node, reason=f"qos:={self.config.qos_mode}")
        if self.pairer is not None:
            from vision_msgs.msg import Detection2DArray

            topic = node.resolve_topic_name(self.topics.detections)
            self._detections = AutoQosInput(
                Detection2DArray, topic, self.on_detections, self.config.qos_mode
            )
            self._detections.open(node, reason=f"qos:={self.config.qos_mode}")

    def close(self, node: Node) -> None:
        """Destroy subscriptions first (no frame arrives any more), then the publishers; frames
        and detections still waiting are forgotten."""
        for endpoint in (self._image, self._detections):
            if endpoint is not None:
                endpoint.close(node)
        self._frames.discard(self.index)
        if self.pairer is not None:
            self.pairer.clear()
        for pub in (self.result_pub, self.overlay_pub):
            if pub is not None:
                node.destroy_publisher(pub)
        self.result_pub = self.overlay_pub = None

    def ensure_overlay(self, node: Node, publish_overlay: bool) -> None:
        """Create the overlay publisher the first time `publish_overlay` is on."""
        if publish_overlay and self.overlay_pub is None:
            self.overlay_pub = node.create_publisher(Image, self.topics.overlay, OVERLAY_DEPTH)

    @property
    def is_open(self) -> bool:
        """Between `open` and `close`: results can be published."""
        return self.result_pub is not None

    def publish_result(self, msg: Any) -> None:
        """On `classification` or `classified_detections` (nothing once closed)."""
        publisher = self.result_pub
        if publisher is not None:
            publisher.publish(msg)

    def overlay_wanted(self) -> bool:
        """Whether an overlay publisher exists and something subscribes to it (drawing costs)."""
        publisher = self.overlay_pub
        return publisher is not None and publisher.get_subscription_count() > 0

    def publish_overlay(self, msg: Any) -> None:
        publisher = self.overlay_pub
        if publisher is not None:
            publisher.publish(msg)

    def image_topic(self, node: Node) -> str:
        """The resolved (remapped) image topic; `<image>/compressed` as image_transport does."""
        base = node.resolve_topic_name(self.topics.image)
        return f"{base}/compressed" if self.config.compressed else base

    def match_qos(self, node: Node) -> None:
        for endpoint in (self._image, self._detections):
            if endpoint is not None:
                endpoint.match(node)

    @property
    def image_input(self) -> AutoQosInput | None:
        return self._image

    @property
    def detections_input(self) -> AutoQosInput | None:
        return self._detections

    # ------------------------------------------------------------ logs (any thread)
    def warn_once(self, what: str) -> bool:
        """True the first time `what` is asked about on this camera (a warning logged once)."""
        with self._lock:
            first = what not in self._warned
            self._warned.add(what)
            return first

    def warn(self, what: str, text: str) -> None:
        """Log `text` unless a warning of kind `what` of this camera was logged in the last
        `LOG_PERIOD_S`."""
        if self._throttle.ready(what):
            self.logger.warning(f"camera {self.label}: {text}")

    # ------------------------------------------------------------ callbacks (executor thread)
    def on_image(self, msg: Any) -> None:
        """Keep only the newest frame (or, with detections, the newest paired frame)."""
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if self.stats.note_stamp(stamp_ns):
            self._log_jump(stamp_ns)
        if self.pairer is None:
            self.stats.count_received(dropped_one=self._frames.put(self.index, msg))
            return
        self.stats.count_received(dropped_one=False)
        self._offer_pair(self.pairer.add_image(stamp_ns, msg))

    def _log_jump(self, stamp_ns: int) -> None:
        """Stamps went back: say what restarts (at most every `LOG_PERIOD_S`)."""
        if self._throttle.ready("jump"):
            self.logger.info(
                f"camera {self.label}: image stamps jumped back to {stamp_ns / SEC:.3f} s (a "
                "looping bag, a simulator reset, a restarted driver): pairing, smoothing and "
                "track timeouts start again (counted as stamp_jumps_back)"
            )

    def on_detections(self, msg: Any) -> None:
        assert self.pairer is not None
        with self._lock:
            self.detections_received += 1
        self._offer_pair(self.pairer.add_detections(stamp_to_ns(msg.header.stamp), msg))

    def _offer_pair(self, pair: Pair[Any, Any] | None) -> None:
        """A pair formed: the camera's newest, unless refused for its frame_id."""
        if pair is None or not self._same_frame(pair):
            return
        if self._frames.put(self.index, pair):
            self.stats.count_dropped()

    def _same_frame(self, pair: Pair[Any, Any]) -> bool:
        """False when the detections name another frame_id than the image (both set) and
        `frame_id_must_match` refuses them; counted, and warned once per camera either way:
        cameras triggered together share stamps, so a miswired detections topic pairs exactly
        and its boxes would crop the wrong image."""
        ours = str(pair.image.header.frame_id)
        theirs = str(pair.detections.header.frame_id)
        if not frame_ids_differ(ours, theirs) or self.rois is None:
            return True
        refuse = self._must_match()
        self.rois.count_frame_id_mismatch(refused=refuse)
        if self.warn_once("frame_id"):
            verdict = (
                "refused, not classified (frame_id_must_match; counted as frame_id_refused)"
                if refuse
                else "classified anyway (frame_id_must_match is false)"
            )
            self.logger.warning(
                f"camera {self.label}: detections with frame_id {theirs!r} paired "
                f"with an image of frame_id {ours!r} (is the detections topic remapped to the "
                f"right camera?); {verdict}. Logged once; counted as frame_id_mismatches"
            )
        return not refuse

    # ------------------------------------------------------------ diagnostics (timer thread)
    def report(self, node: Node) -> CameraReport:
        """This period's report; logs unpaired messages (throttled) and a risky tolerance
        (once) as side effects."""
        image = self._image
        pairing = self._pairing_period()
        if pairing is not None:
            self._log_unpaired(pairing)
        extra = {}
        rois = self.rois.snapshot() if self.rois is not None else None
        if self.pairer is not None:
            extra["detections_topic"] = self._detections.topic if self._detections else ""
            extra["received_detections"] = str(self.detections_received)
            extra.update(self._tolerance_values(node, pairing))
        mismatches = rois.frame_id_mismatches if rois is not None else 0
        return CameraReport(
            name=self.name,
            snap=self.stats.snapshot(),
            input_topic=image.topic if image else self.topics.image,
            qos=qos_rules.describe(image.profile) if image else "closed",
            incompatible_qos_events=sum(
                e.incompatible_events for e in (self._image, self._detections) if e is not None
            ),
            incompatible_qos_publishers=sum(
                e.incompatible_now(node)
                for e in (self._image, self._detections)
                if e is not None and e.is_open
            ),
            rois=rois,
            pairing=pairing,
            extra=extra,
            frame_id_mismatches_in_period=mismatches - self._swap_mismatches(mismatches),
            tolerance_warning=self._tolerance_warning(pairing),
        )

    def _swap_mismatches(self, now: int) -> int:
        last, self._mismatches_last = self._mismatches_last, now
        return last

    def _tolerance_warning(self, pairing: PairingPeriod | None) -> str:
        """Non-empty while `sync_tolerance_s` is at least half the measured frame period: the
        nearest waiting partner may then be the next frame's, and greedy pairing can cross."""
        if self.pairer is None or pairing is None or not self.pairer.crossing_risk():
            return ""
        period = (pairing.counts.image_period_ns or 0) / SEC
        return (
            f"sync_tolerance_s {self.pairer.tolerance_ns / SEC:g} is at least half the measured "
            f"frame period ({period:.3g} s): pairs can cross; lower it below {period / 2:.3g}"
        )

    def _tolerance_values(self, node: Node, pairing: PairingPeriod | None) -> dict[str, str]:
        """`measured_frame_period_s`; the risky-tolerance warning logged once per camera."""
        period = pairing.counts.image_period_ns if pairing is not None else None
        warning = self._tolerance_warning(pairing)
        if warning and self.warn_once("tolerance"):
            self.logger.warning(f"camera {self.label}: {warning}")
        return {"measured_frame_period_s": "n/a" if period is None else f"{period / SEC:.4g}"}

    def _log_unpaired(self, period: PairingPeriod) -> None:
        """A warning about unpaired messages at most every `LOG_PERIOD_S`, with the counts
        since the previous one: a synchronizer that drops silently is a known complaint
        (ros/ros_comm#1059), one that floods the log is another."""
        seen = self._unpaired
        seen.images += period.unpaired_images
        seen.detections += period.unpaired_detections
        seen.paired += period.paired
        # Images without detections are normal when the detector runs slower than the camera;
        # they are worth a warning only while nothing pairs at all.
        if not (seen.detections or (seen.images and not seen.paired)):
            self._unpaired = _Unpaired()
            return
        if not self._throttle.ready("unpaired"):
            return
        tolerance = self.config.sync_tolerance_ns / SEC
        self.logger.warning(
            f"camera {self.label}: {seen.detections} detection message(s) found no image and "
            f"{seen.images} image(s) found no detections ({seen.paired} paired) since the last "
            "report; a detector must stamp its Detection2DArray with the header stamp of the "
            f"image it ran on (sync_tolerance_s is {tolerance:g}; raise it for approximate "
            "pairing)"
        )
        self._unpaired = _Unpaired()

    def _pairing_period(self) -> PairingPeriod | None:
        if self.pairer is None:
            return None
        counts, last = self.pairer.counts(), self._pair_last
        self._pair_last = counts
        return PairingPeriod(
            counts=counts,
            paired=counts.paired - last.paired,
            unpaired_images=counts.unpaired_images - last.unpaired_images,
            unpaired_detections=counts.unpaired_detections - last.unpaired_detections,
        )


@dataclass
class _Unpaired:
    """Unpaired and paired messages since the last warning about unpaired ones."""

    images: int = 0
    detections: int = 0
    paired: int = 0
