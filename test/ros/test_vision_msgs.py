"""vision_msgs in the virtual environment: wire-compatible definitions, its build, the node on it.

`make venv` builds interfaces/vision_msgs into .venv (interfaces/build_vision_msgs.py). These
tests check that what got installed is upstream vision_msgs 4.1.1 to the type hash, that the
build script explains what is missing, and that the node's default output is vision_msgs over
real DDS: Classification, the latched LabelInfo, and its re-publication after a hot reload.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rclpy.parameter import Parameter

from tl_perception.ros.messages import resolve_output_format, vision_msgs_available

from support import REPO
from support.helpers import color_image, make_color_bundle
from support.node_harness import RAW_LABELS, node_in_process, probe, raw_image, wait_until

INTERFACE = REPO / "interfaces" / "vision_msgs"
BUILD_SCRIPT = REPO / "interfaces" / "build_vision_msgs.py"

# Jazzy type hashes of upstream vision_msgs 4.1.1 built here (the 3D ones measured the same way).
UPSTREAM_HASHES: dict[str, str] = {
    "BoundingBox2D": "RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "BoundingBox2DArray": "RIHS01_2464e82838009386d371b523211c21c91d74d313fcdd6788223c531d621cf691",
    "Classification": "RIHS01_f74db28d0eaef3afb78f48bf2161cd709a1383a0309d3454383b25be11345143",
    "Detection2D": "RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "Detection2DArray": "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "LabelInfo": "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "ObjectHypothesisWithPose": (
        "RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc"
    ),
    "Point2D": "RIHS01_eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "Pose2D": "RIHS01_b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "VisionClass": "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
    "VisionInfo": "RIHS01_95d3116a17484ad91c9a2686e1d54890bbfc3ff6c6a2de137738c4950d45d284",
    "BoundingBox3D": "RIHS01_bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "BoundingBox3DArray": "RIHS01_a81938db9576b10c2eecd7c5a5da3eac496efd00221b25ed051dfbc81fb56da6",
    "Detection3D": "RIHS01_ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "Detection3DArray": "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
}


def require_vision_msgs() -> None:
    """Skip where vision_msgs was deliberately left out (VISION_MSGS=0); in CI it must be there."""
    if vision_msgs_available():
        return
    message = "vision_msgs does not import (make venv builds it; VISION_MSGS=0 skips that)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def installed_share() -> Path:
    """`<prefix>/share/vision_msgs` of the vision_msgs that imports (venv or ROS install)."""
    import vision_msgs

    package = Path(vision_msgs.__file__).resolve().parent  # <prefix>/lib/pythonX.Y/site-packages
    return package.parents[3] / "share" / "vision_msgs"


# ------------------------------------------------------------------ the definitions and the build
def test_installed_type_hashes_equal_upstream_4_1_1() -> None:
    require_vision_msgs()
    msg_dir = installed_share() / "msg"
    outside_venv = not msg_dir.resolve().is_relative_to(Path(sys.prefix).resolve())
    if outside_venv and not (msg_dir / "Classification.json").is_file():
        pytest.skip(f"{msg_dir} has no type descriptions (Humble has no type hashes)")
    found = {}
    for name in UPSTREAM_HASHES:
        described = json.loads((msg_dir / f"{name}.json").read_text())
        own = described["type_hashes"][0]
        assert own["type_name"] == f"vision_msgs/msg/{name}"
        found[name] = own["hash_string"]
    assert found == UPSTREAM_HASHES


def test_every_definition_is_built_and_the_package_stays_out_of_ros_workspaces() -> None:
    from catkin_pkg.package import parse_package

    package = parse_package(str(INTERFACE / "package.xml"))  # strict: as colcon/rosdep read it
    assert (package.name, package.version) == ("vision_msgs", "4.1.1")
    assert (INTERFACE / "COLCON_IGNORE").is_file()
    sources = {p.stem for p in (INTERFACE / "msg").glob("*.msg")}
    assert sources == set(UPSTREAM_HASHES)
    cmake = (INTERFACE / "CMakeLists.txt").read_text()
    assert all(f"msg/{name}.msg" in cmake for name in sources)


def test_build_script_names_what_is_missing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "CXX")}
    env["PATH"] = str(tmp_path)  # no cmake, no compiler
    result = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--force"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot build vision_msgs")
    assert "cmake" in lines[0] and "C compiler" in lines[0] and "C++ compiler" in lines[0]


def test_build_script_skips_when_this_source_is_installed() -> None:
    require_vision_msgs()
    result = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "already built" in result.stdout or "nothing to build" in result.stdout


def test_build_script_leaves_a_vision_msgs_from_outside_the_venv_alone(tmp_path: Path) -> None:
    sourced = tmp_path / "opt_ros" / "vision_msgs"  # what a sourced ROS install puts on PYTHONPATH
    sourced.mkdir(parents=True)
    (sourced / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(sourced.parent)}
    result = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"using {sourced.resolve()}" in result.stdout and "nothing to build" in result.stdout


def test_wheel_include_paths_are_rewritten_to_this_interpreter(tmp_path: Path) -> None:
    import numpy

    sys.path.insert(0, str(BUILD_SCRIPT.parent))
    try:
        from build_vision_msgs import rewrite_wheel_include_paths
    finally:
        sys.path.remove(str(BUILD_SCRIPT.parent))
    exported = tmp_path / "share" / "std_msgs" / "cmake" / "export_std_msgsExport.cmake"
    exported.parent.mkdir(parents=True)
    exported.write_text(
        'INTERFACE_INCLUDE_DIRECTORIES "/opt/python/cp311-cp311/include/python3.11;'
        '/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"\n'
    )
    assert rewrite_wheel_include_paths(tmp_path) == 1
    python_include, numpy_include = sysconfig.get_paths()["include"], numpy.get_include()
    expected = f'INTERFACE_INCLUDE_DIRECTORIES "{python_include};{numpy_include}"\n'
    assert exported.read_text() == expected
    assert rewrite_wheel_include_paths(tmp_path) == 0  # idempotent


# ------------------------------------------------------------------ the node speaks vision_msgs
@pytest.fixture(scope="module")
def two_class_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with other classes than `color_bundle` (two, in another order)."""
    return make_color_bundle(
        tmp_path_factory.mktemp("bundles") / "two", classes=("blue", "red"), seed=2
    )


