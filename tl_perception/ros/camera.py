"""One camera of the classifier node: its topics, subscriptions, publishers and counters.

The node makes one `Camera` per name in `cameras` (or one unnamed camera on `image`). A camera
owns everything that is per camera: the input subscriptions (image, and detections in
`roi_source:=detections`) with their QoS rule, the pairing of images with detections, its
latest-frame slot on the shared `LatestFrames` board, its output publishers, and its counters
for `/diagnostics`. `open` creates the subscriptions and publishers and `close` destroys them,
so a lifecycle node can call them from activate and deactivate; nothing else here touches the
graph. The processing of frames lives in `pipeline.py`.

All topic names are relative (`N/image`, `N/classification`, ...), so namespaces and remaps
apply as usual.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile, qos_policy_name_from_kind
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from tl_perception.crop import REASONS
from tl_perception.ros import qos as qos_rules
from tl_perception.ros.budget import OVER_BUDGET
from tl_perception.ros.diagnostics import CameraReport, PairingPeriod
from tl_perception.ros.messages import classification_type, detections_type
from tl_perception.ros.pairing import Pair, PairCounts, StampPairer
from tl_perception.ros.rois import frame_ids_differ
from tl_perception.ros.stats import FrameStats, LatestFrames, RoiStats
from tl_perception.stamps import stamp_to_ns

OUTPUT_QOS = QoSProfile(depth=10)
OVERLAY_DEPTH = 2
#: Unpaired messages are logged at most this often per camera (with the counts in between).
UNPAIRED_LOG_PERIOD_S = 5.0
#: Image stamps that jump back are logged at most this often per camera (a looping bag).
JUMP_LOG_PERIOD_S = 5.0


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
    """The node parameters that shape every camera (read once, at start-up)."""

    transport: str  # raw | compressed
    qos_mode: str  # qos.QOS_MODES
    roi_source: str  # rois.ROI_SOURCES
    output_format: str  # vision_msgs | json
    sync_tolerance_ns: int = 0
    sync_queue: int = 10


class AutoQosInput:
    """One input subscription under the node's `qos` rule.

    `auto` starts best effort / volatile (hears any publisher) and `match` re-subscribes with
    what all publishers offer, like `ros2 bag record`; an incompatible-QoS event is counted and
    logged with the policy's name, and `incompatible_now` asks the graph whether such a
    publisher is there *now*.
    """

    def __init__(self, msg_type: type, topic: str, callback: Any, mode: str) -> None:
        self.msg_type = msg_type
        self.topic = topic  # fully resolved
        self.mode = mode
        self.profile = qos_rules.preset_profile(mode)
        self.incompatible_events = 0
        self._callback = callback
        self._subscription: Subscription | None = None

    def open(self, node: Node, reason: str) -> None:
        self.close(node)
        self._subscription = node.create_subscription(
            self.msg_type,
            self.topic,
            self._callback,
            self.profile,
            event_callbacks=SubscriptionEventCallbacks(
                incompatible_qos=lambda event: self._on_incompatible(node, event)
            ),
        )
        node.get_logger().info(
            f"subscribed {self.topic} ({self.msg_type.__name__}) with QoS "
            f"[{qos_rules.describe(self.profile)}] ({reason})"
        )

    def close(self, node: Node) -> None:
        if self._subscription is not None:
            node.destroy_subscription(self._subscription)
            self._subscription = None

    @property
    def is_open(self) -> bool:
        return self._subscription is not None

    def match(self, node: Node) -> None:
        """`qos:=auto`: follow the publishers' reliability/durability."""
        if self.mode != "auto" or not self.is_open:
            return
        offered = self.offered(node)
        wanted = qos_rules.match_publishers(offered)
        if wanted is not None and not qos_rules.same_policies(wanted, self.profile):
            self.profile = wanted
            self.open(node, reason=f"qos:=auto matched {len(offered)} publisher(s)")

    def offered(self, node: Node) -> list[Any]:
        return [info.qos_profile for info in node.get_publishers_info_by_topic(self.topic)]

    def incompatible_now(self, node: Node) -> int:
        return qos_rules.count_incompatible(self.offered(node), self.profile)

    def _on_incompatible(self, node: Node, event: Any) -> None:
        self.incompatible_events += 1
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        node.get_logger().warning(
            f"a publisher on {self.topic} offers a QoS incompatible with this node's "
            f"[{qos_rules.describe(self.profile)}]: policy {policy}; no messages arrive from it. "
            "Use qos:=auto, or match the publisher (e.g. qos:=sensor_data for best effort)."
        )


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
        must_match: Callable[[], bool] = lambda: True,
    ) -> None:
        self.index = index
        self.name = name
        self.config = config
        self.topics = CameraTopics.of(name)
        self.stats = FrameStats()
        self.rois = RoiStats((*REASONS, OVER_BUDGET)) if config.roi_source != "full_frame" else None
        self.pairer: StampPairer[Any, Any] | None = None
        if config.roi_source == "detections":
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
        self._unpaired_log = _UnpairedLog()
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # `warn_once` keys (worker and timer threads)
        self._jump_logged = -JUMP_LOG_PERIOD_S
        self.logger: Any = None  # the node's, set by `open` (jumps are logged from callbacks)

    # ------------------------------------------------------------ graph: create and destroy
    def open(self, node: Node, publish_overlay: bool) -> None:
        """Create this camera's publishers, then its subscriptions (frames flow after this)."""
        self.logger = node.get_logger()
        if self.config.roi_source == "full_frame":
            out_type, out_topic = (
                classification_type(self.config.output_format),
                self.topics.classification,
            )
        else:
            out_type, out_topic = (
                detections_type(self.config.output_format),
                self.topics.classified_detections,
            )
        self.result_pub = node.create_publisher(out_type, out_topic, OUTPUT_QOS)
        self.ensure_overlay(node, publish_overlay)
        image_type = CompressedImage if self.config.transport == "compressed" else Image
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

    def image_topic(self, node: Node) -> str:
        """The resolved (remapped) image topic; `<image>/compressed` as image_transport does."""
        base = node.resolve_topic_name(self.topics.image)
        return f"{base}/compressed" if self.config.transport == "compressed" else base

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

    # ------------------------------------------------------------ callbacks (executor thread)
    def warn_once(self, what: str) -> bool:
        """True the first time `what` is asked about on this camera (a warning logged once)."""
        with self._lock:
            first = what not in self._warned
            self._warned.add(what)
            return first

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
        """Stamps went back: say what restarts (at most every `JUMP_LOG_PERIOD_S`)."""
        now = time.monotonic()
        if self.logger is None or now - self._jump_logged < JUMP_LOG_PERIOD_S:
            return
        self._jump_logged = now
        self.logger.info(
            f"camera {self.name or '(default)'}: image stamps jumped back to "
            f"{stamp_ns / 1e9:.3f} s (a looping bag, a simulator reset, a restarted driver): "
            "pairing, smoothing and track timeouts start again (counted as stamp_jumps_back)"
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
        if self.logger is not None and self.warn_once("frame_id"):
            verdict = (
                "refused, not classified (frame_id_must_match; counted as frame_id_refused)"
                if refuse
                else "classified anyway (frame_id_must_match is false)"
            )
            self.logger.warning(
                f"camera {self.name or '(default)'}: detections with frame_id {theirs!r} paired "
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
            self._unpaired_log.add(pairing, node, self)
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
        period = (pairing.counts.image_period_ns or 0) / 1e9
        return (
            f"sync_tolerance_s {self.pairer.tolerance_ns / 1e9:g} is at least half the measured "
            f"frame period ({period:.3g} s): pairs can cross; lower it below {period / 2:.3g}"
        )

    def _tolerance_values(self, node: Node, pairing: PairingPeriod | None) -> dict[str, str]:
        """`measured_frame_period_s`; the risky-tolerance warning logged once per camera."""
        period = pairing.counts.image_period_ns if pairing is not None else None
        warning = self._tolerance_warning(pairing)
        if warning and self.warn_once("tolerance"):
            node.get_logger().warning(f"camera {self.name or '(default)'}: {warning}")
        return {"measured_frame_period_s": "n/a" if period is None else f"{period / 1e9:.4g}"}

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


class _UnpairedLog:
    """A warning about unpaired messages at most every `UNPAIRED_LOG_PERIOD_S` per camera,
    with the counts since the previous one: a synchronizer that drops silently is a known
    complaint (ros/ros_comm#1059), one that floods the log is another."""

    def __init__(self) -> None:
        self._last = -UNPAIRED_LOG_PERIOD_S
        self._images = self._detections = self._paired = 0

    def add(self, period: PairingPeriod, node: Node, camera: Camera) -> None:
        self._images += period.unpaired_images
        self._detections += period.unpaired_detections
        self._paired += period.paired
        now = time.monotonic()
        # Images without detections are normal when the detector runs slower than the camera;
        # they are worth a warning only while nothing pairs at all.
        if not (self._detections or (self._images and not self._paired)):
            self._images = self._detections = self._paired = 0
            return
        if now - self._last < UNPAIRED_LOG_PERIOD_S:
            return
        tolerance = camera.config.sync_tolerance_ns / 1e9
        node.get_logger().warning(
            f"camera {camera.name or '(default)'}: {self._detections} detection message(s) "
            f"found no image and {self._images} image(s) found no detections "
            f"({self._paired} paired) since the last report; a detector must stamp its "
            "Detection2DArray with the header stamp of the image it ran on "
            f"(sync_tolerance_s is {tolerance:g}; raise it for approximate pairing)"
        )
        self._last = now
        self._images = self._detections = self._paired = 0
