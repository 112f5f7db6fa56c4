"""The classifier node's parameters, in one table: `NodeConfig`, one field per parameter.

Each field carries its parameter's `Spec` (ROS default, description, range, choices, whether it
can change at run time), so a new parameter is one field here plus its line in docs/node.md;
`PARAMETERS` (declared by `params.declare_all`), `config/classify.yaml` and the launch file are
checked against it by the tests. A `NodeConfig` is frozen: the node reads one at every configure
(`from_values`, every value converted and checked here, and nowhere else) and swaps in a new one
for a run-time set (`with_changes`), so a cycle never sees half an update.

Two more parameters are *node-owned*: `class_names` and `serving_model_path` describe the model
that serves right now, so the node updates them on every hot reload. rclpy lets no one, not even
the node itself, set a parameter declared `read_only` (only `declare_parameter` writes it), and
undeclaring a read-only parameter is refused too. So they are declared writable, and the node's
on-set callback refuses every write that does not come from the node's own writer
(`params.NodeOwnedWriter`); their descriptions say so, and `ros2 param set` fails with that reason.

ROS-free, so the rules are unit-tested without rclpy.
"""

from __future__ import annotations

import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from tl_perception.errors import NodeConfigError
from tl_perception.inference import BACKENDS
from tl_perception.loop.capture import CaptureConfig
from tl_perception.ros.budget import DEFAULT_MAX_ROI_PIXELS
from tl_perception.ros.labels import UNKNOWN_FROM_BUNDLE
from tl_perception.ros.rois import Roi, fixed_rois
from tl_perception.smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_MAX_TRACKS,
    DEFAULT_MODE,
    DEFAULT_SWITCH_FRAMES,
    DEFAULT_TRACK_TIMEOUT_S,
    SMOOTHING_MODES,
    SmoothingConfig,
    SmoothingMode,
)

RoiSource = Literal["full_frame", "detections", "fixed"]
QosMode = Literal["auto", "sensor_data", "reliable", "system_default"]
Transport = Literal["raw", "compressed"]
#: What the `output_format` parameter asks for; `messages.resolve_output_format` makes it one
#: of `messages.OutputFormat`.
OutputChoice = Literal["auto", "vision_msgs", "json"]
ROI_SOURCES: tuple[str, ...] = get_args(RoiSource)
QOS_MODES: tuple[str, ...] = get_args(QosMode)
TRANSPORTS: tuple[str, ...] = get_args(Transport)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputChoice)
#: The inference backends, defined once in `tl_perception.inference`.
BACKEND_CHOICES: tuple[str, ...] = BACKENDS

#: How rclpy holds a value: typed by the default, or an array whose default is empty (rclpy
#: cannot type `[]`: it would make it a byte array); a number array takes integers or doubles.
Kind = Literal["value", "string_array", "number_array"]


@dataclass(frozen=True)
class Spec:
    """One parameter as ROS declares it: description, default, whether it can change at run
    time, range or choices, kind."""

    description: str
    default: Any = None  # as declared and as config/classify.yaml writes it (arrays: [])
    dynamic: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    kind: Kind = "value"
    #: From the ROS value (arrays already tuples) to the config's field value.
    convert: Callable[[Any], Any] | None = None


_SPEC = "parameter"


def _spec(description: str, **spec: Any) -> dict[str, Spec]:
    """The metadata that makes a `NodeConfig` field a parameter (its default comes from the
    field: `PARAMETERS`)."""
    return {_SPEC: Spec(description, **spec)}


def _convert(spec: Spec, value: Any, name: str) -> Any:
    """A ROS value as the config holds it; NodeConfigError for a value rclpy cannot refuse
    (string choices, number arrays, boxes)."""
    if spec.kind == "number_array":
        value = _numbers(name, value)
    elif spec.kind == "string_array":
        value = () if value is None else tuple(str(v) for v in value)
    if spec.choices is not None and value not in spec.choices:
        raise NodeConfigError(
            f"parameter {name} = {value!r} is not one of {', '.join(spec.choices)}"
        )
    return spec.convert(value) if spec.convert is not None else value