@pytest.fixture
def vision_node(color_bundle: Path) -> Iterator[Any]:
    """A node with the default `output_format` (auto) and top_k 2, score_threshold 0.0."""
    require_vision_msgs()
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "top_k": 2}
    with node_in_process(overrides, namespace="/vm") as node:
        yield node


def labels_of(bundle: Path) -> list[str]:
    return (bundle / "labels.txt").read_text().split()


def test_auto_means_vision_msgs_where_it_imports() -> None:
    require_vision_msgs()
    assert resolve_output_format("auto") == "vision_msgs"


def test_classification_carries_the_image_header_and_top_k_best_first(vision_node: Any) -> None:
    from vision_msgs.msg import Classification, ObjectHypothesis

    with probe(namespace="/vm") as p:
        assert p.output_format == "vision_msgs"
        p.wait_for_subscriber(p.image_pub)
        frame = lambda s: raw_image(color_image("green"), "bgr8", s, frame_id="cam_vm")  # noqa: E731
        p.publish_until_result(frame, p.image_pub, 41)
        msg = p.message_for(41)
    assert isinstance(msg, Classification)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (41, 1234)
    assert msg.header.frame_id == "cam_vm"
    assert len(msg.results) == 2 and all(isinstance(h, ObjectHypothesis) for h in msg.results)
    # bgr8 of the green image is still green; best first.
    assert msg.results[0].class_id == "green"
    assert msg.results[0].score >= msg.results[1].score


def test_label_info_is_latched_for_a_late_subscriber(vision_node: Any, color_bundle: Path) -> None:
    from vision_msgs.msg import LabelInfo

    vision_node.set_parameters([Parameter("score_threshold", value=0.25)])
    with probe(namespace="/vm") as p:  # joins after the node started and published
        info = wait_until(p.latest_label_info, 15.0)
    assert isinstance(info, LabelInfo)
    assert [c.class_id for c in info.class_map] == list(range(len(labels_of(color_bundle))))
    assert [c.class_name for c in info.class_map] == labels_of(color_bundle)
    assert info.threshold == pytest.approx(0.25)


