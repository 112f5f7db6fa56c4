"""The classification pipeline of the node, apart from the Node class: gather -> decode -> crop ->
one batched inference -> results -> publish, once per cycle, for every camera with a new frame.

A cycle takes the newest frame (or image + detections pair) of every camera that has one from
the shared `LatestFrames` board, decodes each image, lists its ROIs (`full_frame`: the frame
itself; `fixed`: the `rois` parameter; `detections`: the paired Detection2DArray, the first
`max_rois` of them; `camera.Camera` refused pairs of another frame_id already), plans their
crops under the serving bundle's crop policy (`crop.plan_crops`: no pixel copied yet), shares
the cycle's budget of `max_rois` crops and `max_roi_pixels` pixels fairly between the cameras
(`budget.share_budget`), cuts what it accepted, classifies *all* crops of *all* cameras in one
`Classifier.classify` call (its backends run a batch without re-allocating tensors), and
publishes each camera's result with that camera's header. Bad frames and bad boxes are counted
per camera and never raise.

Between inference and publishing, each frame's (ROI's) probabilities go through the label
decision (`labels.LabelStage`: smoothing per camera, or per camera and track id, the unknown
rule, the published class first); frames or crops the model found hard are offered to the
hard-frame capture (`hard_frames.HardFrames`, a queue: no I/O here).

`Pipeline` needs only a `PipelineContext` (the serving classifier, the current config, the ROS
clock and a logger) and the cameras, so it runs without a node: the graph-free tests drive it
with cameras that were never opened. `Worker` is the thread that runs cycles (started on
activate, stopped on deactivate).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sensor_msgs.msg import Image

from tl_perception.crop import (
    CropError,
    CropPlan,
    CropPolicy,
    check_frame,
    cut_crops,
    plan_crops,
)
from tl_perception.errors import ImageDecodeError, one_line
from tl_perception.images import image_fields, message_to_rgb
from tl_perception.loop.capture import CaptureItem
from tl_perception.ros.budget import OVER_BUDGET, Share, share_budget
from tl_perception.ros.camera import Camera
from tl_perception.ros.config import NodeConfig
from tl_perception.ros.diagnostics import ExtraStatus
from tl_perception.ros.handoff import LatestFrames
from tl_perception.ros.hard_frames import HardFrames
from tl_perception.ros.labels import (
    Hypotheses,
    HypothesisRule,
    LabelStage,
    effective_unknown_threshold,
    stream_keys,
)
from tl_perception.ros.messages import RoiResult, build_classification, build_detections
from tl_perception.ros.overlay import draw_overlay, draw_rois
from tl_perception.ros.pairing import Pair
from tl_perception.ros.rois import Roi, detection_rois, policy_for
from tl_perception.ros.stats import BatchStats, FrameRois
from tl_perception.ros.throttle import Throttle
from tl_perception.smoothing import SmoothingConfig
from tl_perception.stamps import SEC, is_unstamped, stamp_to_ns

#: Unexpected exceptions in a cycle are logged at most this often (all are counted).
ERROR_LOG_PERIOD_S = 5.0


@dataclass(frozen=True)
class PipelineContext:
    """What the pipeline reads from its node, as callables (read once per cycle)."""

    classifier: Callable[[], Any]  # the serving Classifier (a hot reload swaps it)
    config: Callable[[], NodeConfig]  # the current parameters (a run-time set swaps them)
    now_ns: Callable[[], int]  # the node's ROS clock
    logger: Any
    hard_frames: HardFrames | None = None  # the capture (None: never captures)


@dataclass
class _Job:
    """One camera's frame in this cycle: its decoded pixels, its ROIs and their crops."""

    camera: Camera
    image: Any
    rgb: np.ndarray
    rois: list[Roi] = field(default_factory=list)  # the cropped ones, in crop order
    crops: list[np.ndarray] = field(default_factory=list)
    counts: FrameRois | None = None  # ROI modes only
    # ROI modes, between planning and cutting: the boxes looked at, their plan, boxes in all
    considered: list[Roi] = field(default_factory=list)
    plan: CropPlan | None = None
    total: int = 0

    @property
    def stamp_s(self) -> float:
        return stamp_to_ns(self.image.header.stamp) / SEC


@dataclass(frozen=True)
class _Cycle:
    """What every frame of one cycle is judged by: the config and the model."""

    config: NodeConfig
    classifier: Any


