"""The classifier node's parameters: one table of names, defaults, descriptions and ranges.

`config/classify.yaml`, the launch file and docs/node.md mirror this table; a test checks that
every key in the YAML is declared here.

Two more parameters are *node-owned*: `class_names` and `serving_model_path` describe the model
that serves right now, so the node updates them on every hot reload. rclpy lets no one, not even
the node itself, set a parameter declared `read_only` (only `declare_parameter` writes it), and
undeclaring a read-only parameter is refused too. So they are declared writable, and the node's
on-set callback refuses every write that does not come from the node's own `NodeOwnedWriter`
(see `classifier_node`); their descriptions say so, and `ros2 param set` fails with that reason.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from tl_perception import smoothing
from tl_perception.inference import BACKENDS
from tl_perception.ros.budget import DEFAULT_MAX_ROI_PIXELS
from tl_perception.ros.labels import UNKNOWN_FROM_BUNDLE
from tl_perception.ros.messages import OUTPUT_FORMATS, NodeConfigError
from tl_perception.ros.qos import QOS_MODES
from tl_perception.ros.rois import ROI_SOURCES

#: The inference backends, defined once in `tl_perception.inference`.
BACKEND_CHOICES: tuple[str, ...] = BACKENDS
TRANSPORTS: tuple[str, ...] = ("raw", "compressed")


@dataclass(frozen=True)
class Spec:
    """One parameter: default value, description, whether it can change at run time, range."""

    default: Any
    description: str
    dynamic: bool = False
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    #: "value" (typed by the default), "string_array" or "number_array": arrays whose default
    #: is empty, which rclpy cannot type from `[]` (it would make them byte arrays); a number
    #: array takes integers or doubles (`[10, 20, 30, 40]` and `[10.5, ...]` alike).
    kind: str = "value"


PARAMETERS: dict[str, Spec] = {
    "autostart": Spec(
        True,
        "Walk the lifecycle to active at start-up (configure, then activate), as a plain node "
        "starts. false: stay unconfigured until a lifecycle manager (or `ros2 lifecycle set`) "
        "drives the transitions.",
    ),
    "model_path": Spec(
        "",
        "Model bundle directory (written by `tl-perception finetune`). Setting it at run time "
        "loads the new bundle in the background and swaps it in; a bad bundle is refused.",
        dynamic=True,
    ),
    "backend": Spec(
        "auto",
        "Inference backend: auto (LiteRT, converting the Keras model once if needed), litert, "
        "or keras.",
        choices=BACKEND_CHOICES,
    ),
    "num_threads": Spec(
        0,
        "CPU threads for inference; 0 lets the backend decide.",
        int_range=(0, 256),
    ),
    "image_transport": Spec(
        "raw",
        "raw: subscribe sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage "
        "on `<image>/compressed` (JPEG or PNG).",
        choices=TRANSPORTS,
    ),
    "qos": Spec(
        "auto",
        "Input QoS: auto (match the publishers' reliability and durability, re-checked every "
        "second), sensor_data (best effort), reliable, or system_default.",
        choices=QOS_MODES,
    ),
    "top_k": Spec(
        5,
        "Publish at most this many hypotheses per image, best first.",
        dynamic=True,
        int_range=(1, 1000),
    ),
    "score_threshold": Spec(
        0.0,
        "Leave out hypotheses scoring below this (0 keeps all top_k).",
        dynamic=True,
        float_range=(0.0, 1.0),
    ),
    "max_rate_hz": Spec(
        0.0,
        "Classify at most this many frames per second; 0 = as fast as frames and CPU allow. "
        "Frames skipped by the limit count as dropped.",
        dynamic=True,
        float_range=(0.0, 1000.0),
    ),
    "output_format": Spec(
        "auto",
        "auto (vision_msgs/Classification when vision_msgs imports, else JSON in "
        "std_msgs/String), vision_msgs, or json.",
        choices=OUTPUT_FORMATS,
    ),
    "publish_overlay": Spec(
        False,
        "Publish `classification/overlay` (the image with label and score drawn; in ROI mode "
        "every classified box with its label) while something subscribes to it.",
        dynamic=True,
    ),
    "cameras": Spec(
        [],
        "Camera names; for each name N the node subscribes `N/image` (or `N/image/compressed`) "
        "and, with roi_source detections, `N/detections`, and publishes `N/classification` or "
        "`N/classified_detections`. The newest frame of every camera goes through one batched "
        "inference. Empty: one camera on `image`.",
        kind="string_array",
    ),
    "batch_wait_s": Spec(
        0.005,
        "Several cameras: after a frame arrives, wait up to this many seconds for the cameras "
        "whose previous frame came within this time of it (cameras in step, e.g. hardware-"
        "triggered), so their frames share one inference; cameras not in step are never waited "
        "for. 0 = never wait.",
        dynamic=True,
        float_range=(0.0, 0.1),
    ),
    "roi_source": Spec(
        "full_frame",
        "What is classified: full_frame (the whole image, on `classification`), detections "
        "(the boxes of the vision_msgs/Detection2DArray on `detections` with the image's stamp) "
        "or fixed (the `rois` boxes); ROIs are published on `classified_detections`.",
        choices=ROI_SOURCES,
    ),
    "sync_tolerance_s": Spec(
        0.0,
        "roi_source detections: pair an image with the detections whose stamp is nearest "
        "within this many seconds; 0 = the same stamp exactly. Keep it under half the frame "
        "period: at or above it pairs can cross, and /diagnostics warns (the period is "
        "measured from the image stamps).",
        float_range=(0.0, 1.0),
    ),
    "frame_id_must_match": Spec(
        True,
        "roi_source detections: refuse (do not classify, count as frame_id_refused) a "
        "detections message whose header.frame_id is set and differs from its image's: its "
        "boxes belong to another camera (a miswired topic pairs exactly when cameras share "
        "stamps) and would crop the wrong image. false: classify it anyway. Mismatches are "
        "counted and warned once either way.",
        dynamic=True,
    ),
    "sync_queue": Spec(
        10,
        "roi_source detections: messages of each kind kept waiting for their partner; the "
        "oldest is dropped (counted as unpaired) when more wait.",
        int_range=(1, 1000),
    ),
    "rois": Spec(
        [],
        "roi_source fixed: boxes as x, y, w, h, x, y, w, h, ... in pixels (top-left corner, "
        "width, height), ids roi0, roi1, ...",
        dynamic=True,
        kind="number_array",
    ),
    "max_rois": Spec(
        32,
        "Classify at most this many ROIs per cycle (one batched inference over every camera's "
        "newest frame; with one camera: per frame), shared fairly: round-robin over the "
        "cameras in message order, so a camera alone gets all of them and a flooding one only "
        "what the others leave. The rest are dropped and counted (rois_over_max).",
        dynamic=True,
        int_range=(1, 1024),
    ),
    "max_roi_pixels": Spec(
        DEFAULT_MAX_ROI_PIXELS,
        "Crop pixels per cycle, all cameras (16 Mi = 48 MiB of RGB crops), shared like "
        "max_rois: a box whose crop does not fit in what is left is refused and counted "
        "(rois_rejected_over_budget), so a detector scaled wrong cannot exhaust memory.",
        dynamic=True,
        int_range=(1, 2_000_000_000),
    ),
    "publish_background": Spec(
        False,
        "Publish ROIs whose best class is background_label too (otherwise they are left out "
        "of classified_detections and only counted).",
        dynamic=True,
    ),
    "background_label": Spec(
        "background",
        "The class name that means 'no object here' (extract --negatives writes it).",
        dynamic=True,
    ),
    "batch_rois": Spec(
        True,
        "Classify all ROIs of all cameras in one batched inference. false runs one inference "
        "per ROI: a benchmark baseline only (bench/bench_node_rois.py).",
    ),
    # Steady labels (tl_perception/smoothing.py; defaults measured in docs/performance.md).
    "smoothing": Spec(
        smoothing.DEFAULT_MODE,
        "Scores published per stream (a camera in full_frame mode, a camera and track id in ROI "
        "mode): ema (an exponential moving average of the class probabilities) or none (each "
        "frame's own). Changing it forgets every stream's state.",
        dynamic=True,
        choices=smoothing.SMOOTHING_MODES,
    ),
    "smoothing_alpha": Spec(
        smoothing.DEFAULT_ALPHA,
        "smoothing ema: the weight of the newest frame (1.0 = no memory).",
        dynamic=True,
        float_range=(0.01, 1.0),
    ),
    "switch_frames": Spec(
        smoothing.DEFAULT_SWITCH_FRAMES,
        "The published class changes only after another class has led the (smoothed) scores "
        "for this many consecutive frames; 1 = at once. Applies with smoothing none too.",
        dynamic=True,
        int_range=(1, 100),
    ),
    "track_timeout_s": Spec(
        smoothing.DEFAULT_TRACK_TIMEOUT_S,
        "A stream (camera, or track id in ROI mode) not seen for this many seconds of stamp "
        "time is forgotten and starts afresh; a stamp that goes back restarts every stream "
        "of that camera.",
        dynamic=True,
        float_range=(0.01, 3600.0),
    ),
    "max_tracks": Spec(
        smoothing.DEFAULT_MAX_TRACKS,
        "Streams remembered per camera; beyond it the least recently seen one is forgotten "
        "(counted as smoothed_tracks_evicted), so ids invented per box or unstamped frames "
        "(which never time out) cannot grow memory without limit.",
        dynamic=True,
        int_range=(1, 1_000_000),
    ),
    "unknown_threshold": Spec(
        UNKNOWN_FROM_BUNDLE,
        "A frame or ROI whose own best score (the model's calibrated probability, before "
        "smoothing) is below this is published as class `unknown` (score 1 - that score). "
        "-1.0 (any negative): the value the bundle recorded on its validation split (a bundle "
        "without one: never unknown); 0.0: never unknown.",
        dynamic=True,
        float_range=(-1.0, 1.0),
    ),
    # Hard-frame capture (tl_perception/capture.py, docs/capture.md).
    "capture_dir": Spec(
        "",
        "Keep the frames (ROI mode: the crops) the model found hard in this directory, a "
        "dataset in the extraction format (train/unlabeled/ + manifest.csv) for "
        "`tl-perception label` and `merge`. Empty: no capture.",
    ),
    "capture_below": Spec(
        0.5,
        "capture_dir: a frame or crop whose best score (the model's own, unsmoothed) is below "
        "this is hard.",
        float_range=(0.01, 1.0),
    ),
    "capture_max_per_minute": Spec(
        30,
        "capture_dir: at most this many images in any 60 s (wall time); more are counted.",
        int_range=(1, 100000),
    ),
    "capture_max_total": Spec(
        1000,
        "capture_dir: at most this many images in the directory, earlier runs included.",
        int_range=(1, 100000000),
    ),
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


def descriptor(name: str, spec: Spec) -> ParameterDescriptor:
    """A ParameterDescriptor with the description, read-only flag and numeric range."""
    text = spec.description
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    desc = ParameterDescriptor(name=name, description=text, read_only=not spec.dynamic)
    if spec.kind == "number_array":
        desc.dynamic_typing = True  # integers or doubles; checked by check_number_array
    if spec.int_range is not None:
        desc.integer_range = [
            IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)
        ]
    if spec.float_range is not None:
        desc.floating_point_range = [
            FloatingPointRange(
                from_value=spec.float_range[0], to_value=spec.float_range[1], step=0.0
            )
        ]
    return desc


def declare_all(node: Node) -> dict[str, Any]:
    """Declare every user parameter and return the values (overrides applied, choices checked)."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    values = {}
    for name, spec in PARAMETERS.items():
        try:
            param = node.declare_parameter(name, _declared(spec), descriptor(name, spec))
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            raise NodeConfigError(f"parameter {name}: {err}") from err
        values[name] = param.value
        if spec.kind == "number_array":
            values[name] = check_number_array(name, param.value)
        elif spec.kind == "string_array":
            values[name] = [] if param.value is None else list(param.value)
        check_choice(name, param.value)
    return values