def test_hot_reload_to_other_classes_republishes_label_info(
    vision_node: Any, two_class_bundle: Path
) -> None:
    with probe(namespace="/vm") as p:
        p.wait_for_subscriber(p.image_pub)
        wait_until(p.latest_label_info, 15.0)
        swap = vision_node.set_parameters([Parameter("model_path", value=str(two_class_bundle))])
        assert swap[0].successful
        info = wait_until(
            lambda: (i := p.latest_label_info()) and len(i.class_map) == 2 and i, 30.0
        )
        assert [c.class_name for c in info.class_map] == labels_of(two_class_bundle)
        assert [c.class_id for c in info.class_map] == [0, 1]
        red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731
        result = p.publish_until_result(red, p.image_pub, 77)
    assert [h["class_id"] for h in result["results"]] == ["red", "blue"]


def test_json_output_on_request(color_bundle: Path) -> None:
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "output_format": "json", "top_k": 1}
    with (
        node_in_process(overrides, namespace="/js") as node,
        probe(namespace="/js", output_format="json") as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        blue = lambda s: raw_image(color_image("blue"), "rgb8", s, frame_id="cam_js")  # noqa: E731
        result = p.publish_until_result(blue, p.image_pub, 9)
        types = dict(node.get_topic_names_and_types())
    assert types["/js/classification"] == ["std_msgs/msg/String"]
    assert "/js/label_info" not in types  # LabelInfo only exists with vision_msgs
    assert result["header"] == {"stamp": {"sec": 9, "nanosec": 1234}, "frame_id": "cam_js"}
    assert [h["class_id"] for h in result["results"]] == ["blue"]


def write_color_bag(path: Path, colors: list[str], topic: str) -> Path:
    """A rosbag2 (sqlite3) of rgb8 frames at 5 Hz, one per colour, stamped 1 s, 2 s, ..."""
    import numpy as np
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    image_type, header_type = (
        store.types["sensor_msgs/msg/Image"],
        store.types["std_msgs/msg/Header"],
    )
    time_type = store.types["builtin_interfaces/msg/Time"]
    with Writer(path, version=8) as writer:
        connection = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=store)
        for index, color in enumerate(colors, start=1):
            rgb = color_image(color, (24, 32), seed=index)
            header = header_type(stamp=time_type(sec=index, nanosec=0), frame_id="camera")
            msg = image_type(
                header=header,
                height=rgb.shape[0],
                width=rgb.shape[1],
                encoding="rgb8",
                is_bigendian=0,
                step=rgb.shape[1] * 3,
                data=np.ascontiguousarray(rgb).reshape(-1),
            )
            data = store.serialize_cdr(msg, "sensor_msgs/msg/Image")
            writer.write(connection, index * 200_000_000, data)
    return path


@pytest.mark.parametrize("output_format", ["vision_msgs", "json"])
def test_demo_collector_records_either_format(
    color_bundle: Path, tmp_path: Path, output_format: str
) -> None:
    from tl_perception.ros.collect import LivePlan, collect_live

    if output_format == "vision_msgs":
        require_vision_msgs()
    colors = ["red", "red", "blue", "green"]
    bag = write_color_bag(tmp_path / "drive", colors, "/cam")
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "output_format": output_format}
    with node_in_process(overrides, namespace="/live"):
        plan = LivePlan(
            bag=bag,
            play={"/cam": "/live/image"},
            image_topic="/live/image",
            results_topic="/live/classification",
            ready_timeout_s=30.0,
            drain_s=1.0,
        )
        result = collect_live(plan, log=lambda _: None)
    assert [r.top1 for r in result.records] == colors
    assert [r.stamp_ns for r in result.records] == [i * 10**9 for i in range(1, 5)]
    assert all(r.latency_ms is not None for r in result.records)


def test_collector_reads_vision_msgs_classification() -> None:
    require_vision_msgs()
    from vision_msgs.msg import Classification, ObjectHypothesis

    from tl_perception.ros.collect import parse_classification

    msg = Classification()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 12, 5
    msg.results = [
        ObjectHypothesis(class_id="yield", score=0.2),
        ObjectHypothesis(class_id="stop", score=0.7),
    ]
    assert parse_classification(msg) == (12_000_000_005, "stop", pytest.approx(0.7))
    assert parse_classification(Classification()) == (0, "", 0.0)