class Pipeline:
    """One cycle at a time over all cameras; counters per camera, batch statistics per node."""

    def __init__(
        self, cameras: Sequence[Camera], frames: LatestFrames[Any], context: PipelineContext
    ) -> None:
        self.cameras = list(cameras)
        self.frames = frames
        self.context = context
        self.batches = BatchStats()
        self.errors = 0  # unexpected exceptions in a cycle (the worker counts them)
        self.labels = LabelStage()
        self._smoothing: tuple[NodeConfig | None, SmoothingConfig | None] = (None, None)

    def process(self, taken: Sequence[tuple[int, Any]]) -> int:
        """Classify the frames `LatestFrames.take_all` gave (camera index, image or Pair) in
        one inference and publish each camera's result; the number of frames classified."""
        if not taken:
            return 0
        started = time.perf_counter()
        classifier = self.context.classifier()  # one reference per cycle: a hot swap is atomic
        config = self.context.config()
        policy = policy_for(classifier.bundle)
        jobs = []
        for index, item in taken:
            job = self._prepare(self.cameras[index], item, config, policy)
            if job is not None:
                jobs.append(job)
        if not jobs:
            return 0
        if config.crops_rois:
            self._cut(jobs, config, policy)
        probs, inference_ms = self._classify(classifier, jobs, config)
        cycle = self._begin(config, classifier)
        start = 0
        for job in jobs:
            count = len(job.crops)
            self._publish(job, probs[start : start + count], inference_ms, cycle)
            self._capture(job, probs[start : start + count], cycle)
            start += count
        self.labels.end()
        self.batches.add_cycle((time.perf_counter() - started) * 1000.0)
        return len(jobs)

    def _begin(self, config: NodeConfig, classifier: Any) -> _Cycle:
        """The cycle's rule; the label stage forgets its state on new smoothing settings or a
        new model."""
        last, smoothing = self._smoothing
        if smoothing is None or config is not last:
            smoothing = config.smoothing_config()
            self._smoothing = (config, smoothing)
        unknown = effective_unknown_threshold(
            config.unknown_threshold, classifier.bundle.unknown_threshold
        )
        rule = HypothesisRule(config.top_k, config.score_threshold, unknown.value)
        self.labels.begin(smoothing, classifier, rule)
        return _Cycle(config, classifier)

    def report(self) -> ExtraStatus:
        """/diagnostics values of labels, the unknown threshold and the capture (timer thread)."""
        config = self.context.config()
        recorded = self.context.classifier().bundle.unknown_threshold
        unknown = effective_unknown_threshold(config.unknown_threshold, recorded)
        values = self.labels.report(config.smoothing_config(), unknown)
        capture = self.context.hard_frames
        if capture is None:
            return ExtraStatus(values)
        report = capture.report()
        return ExtraStatus({**values, **report.values}, report.warnings)

    # ------------------------------------------------------------ gather, decode, crop
    def _prepare(
        self, camera: Camera, item: Any, config: NodeConfig, policy: CropPolicy
    ) -> _Job | None:
        image, detections = (
            (item.image, item.detections) if isinstance(item, Pair) else (item, None)
        )
        rgb = self._decode(camera, image)
        if rgb is None:
            return None
        job = _Job(camera, image, rgb)
        if not config.crops_rois:
            job.crops = [rgb]
            return job
        if detections is None:
            job.total, considered = len(config.rois), list(config.rois)
        else:
            job.total = len(detections.detections)
            considered = detection_rois(detections, config.max_rois)
        job.considered = considered[: config.max_rois]
        try:
            check_frame(rgb)
        except CropError as err:  # not an HxWx3 frame: the decoder's contract broken
            self._bad_frame(camera, image, f"cannot crop: {one_line(err)}")
            return None
        job.plan = plan_crops((rgb.shape[0], rgb.shape[1]), [r.box for r in job.considered], policy)
        return job

    def _cut(self, jobs: list[_Job], config: NodeConfig, policy: CropPolicy) -> None:
        """Share the cycle's budget between the cameras, then cut what each one got."""
        shares = share_budget(
            [job.plan.pixels() if job.plan else [] for job in jobs],
            config.max_rois,
            config.max_roi_pixels,
        )
        for job, share in zip(jobs, shares, strict=True):
            assert job.plan is not None
            job.crops = cut_crops(job.rgb, job.plan, policy, share.kept)
            job.rois = [job.considered[job.plan.kept[k]] for k in share.kept]
            job.counts = self._frame_counts(job, share, config, len(jobs))

    def _frame_counts(self, job: _Job, share: Share, config: NodeConfig, jobs: int) -> FrameRois:
        assert job.plan is not None
        rejected = job.plan.rejected_counts()
        if share.over_budget:
            rejected[OVER_BUDGET] = share.over_budget
        over_max = job.total - len(job.considered) + share.over_max
        if over_max:
            job.camera.warn(
                "max_rois",
                f"{job.total} ROIs in one frame, classified {len(job.crops)} (max_rois "
                f"{config.max_rois} per cycle, shared by the {jobs} camera(s) of the cycle); "
                f"{over_max} dropped (counted as rois_over_max)",
            )
        if share.over_budget:
            job.camera.warn(
                "max_roi_pixels",
                f"{share.over_budget} ROI(s) whose crops did not fit in this cycle's share of "
                f"max_roi_pixels ({config.max_roi_pixels}) not classified (counted as "
                "rois_rejected_over_budget)",
            )
        return FrameRois(
            boxes=job.total,
            classified=len(job.crops),
            published=0,
            background=0,
            over_max=over_max,
            rejected=rejected,
        )

    def _decode(self, camera: Camera, image: Any) -> np.ndarray | None:
        try:
            return message_to_rgb(image)
        except Exception as err:  # any frame the decoder cannot turn into pixels is a bad frame
            # ImageDecodeError says why; anything else is a decoder bug, named so it gets fixed.
            why = one_line(err)
            if not isinstance(err, ImageDecodeError):
                why = f"the decoder raised {type(err).__name__}: {why}"
            self._bad_frame(camera, image, why)
            return None

    def _bad_frame(self, camera: Camera, image: Any, why: str) -> None:
        camera.stats.count_bad()
        topic = camera.image_input.topic if camera.image_input else camera.topics.image
        stamp = image.header.stamp
        camera.warn("bad", f"bad frame on {topic} (stamp {stamp.sec}.{stamp.nanosec:09d}): {why}")

    # ------------------------------------------------------------ inference
    def _classify(
        self, classifier: Any, jobs: list[_Job], config: NodeConfig
    ) -> tuple[np.ndarray, float]:
        """(N, C) probabilities of all crops of all jobs from one call (or one call per crop,
        the baseline); smoothing needs every class's score, not only the top k."""
        images = [crop for job in jobs for crop in job.crops]
        if not images:
            return np.zeros((0, len(classifier.class_names)), np.float32), 0.0
        started = time.perf_counter()
        if config.batch_rois or len(images) == 1:
            probs = classifier.predict_proba(images)
        else:
            probs = np.concatenate([classifier.predict_proba([image]) for image in images])
        inference_ms = (time.perf_counter() - started) * 1000.0
        self.batches.add(inference_ms, len(images))
        return probs, inference_ms

    # ------------------------------------------------------------ results and publishing
    def _publish(self, job: _Job, probs: np.ndarray, inference_ms: float, cycle: _Cycle) -> None:
        camera, header, config = job.camera, job.image.header, cycle.config
        if not camera.is_open:  # the camera was closed during this cycle
            return
        fmt = camera.config.output_format
        results: Hypotheses = []
        roi_results: list[RoiResult] = []
        if config.crops_rois:
            roi_results = self._roi_results(job, probs, cycle)
            camera.publish_result(build_detections(fmt, header, roi_results))
        else:
            label = self.labels.label(camera.index, "frame", probs[0], job.stamp_s)
            results = label.hypotheses
            camera.publish_result(build_classification(fmt, header, results))
        latency_ms = None  # stamp 0: no capture time, kept out of the latency statistic
        if not is_unstamped(header.stamp):
            latency_ms = (self.context.now_ns() - stamp_to_ns(header.stamp)) / 1e6
        camera.stats.count_processed(inference_ms, latency_ms)
        if config.publish_overlay and camera.overlay_wanted():
            if config.crops_rois:
                picture = draw_rois(job.rgb, roi_results)
            else:
                picture = draw_overlay(job.rgb, results)
            camera.publish_overlay(Image(header=header, **image_fields(picture, "rgb8")))

    def _roi_results(self, job: _Job, probs: np.ndarray, cycle: _Cycle) -> list[RoiResult]:
        """Hypotheses per ROI, smoothed per track id (a detection without an id is not);
        background ROIs (the published class is `background_label`) left out unless
        `publish_background`. An unknown ROI is published: it is no background."""
        config, camera = cycle.config, job.camera
        self.labels.forget(camera.index, job.stamp_s)
        keys, repeated = stream_keys([roi.id for roi in job.rois])
        if repeated:
            self._repeated_ids(job, repeated)
        out, background = [], 0
        for roi, key, row in zip(job.rois, keys, probs, strict=True):
            label = self.labels.label(camera.index, key, row, job.stamp_s)
            is_background = label.name == config.background_label
            background += is_background
            if is_background and not config.publish_background:
                continue
            out.append(RoiResult(roi, label.hypotheses))
        if job.counts is not None and camera.rois is not None:
            duplicates = sum(roi.id in repeated for roi in job.rois)
            counts = replace(
                job.counts, published=len(out), background=background, duplicate_ids=duplicates
            )
            camera.rois.add(counts)
        return out

    def _repeated_ids(self, job: _Job, repeated: set[str]) -> None:
        """Ids several ROIs of one frame carry name no one object: their state is dropped and
        the ROIs go unsmoothed (counted as rois_duplicate_ids, warned once per camera)."""
        self.labels.discard(job.camera.index, repeated)
        if job.camera.warn_once("duplicate_ids"):
            job.camera.logger.warning(
                f"camera {job.camera.label}: detection id(s) "
                f"{', '.join(repr(i) for i in sorted(repeated)[:5])} repeated within one frame; "
                "such ROIs are published unsmoothed (an id must name one tracked object). "
                "Logged once; counted as rois_duplicate_ids"
            )

    def _capture(self, job: _Job, probs: np.ndarray, cycle: _Cycle) -> None:
        """Offer each frame (full frame) or crop (ROI modes, the crops just classified) with
        the model's own top class and score for it, unsmoothed: what the model made of these
        pixels. Never blocks: the capture queues or counts."""
        capture = self.context.hard_frames
        if capture is None or not capture.enabled or not len(probs):
            return
        image, names = job.image, cycle.classifier.class_names
        stamp = (int(image.header.stamp.sec), int(image.header.stamp.nanosec))
        topic = job.camera.image_input.topic if job.camera.image_input else ""
        encoding = str(getattr(image, "encoding", "") or getattr(image, "format", ""))
        best = np.argmax(probs, axis=1)
        rois: list[Roi | None] = list(job.rois) if job.rois else [None]
        for crop, roi, row, top in zip(job.crops, rois, probs, best, strict=True):
            item = CaptureItem(
                crop,
                job.camera.name,
                stamp,
                str(names[top]),
                float(row[top]),
                box=roi.box if roi is not None else None,
                track=roi.id if roi is not None else "",
                topic=topic,
                encoding=encoding,
            )
            capture.offer(item, cycle.classifier.bundle)


