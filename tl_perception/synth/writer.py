"""Write a synthetic drive as a real bag (rosbag2 MCAP or sqlite3, or ROS 1) with rosbags writers.

Topics: the camera (`sensor_msgs/Image` bgr8 on /camera/image_raw, or `CompressedImage` JPEG on
/camera/image_raw/compressed) and, for `signs` and `vehicles`, `/label` (`std_msgs/String`),
published 1 ms before each frame in which an object is visible, and never during the empty road
between objects. For `road` (rosbag2 only), instead of /label, two `vision_msgs/Detection2DArray`
per frame with the image's header: `/detections/truth` (same log time as the image) and the
simulated detector's `/detections` (`DETECTOR_LATENCY_NS` later, as a detector answers after the
camera). Header stamps are the recording times; frame_id is "camera". The bag is written beside
`out` and renamed into place, so an interrupted run never leaves half a bag.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tl_perception.bag.writer import BagWriter, Det
from tl_perception.errors import TlPerceptionError
from tl_perception.images import image_fields, rgb_to_compressed
from tl_perception.stamps import SEC
from tl_perception.synth.detector import (
    DEFAULT_NOISE_LEVEL,
    Detection,
    DetectorNoise,
    SimulatedDetector,
    truth_detections,
)
from tl_perception.synth.drive import Run, drive_frames, plan_drive, resolve_classes
from tl_perception.synth.road import ROAD_SIZE, Track, check_road_size, plan_road, road_frames

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
LABEL_TOPIC = "/label"
TRUTH_TOPIC = "/detections/truth"
DETECTIONS_TOPIC = "/detections"
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
DETECTOR_LATENCY_NS = 20_000_000  # /detections follows its image by 20 ms (at most half a period)
DEFAULT_SIZE = (160, 120)
STORAGES: tuple[str, ...] = ("mcap", "sqlite3", "ros1")
START_NS = 1_700_000_000 * SEC  # a realistic epoch for the first frame
LABEL_LEAD_NS = 1_000_000  # the label arrives 1 ms before the frame it describes
FRAME_ID = "camera"
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthSummary:
    """What was written: enough to check a bag or to score predictions against it."""

    path: Path
    kind: str
    storage: str
    image_topic: str
    label_topic: str | None  # None for road drives (their labels are the detections)
    frames: int
    classes: tuple[str, ...]
    runs: tuple[Run, ...] = field(repr=False)
    road: RoadSummary | None = None

    @property
    def labelled_frames(self) -> int:
        if self.road is not None:
            return self.road.frames_with_objects
        return sum(r.length for r in self.runs if r.label is not None)

    def frames_per_class(self) -> dict[str, int]:
        """Frames showing each class (road drives: true boxes per class)."""
        if self.road is not None:
            return dict(self.road.truth_per_class)
        counts: Counter[str] = Counter()
        for run in self.runs:
            if run.label is not None:
                counts[run.label] += run.length
        return dict(sorted(counts.items()))


@dataclass(frozen=True)
class RoadSummary:
    """What a road drive's two detection topics hold, for scoring and for the CLI's summary."""

    truth_topic: str
    detections_topic: str
    noise: DetectorNoise
    tracks: tuple[Track, ...] = field(repr=False)
    truth_per_class: tuple[tuple[str, int], ...]
    frames_with_objects: int
    detected: int  # true boxes the detector found
    missed: int
    false_positives: int

    @property
    def truth_boxes(self) -> int:
        return self.detected + self.missed


@dataclass(frozen=True)
class DriveSpec:
    """What drive to render and how to record it; `write_synthetic_bag` checks the values.

    `kind` is `signs`, `vehicles` or `road`; `classes` (all of `kind` by default) are drawn in
    `frames` frames at `rate` Hz, deterministic for `seed`. `size` (width, height) defaults to
    160x120 (640x480 for `road`); `compressed` writes JPEG `CompressedImage`s; `storage` is
    `mcap`, `sqlite3` or `ros1`; `detector_noise` (road only) defaults to
    `DetectorNoise.from_level(DEFAULT_NOISE_LEVEL)`.
    """

    kind: str = "signs"
    frames: int = 300
    classes: Sequence[str] | None = None  # stored as a tuple
    seed: int = 0
    size: tuple[int, int] | None = None
    rate: float = 10.0
    compressed: bool = False
    storage: str = "mcap"
    detector_noise: DetectorNoise | None = None

    def __post_init__(self) -> None:
        if self.classes is not None:  # a CLI list, say: kept as a tuple so specs hash
            object.__setattr__(self, "classes", tuple(self.classes))


def write_synthetic_bag(
    out: str | Path, spec: DriveSpec = DriveSpec(), *, overwrite: bool = False
) -> SynthSummary:
    """Render the drive `spec` describes and write it to `out` (a rosbag2 directory, or a ROS 1
    `.bag` file).

    Raises:
        TlPerceptionError: bad options, or `out` exists and `overwrite` is false.
    """
    kind, frames, storage = spec.kind, spec.frames, spec.storage
    detector_noise = spec.detector_noise
    out = Path(out)
    road = kind == "road"
    size = spec.size or (ROAD_SIZE if road else DEFAULT_SIZE)
    chosen = resolve_classes(kind, spec.classes)
    _check_options(out, storage, spec.rate, size, overwrite)
    if road:
        check_road_size(size)
        if storage == "ros1":
            raise TlPerceptionError(
                "--kind road needs rosbag2 (mcap or sqlite3): ROS 1 vision_msgs differ"
            )
    elif detector_noise is not None:
        raise TlPerceptionError("--detector-noise applies to --kind road only")
    image_topic = COMPRESSED_TOPIC if spec.compressed else IMAGE_TOPIC
    timing = _Spec(frames, spec.seed, size, round(1e9 / spec.rate), spec.compressed)
    with BagWriter(out, storage, overwrite=overwrite) as bag:
        sink = _BagSink(bag, image_topic)
        if road:
            noise = detector_noise or DetectorNoise.from_level(DEFAULT_NOISE_LEVEL)
            road_summary = _write_road(sink, timing, chosen, noise)
            runs: list[Run] = []
        else:
            runs = plan_drive(chosen, frames, spec.seed)
            _write_runs(sink, timing, kind, runs)
            road_summary = None
    return SynthSummary(
        path=out,
        kind=kind,
        storage=storage,
        image_topic=image_topic,
        label_topic=None if road else LABEL_TOPIC,
        frames=frames,
        classes=chosen,
        runs=tuple(runs),
        road=road_summary,
    )


@dataclass(frozen=True)
class _Spec:
    """What every kind of drive needs to place its frames in time."""

    frames: int
    seed: int
    size: tuple[int, int]
    period_ns: int
    compressed: bool

    def stamp(self, index: int) -> int:
        return START_NS + index * self.period_ns


def _check_options(
    out: Path, storage: str, rate: float, size: tuple[int, int], overwrite: bool
) -> None:
    if storage not in STORAGES:
        raise TlPerceptionError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    if rate <= 0:
        raise TlPerceptionError(f"--rate must be positive, got {rate}")
    if min(size) < 16:
        raise TlPerceptionError(f"--size must be at least 16x16, got {size[0]}x{size[1]}")
    if storage == "ros1" and out.suffix != ".bag":
        raise TlPerceptionError(f"a ROS 1 bag is one file ending in .bag, got OUT {str(out)!r}")
    if out.exists() and not overwrite:
        raise TlPerceptionError(f"{out} already exists; remove it or choose another OUT")


def _write_runs(sink: _BagSink, spec: _Spec, kind: str, runs: Sequence[Run]) -> None:
    for frame in drive_frames(kind, runs, spec.seed, spec.size):
        t_ns = spec.stamp(frame.index)
        if frame.label is not None:
            sink.label(t_ns - LABEL_LEAD_NS, frame.label)
        sink.image(t_ns, frame.rgb, spec.compressed)


def _write_road(
    sink: _BagSink, spec: _Spec, classes: Sequence[str], noise: DetectorNoise
) -> RoadSummary:
    plan = plan_road(classes, spec.frames, spec.seed, spec.size)
    detector = SimulatedDetector.plan(noise, spec.seed, spec.size, spec.frames)
    latency = min(DETECTOR_LATENCY_NS, spec.period_ns // 2)
    per_class: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for frame in road_frames(plan):
        t_ns = spec.stamp(frame.index)
        sink.image(t_ns, frame.rgb, spec.compressed)
        sink.detections(TRUTH_TOPIC, t_ns, t_ns, truth_detections(frame.truth))
        found = detector.detect(frame.index, frame.truth)
        sink.detections(DETECTIONS_TOPIC, t_ns + latency, t_ns, found)
        per_class.update(t.label for t in frame.truth)
        true_ids = {t.id for t in frame.truth}
        hits = sum(1 for d in found if d.id in true_ids)
        counts.update(
            frames_with_objects=bool(frame.truth),
            detected=hits,
            missed=len(true_ids) - hits,
            false_positives=len(found) - hits,
        )
    return RoadSummary(
        truth_topic=TRUTH_TOPIC,
        detections_topic=DETECTIONS_TOPIC,
        noise=noise,
        tracks=plan.tracks,
        truth_per_class=tuple(sorted(per_class.items())),
        frames_with_objects=counts["frames_with_objects"],
        detected=counts["detected"],
        missed=counts["missed"],
        false_positives=counts["false_positives"],
    )


class _BagSink:
    """The drive's messages (label, camera image, detections) through the one bag writer."""

    def __init__(self, bag: BagWriter, image_topic: str) -> None:
        self._bag = bag
        self._image_topic = image_topic

    def label(self, t_ns: int, text: str) -> None:
        self._bag.string(LABEL_TOPIC, t_ns, text)

    def image(self, t_ns: int, rgb: np.ndarray, compressed: bool) -> None:
        if compressed:
            jpeg = rgb_to_compressed(rgb, "jpeg", JPEG_QUALITY)
            self._bag.compressed(self._image_topic, t_ns, jpeg, frame_id=FRAME_ID)
        else:
            self._bag.image(self._image_topic, t_ns, image_fields(rgb, "bgr8"), frame_id=FRAME_ID)

    def detections(
        self, topic: str, t_ns: int, stamp_ns: int, detections: Sequence[Detection]
    ) -> None:
        """A Detection2DArray whose header (and each detection's) is the image's header."""
        dets = [Det(d.box, ((d.class_id, d.score),), d.id) for d in detections]
        self._bag.detections(topic, t_ns, dets, stamp_ns)
