"""Start tl_perception's classifier_node.

    ros2 launch tl_perception classify.launch.py model_path:=/path/to/bundle \
        image:=/camera/image_raw [image_transport:=compressed] [namespace:=front] \
        [roi_source:=detections detections:=/detector/detections] \
        [params_file:=my.yaml] [log_level:=debug] [autostart:=false]

`model_path`, `image_transport`, `roi_source` and `autostart` given here override the params
file. Several cameras (`cameras`, a string array) and fixed `rois` go in a params file
(`params_file:=`).

The node is a lifecycle (managed) node. With `autostart:=true` (the default) it configures and
activates itself, as a plain node starts; with `autostart:=false` it waits, unconfigured, for a
lifecycle manager (nav2_lifecycle_manager, or `ros2 lifecycle set`) to drive it over its
`~/change_state` service. Either way the plain `launch_ros.actions.Node` action is the right
one: the lifecycle services exist whatever action starts the process. `launch_ros`'
`LifecycleNode` action would only add launch-side transition events (emitting `ChangeState`
from this file, reacting to `OnStateTransition`), which autostart and the manager make
unnecessary, and in Humble it demands an explicit `namespace`. A finalized node (`shutdown`)
ends its process, with exit code 0.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from tl_perception.ros.names import NODE_NAME  # one source for the node's name (import-free)

PACKAGE = "tl_perception"
EXECUTABLE = "classifier_node"


def generate_launch_description() -> LaunchDescription:
    """Launch arguments mirror the node's most used parameters."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "classify.yaml")
    arguments = [
        DeclareLaunchArgument("model_path", description="Model bundle directory (required)."),
        DeclareLaunchArgument(
            "image", default_value="image", description="Image topic to classify (remaps `image`)."
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=default_params,
            description="YAML with the node's parameters (/**: ros__parameters: ...).",
        ),
        DeclareLaunchArgument(
            "image_transport",
            default_value="raw",
            description="raw (sensor_msgs/Image) or compressed (<image>/compressed).",
        ),
        DeclareLaunchArgument(
            "roi_source",
            default_value="full_frame",
            description="full_frame, detections (boxes from `detections`) or fixed (`rois`).",
        ),
        DeclareLaunchArgument(
            "detections",
            default_value="detections",
            description="vision_msgs/Detection2DArray topic (remaps `detections`).",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace."),
        DeclareLaunchArgument(
            "autostart",
            default_value="true",
            description="true: configure and activate at start-up; false: stay unconfigured "
            "until a lifecycle manager drives the node.",
        ),
        DeclareLaunchArgument(
            "log_level", default_value="info", description="debug, info, warn, error or fatal."
        ),
    ]
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                # typed, so a path like `2024` or `true` stays a string and `autostart` a bool
                "model_path": ParameterValue(LaunchConfiguration("model_path"), value_type=str),
                "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
                "image_transport": LaunchConfiguration("image_transport"),
                "roi_source": LaunchConfiguration("roi_source"),
            },
        ],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("detections", LaunchConfiguration("detections")),
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription([*arguments, node])