def _numbers(name: str, value: Any) -> tuple[float, ...]:
    """An integer or double array (unset: empty) as floats; anything else refused."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple, array.array)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return tuple(float(v) for v in value)
    raise NodeConfigError(f"parameter {name} must be an array of numbers, got {value!r}")


@dataclass(frozen=True)
class NodeConfig:
    """Every parameter's value, converted and checked (the defaults: a node with no overrides)."""

    autostart: bool = field(
        default=True,
        metadata=_spec(
            "Walk the lifecycle to active at start-up (configure, then activate), as a plain node "
            "starts. false: stay unconfigured until a lifecycle manager (or `ros2 lifecycle set`) "
            "drives the transitions.",
        ),
    )
    model_path: str = field(
        default="",
        metadata=_spec(
            "Model bundle directory (written by `tl-perception finetune`). Setting it at run time "
            "loads the new bundle in the background and swaps it in; a bad bundle is refused.",
            dynamic=True,
        ),
    )
    backend: str = field(
        default="auto",
        metadata=_spec(
            "Inference backend: auto (LiteRT, converting the Keras model once if needed), litert, "
            "or keras.",
            choices=BACKEND_CHOICES,
        ),
    )
    num_threads: int = field(
        default=0,
        metadata=_spec("CPU threads for inference; 0 lets the backend decide.", int_range=(0, 256)),
    )
    image_transport: Transport = field(
        default="raw",
        metadata=_spec(
            "raw: subscribe sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage "
            "on `<image>/compressed` (JPEG or PNG).",
            choices=TRANSPORTS,
        ),
    )
    qos: QosMode = field(
        default="auto",
        metadata=_spec(
            "Input QoS: auto (match the publishers' reliability and durability, re-checked every "
            "second), sensor_data (best effort), reliable, or system_default.",
            choices=QOS_MODES,
        ),
    )
    top_k: int = field(
        default=5,
        metadata=_spec(
            "Publish at most this many hypotheses per image, best first.",
            dynamic=True,
            int_range=(1, 1000),
        ),
    )
    score_threshold: float = field(
        default=0.0,
        metadata=_spec(
            "Leave out hypotheses scoring below this (0 keeps all top_k).",
            dynamic=True,
            float_range=(0.0, 1.0),
        ),
    )
    max_rate_hz: float = field(
        default=0.0,
        metadata=_spec(
            "Classify at most this many frames per second; 0 = as fast as frames and CPU allow. "
            "Frames skipped by the limit count as dropped.",
            dynamic=True,
            float_range=(0.0, 1000.0),
        ),
    )
    output_format: OutputChoice = field(
        default="auto",
        metadata=_spec(
            "auto (vision_msgs/Classification when vision_msgs imports, else JSON in "
            "std_msgs/String), vision_msgs, or json.",
            choices=OUTPUT_FORMATS,
        ),
    )
    publish_overlay: bool = field(
        default=False,
        metadata=_spec(
            "Publish `classification/overlay` (the image with label and score drawn; in ROI mode "
            "every classified box with its label) while something subscribes to it.",
            dynamic=True,
        ),
    )
    cameras: tuple[str, ...] = field(
        default=(),
        metadata=_spec(
            "Camera names; for each name N the node subscribes `N/image` (or `N/image/compressed`) "
            "and, with roi_source detections, `N/detections`, and publishes `N/classification` or "
            "`N/classified_detections`. The newest frame of every camera goes through one batched "
            "inference. Empty: one camera on `image`.",
            kind="string_array",
        ),
    )
    batch_wait_s: float = field(
        default=0.005,
        metadata=_spec(
            "Several cameras: after a frame arrives, wait up to this many seconds for the cameras "
            "whose previous frame came within this time of it (cameras in step, e.g. hardware-"
            "triggered), so their frames share one inference; cameras not in step are never waited "
            "for. 0 = never wait.",
            dynamic=True,
            float_range=(0.0, 0.1),
        ),
    )
    roi_source: RoiSource = field(
        default="full_frame",
        metadata=_spec(
            "What is classified: full_frame (the whole image, on `classification`), "
            "detections (the boxes of the vision_msgs/Detection2DArray on `detections` with the "
            "image's stamp) or fixed (the `rois` boxes); ROIs are published on "
            "`classified_detections`.",
            choices=ROI_SOURCES,
        ),
    )
    sync_tolerance_s: float = field(
        default=0.0,
        metadata=_spec(
            "roi_source detections: pair an image with the detections whose stamp is nearest "
            "within this many seconds; 0 = the same stamp exactly. Keep it under half the frame "
            "period: at or above it pairs can cross, and /diagnostics warns (the period is "
            "measured from the image stamps).",
            float_range=(0.0, 1.0),
        ),
    )
    frame_id_must_match: bool = field(
        default=True,
        metadata=_spec(
            "roi_source detections: refuse (do not classify, count as frame_id_refused) a "
            "detections message whose header.frame_id is set and differs from its image's: its "
            "boxes belong to another camera (a miswired topic pairs exactly when cameras share "
            "stamps) and would crop the wrong image. false: classify it anyway. Mismatches are "
            "counted and warned once either way.",
            dynamic=True,
        ),
    )
    sync_queue: int = field(
        default=10,
        metadata=_spec(
            "roi_source detections: messages of each kind kept waiting for their partner; the "
            "oldest is dropped (counted as unpaired) when more wait.",
            int_range=(1, 1000),
        ),
    )
    rois: tuple[Roi, ...] = field(
        default=(),
        metadata=_spec(
            "roi_source fixed: boxes as x, y, w, h, x, y, w, h, ... in pixels (top-left corner, "
            "width, height), ids roi0, roi1, ...",
            dynamic=True,
            kind="number_array",
            convert=fixed_rois,
        ),
    )
    max_rois: int = field(
        default=32,
        metadata=_spec(
            "Classify at most this many ROIs per cycle (one batched inference over every camera's "
            "newest frame; with one camera: per frame), shared fairly: round-robin over the "
            "cameras in message order, so a camera alone gets all of them and a flooding one only "
            "what the others leave. The rest are dropped and counted (rois_over_max).",
            dynamic=True,
            int_range=(1, 1024),
        ),
    )
    max_roi_pixels: int = field(
        default=DEFAULT_MAX_ROI_PIXELS,
        metadata=_spec(
            "Crop pixels per cycle, all cameras (16 Mi = 48 MiB of RGB crops), shared like "
            "max_rois: a box whose crop does not fit in what is left is refused and counted "
            "(rois_rejected_over_budget), so a detector scaled wrong cannot exhaust memory.",
            dynamic=True,
            int_range=(1, 2_000_000_000),
        ),
    )
    publish_background: bool = field(
        default=False,
        metadata=_spec(
            "Publish ROIs whose best class is background_label too (otherwise they are left out "
            "of classified_detections and only counted).",
            dynamic=True,
        ),
    )
    background_label: str = field(
        default="background",
        metadata=_spec(
            "The class name that means 'no object here' (extract --negatives writes it).",
            dynamic=True,
        ),
    )
    batch_rois: bool = field(
        default=True,
        metadata=_spec(
            "Classify all ROIs of all cameras in one batched inference. false runs one inference "
            "per ROI: a benchmark baseline only (bench/bench_node_rois.py).",
        ),
    )
    # Steady labels (tl_perception/smoothing.py; defaults measured in docs/performance.md).
    smoothing: SmoothingMode = field(
        default=DEFAULT_MODE,
        metadata=_spec(
            "Scores published per stream (a camera in full_frame mode, a camera and track id in "
            "ROI mode): ema (an exponential moving average of the class probabilities) or none "
            "(each frame's own). Changing it forgets every stream's state.",
            dynamic=True,
            choices=SMOOTHING_MODES,
        ),
    )
    smoothing_alpha: float = field(
        default=DEFAULT_ALPHA,
        metadata=_spec(
            "smoothing ema: the weight of the newest frame (1.0 = no memory).",
            dynamic=True,
            float_range=(0.01, 1.0),
        ),
    )
    switch_frames: int = field(
        default=DEFAULT_SWITCH_FRAMES,
        metadata=_spec(
            "The published class changes only after another class has led the (smoothed) scores "
            "for this many consecutive frames; 1 = at once. Applies with smoothing none too.",
            dynamic=True,
            int_range=(1, 100),
        ),
    )
    track_timeout_s: float = field(
        default=DEFAULT_TRACK_TIMEOUT_S,
        metadata=_spec(
            "A stream (camera, or track id in ROI mode) not seen for this many seconds of stamp "
            "time is forgotten and starts afresh; a stamp that goes back restarts every stream "
            "of that camera.",
            dynamic=True,
            float_range=(0.01, 3600.0),
        ),
    )
    max_tracks: int = field(
        default=DEFAULT_MAX_TRACKS,
        metadata=_spec(
            "Streams remembered per camera; beyond it the least recently seen one is forgotten "
            "(counted as smoothed_tracks_evicted), so ids invented per box or unstamped frames "
            "(which never time out) cannot grow memory without limit.",
            dynamic=True,
            int_range=(1, 1_000_000),
        ),
    )
    unknown_threshold: float = field(
        default=UNKNOWN_FROM_BUNDLE,
        metadata=_spec(
            "A frame or ROI whose own best score (the model's calibrated probability, before "
            "smoothing) is below this is published as class `unknown` (score 1 - that score). "
            "-1.0 (any negative): the value the bundle recorded on its validation split (a bundle "
            "without one: never unknown); 0.0: never unknown.",
            dynamic=True,
            float_range=(-1.0, 1.0),
        ),
    )
    # Hard-frame capture (tl_perception/loop/capture.py, docs/capture.md).
    capture_dir: str = field(
        default="",
        metadata=_spec(
            "Keep the frames (ROI mode: the crops) the model found hard in this directory, a "
            "dataset in the extraction format (train/unlabeled/ + manifest.csv) for "
            "`tl-perception label` and `merge`. Empty: no capture.",
        ),
    )
    capture_below: float = field(
        default=0.5,
        metadata=_spec(
            "capture_dir: a frame or crop whose best score (the model's own, unsmoothed) is below "
            "this is hard.",
            float_range=(0.01, 1.0),
        ),
    )
    capture_max_per_minute: int = field(
        default=30,
        metadata=_spec(
            "capture_dir: at most this many images in any 60 s (wall time); more are counted.",
            int_range=(1, 100000),
        ),
    )
    capture_max_total: int = field(
        default=1000,
        metadata=_spec(
            "capture_dir: at most this many images in the directory, earlier runs included.",
            int_range=(1, 100000000),
        ),
    )

    def __post_init__(self) -> None:
        """The rules between parameters (each value alone was checked by its conversion)."""
        if self.roi_source == "fixed" and not self.rois:
            raise NodeConfigError(
                "roi_source 'fixed' needs boxes: -p rois:=[x, y, w, h, ...] (pixels, top-left)"
            )
        if len(set(self.cameras)) != len(self.cameras):
            raise NodeConfigError(f"parameter cameras has duplicates: {list(self.cameras)}")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> NodeConfig:
        """The config of every parameter's ROS value (a missing one keeps its default)."""
        return cls(**convert_values(values))

    def with_changes(self, values: Mapping[str, Any]) -> NodeConfig:
        """This config with the run-time set `values` (ROS values) applied; NodeConfigError
        when a value or the result breaks a rule (nothing changes then)."""
        return replace(self, **convert_values(values))

    @property
    def crops_rois(self) -> bool:
        """ROI mode: crops are classified and published on `classified_detections`."""
        return self.roi_source != "full_frame"

    @property
    def pairs_detections(self) -> bool:
        """The ROIs are a detector's, paired with each image by stamp."""
        return self.roi_source == "detections"

    def max_batch(self) -> int:
        """The most crops one cycle can have: what the warm-up prepares batches for (ROI modes:
        `max_rois` is the cycle's, shared by the cameras)."""
        cameras = max(1, len(self.cameras))
        if self.roi_source == "fixed":
            return min(len(self.rois) * cameras, self.max_rois)
        if self.pairs_detections:
            return self.max_rois
        return cameras

    def smoothing_config(self) -> SmoothingConfig:
        return SmoothingConfig(
            self.smoothing,
            self.smoothing_alpha,
            self.switch_frames,
            self.track_timeout_s,
            self.max_tracks,
        )

    def capture(self) -> CaptureConfig | None:
        """The hard-frame capture's settings (None: off); CaptureError for bad ones."""
        if not self.capture_dir:
            return None
        return CaptureConfig(
            Path(self.capture_dir),
            self.capture_below,
            self.capture_max_per_minute,
            self.capture_max_total,
        )


