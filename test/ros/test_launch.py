"""launch/classify.launch.py and config/classify.yaml agree with the node and with setup.py.

`launch` is not installable from PyPI, so these checks read the files; the launch_testing test
below runs where a ROS 2 install provides launch_testing.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import threading
from pathlib import Path

import pytest
import yaml

from tl_perception.ros.config import CLASS_NAMES, PARAMETERS

from support import REPO
from support.helpers import color_image
from support.node_harness import NODE_SCRIPT, probe, raw_image

LAUNCH_FILE = REPO / "launch" / "classify.launch.py"
PARAMS_FILE = REPO / "config" / "classify.yaml"


def _launch_tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(encoding="utf-8"))


def _string_constants(tree: ast.AST) -> dict[str, str]:
    return {
        node.targets[0].id: node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }


def _console_scripts() -> dict[str, str]:
    """`console_scripts` of setup.py's setup() call, read without running setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            entries = ast.literal_eval(node.value)
            return dict(entry.split(" = ") for entry in entries["console_scripts"])
    raise AssertionError("setup.py has no entry_points")


def test_launch_file_starts_an_existing_console_script() -> None:
    constants = _string_constants(_launch_tree())
    scripts = _console_scripts()
    assert constants["PACKAGE"] == "tl_perception"
    assert constants["EXECUTABLE"] in scripts
    module, func = scripts[constants["EXECUTABLE"]].split(":")
    imported = __import__(module, fromlist=[func])
    assert callable(getattr(imported, func))


def test_launch_file_declares_the_documented_arguments() -> None:
    declared = {
        node.args[0].value
        for node in ast.walk(_launch_tree())
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
    }
    assert declared == {
        "model_path",
        "image",
        "params_file",
        "image_transport",
        "roi_source",
        "detections",
        "namespace",
        "log_level",
        "autostart",
    }


def test_autostart_argument_defaults_like_the_parameter_and_is_passed_as_a_bool() -> None:
    """`autostart:=false` must reach the node as the bool parameter, not the string "false"."""
    tree = _launch_tree()
    defaults = {
        node.args[0].value: kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
        for kw in node.keywords
        if kw.arg == "default_value" and isinstance(kw.value, ast.Constant)
    }
    assert defaults["autostart"] == str(PARAMETERS["autostart"].default).lower() == "true"
    typed = {
        call.args[0].args[0].value: call.keywords[0].value.id
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and getattr(call.func, "id", "") == "ParameterValue"
        and isinstance(call.args[0], ast.Call)
    }
    assert typed["autostart"] == "bool" and typed["model_path"] == "str"


def test_default_params_file_exists_and_setup_py_installs_it() -> None:
    source = LAUNCH_FILE.read_text(encoding="utf-8")
    assert '"config", "classify.yaml"' in source
    assert PARAMS_FILE.is_file()
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    assert 'f"share/{PACKAGE}/config", glob("config/*.yaml")' in setup
    assert 'f"share/{PACKAGE}/launch", glob("launch/*.launch.py")' in setup


def test_every_key_in_classify_yaml_is_a_declared_parameter() -> None:
    config = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    keys = set(config["/**"]["ros__parameters"])
    assert keys == set(PARAMETERS), "config/classify.yaml and params.PARAMETERS differ"
    assert CLASS_NAMES not in keys
    for name, value in config["/**"]["ros__parameters"].items():
        assert type(value) is type(PARAMETERS[name].default), name


@pytest.mark.launch
@pytest.mark.skipif(
    importlib.util.find_spec("launch_testing") is None,
    reason="launch_testing comes from a ROS 2 install (apt), not from PyPI",
)
def test_launch_file_runs_the_node_where_ros_is_installed(color_bundle: Path) -> None:
    import launch
    import launch_testing.actions  # noqa: F401
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    if not NODE_SCRIPT.is_file() and "AMENT_PREFIX_PATH" not in os.environ:
        pytest.skip("tl_perception is not installed in a ROS 2 workspace")
    description = launch.LaunchDescription(
        [
            launch.actions.IncludeLaunchDescription(
                PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
                launch_arguments={"model_path": str(color_bundle), "image": "cam"}.items(),
            )
        ]
    )
    service = launch.LaunchService()
    service.include_launch_description(description)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        with probe(image_topic="/cam") as p:
            p.wait_for_subscriber(p.image_pub, timeout=30.0)
            result = p.publish_until_result(
                lambda s: raw_image(color_image("red"), "rgb8", s), p.image_pub, 3, timeout=30.0
            )
        assert result["results"][0]["class_id"] == "red"
    finally:
        service.shutdown()
        thread.join(timeout=10.0)
