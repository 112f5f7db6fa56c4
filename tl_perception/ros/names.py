"""The classifier node's names, in one place: the launch file, the node, the collectors and the
tests all import them, so renaming the node is a one-line change.

Deliberately import-free (no rclpy), so a launch file or a benchmark can read it cheaply.
"""

from __future__ import annotations

#: The node's default name (`ros2 run` and the launch file use it; `__node:=` can override it).
NODE_NAME = "classifier"

#: Suffix of the node's `/diagnostics` status name: `<fully qualified node name>: <suffix>`.
DIAGNOSTICS_SUFFIX = "image classification"


def diagnostics_status_name(fully_qualified_name: str) -> str:
    """`/front/classifier` -> `/front/classifier: image classification`."""
    return f"{fully_qualified_name}: {DIAGNOSTICS_SUFFIX}"


def camera_status_name(fully_qualified_name: str, camera: str) -> str:
    """`/classifier`, `front` -> `/classifier: image classification (front)`."""
    return f"{diagnostics_status_name(fully_qualified_name)} ({camera})"