def _declared(spec: Spec) -> Any:
    """What `declare_parameter` gets: the default, or the type of an array that starts empty."""
    if spec.kind == "string_array":
        return Parameter.Type.STRING_ARRAY
    if spec.kind == "number_array":
        return None  # dynamic typing: integer or double arrays
    return spec.default


def check_number_array(name: str, value: Any) -> list[float]:
    """An integer or double array parameter as floats (unset: []); anything else refused."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, array.array)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return [float(v) for v in value]
    raise NodeConfigError(f"parameter {name} must be an array of numbers, got {value!r}")


def declare_node_owned(node: Node, class_names: Sequence[str], serving_model_path: str) -> None:
    """`class_names` and `serving_model_path`, from the serving bundle (overrides are ignored).

    Declared writable so the node can update them with the public `set_parameters`; the node's
    on-set callback refuses everyone else (rclpy's `read_only` would refuse the node too).
    """
    values: dict[str, tuple[Any, int]] = {
        CLASS_NAMES: (list(class_names), ParameterType.PARAMETER_STRING_ARRAY),
        SERVING_MODEL_PATH: (serving_model_path, ParameterType.PARAMETER_STRING),
    }
    for name, (value, param_type) in values.items():
        node.declare_parameter(
            name,
            value,
            ParameterDescriptor(
                name=name,
                type=param_type,
                description=f"{NODE_OWNED[name]} Set by the node; writes from outside are refused.",
            ),
            ignore_override=True,
        )


def check_choices(values: dict[str, Any]) -> None:
    """Raise NodeConfigError for any run-time value outside its parameter's choices (rclpy
    checks types and ranges, not string choices)."""
    for name, value in values.items():
        if name in PARAMETERS:
            check_choice(name, value)


def check_choice(name: str, value: Any) -> None:
    """Raise NodeConfigError for a string parameter outside its choices."""
    choices = PARAMETERS[name].choices
    if choices is not None and value not in choices:
        raise NodeConfigError(f"parameter {name} = {value!r} is not one of {', '.join(choices)}")