def _declared_default(spec: Spec, default: Any) -> Any:
    """A field's default as ROS declares it: arrays are lists (and start empty)."""
    return [] if spec.kind != "value" else default


#: name -> Spec of every user parameter, in declaration order.
PARAMETERS: dict[str, Spec] = {
    f.name: replace(f.metadata[_SPEC], default=_declared_default(f.metadata[_SPEC], f.default))
    for f in fields(NodeConfig)
    if _SPEC in f.metadata
}


def convert_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """ROS values of parameters -> `NodeConfig` field values (other names are ignored: the
    node-owned parameters)."""
    return {
        name: _convert(PARAMETERS[name], value, name)
        for name, value in values.items()
        if name in PARAMETERS
    }


#: Set by the node from the serving bundle, never by the user (see the module docstring).
CLASS_NAMES = "class_names"
SERVING_MODEL_PATH = "serving_model_path"
NODE_OWNED: dict[str, str] = {
    CLASS_NAMES: "Class names of the serving model bundle, list index = class index.",
    SERVING_MODEL_PATH: "The bundle that classifies right now. It differs from model_path while "
    "a hot reload loads, or after one failed (see /diagnostics model_reload).",
}
NODE_OWNED_REFUSAL = "is set by the node from the serving model bundle (read-only); set model_path"
