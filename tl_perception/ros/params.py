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

from tl_perception.inference import BACKENDS
from tl_perception.ros.messages import OUTPUT_FORMATS, NodeConfigError
from tl_perception.ros.qos import QOS_MODES

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


PARAMETERS: dict[str, Spec] = {
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
        "Publish `classification/overlay` (the image with label and score drawn) while "
        "something subscribes to it.",
        dynamic=True,
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
            param = node.declare_parameter(name, spec.default, descriptor(name, spec))
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            raise NodeConfigError(f"parameter {name}: {err}") from err
        values[name] = param.value
        check_choice(name, param.value)
    return values


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


def check_choice(name: str, value: Any) -> None:
    """Raise NodeConfigError for a string parameter outside its choices."""
    choices = PARAMETERS[name].choices
    if choices is not None and value not in choices:
        raise NodeConfigError(f"parameter {name} = {value!r} is not one of {', '.join(choices)}")
