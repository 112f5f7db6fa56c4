"""The node's parameters on the rclpy side: declared from the `config.PARAMETERS` table, read
back as one `config.NodeConfig`, and the node-owned parameters written by the node alone.

`config/classify.yaml`, the launch file and docs/node.md mirror the table; a test checks that
every key in the YAML is declared.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from tl_perception.errors import NodeConfigError
from tl_perception.ros.config import (
    CLASS_NAMES,
    NODE_OWNED,
    NODE_OWNED_REFUSAL,
    PARAMETERS,
    SERVING_MODEL_PATH,
    NodeConfig,
    Spec,
    convert_values,
)


def descriptor(name: str, spec: Spec) -> ParameterDescriptor:
    """A ParameterDescriptor with the description, read-only flag and numeric range."""
    text = spec.description
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    desc = ParameterDescriptor(name=name, description=text, read_only=not spec.dynamic)
    if spec.kind == "number_array":
        desc.dynamic_typing = True  # integers or doubles; checked by the table's conversion
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
    """Declare every user parameter; their values, converted and checked (a value of the wrong
    type or choice raises NodeConfigError, so it stops start-up)."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    for name, spec in PARAMETERS.items():
        try:
            node.declare_parameter(name, _declared(spec), descriptor(name, spec))
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            raise NodeConfigError(f"parameter {name}: {err}") from err
    return convert_values(_values(node))


def read_config(node: Node) -> NodeConfig:
    """Every parameter's value now (run-time sets since start-up count) as one config."""
    return NodeConfig.from_values(_values(node))


def _values(node: Node) -> dict[str, Any]:
    """The ROS value of every user parameter (None: a typed array never set)."""
    return {name: node.get_parameter_or(name).value for name in PARAMETERS}


def _declared(spec: Spec) -> Any:
    """What `declare_parameter` gets: the default, or the type of an array that starts empty."""
    if spec.kind == "string_array":
        return Parameter.Type.STRING_ARRAY
    if spec.kind == "number_array":
        return None  # dynamic typing: integer or double arrays
    return spec.default


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


class NodeOwnedWriter:
    """The node's own writes of its node-owned parameters, with public rclpy API only.

    rclpy calls the on-set callback in the thread that calls `set_parameters`, so a thread-local
    flag tells the node's own writes apart from a `ros2 param set` served at the same moment on
    the executor thread, without a window in which an outside write could slip through.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._local = threading.local()

    def check(self, values: Mapping[str, Any]) -> None:
        """NodeConfigError when a set names a node-owned parameter and is not the node's own."""
        if getattr(self._local, "active", False):
            return
        for name in NODE_OWNED:
            if name in values:
                raise NodeConfigError(f"{name} {NODE_OWNED_REFUSAL}")

    def publish(self, class_names: Sequence[str], serving_model_path: str) -> None:
        """Show what serves: declare the parameters on the first configure, update them after.

        Declaring runs the on-set callback too (rclpy does), hence the flag around it.
        """
        if self._node.has_parameter(CLASS_NAMES):
            self._write({SERVING_MODEL_PATH: serving_model_path, CLASS_NAMES: list(class_names)})
            return
        self._local.active = True
        try:
            declare_node_owned(self._node, class_names, serving_model_path)
        finally:
            self._local.active = False

    def clear(self) -> None:
        """Nothing serves (cleanup): empty values, if they were ever declared."""
        if self._node.has_parameter(CLASS_NAMES):
            self._write({SERVING_MODEL_PATH: "", CLASS_NAMES: []})

    def _write(self, values: dict[str, Any]) -> None:
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