class Worker:
    """The one classification thread: takes the newest frames and runs `Pipeline.process`, from
    `start` until `stop`.

    `max_rate_hz` > 0 makes it wait between cycles; frames replaced meanwhile count as dropped.
    An unexpected exception in a cycle is counted (`pipeline.errors`) and logged (at most every
    `ERROR_LOG_PERIOD_S`), never fatal.
    A cycle that outlasts `stop`'s timeout is not abandoned to run beside a new thread: the
    thread keeps its place until it sees the stop, and a `start` before that tells it to go on,
    so two threads never classify at once.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._errors = Throttle(ERROR_LOG_PERIOD_S)
        self._lock = threading.Lock()  # `_thread` and the stop decision
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # the running loop, until it decides to end

    def start(self) -> None:
        with self._lock:
            self._stop.clear()
            if self._thread is not None:
                return  # still in the cycle it was in when `stop` gave up waiting: it goes on
            self._thread = threading.Thread(target=self._loop, name="classify", daemon=True)
            self._thread.start()

    def is_alive(self) -> bool:
        with self._lock:
            thread = self._thread
        return thread is not None and thread.is_alive()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to end after its cycle; True when it ended within `timeout` s."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        self._pipeline.frames.wake()
        if thread is not None:
            thread.join(timeout=timeout)
        return thread is None or not thread.is_alive()

    def _running(self) -> bool:
        """Whether to run another cycle; on a stop the thread gives up its place (under the
        lock, so a `start` either keeps it going or makes the next one, never both)."""
        with self._lock:
            if not self._stop.is_set():
                return True
            self._thread = None
            return False

    def _loop(self) -> None:
        next_allowed = 0.0
        pipeline = self._pipeline
        while self._running():
            config = pipeline.context.config()
            rate = config.max_rate_hz
            if rate > 0.0:
                wait = next_allowed - time.monotonic()
                if wait > 0.0 and self._stop.wait(wait):
                    continue
            taken = pipeline.frames.take_all(timeout=0.2, gather_s=config.batch_wait_s)
            if not taken or self._stop.is_set():
                continue
            if rate > 0.0:
                next_allowed = time.monotonic() + 1.0 / rate
            try:
                pipeline.process(taken)
            except Exception as err:  # keep serving: one bad inference must not kill the node
                pipeline.errors += 1
                if self._errors.ready("cycle"):
                    pipeline.context.logger.error(
                        f"classification failed: {type(err).__name__}: {one_line(err)}"
                    )
